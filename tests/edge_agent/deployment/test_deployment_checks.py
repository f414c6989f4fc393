"""The deployment's checks on their own: which commands are refused and why, the artifact's
sha256, and the ledger of commands carried out that outlives a restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.deployment.checks import (
    CommandWindow,
    DeploymentFailed,
    command_refusal,
    verify_artifact,
)
from edge_agent.deployment.ledger import CommandLedger
from edge_agent.kernel.contract import DeployCommand, RollbackCommand
from edge_agent.kernel.signing import Signer, Verifier
from edge_agent.model_store import ModelStore
from tests.helpers import SAMPLE_MODEL, TEST_SIGNER, TEST_VERIFIER, manifest_for


def deploy(version: str = "1.0.0", device_id: str = "gw1") -> DeployCommand:
    return TEST_SIGNER.signed(DeployCommand(device_id=device_id,
                                            manifest=manifest_for(SAMPLE_MODEL, version=version)))


def refusal(command: DeployCommand | RollbackCommand, tmp_path: Path,
            verifier: Verifier | None = TEST_VERIFIER) -> str | None:
    store = ModelStore(tmp_path / "models")
    ledger = CommandLedger(tmp_path / "ledger.json")
    return command_refusal(command, "gw1", ledger, verifier, store)


def test_a_signed_command_for_this_device_is_carried_out(tmp_path: Path) -> None:
    assert refusal(deploy(), tmp_path) is None


def test_a_command_for_another_device_is_refused(tmp_path: Path) -> None:
    assert refusal(deploy(device_id="gw2"), tmp_path) == \
        "command is for device gw2, this is gw1"


def test_a_command_signed_by_another_key_is_refused(tmp_path: Path) -> None:
    other = Verifier(Signer.generate().public_key)
    assert "this agent trusts key" in (refusal(deploy(), tmp_path, other) or "")


def test_a_replayed_command_is_refused_even_after_a_restart(tmp_path: Path) -> None:
    command = deploy()
    CommandLedger(tmp_path / "ledger.json").add(command.command_id)
    assert refusal(command, tmp_path) == \
        f"command {command.command_id} was already carried out (replayed)"


NOW = 1_800_000_000.0
DAY_S = 24 * 3600.0


def issued(at: float) -> DeployCommand:
    return TEST_SIGNER.signed(DeployCommand(device_id="gw1", issued_at=at,
                                            manifest=manifest_for(SAMPLE_MODEL)))


def refusal_at(command: DeployCommand, tmp_path: Path, window: CommandWindow) -> str | None:
    return command_refusal(command, "gw1", CommandLedger(tmp_path / "ledger.json"),
                           TEST_VERIFIER, ModelStore(tmp_path / "models"), window=window,
                           now=NOW)


def test_a_signed_command_issued_longer_ago_than_the_window_is_refused(tmp_path: Path) -> None:
    window = CommandWindow(max_age_s=DAY_S, clock_skew_s=300)
    assert refusal_at(issued(NOW - DAY_S + 60), tmp_path, window) is None
    reason = refusal_at(issued(NOW - 2 * DAY_S), tmp_path, window) or ""
    assert reason.startswith("command issued 48.0 h ago, longer than the 24.0 h a command")
    assert "security.command_max_age_s" in reason and "send it again" in reason


def test_a_signed_command_from_the_future_beyond_the_clock_skew_is_refused(
        tmp_path: Path) -> None:
    window = CommandWindow(max_age_s=DAY_S, clock_skew_s=300)
    assert refusal_at(issued(NOW + 200), tmp_path, window) is None
    reason = refusal_at(issued(NOW + 3600), tmp_path, window) or ""
    assert reason.startswith("command issued 3600 s in the future by this gateway's clock")
    assert "security.command_clock_skew_s" in reason and "NTP" in reason


def test_the_signature_is_checked_before_the_issue_time(tmp_path: Path) -> None:
    stale = issued(NOW - 2 * DAY_S).model_copy(update={"signature": ""})
    assert "unsigned" in (refusal_at(stale, tmp_path, CommandWindow()) or "")


def test_an_older_version_needs_a_signed_rollback(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    store.install(manifest_for(SAMPLE_MODEL, version="2.0.0"), SAMPLE_MODEL)
    assert "older than 2.0.0" in (refusal(deploy("1.0.0"), tmp_path) or "")
    rollback = TEST_SIGNER.signed(RollbackCommand(device_id="gw1", model_name="extruder-scrap"))
    assert refusal(rollback, tmp_path) is None


def test_an_artifact_that_is_not_the_signed_one_fails_verification(tmp_path: Path) -> None:
    manifest = manifest_for(SAMPLE_MODEL)
    verify_artifact(SAMPLE_MODEL, manifest)
    forged = tmp_path / "model.onnx"
    forged.write_bytes(SAMPLE_MODEL.read_bytes()[:-1] + b"\0")
    with pytest.raises(DeploymentFailed, match=r"downloaded artifact has sha256 \w{12}, "
                                               r"manifest says \w{12}; discarded"):
        verify_artifact(forged, manifest)


def test_the_ledger_keeps_the_newest_commands_only(tmp_path: Path) -> None:
    ledger = CommandLedger(tmp_path / "ledger.json", keep=2)
    for command_id in ("a", "b", "c"):
        ledger.add(command_id)
    reopened = CommandLedger(tmp_path / "ledger.json", keep=2)
    assert ("a" in reopened, "b" in reopened, "c" in reopened) == (False, True, True)


def test_an_unreadable_ledger_starts_afresh(tmp_path: Path) -> None:
    (tmp_path / "ledger.json").write_text("{not json")
    assert "a" not in CommandLedger(tmp_path / "ledger.json")

"""A version's review before it reaches a line: published -> evaluated -> approved -> retired,
or rejected; a second account approves; deploys and rollouts refuse what is not approved
while central's models.require_approval is on (its default)."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest
from central_helpers import make_onnx_model, run

from central_sync.accounts import hash_password
from central_sync.cli import main
from central_sync.config import CentralConfig, load_central_config
from central_sync.db import CentralDB, Evaluation, ModelStateError, NotApproved
from central_sync.deployments import deploy
from central_sync.registry import publish_model
from central_sync.rollouts import RolloutError, start_rollout
from edge_agent.kernel.contract import DeployCommand, Topics, decode
from edge_agent.kernel.transport.memory import MemoryBroker, MemoryTransport
from tests.helpers import TEST_SIGNER

MODEL = "scrap-model"
PASSWORD = "correct horse battery staple"


def publish(db: CentralDB, folder: Path, version: str = "1.0.0", by: str = "alice") -> None:
    model = make_onnx_model(folder / f"{version}.onnx", weight=float(version.split(".")[1]) + 1)
    publish_model(db, folder / "artifacts", model, MODEL, version, signer=TEST_SIGNER,
                  published_by=by)


def evaluation(version: str = "1.0.0", by: str = "carol") -> Evaluation:
    return Evaluation(
        evaluation_id=uuid.uuid4().hex, model_name=MODEL, version=version, dataset="",
        dataset_id="", baseline_version="",
        report={"kind": "process", "items": 3, "candidate": {"version": version, "rows": 3,
                                                             "mae": 0.5, "bias": 0.1},
                "baseline": None},
        created_at=time.time(), created_by=by)


def test_a_version_goes_from_published_to_approved_by_a_second_account_and_is_audited(
        db: CentralDB, tmp_path: Path) -> None:
    publish(db, tmp_path, by="alice")
    state = db.model_state(MODEL, "1.0.0")
    assert state is not None and (state.state, state.updated_by) == ("published", "alice")

    with pytest.raises(ModelStateError, match=r"is published.*evaluate it first"):
        db.approve_model(MODEL, "1.0.0", "bob")
    stored = evaluation()
    assert db.add_evaluation(stored).state == "evaluated"
    assert db.model_state(MODEL, "1.0.0").evaluation_id == stored.evaluation_id
    assert db.get_evaluation(stored.evaluation_id) == stored
    assert db.list_evaluations(MODEL, "1.0.0") == [stored]

    with pytest.raises(ModelStateError, match=r"alice published scrap-model@1\.0\.0 and "
                                              r"cannot also approve it"):
        db.approve_model(MODEL, "1.0.0", "Alice")
    approved = db.approve_model(MODEL, "1.0.0", "bob")
    assert (approved.state, approved.approved_by) == ("approved", "bob")
    assert approved.approved_at is not None
    with pytest.raises(ModelStateError, match="already approved by bob"):
        db.approve_model(MODEL, "1.0.0", "dave")
    with pytest.raises(ModelStateError, match="retire it instead"):
        db.reject_model(MODEL, "1.0.0", "bob", "too late")

    retired = db.retire_model(MODEL, "1.0.0", "bob", "  superseded   by 1.1.0 ")
    assert (retired.state, retired.reason) == ("retired", "superseded by 1.1.0")
    with pytest.raises(ModelStateError, match="final"):
        db.approve_model(MODEL, "1.0.0", "dave")
    actions = [(e["action"], e["actor"]) for e in db.list_audit()
               if e["subject"] == f"{MODEL}@1.0.0"]
    assert set(actions) >= {("model.publish", "alice"), ("model.evaluate", "carol"),
                            ("model.approve", "bob"), ("model.retire", "bob")}


def test_reject_needs_a_reason_and_is_final(db: CentralDB, tmp_path: Path) -> None:
    publish(db, tmp_path)
    with pytest.raises(ModelStateError, match="--reason"):
        db.reject_model(MODEL, "1.0.0", "bob", "   ")
    with pytest.raises(ModelStateError, match="under 500"):
        db.reject_model(MODEL, "1.0.0", "bob", "x" * 501)
    with pytest.raises(ModelStateError, match="only an approved version can be retired"):
        db.retire_model(MODEL, "1.0.0", "bob", "old")
    rejected = db.reject_model(MODEL, "1.0.0", "bob", "misses fine scratches")
    assert (rejected.state, rejected.reason) == ("rejected", "misses fine scratches")
    # A later evaluation is stored but does not reopen the version.
    assert db.add_evaluation(evaluation()).state == "rejected"
    with pytest.raises(ModelStateError, match="rejected by bob"):
        db.approve_model(MODEL, "1.0.0", "carol")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # messages, not SQL
def test_require_deployable_says_what_to_do_in_each_state(db: CentralDB,
                                                          tmp_path: Path) -> None:
    publish(db, tmp_path)
    with pytest.raises(NotApproved, match=r"scrap-model@1.0.0 is published, not evaluated: "
                                          r"evaluate it with `central-sync model evaluate"):
        db.require_deployable(MODEL, "1.0.0", True)
    db.require_deployable(MODEL, "1.0.0", False)  # the configuration's off switch
    db.add_evaluation(evaluation())
    with pytest.raises(NotApproved) as refused:
        db.require_deployable(MODEL, "1.0.0", True)
    assert str(refused.value) == (
        "scrap-model@1.0.0 is evaluated, not approved: a second engineer approves it with "
        "`central-sync model approve scrap-model@1.0.0` or on its model page")
    db.approve_model(MODEL, "1.0.0", "bob")
    db.require_deployable(MODEL, "1.0.0", True)
    db.retire_model(MODEL, "1.0.0", "bob", "superseded")
    for required in (True, False):  # a person's decision holds with approvals off too
        with pytest.raises(NotApproved, match=r"is retired \(superseded\): deploy an approved"):
            db.require_deployable(MODEL, "1.0.0", required)
    publish(db, tmp_path, "1.1.0")
    db.reject_model(MODEL, "1.1.0", "bob", "drifts")
    with pytest.raises(NotApproved, match=r"was rejected by bob \(drifts\)"):
        db.require_deployable(MODEL, "1.1.0", False)


def test_a_version_from_before_approvals_stays_deployable(db: CentralDB,
                                                          tmp_path: Path) -> None:
    """Schema 13 approved every version published before it; one whose state row is missing
    counts as published."""
    publish(db, tmp_path)
    db._db.execute("DELETE FROM model_states")
    with pytest.raises(NotApproved, match="published, not evaluated"):
        db.require_deployable(MODEL, "1.0.0", True)
    with pytest.raises(ModelStateError, match="evaluate it first"):
        db.approve_model(MODEL, "1.0.0", "bob")
    with pytest.raises(ModelStateError, match="not in the registry"):
        db.approve_model(MODEL, "9.9.9", "bob")


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the check, not SQL
def test_deploy_and_rollout_start_are_refused_until_approved(db: CentralDB,
                                                             tmp_path: Path) -> None:
    publish(db, tmp_path)

    async def send() -> list[DeployCommand]:
        broker = MemoryBroker()
        central, device = MemoryTransport(broker), MemoryTransport(broker)
        await central.start()
        await device.start()
        received: list[DeployCommand] = []

        async def on_command(_topic: str, payload: bytes) -> None:
            message = decode(payload, expect=(DeployCommand,))
            assert isinstance(message, DeployCommand)
            received.append(message)

        await device.subscribe(Topics().commands("gw-1"), on_command)
        try:
            await deploy(db, central, TEST_SIGNER, MODEL, "1.0.0", "gw-1", "bob")
            while not received:
                await asyncio.sleep(0.01)
        finally:
            await central.stop()
            await device.stop()
        return received

    with pytest.raises(NotApproved, match="not evaluated"):
        run(send())
    with pytest.raises(RolloutError, match="not evaluated"):
        start_rollout(db, MODEL, "1.0.0", ["gw-1"], "devices gw-1", "bob", canary=0)
    assert db.list_deployments() == [] and db.list_rollouts() == []
    db.add_evaluation(evaluation())
    db.approve_model(MODEL, "1.0.0", "bob")
    [command] = run(send())
    assert command.manifest.version == "1.0.0"
    assert start_rollout(db, MODEL, "1.0.0", ["gw-1"], "devices gw-1", "bob",
                         canary=0).state == "running"


# --- the command line, with the product's default configuration ------------------------------


@pytest.fixture
def approving_central(tmp_path: Path) -> tuple[list[str], CentralDB]:
    """central-sync.yaml with models.require_approval at its default, on SQLite, with three
    accounts; returns the -c option and the database."""
    from tests.helpers import write_test_keys

    config = tmp_path / "central-sync.yaml"
    config.write_text("database_url: sqlite:///var/central.db\nartifact_dir: var/artifacts\n"
                      "broker: {port: 1}\n")
    write_test_keys(tmp_path / "var" / "central" / "keys")
    assert load_central_config(config).models.require_approval is True
    db = CentralDB(load_central_config(config).database_url)
    digest = hash_password(PASSWORD)
    for name, role in (("alice", "engineer"), ("bob", "engineer"), ("vic", "viewer")):
        db.add_user(name, digest, role, "test")
    return ["-c", str(config)], db


def _as(monkeypatch: pytest.MonkeyPatch, user: str) -> None:
    monkeypatch.setenv("CENTRAL_SYNC_USER", user)
    monkeypatch.setenv("CENTRAL_SYNC_PASSWORD", PASSWORD)


def test_cli_review_refuses_the_publisher_a_viewer_and_an_unevaluated_version(
        approving_central: tuple[list[str], CentralDB], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    c, db = approving_central
    model = make_onnx_model(tmp_path / "m.onnx")
    _as(monkeypatch, "alice")
    assert main(["model", "publish", str(model), "--name", MODEL, "--version", "1.0.0", *c]) == 0
    assert main(["model", "approve", f"{MODEL}@1.0.0", *c]) == 2
    assert "evaluate it first" in capsys.readouterr().err
    assert main(["deploy", f"{MODEL}@1.0.0", "--device", "gw-1", *c]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "deploy refused: scrap-model@1.0.0 is published, not evaluated" in out
    assert main(["rollout", "start", f"{MODEL}@1.0.0", "--devices", "gw-1", "--canary", "0",
                 "--no-follow", *c]) == 2
    assert "is published, not evaluated" in capsys.readouterr().err

    db.add_evaluation(evaluation())
    assert main(["model", "approve", f"{MODEL}@1.0.0", *c]) == 2
    assert "alice published scrap-model@1.0.0 and cannot also approve it" in \
        capsys.readouterr().err
    _as(monkeypatch, "vic")
    assert main(["model", "approve", f"{MODEL}@1.0.0", *c]) == 2
    assert "vic is a viewer; this needs the engineer role" in capsys.readouterr().err
    assert main(["model", "reject", f"{MODEL}@1.0.0", "--reason", "no", *c]) == 2
    assert db.model_state(MODEL, "1.0.0").state == "evaluated"

    _as(monkeypatch, "bob")
    assert main(["model", "approve", f"{MODEL}@1.0.0", *c]) == 0
    assert "is now approved by bob" in capsys.readouterr().out
    assert main(["rollout", "start", f"{MODEL}@1.0.0", "--devices", "gw-1", "--canary", "0",
                 "--no-follow", *c]) == 0
    capsys.readouterr()
    assert main(["model", "list", *c]) == 0
    assert "approved by bob" in capsys.readouterr().out
    assert main(["model", "show", f"{MODEL}@1.0.0", *c]) == 0
    shown = capsys.readouterr().out
    assert "approved by bob" in shown and "mae 0.5" in shown and "carol" in shown
    assert main(["model", "retire", f"{MODEL}@1.0.0", "--reason", "superseded", *c]) == 0
    assert "retired: superseded" in capsys.readouterr().out
    db.close()


def test_config_off_lets_any_published_version_deploy(tmp_path: Path) -> None:
    config = CentralConfig(database_url=f"sqlite:///{tmp_path / 'c.db'}",
                           models={"require_approval": False})
    db = CentralDB(config.database_url)
    publish(db, tmp_path)
    rollout = start_rollout(db, MODEL, "1.0.0", ["gw-1"], "devices gw-1", "bob", canary=0,
                            approval_required=config.models.require_approval)
    assert rollout.state == "running"
    db.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the engine, not SQL
def test_a_rollout_halts_when_its_version_is_retired_before_a_wave_is_sent(
        db: CentralDB, tmp_path: Path) -> None:
    from central_sync.rollouts import RolloutEngine

    publish(db, tmp_path)
    db.add_evaluation(evaluation())
    db.approve_model(MODEL, "1.0.0", "bob")
    rollout = start_rollout(db, MODEL, "1.0.0", ["gw-1"], "devices gw-1", "bob", canary=0)
    db.retire_model(MODEL, "1.0.0", "bob", "a fault found on line 2")

    async def step() -> None:
        transport = MemoryTransport(MemoryBroker())
        await transport.start()
        try:
            await RolloutEngine(db, transport, TEST_SIGNER, Topics()).step(rollout)
        finally:
            await transport.stop()

    run(step())
    halted = db.get_rollout(rollout.rollout_id)
    assert halted.state == "halted" and "is retired (a fault found on line 2)" in halted.detail
    assert db.list_deployments() == []

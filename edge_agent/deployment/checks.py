"""What a deployment must pass before its version may serve: the command's signature and
freshness (issued within the window, no replay, no downgrade without a signed rollback), the
artifact's sha256 and size, and the health check (the same model check central ran at
publish, timed on this gateway)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

from edge_agent.config.agent import DEFAULT_COMMAND_CLOCK_SKEW_S, DEFAULT_COMMAND_MAX_AGE_S
from edge_agent.deployment.ledger import CommandLedger
from edge_agent.inference.model_check import ModelCheckFailed, check_model
from edge_agent.kernel.contract import (
    Command,
    DeployCommand,
    ModelManifest,
    version_key,
)
from edge_agent.kernel.signing import SignatureError, Verifier
from edge_agent.model_store import SHORT_SHA256, InstalledModel, ModelStore, sha256_of_file

HEALTH_CHECK_TIMEOUT_S = 60.0  # when the manifest sets none: loading and a few inferences
HOUR_S = 3600.0


@dataclass(frozen=True)
class CommandWindow:
    """When a command may be carried out: issued at most `max_age_s` ago, and at most
    `clock_skew_s` in the future (clocks differ a little)."""

    max_age_s: float = DEFAULT_COMMAND_MAX_AGE_S
    clock_skew_s: float = DEFAULT_COMMAND_CLOCK_SKEW_S
    max_age_setting: str = "security.command_max_age_s"  # what a refusal names as the bound

    def refusal(self, issued_at: float, now: float) -> str | None:
        """Why a command issued at `issued_at` must not be carried out at `now`, or None."""
        age_s = now - issued_at
        if age_s > self.max_age_s:
            return (f"command issued {age_s / HOUR_S:.1f} h ago, longer than the "
                    f"{self.max_age_s / HOUR_S:.1f} h a command stays valid "
                    f"({self.max_age_setting}); send it again from central")
        if -age_s > self.clock_skew_s:
            return (f"command issued {-age_s:.0f} s in the future by this gateway's clock, "
                    f"more than the {self.clock_skew_s:g} s allowed "
                    "(security.command_clock_skew_s); set the gateway's and central's clocks "
                    "by NTP")
        return None


class DeploymentFailed(Exception):
    """A deployment step failed; the message is reported to central as the reason."""


def command_refusal(command: Command, device_id: str,
                    ledger: CommandLedger, verifier: Verifier | None,
                    store: ModelStore | None = None, window: CommandWindow | None = None,
                    now: float | None = None) -> str | None:
    """Why this command must not be carried out here, or None. The signature is checked
    before anything the command says is believed, its issue time included. A deploy
    command's manifest is verified too and, given the model `store`, refused as a downgrade
    when an older version than one already deployed."""
    if command.device_id != device_id:
        return f"command is for device {command.device_id}, this is {device_id}"
    if command.command_id in ledger:
        return f"command {command.command_id} was already carried out (replayed)"
    if verifier is not None:
        try:
            verifier.verify(command, f"{command.kind} command")
            if isinstance(command, DeployCommand):
                verifier.verify(command.manifest, "manifest")
        except SignatureError as exc:
            return str(exc)
    stale = (window or CommandWindow()).refusal(command.issued_at,
                                                time.time() if now is None else now)
    if stale is not None:
        return stale
    if isinstance(command, DeployCommand) and store is not None:
        manifest = command.manifest
        newest = store.newest_version(manifest.name)
        if newest is not None and version_key(manifest.version) < version_key(newest):
            return (f"{manifest.name} {manifest.version} is older than {newest}, already "
                    "deployed here; a downgrade needs a signed rollback command")
    return None


def verify_artifact(path: Path, manifest: ModelManifest) -> None:
    """DeploymentFailed unless the downloaded file is the one the manifest signs for."""
    actual = sha256_of_file(path)
    if actual != manifest.sha256:
        raise DeploymentFailed(
            f"downloaded artifact has sha256 {actual[:SHORT_SHA256]}, manifest says "
            f"{manifest.sha256[:SHORT_SHA256]}; discarded, deploy again to refetch"
        )


def health_check(path: Path, manifest: ModelManifest) -> str:
    """The model check central ran at publish, here with this gateway's timing: load the
    version as its pipeline will, run the golden (or a neutral) input through the same pre-
    and post-processing, time it against the budget. A one-line summary, or DeploymentFailed
    with the reason."""
    try:
        return check_model(path, manifest, measure_latency=True)
    except ModelCheckFailed as exc:
        raise DeploymentFailed(str(exc)) from None


async def timed_health_check(installed: InstalledModel) -> str:
    """`health_check` in a worker thread, within the manifest's (or the default) time limit."""
    manifest = installed.manifest
    timeout_s = manifest.meta.health_check_timeout_s or HEALTH_CHECK_TIMEOUT_S
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout_s):
            return await loop.run_in_executor(None, health_check, installed.path, manifest)
    except TimeoutError:
        raise DeploymentFailed(f"health check did not finish in {timeout_s:g} s") from None

"""Agent updates and rollbacks commanded by central: a signed release fetched in chunks like a
model, installed beside the running one, put on trial and switched to; then the agent restarts
into it. At boot the agent settles what the previous process left: a trial of its own version is
confirmed once the agent is online and healthy (else it exits 76 and the launcher goes back),
and a failed trial the launcher left is reported as rolled back with its reason.

Every step goes to central as a DeploymentEvent with subject "agent" (model_name edge-agent),
live and through the buffer.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from pathlib import Path

from edge_agent import __version__
from edge_agent.buffer import Buffer
from edge_agent.deployment.checks import CommandWindow, DeploymentFailed, command_refusal
from edge_agent.deployment.ledger import CommandLedger
from edge_agent.deployment.transfer import ArtifactFetcher
from edge_agent.kernel.contract import (
    AGENT_PACKAGE_NAME,
    RECORD_DEPLOYMENT_EVENT,
    AgentRollbackCommand,
    AgentUpdateCommand,
    DeploymentEvent,
    Topics,
    encode,
    version_key,
)
from edge_agent.kernel.contract.fleet import DEFAULT_AGENT_HEALTHY_WITHIN_S
from edge_agent.kernel.signing import SignatureError, Verifier
from edge_agent.kernel.transport import NotConnected, Transport
from edge_agent.updates.installer import InstallFailed, install_release
from edge_agent.updates.layout import (
    EXIT_RESTART,
    EXIT_UNHEALTHY,
    ReleaseLayout,
    Trial,
    running_environment,
)

log = logging.getLogger(__name__)

HEALTH_POLL_S = 0.2
PERCENT = 100
AgentCommand = AgentUpdateCommand | AgentRollbackCommand
ExitAgent = Callable[[int, str], None]  # (exit code, reason): stop cleanly, exit with it


class AgentUpdater:
    """Carries out agent update and rollback commands for one device, reporting every step."""

    def __init__(self, device_id: str, topics: Topics, transport: Transport, buffer: Buffer,
                 fetcher: ArtifactFetcher, verifier: Verifier | None, layout: ReleaseLayout,
                 exit_agent: ExitAgent, healthy: Callable[[], bool],
                 window: CommandWindow | None = None, version: str = __version__) -> None:
        self.device_id = device_id
        self._topics = topics
        self._transport = transport
        self._buffer = buffer
        self._fetcher = fetcher
        self._verifier = verifier
        self.layout = layout
        self._exit_agent = exit_agent
        self._healthy = healthy
        self._window = window or CommandWindow()
        self.version = version
        self._ledger = CommandLedger(layout.ledger_path)
        self._task: asyncio.Task[None] | None = None
        self.rejected_messages = 0

    # --- at boot ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Report what the launcher left, and watch a trial of this version."""
        self.layout.prepare()
        failed = self.layout.read_failed_trial()
        if failed is not None:
            trial = failed.trial
            step = "rolled_back" if trial.action == "update" else "failed"
            await self._emit(trial.command_id, trial.version, step,
                             f"{failed.reason}; {self.version} serving again")
            self.layout.clear_failed_trial()
            self._prune()
        trial = self.layout.read_trial()
        if trial is None:
            return
        if trial.version != self.version:
            await self._stale_trial(trial)
            return
        self._task = asyncio.create_task(self._confirm_when_healthy(trial),
                                         name="agent-trial")

    async def _stale_trial(self, trial: Trial) -> None:
        """A trial of a release that is not the one running: the switch did not happen."""
        current = self.layout.target(self.layout.current)
        if current is not None and current.name == trial.version:
            self.layout.go_back()  # the agent was restarted by something else than the launcher
        self.layout.clear_trial()
        await self._emit(trial.command_id, trial.version, "failed",
                         f"the agent came back as {self.version}, not {trial.version}: start it "
                         "with `edge-agent launch` (the systemd unit does) so a release can "
                         "be switched to")

    async def _confirm_when_healthy(self, trial: Trial) -> None:
        try:
            async with asyncio.timeout(trial.healthy_within_s):
                while not self._healthy():
                    await asyncio.sleep(HEALTH_POLL_S)
        except TimeoutError:
            log.error("agent %s not online and healthy within %g s; exiting %d so the "
                      "launcher starts %s again", self.version, trial.healthy_within_s,
                      EXIT_UNHEALTHY, trial.previous)
            self._exit_agent(EXIT_UNHEALTHY, f"release {self.version} not healthy in time")
            return
        if trial.action == "update":
            await self._emit(trial.command_id, trial.version, "confirmed",
                             f"{self.version} online and healthy")
        else:
            await self._emit(trial.command_id, trial.version, "rolled_back",
                             f"from {trial.previous}; {self.version} online and healthy")
        self.layout.clear_trial()
        self._prune()

    def _prune(self) -> None:
        removed = self.layout.prune(running_environment())
        if removed:
            log.info("agent releases removed (neither current nor previous) versions=%s",
                     ",".join(removed))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    # --- commands --------------------------------------------------------------------------

    async def handle(self, command: AgentCommand) -> None:
        """Carry out a decoded agent command, refused unless genuine, fresh and possible."""
        if command.command_id in self._ledger:
            self.rejected_messages += 1
            log.warning("agent command ignored, already carried out device=%s command=%s",
                        self.device_id, command.command_id)
            return
        refusal = self.refusal(command)
        if refusal is not None:
            self.rejected_messages += 1
            log.warning("agent command refused device=%s command=%s reason=%s",
                        self.device_id, command.command_id, refusal)
            await self._emit(command.command_id, _version_of(command, self.version), "failed",
                             f"refused: {refusal}")
            return
        self.layout.prepare()
        self._ledger.add(command.command_id)
        work = self._update(command) if isinstance(command, AgentUpdateCommand) \
            else self._rollback(command)
        self._task = asyncio.create_task(work, name=f"agent-{command.kind}")

    def refusal(self, command: AgentCommand) -> str | None:
        """Why this command must not be carried out here, or None. Signatures first (the
        command's, then its package's), then freshness, then what it asks."""
        reason = command_refusal(command, self.device_id, self._ledger, self._verifier,
                                 window=self._window)
        if reason is not None:
            return reason
        if isinstance(command, AgentUpdateCommand) and self._verifier is not None:
            try:
                self._verifier.verify(command.package, "agent package")
            except SignatureError as exc:
                return str(exc)
        if self._task is not None and not self._task.done():
            return "an agent update or rollback is under way here; send it again afterwards"
        trial = self.layout.read_trial()
        if trial is not None:
            return f"release {trial.version} is on trial here; send it again once it is settled"
        if isinstance(command, AgentUpdateCommand):
            wanted = command.package.version
            if version_key(wanted) < version_key(self.version):
                return (f"{AGENT_PACKAGE_NAME} {wanted} is older than {self.version}, running "
                        "here; going back needs a signed agent rollback (`central-sync agent "
                        f"rollback --device {self.device_id}`)")
        elif self._rollback_target() is None:
            return "no previous release here to go back to"
        return None

    async def _update(self, command: AgentUpdateCommand) -> None:
        package = command.package
        emit = self._reporter(command.command_id, package.version)
        if package.version == self.version:
            await emit("confirmed", f"{package.version} is already running")
            return
        await emit("received", f"{AGENT_PACKAGE_NAME} {package.version}")
        try:
            download = self.layout.downloads / f"{package.sha256}.part"
            chunks = await self._fetcher.fetch(package, self._progress(emit), download)
            await emit("verifying", "sha256, signature and requirements")
            loop = asyncio.get_running_loop()
            try:
                release = await loop.run_in_executor(None, install_release, chunks.path,
                                                     package, self.layout, self._verifier)
            finally:
                chunks.discard()
            await emit("installed", str(release))
            self._switch(Trial(version=package.version, previous=self.version,
                               command_id=command.command_id,
                               healthy_within_s=command.healthy_within_s), release)
        except (InstallFailed, DeploymentFailed, OSError) as exc:
            log.warning("agent update failed device=%s version=%s reason=%s", self.device_id,
                        package.version, exc)
            await emit("failed", f"{exc}; {self.version} keeps running")
            return
        await emit("activated", f"switched to {package.version}; the agent restarts into it")
        self._exit_agent(EXIT_RESTART, f"agent update to {package.version}")

    async def _rollback(self, command: AgentRollbackCommand) -> None:
        target = self._rollback_target()
        assert target is not None  # refused otherwise
        release, version = target
        try:
            self._switch(Trial(version=version, previous=self.version,
                               command_id=command.command_id,
                               healthy_within_s=DEFAULT_AGENT_HEALTHY_WITHIN_S,
                               action="rollback"),
                         release)
        except OSError as exc:
            await self._emit(command.command_id, version, "failed", f"rollback: {exc}")
            return
        await self._emit(command.command_id, version, "activated",
                         f"switched back from {self.version} to {version}; the agent restarts")
        self._exit_agent(EXIT_RESTART, f"agent rollback to {version}")

    def _rollback_target(self) -> tuple[Path | None, str] | None:
        """The release to go back to (None: the base install) and its version."""
        previous = self.layout.target(self.layout.previous)
        if previous is not None and self.layout.is_installed(previous):
            return previous, previous.name
        base = self.layout.base_version()
        if self.layout.target(self.layout.current) is not None and base is not None:
            return None, base
        return None

    def _switch(self, trial: Trial, release: Path | None) -> None:
        """Trial first, then the symlinks: a restart in between is seen as a stale trial."""
        self.layout.write_trial(trial)
        running = running_environment()
        self.layout.activate(release, running if self.layout.is_release(running) else None)

    # --- reporting -------------------------------------------------------------------------

    def _reporter(self, command_id: str, version: str) -> Callable[..., object]:
        async def emit(step: str, detail: str = "", progress: float | None = None) -> None:
            await self._emit(command_id, version, step, detail, progress)
        return emit

    @staticmethod
    def _progress(emit: Callable[..., object]) -> Callable[[str, float], object]:
        async def report(detail: str, done: float) -> None:
            await emit("downloading", detail, done)  # type: ignore[misc]
        return report

    async def _emit(self, command_id: str, version: str, step: str, detail: str = "",
                    progress: float | None = None) -> None:
        if progress is not None:
            progress = max(0.0, min(1.0, math.floor(progress * PERCENT) / PERCENT))
        event = DeploymentEvent(
            device_id=self.device_id, command_id=command_id, subject="agent",
            model_name=AGENT_PACKAGE_NAME, version=version, step=step,  # type: ignore[arg-type]
            detail=detail, progress=progress)
        log.info("agent update step device=%s version=%s step=%s detail=%s", self.device_id,
                 version, step, detail)
        if step != "downloading":
            await self._buffer.append(RECORD_DEPLOYMENT_EVENT, event.model_dump(mode="json"))
        try:
            await self._transport.publish(self._topics.deployment(self.device_id), encode(event))
        except NotConnected:
            log.info("agent update step kept for the uplink only device=%s", self.device_id)


def _version_of(command: AgentCommand, running: str) -> str:
    return command.package.version if isinstance(command, AgentUpdateCommand) else running

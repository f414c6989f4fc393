"""Deployer: fetches a pushed model version in chunks, verifies, installs, checks and activates it.

The active version keeps serving throughout; a version that fails any step never becomes active.
Every step is reported live on the deployment topic and durably through the buffer. After
probation the standing watch keeps judging the active version and reports to central.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time

from edge_agent.buffer import Buffer
from edge_agent.deployment.checks import (
    CommandWindow,
    DeploymentFailed,
    command_refusal,
    timed_health_check,
    verify_artifact,
)
from edge_agent.deployment.ledger import LEDGER_FILE, CommandLedger
from edge_agent.deployment.standing_watch import StandingWatch
from edge_agent.deployment.transfer import ArtifactFetcher, ChunkFile, ReportProgress
from edge_agent.kernel.contract import (
    RECORD_DEPLOYMENT_EVENT,
    DeployCommand,
    DeploymentEvent,
    ModelManifest,
    Rejection,
    RollbackCommand,
    Topics,
    decode,
    encode,
)
from edge_agent.kernel.signing import Verifier
from edge_agent.kernel.transport import NotConnected, Transport
from edge_agent.lifecycle import ModelWatch
from edge_agent.model_store import InstalledModel, ModelStore, ModelStoreError

log = logging.getLogger(__name__)

PERCENT = 100  # progress is reported in whole percent


class Deployer:
    """Carries out deploy and rollback commands for one device, reporting every step."""

    def __init__(self, device_id: str, topics: Topics, transport: Transport, store: ModelStore,
                 buffer: Buffer, verifier: Verifier | None,
                 watch: ModelWatch | None = None, window: CommandWindow | None = None) -> None:
        self.device_id = device_id
        self._topics = topics
        self._transport = transport
        self._store = store
        self._buffer = buffer
        self._verifier = verifier
        self._window = window or CommandWindow()
        self.watch = watch or ModelWatch()
        self._ledger = CommandLedger(store.root / LEDGER_FILE)
        self._active: dict[str, asyncio.Task[None]] = {}
        self.fetcher = ArtifactFetcher(device_id, topics, transport, store,
                                       count_rejected=self._count_rejected)
        self.rejected_messages = 0  # commands and chunks refused
        self.standing = StandingWatch(store, self.watch, buffer)

    def _count_rejected(self) -> None:
        self.rejected_messages += 1

    async def start(self, subscribe: bool = True) -> None:
        """Follow the active models; with `subscribe`, take commands from the device's
        commands topic (the agent's command router hands them to `handle` instead)."""
        for installed in self._store.active_models():
            self.standing.follow(installed.manifest.name)
        if subscribe:
            await self._transport.subscribe(self._topics.commands(self.device_id),
                                            self._on_command)

    async def stop(self) -> None:
        for task in self._active.values():
            task.cancel()
        await asyncio.gather(*self._active.values(), return_exceptions=True)
        await self.standing.stop()

    async def _on_command(self, topic: str, payload: bytes) -> None:
        message = decode(payload, expect=(DeployCommand, RollbackCommand),
                         topic_device_id=self.device_id)
        if isinstance(message, Rejection):
            self.rejected_messages += 1
            log.warning("command rejected device=%s reason=%s", self.device_id, message.reason)
            return
        await self.handle(message)  # type: ignore[arg-type]

    async def handle(self, message: DeployCommand | RollbackCommand) -> None:
        """Carry out a decoded deploy or rollback command (refused unless signed and fresh)."""
        if message.command_id in self._ledger:
            # MQTT may deliver a command twice, and an attacker may replay an old one.
            self.rejected_messages += 1
            log.warning("command ignored, already carried out device=%s command=%s",
                        self.device_id, message.command_id)
            return
        if isinstance(message, RollbackCommand):
            await self.rollback(message)  # refused there before it changes anything
            return
        assert isinstance(message, DeployCommand)
        # Verified before it may touch anything: a forged or stale command must not cancel
        # the deployment or probation under way.
        refusal = self.refusal(message)
        if refusal is not None:
            await self._refuse(message, refusal)
            return
        name = message.manifest.name
        if name in self._active and not self._active[name].done():
            # A newer command for the same model supersedes the running one.
            self._active[name].cancel()
            await asyncio.gather(self._active[name], return_exceptions=True)
        self.standing.pause(name)  # the deployment and its probation judge the model now
        task = asyncio.create_task(self.deploy_and_watch(message), name=f"deploy-{name}")
        self._active[name] = task

    async def deploy_and_watch(self, command: DeployCommand) -> None:
        """Deploy, then keep the new version on probation and roll it back if it misbehaves;
        then (or when it failed) the standing watch follows whichever version serves."""
        name = command.manifest.name
        previous = self._store.active(name)
        confirmed = False
        try:
            if await self.deploy(command):
                confirmed = await self.probation(command, previous)
        finally:
            reference = self.watch.recent_outputs(previous.manifest.sha256) \
                if confirmed and previous is not None else None
            self.standing.follow(name, reference)

    def refusal(self, command: DeployCommand | RollbackCommand) -> str | None:
        """Why this command must not be carried out, or None."""
        return command_refusal(command, self.device_id, self._ledger, self._verifier,
                               self._store, self._window)

    async def _refuse(self, command: DeployCommand, reason: str) -> None:
        manifest = command.manifest
        self.rejected_messages += 1
        log.warning("deploy refused device=%s model=%s version=%s command=%s reason=%s",
                    self.device_id, manifest.name, manifest.version, command.command_id,
                    reason)
        await self._report(command, "failed", f"refused: {reason}")

    async def deploy(self, command: DeployCommand) -> bool:
        """Run one deployment up to activation; True when the version is active."""
        manifest = command.manifest
        refusal = self.refusal(command)
        if refusal is not None:
            await self._refuse(command, refusal)
            return False
        self._ledger.add(command.command_id)
        await self._report(command, "received", f"{manifest.name} {manifest.version}")
        try:
            if not self._store.is_installed(manifest):
                artifact = await self.fetcher.fetch(manifest, self._progress_reporter(command))
                await self._report(command, "verifying", "sha256 and health check")
                await self._install(manifest, artifact)
                await self._report(command, "installed", str(self._store.root / manifest.name))
            installed = self._store.get(manifest.name, manifest.version)
            assert installed is not None
            summary = await timed_health_check(installed)
            await self._report(command, "verifying", f"health check passed: {summary}")
            active = self._store.active(manifest.name)
            if manifest.meta.shadow is not None and active is not None \
                    and active.manifest.sha256 != manifest.sha256:
                await self._shadow(command, installed)
            self._store.activate(manifest.name, manifest.version)
        except (DeploymentFailed, ModelStoreError, OSError) as exc:
            log.warning("deployment failed device=%s model=%s version=%s reason=%s",
                        self.device_id, manifest.name, manifest.version, exc)
            await self._report(command, "failed", str(exc))
            return False
        await self._report(command, "activated", f"{manifest.name} {manifest.version} serving")
        return True

    async def _shadow(self, command: DeployCommand, installed: InstalledModel) -> None:
        """Run the candidate beside the active version; refuse it if they disagree."""
        policy = installed.manifest.meta.shadow_policy  # validated with the manifest
        run = self.watch.start_shadow(installed, policy)
        await self._report(command, "shadow", f"running beside the active version for "
                           f"{policy.predictions} inputs or {policy.duration_s:g} s")
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(policy.duration_s):
                    await run.enough.wait()
        finally:
            self.watch.end_shadow(run)
        await self._report(command, "shadow", run.summary(), progress=run.agreement)
        shortfall = run.shortfall(time.monotonic() - run.started)
        if shortfall is not None:
            raise DeploymentFailed(shortfall)
        if run.agreement < policy.min_agreement:
            raise DeploymentFailed(
                f"shadow run: {run.summary()}, below the {policy.min_agreement:.0%} required")

    async def probation(self, command: DeployCommand, previous: InstalledModel | None) -> bool:
        """Watch the newly active version; True when it is confirmed, False if rolled back."""
        manifest = command.manifest
        current = self._store.get(manifest.name, manifest.version)
        assert current is not None
        policy = manifest.meta.probation_policy  # validated with the manifest
        same = previous is not None and previous.manifest.sha256 == manifest.sha256
        if policy.duration_s == 0 or same:
            await self._report(command, "confirmed", "no probation")
            return True
        watch = self.watch.start_probation(
            current, previous.manifest.sha256 if previous else None, policy)
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(policy.duration_s):
                    await watch.tripped.wait()
        finally:
            self.watch.end_probation(watch)
        if watch.verdict is None:
            await self._report(command, "confirmed", f"probation passed: {watch.summary()}")
            return True
        reason = f"probation failed: {watch.verdict}"
        try:
            restored = self._restore(manifest.name, previous)
        except ModelStoreError as exc:
            await self._report(command, "failed", f"{reason}; rollback impossible: {exc}")
            return False
        await self._report(command, "rolled_back", f"{reason}; {restored}")
        return False

    def _restore(self, name: str, previous: InstalledModel | None) -> str:
        if previous is None:
            self._store.deactivate(name)
            return "no previous version: the model is no longer served"
        self._store.activate(name, previous.manifest.version)
        return f"{previous.manifest.version} serving again"

    async def _install(self, manifest: ModelManifest, artifact: ChunkFile) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, verify_artifact, artifact.path, manifest)
        except DeploymentFailed:
            artifact.discard()
            raise
        await loop.run_in_executor(None, self._store.install, manifest, artifact.path)
        artifact.discard()

    def _progress_reporter(self, command: DeployCommand) -> ReportProgress:
        async def report(detail: str, done: float) -> None:
            await self._report(command, "downloading", detail, progress=done)
        return report

    async def rollback(self, command: RollbackCommand) -> bool:
        """Return to the previous (or the named) version; True when done."""
        current = self._store.active(command.model_name)
        version = current.manifest.version if current else "0.0.0"
        refusal = self.refusal(command)
        if refusal is None:
            self._ledger.add(command.command_id)
            try:
                restored = self._store.rollback(command.model_name, command.to_version)
            except ModelStoreError as exc:
                refusal = str(exc)
            else:
                self.standing.follow(command.model_name)
        if refusal is not None:
            self.rejected_messages += 1
            await self._emit(DeploymentEvent(
                device_id=self.device_id, command_id=command.command_id,
                model_name=command.model_name, version=version, step="failed",
                detail=f"rollback refused: {refusal}"))
            return False
        await self._emit(DeploymentEvent(
            device_id=self.device_id, command_id=command.command_id,
            model_name=command.model_name, version=restored.manifest.version, step="rolled_back",
            detail=f"from {version}"))
        return True

    async def _report(self, command: DeployCommand, step: str, detail: str = "",
                      progress: float | None = None) -> None:
        manifest = command.manifest
        if progress is not None:
            progress = max(0.0, min(1.0, math.floor(progress * PERCENT) / PERCENT))
        await self._emit(DeploymentEvent(
            device_id=self.device_id, command_id=command.command_id, model_name=manifest.name,
            version=manifest.version, step=step, detail=detail, progress=progress))  # type: ignore[arg-type]

    async def _emit(self, event: DeploymentEvent) -> None:
        log.info("deployment step device=%s model=%s version=%s step=%s detail=%s",
                 self.device_id, event.model_name, event.version, event.step, event.detail)
        if event.step != "downloading":
            await self._buffer.append(RECORD_DEPLOYMENT_EVENT, event.model_dump(mode="json"))
        try:
            await self._transport.publish(self._topics.deployment(self.device_id), encode(event))
        except NotConnected:
            log.info("deployment event kept for the uplink only device=%s", self.device_id)

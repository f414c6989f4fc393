"""Deployer: fetches a pushed model version in chunks, verifies, installs, checks and activates it.

The active version keeps serving throughout; a version that fails any step never becomes active.
Every step is reported live on the deployment topic and durably through the buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from edge_agent.buffer import Buffer
from edge_agent.inference.model_check import ModelCheckFailed, check_model
from edge_agent.kernel.atomic_files import write_atomically
from edge_agent.kernel.contract import (
    MAX_CHUNKS_PER_REQUEST,
    RECORD_DEPLOYMENT_EVENT,
    ArtifactChunk,
    ChunkRequest,
    DeployCommand,
    DeploymentEvent,
    ModelManifest,
    Rejection,
    RollbackCommand,
    Topics,
    decode,
    encode,
    version_key,
)
from edge_agent.kernel.signing import SignatureError, Verifier
from edge_agent.kernel.transport import NotConnected, Transport
from edge_agent.lifecycle import (
    ModelWatch,
)
from edge_agent.model_store import InstalledModel, ModelStore, ModelStoreError, sha256_of_file

log = logging.getLogger(__name__)

REQUEST_WINDOW = 32  # chunks asked for at once; bounds what is in flight per device
STALL_TIMEOUT_S = 60.0
HEALTH_CHECK_TIMEOUT_S = 60.0
COMMAND_LEDGER_FILE = ".commands.json"
MAX_CHUNK_REFUSALS = 3


class DeploymentFailed(Exception):
    """A deployment step failed; the message is reported to central as the reason."""


class ForeignChunk(ValueError):
    """A chunk on the artifact's topic that cannot be one of its chunks: ignored."""


@dataclass
class _Transfer:
    """One artifact being fetched; a chunk refused again and again ends it."""

    chunks: ChunkFile
    progress: asyncio.Event = field(default_factory=asyncio.Event)
    refusals: Counter[int] = field(default_factory=Counter)
    failure: str | None = None

    def refused(self, index: int, reason: str) -> None:
        self.refusals[index] += 1
        if self.refusals[index] >= MAX_CHUNK_REFUSALS:
            self.failure = (f"chunk {index} arrived bad {self.refusals[index]} times ({reason}); "
                            "central's artifact does not match the manifest")
            self.progress.set()


class ChunkFile:
    """A partially downloaded artifact that survives restarts: data file plus a received list."""

    def __init__(self, path: Path, manifest: ModelManifest) -> None:
        self.path = path
        self.manifest = manifest
        self._index_path = path.with_suffix(".chunks")
        if not path.exists():
            with path.open("wb") as f:
                f.truncate(manifest.size_bytes)
            self._index_path.write_text("")
        self.received: set[int] = self._load_index()

    def _load_index(self) -> set[int]:
        if not self._index_path.exists():
            return set()
        found = set()
        for line in self._index_path.read_text().split():
            if line.isdigit() and int(line) < self.manifest.chunk_count:
                found.add(int(line))
        return found

    def missing(self) -> list[int]:
        return [i for i in range(self.manifest.chunk_count) if i not in self.received]

    def write(self, chunk: ArtifactChunk) -> bool:
        """Store a chunk; False if it is a duplicate. ForeignChunk if it cannot belong to this
        artifact, ValueError if its bytes are bad."""
        if chunk.count != self.manifest.chunk_count:
            raise ForeignChunk(f"chunk {chunk.index} says the artifact has {chunk.count} "
                               f"chunks, the manifest {self.manifest.chunk_count}")
        if chunk.index in self.received:
            return False
        data = chunk.data()
        expected = min(self.manifest.chunk_size_bytes,
                       self.manifest.size_bytes - chunk.index * self.manifest.chunk_size_bytes)
        if len(data) != expected:
            raise ValueError(f"chunk {chunk.index} has {len(data)} bytes, expected {expected}")
        with self.path.open("r+b") as f:
            f.seek(chunk.index * self.manifest.chunk_size_bytes)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        with self._index_path.open("a") as f:
            f.write(f"{chunk.index}\n")
            f.flush()
            os.fsync(f.fileno())
        self.received.add(chunk.index)
        return True

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
        self._index_path.unlink(missing_ok=True)


def health_check(path: Path, manifest: ModelManifest) -> str:
    """The model check central ran at publish, here with this gateway's timing: load the
    version as its pipeline will, run the golden (or a neutral) input through the same pre-
    and post-processing, time it against the budget. A one-line summary, or DeploymentFailed
    with the reason."""
    try:
        return check_model(path, manifest, measure_latency=True)
    except ModelCheckFailed as exc:
        raise DeploymentFailed(str(exc)) from None


class CommandLedger:
    """Ids of the commands this device has carried out, kept across restarts: a replayed
    command is recognised and ignored."""

    def __init__(self, path: Path, keep: int = 1000) -> None:
        self.path = path
        self.keep = keep
        self._ids: list[str] = []
        if path.exists():
            try:
                self._ids = [str(i) for i in json.loads(path.read_text())][-keep:]
            except (ValueError, TypeError):
                log.warning("command ledger %s unreadable; starting a new one", path)

    def __contains__(self, command_id: str) -> bool:
        return command_id in self._ids

    def add(self, command_id: str) -> None:
        self._ids = [*self._ids, command_id][-self.keep:]
        write_atomically(self.path, json.dumps(self._ids).encode())


class Deployer:
    def __init__(self, device_id: str, topics: Topics, transport: Transport, store: ModelStore,
                 buffer: Buffer, verifier: Verifier | None,
                 watch: ModelWatch | None = None) -> None:
        self.device_id = device_id
        self._topics = topics
        self._transport = transport
        self._store = store
        self._buffer = buffer
        self._verifier = verifier
        self.watch = watch or ModelWatch()
        self._ledger = CommandLedger(store.root / COMMAND_LEDGER_FILE)
        self._active: dict[str, asyncio.Task[None]] = {}
        self._transfers: dict[str, _Transfer] = {}
        self.rejected_messages = 0

    async def start(self) -> None:
        await self._transport.subscribe(self._topics.commands(self.device_id), self._on_command)

    async def stop(self) -> None:
        for task in self._active.values():
            task.cancel()
        await asyncio.gather(*self._active.values(), return_exceptions=True)

    async def _on_command(self, topic: str, payload: bytes) -> None:
        message = decode(payload, expect=(DeployCommand, RollbackCommand),
                         topic_device_id=self.device_id)
        if isinstance(message, Rejection):
            self.rejected_messages += 1
            log.warning("command rejected device=%s reason=%s", self.device_id, message.reason)
            return
        if message.command_id in self._ledger:
            # MQTT may deliver a command twice, and an attacker may replay an old one.
            self.rejected_messages += 1
            log.warning("command ignored, already carried out device=%s command=%s",
                        self.device_id, message.command_id)
            return
        if isinstance(message, RollbackCommand):
            await self.rollback(message)
            return
        assert isinstance(message, DeployCommand)
        name = message.manifest.name
        if name in self._active and not self._active[name].done():
            # A newer command for the same model supersedes the running one.
            self._active[name].cancel()
            await asyncio.gather(self._active[name], return_exceptions=True)
        task = asyncio.create_task(self.deploy_and_watch(message), name=f"deploy-{name}")
        self._active[name] = task

    async def deploy_and_watch(self, command: DeployCommand) -> None:
        """Deploy, then keep the new version on probation and roll it back if it misbehaves."""
        previous = self._store.active(command.manifest.name)
        if await self.deploy(command):
            await self.probation(command, previous)

    def refusal(self, command: DeployCommand | RollbackCommand) -> str | None:
        """Why this command must not be carried out, or None."""
        if command.device_id != self.device_id:
            return f"command is for device {command.device_id}, this is {self.device_id}"
        if command.command_id in self._ledger:
            return f"command {command.command_id} was already carried out (replayed)"
        if self._verifier is not None:
            try:
                self._verifier.verify(command, f"{command.kind} command")
                if isinstance(command, DeployCommand):
                    self._verifier.verify(command.manifest, "manifest")
            except SignatureError as exc:
                return str(exc)
        if isinstance(command, DeployCommand):
            manifest = command.manifest
            newest = self._store.newest_version(manifest.name)
            if newest is not None and version_key(manifest.version) < version_key(newest):
                return (f"{manifest.name} {manifest.version} is older than {newest}, already "
                        "deployed here; a downgrade needs a signed rollback command")
        return None

    async def deploy(self, command: DeployCommand) -> bool:
        """Run one deployment up to activation; True when the version is active."""
        manifest = command.manifest
        refusal = self.refusal(command)
        if refusal is not None:
            self.rejected_messages += 1
            log.warning("deploy refused device=%s model=%s version=%s reason=%s",
                        self.device_id, manifest.name, manifest.version, refusal)
            await self._report(command, "failed", f"refused: {refusal}")
            return False
        self._ledger.add(command.command_id)
        await self._report(command, "received", f"{manifest.name} {manifest.version}")
        try:
            if not self._store.is_installed(manifest):
                artifact = await self._fetch(command)
                await self._report(command, "verifying", "sha256 and health check")
                await self._install(manifest, artifact)
                await self._report(command, "installed", str(self._store.root / manifest.name))
            installed = self._store.get(manifest.name, manifest.version)
            assert installed is not None
            summary = await self._health_check(installed)
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

    async def _health_check(self, installed: InstalledModel) -> str:
        manifest = installed.manifest
        timeout_s = manifest.meta.health_check_timeout_s or HEALTH_CHECK_TIMEOUT_S
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout_s):
                return await loop.run_in_executor(None, health_check, installed.path, manifest)
        except TimeoutError:
            raise DeploymentFailed(f"health check did not finish in {timeout_s:g} s") from None

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
        if run.compared and run.agreement < policy.min_agreement:
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
        actual = await loop.run_in_executor(None, sha256_of_file, artifact.path)
        if actual != manifest.sha256:
            artifact.discard()
            raise DeploymentFailed(
                f"downloaded artifact has sha256 {actual[:12]}, manifest says "
                f"{manifest.sha256[:12]}; discarded, deploy again to refetch"
            )
        await loop.run_in_executor(None, self._store.install, manifest, artifact.path)
        artifact.discard()

    async def _fetch(self, command: DeployCommand) -> ChunkFile:
        manifest = command.manifest
        chunks = ChunkFile(self._store.download_path(manifest.sha256), manifest)
        transfer = _Transfer(chunks)
        progress = transfer.progress
        self._transfers[manifest.sha256] = transfer
        topic = self._topics.artifact(manifest.sha256)
        await self._transport.subscribe(topic, self._on_chunk)
        last_progress = time.monotonic()
        reported = -1.0
        try:
            while missing := chunks.missing():
                if transfer.failure is not None:
                    chunks.discard()
                    raise DeploymentFailed(transfer.failure)
                if not self._transport.connected:
                    # A broker outage is not a stall: wait, then ask for what is missing.
                    await self._transport.wait_connected(1.0)
                    last_progress = time.monotonic()
                    continue
                if time.monotonic() - last_progress > STALL_TIMEOUT_S:
                    raise DeploymentFailed(
                        f"transfer stalled: no chunk for {STALL_TIMEOUT_S:.0f} s, "
                        f"{len(missing)} of {manifest.chunk_count} missing; is central running?"
                    )
                done = 1 - len(missing) / manifest.chunk_count
                if done - reported >= 0.1:
                    reported = done
                    await self._report(command, "downloading",
                                       f"{len(chunks.received)}/{manifest.chunk_count} chunks",
                                       progress=done)
                window = missing[:REQUEST_WINDOW]
                await self._request(manifest.sha256, window)
                while any(i not in chunks.received for i in window) \
                        and transfer.failure is None:
                    progress.clear()
                    try:
                        async with asyncio.timeout(5.0):
                            await progress.wait()
                    except TimeoutError:
                        log.info("chunks overdue, asking again device=%s sha256=%s missing=%d",
                                 self.device_id, manifest.sha256[:12], len(chunks.missing()))
                        break
                    last_progress = time.monotonic()
        finally:
            await self._transport.unsubscribe(topic)
            self._transfers.pop(manifest.sha256, None)
        return chunks

    async def _request(self, sha256: str, indices: list[int]) -> None:
        request = ChunkRequest(device_id=self.device_id, sha256=sha256,
                               indices=indices[:MAX_CHUNKS_PER_REQUEST])
        try:
            await self._transport.publish(self._topics.chunk_request(self.device_id),
                                          encode(request))
        except NotConnected:
            log.info("chunk request waits for the broker device=%s", self.device_id)

    async def _on_chunk(self, topic: str, payload: bytes) -> None:
        message = decode(payload, expect=(ArtifactChunk,))
        if isinstance(message, Rejection):
            self.rejected_messages += 1
            log.warning("chunk rejected device=%s reason=%s", self.device_id, message.reason)
            return
        assert isinstance(message, ArtifactChunk)
        transfer = self._transfers.get(message.sha256)
        if transfer is None:
            return
        try:
            written = await asyncio.get_running_loop().run_in_executor(
                None, transfer.chunks.write, message)
        except ForeignChunk as exc:
            self.rejected_messages += 1
            log.warning("chunk ignored device=%s reason=%s", self.device_id, exc)
            return
        except ValueError as exc:
            self.rejected_messages += 1
            log.warning("chunk rejected device=%s reason=%s", self.device_id, exc)
            transfer.refused(message.index, str(exc))
            return
        if written:
            transfer.progress.set()

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
            progress = max(0.0, min(1.0, math.floor(progress * 100) / 100))
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

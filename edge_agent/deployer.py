"""Deployer: fetches a pushed model version in chunks, verifies, installs, checks and activates it.

The active version keeps serving throughout; a version that fails any step never becomes active.
Every step is reported live on the deployment topic and durably through the buffer.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from pathlib import Path

import numpy as np

from edge_agent.buffer import Buffer
from edge_agent.contract import (
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
)
from edge_agent.inference.runtime import ModelLoadError, OnnxRunner
from edge_agent.model_store import ModelStore, ModelStoreError, sha256_of_file
from edge_agent.transport import NotConnected, Transport

log = logging.getLogger(__name__)

REQUEST_WINDOW = 32  # chunks asked for at once; bounds what is in flight per device
STALL_TIMEOUT_S = 60.0


class DeploymentFailed(Exception):
    """A deployment step failed; the message is reported to central as the reason."""


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
        """Store a chunk; False if it is a duplicate or does not belong to this artifact."""
        if chunk.index in self.received or chunk.count != self.manifest.chunk_count:
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


def health_check(path: Path, manifest: ModelManifest) -> None:
    """Load the model and, when the manifest has a golden input, check its output."""
    try:
        runner = OnnxRunner(path, manifest)
    except ModelLoadError as exc:
        raise DeploymentFailed(str(exc)) from exc
    golden = manifest.metadata.get("golden")
    if not golden:
        return
    spec = manifest.inputs[0]
    feed = {spec.name: np.asarray(golden["input"], dtype=spec.dtype)}
    outputs = runner.run(feed)
    actual = np.asarray(outputs[manifest.outputs[0].name], dtype=np.float64)
    expected = np.asarray(golden["output"], dtype=np.float64)
    tolerance = float(golden.get("tolerance", 1e-4))
    if not np.all(np.isfinite(actual)):
        raise DeploymentFailed(f"golden input gives non-finite outputs: {actual.tolist()}")
    if actual.shape != expected.shape or not np.allclose(actual, expected, atol=tolerance):
        raise DeploymentFailed(
            f"golden input gives {actual.reshape(-1)[:4].tolist()}, expected "
            f"{expected.reshape(-1)[:4].tolist()} within {tolerance}"
        )


class Deployer:
    def __init__(self, device_id: str, topics: Topics, transport: Transport, store: ModelStore,
                 buffer: Buffer) -> None:
        self.device_id = device_id
        self._topics = topics
        self._transport = transport
        self._store = store
        self._buffer = buffer
        self._active: dict[str, asyncio.Task[None]] = {}
        self._transfers: dict[str, tuple[ChunkFile, asyncio.Event]] = {}
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
        if isinstance(message, RollbackCommand):
            await self._rollback(message)
            return
        assert isinstance(message, DeployCommand)
        sha = message.manifest.sha256
        if sha in self._active and not self._active[sha].done():
            log.info("deployment already running device=%s sha256=%s", self.device_id, sha[:12])
            return
        task = asyncio.create_task(self.deploy(message), name=f"deploy-{sha[:12]}")
        self._active[sha] = task

    async def deploy(self, command: DeployCommand) -> bool:
        """Run one deployment to its end; True when the version is active."""
        manifest = command.manifest
        await self._report(command, "received", f"{manifest.name} {manifest.version}")
        try:
            if not self._store.is_installed(manifest):
                artifact = await self._fetch(command)
                await self._report(command, "verifying", "sha256 and health check")
                await self._install(manifest, artifact)
                await self._report(command, "installed", str(self._store.root / manifest.name))
            loop = asyncio.get_running_loop()
            installed = self._store.get(manifest.name, manifest.version)
            assert installed is not None
            await loop.run_in_executor(None, health_check, installed.path, manifest)
            self._store.activate(manifest.name, manifest.version)
        except (DeploymentFailed, ModelStoreError, OSError) as exc:
            log.warning("deployment failed device=%s model=%s version=%s reason=%s",
                        self.device_id, manifest.name, manifest.version, exc)
            await self._report(command, "failed", str(exc))
            return False
        await self._report(command, "activated", f"{manifest.name} {manifest.version} serving")
        return True

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
        progress = asyncio.Event()
        self._transfers[manifest.sha256] = (chunks, progress)
        topic = self._topics.artifact(manifest.sha256)
        await self._transport.subscribe(topic, self._on_chunk)
        last_progress = time.monotonic()
        reported = -1.0
        try:
            while missing := chunks.missing():
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
                while any(i not in chunks.received for i in window):
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
        chunks, progress = transfer
        try:
            written = await asyncio.get_running_loop().run_in_executor(None, chunks.write, message)
        except ValueError as exc:
            self.rejected_messages += 1
            log.warning("chunk rejected device=%s reason=%s", self.device_id, exc)
            return
        if written:
            progress.set()

    async def _rollback(self, command: RollbackCommand) -> None:
        current = self._store.active(command.model_name)
        try:
            restored = self._store.rollback(command.model_name)
        except ModelStoreError as exc:
            version = current.manifest.version if current else "0.0.0"
            await self._emit(DeploymentEvent(
                device_id=self.device_id, command_id=command.command_id,
                model_name=command.model_name, version=version, step="failed", detail=str(exc)))
            return
        await self._emit(DeploymentEvent(
            device_id=self.device_id, command_id=command.command_id,
            model_name=command.model_name, version=restored.manifest.version, step="rolled_back",
            detail=f"from {current.manifest.version if current else 'none'}"))

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

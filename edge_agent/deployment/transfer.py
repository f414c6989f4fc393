"""Chunked, resumable artifact fetch: the missing chunks are asked for a window at a time,
written as they come (a partial download survives a restart), and asked for again when they
are overdue; a transfer that stalls or keeps receiving bad chunks fails with the reason."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from edge_agent.deployment.checks import DeploymentFailed
from edge_agent.kernel.contract import (
    MAX_CHUNKS_PER_REQUEST,
    ArtifactChunk,
    ChunkRequest,
    Rejection,
    Topics,
    decode,
    encode,
)
from edge_agent.kernel.transport import NotConnected, Transport
from edge_agent.model_store import SHORT_SHA256, ModelStore

log = logging.getLogger(__name__)

REQUEST_WINDOW = 32  # chunks asked for at once; bounds what is in flight per device
STALL_TIMEOUT_S = 60.0  # no chunk for this long while connected: central is not serving it
MAX_CHUNK_REFUSALS = 3  # the same chunk arriving bad this often: central's copy is bad
CHUNK_WAIT_S = 5.0  # a window's chunks not all here by then are asked for again
BROKER_WAIT_S = 1.0  # how often a transfer waiting for the broker looks again
PROGRESS_STEP = 0.1  # "downloading" is reported every tenth of the artifact

ReportProgress = Callable[[str, float], Awaitable[None]]  # (detail, share done)


class Artifact(Protocol):
    """What a transfer needs to know of what it fetches: a model manifest or an agent
    package."""

    @property
    def name(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def sha256(self) -> str: ...
    @property
    def size_bytes(self) -> int: ...
    @property
    def chunk_size_bytes(self) -> int: ...
    @property
    def chunk_count(self) -> int: ...


class ForeignChunk(ValueError):
    """A chunk on the artifact's topic that cannot be one of its chunks: ignored."""


class ChunkFile:
    """A partially downloaded artifact that survives restarts: data file plus a received list."""

    def __init__(self, path: Path, manifest: Artifact) -> None:
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


@dataclass
class Transfer:
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


class ArtifactFetcher:
    """Fetches artifacts for one device over MQTT; `count_rejected` hears of every refused
    chunk message."""

    def __init__(self, device_id: str, topics: Topics, transport: Transport, store: ModelStore,
                 count_rejected: Callable[[], None]) -> None:
        self.device_id = device_id
        self._topics = topics
        self._transport = transport
        self._store = store
        self._count_rejected = count_rejected
        self.transfers: dict[str, Transfer] = {}  # by sha256

    async def fetch(self, manifest: Artifact, report: ReportProgress,
                    path: Path | None = None) -> ChunkFile:
        """The whole artifact on disk at `path` (by default in the model store's downloads),
        resumed where a previous try stopped, or DeploymentFailed saying why not."""
        chunks = ChunkFile(path or self._store.download_path(manifest.sha256), manifest)
        transfer = Transfer(chunks)
        self.transfers[manifest.sha256] = transfer
        topic = self._topics.artifact(manifest.sha256)
        await self._transport.subscribe(topic, self.on_chunk)
        try:
            await self._fetch_missing(transfer, report)
        finally:
            await self._transport.unsubscribe(topic)
            self.transfers.pop(manifest.sha256, None)
        return chunks

    async def _fetch_missing(self, transfer: Transfer, report: ReportProgress) -> None:
        chunks, manifest = transfer.chunks, transfer.chunks.manifest
        last_progress = time.monotonic()
        reported = -1.0
        while missing := chunks.missing():
            if transfer.failure is not None:
                chunks.discard()
                raise DeploymentFailed(transfer.failure)
            if not self._transport.connected:
                # A broker outage is not a stall: wait, then ask for what is missing.
                await self._transport.wait_connected(BROKER_WAIT_S)
                last_progress = time.monotonic()
                continue
            if time.monotonic() - last_progress > STALL_TIMEOUT_S:
                raise DeploymentFailed(
                    f"transfer stalled: no chunk for {STALL_TIMEOUT_S:.0f} s, "
                    f"{len(missing)} of {manifest.chunk_count} missing; is central running?"
                )
            done = 1 - len(missing) / manifest.chunk_count
            if done - reported >= PROGRESS_STEP:
                reported = done
                await report(f"{len(chunks.received)}/{manifest.chunk_count} chunks", done)
            window = missing[:REQUEST_WINDOW]
            await self._request(manifest.sha256, window)
            arrived_at = await self._wait_for_window(transfer, window)
            if arrived_at is not None:
                last_progress = arrived_at

    async def _wait_for_window(self, transfer: Transfer, window: list[int]) -> float | None:
        """Wait for the window's chunks, or until some are overdue (they are asked for again);
        when a chunk last arrived (monotonic), None if none did."""
        chunks, arrived_at = transfer.chunks, None
        while any(i not in chunks.received for i in window) and transfer.failure is None:
            transfer.progress.clear()
            try:
                async with asyncio.timeout(CHUNK_WAIT_S):
                    await transfer.progress.wait()
            except TimeoutError:
                log.info("chunks overdue, asking again device=%s sha256=%s missing=%d",
                         self.device_id, chunks.manifest.sha256[:SHORT_SHA256],
                         len(chunks.missing()))
                break
            arrived_at = time.monotonic()
        return arrived_at

    async def _request(self, sha256: str, indices: list[int]) -> None:
        request = ChunkRequest(device_id=self.device_id, sha256=sha256,
                               indices=indices[:MAX_CHUNKS_PER_REQUEST])
        try:
            await self._transport.publish(self._topics.chunk_request(self.device_id),
                                          encode(request))
        except NotConnected:
            log.info("chunk request waits for the broker device=%s", self.device_id)

    async def on_chunk(self, topic: str, payload: bytes) -> None:
        message = decode(payload, expect=(ArtifactChunk,))
        if isinstance(message, Rejection):
            self._count_rejected()
            log.warning("chunk rejected device=%s reason=%s", self.device_id, message.reason)
            return
        assert isinstance(message, ArtifactChunk)
        transfer = self.transfers.get(message.sha256)
        if transfer is None:
            return
        try:
            written = await asyncio.get_running_loop().run_in_executor(
                None, transfer.chunks.write, message)
        except ForeignChunk as exc:
            self._count_rejected()
            log.warning("chunk ignored device=%s reason=%s", self.device_id, exc)
            return
        except ValueError as exc:
            self._count_rejected()
            log.warning("chunk rejected device=%s reason=%s", self.device_id, exc)
            transfer.refused(message.index, str(exc))
            return
        if written:
            transfer.progress.set()

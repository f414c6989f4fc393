"""Serving artifact chunks: what a device may have, how fast, and one publication per wave.

Chunks go out only for a deployment open on the asking device (checked by the service) and
at most `ingest.chunks_per_s_per_device` per device; what is refused is counted and logged,
and the device asks again after its own wait.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Protocol

from central_sync.config import CentralConfig
from central_sync.ratelimit import TokenBuckets
from central_sync.registry import artifact_path
from edge_agent.kernel.contract import (
    AgentPackage,
    ArtifactChunk,
    ChunkRequest,
    ModelManifest,
    Topics,
    encode,
)
from edge_agent.kernel.transport import NotConnected, Transport

log = logging.getLogger(__name__)

# Devices of a wave ask for the same chunks within moments of each other; waiting this long
# before publishing lets one publication answer them all, at a cost too small to notice.
CHUNK_GATHER_S = 0.2
# Characters of a SHA-256 in logs and messages: enough to tell artifacts apart.
SHORT_SHA256_CHARS = 12
# Out-of-range chunk indices quoted in a rejection; the count says how many there were.
INDICES_QUOTED = 5

Artifact = ModelManifest | AgentPackage  # a model version, or an agent release's wheel
Reject = Callable[[str, str, str], None]  # (topic, handler leaf, reason)
Spawn = Callable[[Coroutine[Any, Any, None]], None]


class ChunkCounters(Protocol):
    """The service's counters this server moves (IngestStats)."""

    chunks_sent: int
    chunks_shared: int
    chunk_failures: int
    chunks_refused: int


class ArtifactChunkServer:
    """Answers chunk requests already checked against the registry and the deployments."""

    def __init__(self, config: CentralConfig, transport: Transport, topics: Topics,
                 stats: ChunkCounters, reject: Reject, spawn: Spawn) -> None:
        self.config = config
        self.transport = transport
        self.topics = topics
        self.stats = stats
        self._reject = reject
        self._spawn = spawn
        self._queued: set[tuple[str, int]] = set()
        limits = config.ingest
        self._buckets = TokenBuckets(limits.chunks_per_s_per_device, limits.chunk_burst_per_device)

    def refuse(self, topic: str, reason: str) -> None:
        """A request not served at all (not deployed here, over the rate): counted, logged."""
        self.stats.chunks_refused += 1
        self._reject(topic, "chunk-request", reason)

    def serve(self, topic: str, request: ChunkRequest, manifest: Artifact) -> None:
        short = request.sha256[:SHORT_SHA256_CHARS]
        wanted = sorted(set(request.indices))
        beyond = [i for i in wanted if i >= manifest.chunk_count]
        if beyond:
            self._reject(topic, "chunk-request", f"chunks {beyond[:INDICES_QUOTED]} are beyond "
                         f"the {manifest.chunk_count} chunks of {short}")
        wanted = [i for i in wanted if i < manifest.chunk_count]
        granted = self._buckets.take(request.device_id, len(wanted))
        if granted < len(wanted):
            self.refuse(topic, f"{len(wanted) - granted} of {len(wanted)} chunks of {short} "
                        f"refused: device {request.device_id} asks faster than "
                        f"{self.config.ingest.chunks_per_s_per_device:g} chunks/s "
                        "(ingest.chunks_per_s_per_device); it asks again later")
            wanted = wanted[:granted]
        # A chunk already queued is published after this request arrived, so after the device
        # subscribed: it serves this device too (one publication serves a whole wave).
        indices = [i for i in wanted if (request.sha256, i) not in self._queued]
        self.stats.chunks_shared += len(wanted) - len(indices)
        if not indices:
            return
        self._queued.update((request.sha256, i) for i in indices)
        self._spawn(self._send_chunks(manifest, indices, request.device_id))

    async def _send_chunks(self, manifest: Artifact, indices: list[int],
                           device_id: str) -> None:
        path = artifact_path(self.config.artifact_dir, manifest.sha256)
        topic = self.topics.artifact(manifest.sha256)
        short = manifest.sha256[:SHORT_SHA256_CHARS]
        try:
            await asyncio.sleep(CHUNK_GATHER_S)  # gather the requests of a wave's devices
            for index in indices:
                data = await asyncio.to_thread(
                    read_chunk, path, index, manifest.chunk_size_bytes, manifest.size_bytes)
                chunk = ArtifactChunk.build(manifest.sha256, index, manifest.chunk_count, data)
                await self.transport.publish(topic, encode(chunk), qos=1)
                self._queued.discard((manifest.sha256, index))
                self.stats.chunks_sent += 1
            log.info("chunks sent device=%s sha256=%s chunks=%d", device_id, short,
                     len(indices))
        except (OSError, ValueError, NotConnected) as exc:
            self.stats.chunk_failures += 1
            log.error("chunks not sent device=%s sha256=%s error=%s", device_id, short, exc)
        finally:
            self._queued.difference_update((manifest.sha256, i) for i in indices)


def read_chunk(path: Path, index: int, chunk_size_bytes: int, size_bytes: int) -> bytes:
    """Read one chunk of an artifact from disk, checking the file has the expected size."""
    with open(path, "rb") as handle:
        actual = handle.seek(0, os.SEEK_END)
        if actual != size_bytes:
            raise ValueError(f"artifact {path} has {actual} bytes, its manifest says {size_bytes}")
        handle.seek(index * chunk_size_bytes)
        return handle.read(chunk_size_bytes)

"""The deployer over an in-memory broker: fetch in chunks, verify, check, activate or refuse."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

import edge_agent.deployment.transfer as transfer
from edge_agent.buffer import Buffer
from edge_agent.deployment.deployer import Deployer
from edge_agent.deployment.transfer import ChunkFile
from edge_agent.kernel.contract import (
    ArtifactChunk,
    ChunkRequest,
    DeployCommand,
    DeploymentEvent,
    ModelManifest,
    RollbackCommand,
    Topics,
    decode,
    encode,
)
from edge_agent.kernel.transport.memory import MemoryBroker, MemoryTransport
from edge_agent.model_store import ModelStore
from tests.helpers import SAMPLE_MODEL, TEST_SIGNER, TEST_VERIFIER, manifest_for, wait_until_async

TOPICS = Topics()
signed = TEST_SIGNER.signed


def deploy_command(manifest: ModelManifest, device_id: str = "gw1") -> DeployCommand:
    return signed(DeployCommand(device_id=device_id, manifest=manifest))


@dataclass
class Harness:
    central: MemoryTransport
    server: ChunkServer
    deployer: Deployer
    store: ModelStore
    buffer: Buffer
    events: list[DeploymentEvent]


class ChunkServer:
    """Plays central's side of a transfer: answers chunk requests from a file."""

    def __init__(
        self, transport: MemoryTransport, artifact: bytes, corrupt_once: int | None = None
    ) -> None:
        self.transport = transport
        self.artifact = artifact
        self.corrupt_once = corrupt_once
        self.requested: list[int] = []

    async def on_request(self, topic: str, payload: bytes) -> None:
        request = decode(payload, expect=(ChunkRequest,))
        assert isinstance(request, ChunkRequest)
        self.requested += request.indices
        for index in request.indices:
            manifest_chunk = 16 * 1024
            data = self.artifact[index * manifest_chunk:(index + 1) * manifest_chunk]
            count = -(-len(self.artifact) // manifest_chunk)
            chunk = ArtifactChunk.build(request.sha256, index, count, data)
            if index == self.corrupt_once:
                self.corrupt_once = None
                chunk = chunk.model_copy(update={"chunk_sha256": "0" * 64})
            await self.transport.publish(TOPICS.artifact(request.sha256), encode(chunk))


async def setup(tmp_path: Path, artifact: bytes, corrupt_once: int | None = None) -> Harness:
    broker = MemoryBroker()
    central = MemoryTransport(broker)
    await central.start()
    server = ChunkServer(central, artifact, corrupt_once)
    await central.subscribe(TOPICS.all_devices("chunk-request"), server.on_request)
    events: list[DeploymentEvent] = []

    async def on_event(topic: str, payload: bytes) -> None:
        events.append(decode(payload))

    await central.subscribe(TOPICS.all_devices("deployment"), on_event)
    device = MemoryTransport(broker)
    await device.start()
    store = ModelStore(tmp_path / "models")
    buffer = Buffer(tmp_path / "buffer.db", 10**7)
    deployer = Deployer("gw1", TOPICS, device, store, buffer, TEST_VERIFIER)
    await deployer.start()
    return Harness(central, server, deployer, store, buffer, events)


def test_pushed_version_is_fetched_verified_and_activated(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The refused chunk is asked for again once its window is overdue: after 1 s here, not 5.
    monkeypatch.setattr(transfer, "CHUNK_WAIT_S", 1.0)

    async def scenario() -> None:
        h = await setup(
            tmp_path, SAMPLE_MODEL.read_bytes(), corrupt_once=2)
        manifest = manifest_for(SAMPLE_MODEL)
        command = signed(DeployCommand(device_id="gw1", manifest=manifest))
        assert await h.deployer.deploy(command)
        assert h.store.active("extruder-scrap").manifest.sha256 == manifest.sha256
        steps = [e.step for e in h.events]
        assert steps[0] == "received" and steps[-1] == "activated"
        assert {"downloading", "verifying", "installed"} <= set(steps)
        assert h.server.requested.count(2) == 2, "the corrupt chunk is asked for again"
        durable = await h.buffer.next_batch(100)
        steps = [json.loads(r.payload_json)["step"] for r in durable
                 if r.type == "deployment_event"]
        assert steps[-1] == "activated"
        await h.buffer.close()

    asyncio.run(scenario())


def test_artifact_not_matching_manifest_never_becomes_active(tmp_path: Path) -> None:
    async def scenario() -> None:
        good = manifest_for(SAMPLE_MODEL, version="1.0.0")
        tampered = bytearray(SAMPLE_MODEL.read_bytes())
        tampered[100] ^= 0xFF
        h = await setup(tmp_path, bytes(tampered))
        h.store.install(good, SAMPLE_MODEL)
        h.store.activate("extruder-scrap", "1.0.0")
        next_version = signed(good.model_copy(update={"version": "1.1.0"}))
        ok = await h.deployer.deploy(deploy_command(next_version))
        assert not ok
        assert h.events[-1].step == "failed" and "sha256" in h.events[-1].detail
        assert h.store.active("extruder-scrap").manifest.version == "1.0.0"
        assert h.store.versions("extruder-scrap") == ["1.0.0"]
        await h.buffer.close()

    asyncio.run(scenario())


def test_model_failing_its_golden_check_is_not_activated(tmp_path: Path) -> None:
    async def scenario() -> None:
        h = await setup(
            tmp_path, SAMPLE_MODEL.read_bytes())
        metadata = json.loads((SAMPLE_MODEL.with_suffix(".json")).read_text())
        metadata["golden"]["output"] = [[999.0]]
        manifest = manifest_for(SAMPLE_MODEL, metadata=metadata)
        assert not await h.deployer.deploy(deploy_command(manifest))
        assert h.events[-1].step == "failed" and "golden input" in h.events[-1].detail
        assert h.store.active("extruder-scrap") is None
        await h.buffer.close()

    asyncio.run(scenario())


def test_interrupted_transfer_resumes_with_only_missing_chunks(tmp_path: Path) -> None:
    async def scenario() -> None:
        artifact = SAMPLE_MODEL.read_bytes()
        manifest: ModelManifest = manifest_for(SAMPLE_MODEL)
        store = ModelStore(tmp_path / "models")
        partial = ChunkFile(store.download_path(manifest.sha256), manifest)
        for index in range(3):
            data = artifact[index * 16384:(index + 1) * 16384]
            partial.write(ArtifactChunk.build(manifest.sha256, index, manifest.chunk_count, data))
        h = await setup(tmp_path, artifact)
        assert await h.deployer.deploy(deploy_command(manifest))
        assert sorted(h.server.requested) == list(range(3, manifest.chunk_count))
        await h.buffer.close()

    asyncio.run(scenario())


def test_commands_for_another_device_or_malformed_are_ignored(tmp_path: Path) -> None:
    async def scenario() -> None:
        h = await setup(
            tmp_path, SAMPLE_MODEL.read_bytes())
        other = deploy_command(manifest_for(SAMPLE_MODEL), device_id="gw2")
        await h.central.publish(TOPICS.commands("gw1"), encode(other))
        await h.central.publish(TOPICS.commands("gw1"), b"{garbage")
        await wait_until_async(lambda: h.deployer.rejected_messages == 2, 10,
                               what="both commands rejected")
        assert h.events == []
        await h.buffer.close()

    asyncio.run(scenario())


def test_rollback_command_restores_previous_version(tmp_path: Path) -> None:
    async def scenario() -> None:
        h = await setup(
            tmp_path, SAMPLE_MODEL.read_bytes())
        for version in ("1.0.0", "1.1.0"):
            h.store.install(manifest_for(SAMPLE_MODEL, version=version), SAMPLE_MODEL)
            h.store.activate("extruder-scrap", version)
        command = signed(RollbackCommand(device_id="gw1", model_name="extruder-scrap"))
        await h.central.publish(TOPICS.commands("gw1"), encode(command))
        assert h.events[-1].step == "rolled_back" and h.events[-1].version == "1.0.0"
        assert h.store.active("extruder-scrap").manifest.version == "1.0.0"
        await h.buffer.close()

    asyncio.run(scenario())


def test_health_check_that_does_not_finish_in_time_fails_the_deployment(tmp_path: Path) -> None:
    async def scenario() -> None:
        h = await setup(tmp_path, SAMPLE_MODEL.read_bytes())
        metadata = json.loads(SAMPLE_MODEL.with_suffix(".json").read_text())
        metadata["health_check_timeout_s"] = 0.000001
        manifest = manifest_for(SAMPLE_MODEL, metadata=metadata)
        assert not await h.deployer.deploy(deploy_command(manifest))
        assert h.events[-1].step == "failed"
        assert "health check did not finish in 1e-06 s" in h.events[-1].detail
        assert h.store.active("extruder-scrap") is None
        await h.buffer.close()

    asyncio.run(scenario())

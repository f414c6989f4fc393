"""The artifact chunk server: answers chunk requests for registered artifacts only, for a
deployment open on the asking device, at a bounded rate per device."""

from __future__ import annotations

import hashlib
from pathlib import Path

from central_helpers import Inbox, make_onnx_model, run

from central_sync.config import CentralConfig
from central_sync.db import CentralDB
from central_sync.registry import publish_model
from central_sync.service import CentralService
from edge_agent.kernel.contract import (
    ArtifactChunk,
    ChunkRequest,
    DeployCommand,
    DeploymentEvent,
    ModelManifest,
    Topics,
    decode,
    encode,
)
from edge_agent.kernel.transport.memory import MemoryBroker, MemoryTransport
from tests.helpers import TEST_SIGNER, wait_until_async

TOPICS = Topics()


def _publish(config: CentralConfig, tmp_path: Path,
             deploy_to: tuple[str, ...] = ("gw-1",)) -> ModelManifest:
    """Publish a model and issue its deployment to `deploy_to` (open until a last step)."""
    model = make_onnx_model(tmp_path / "big.onnx", n_features=1500)
    db = CentralDB(config.database_url)
    try:
        manifest = publish_model(db, config.artifact_dir, model, "scrap-model", "1.0.0",
                                 chunk_size_bytes=config.chunk_size_bytes, signer=TEST_SIGNER)
        for device_id in deploy_to:
            db.create_deployment(DeployCommand(device_id=device_id, manifest=manifest,
                                               command_id=f"deploy-{device_id}"))
        return manifest
    finally:
        db.close()


def _finish_deployment(config: CentralConfig, manifest: ModelManifest, device_id: str,
                       step: str) -> None:
    db = CentralDB(config.database_url)
    try:
        db.record_deployment_event(DeploymentEvent(
            device_id=device_id, command_id=f"deploy-{device_id}", model_name=manifest.name,
            version=manifest.version, step=step))  # type: ignore[arg-type]
    finally:
        db.close()


async def _setup(config: CentralConfig, sha256: str) -> tuple[CentralService, MemoryTransport,
                                                              Inbox]:
    broker = MemoryBroker()
    service = CentralService(config, MemoryTransport(broker))
    await service.start()
    device = MemoryTransport(broker)
    await device.start()
    inbox = Inbox()
    await device.subscribe(TOPICS.artifact(sha256), inbox)
    return service, device, inbox


def _chunks(inbox: Inbox) -> list[ArtifactChunk]:
    chunks = [decode(payload, expect=(ArtifactChunk,)) for _, payload in inbox.messages]
    assert all(isinstance(c, ArtifactChunk) for c in chunks)
    return chunks  # type: ignore[return-value]


def test_chunk_request_is_answered_with_chunks_that_reassemble_to_the_artifact(
    central_config: CentralConfig, tmp_path: Path
) -> None:
    manifest = _publish(central_config, tmp_path)
    assert manifest.chunk_count >= 4

    async def scenario() -> None:
        service, device, inbox = await _setup(central_config, manifest.sha256)
        request = ChunkRequest(device_id="gw-1", sha256=manifest.sha256,
                               indices=list(range(manifest.chunk_count)))
        await device.publish(TOPICS.chunk_request("gw-1"), encode(request))
        await wait_until_async(lambda: len(inbox.messages) == manifest.chunk_count,
                               what="all chunks")
        chunks = sorted(_chunks(inbox), key=lambda c: c.index)
        assert [c.index for c in chunks] == list(range(manifest.chunk_count))
        assert {c.count for c in chunks} == {manifest.chunk_count}
        data = b"".join(c.data() for c in chunks)
        assert hashlib.sha256(data).hexdigest() == manifest.sha256
        assert len(data) == manifest.size_bytes
        await service.stop()

    run(scenario())


def test_only_the_missing_chunks_are_sent(central_config: CentralConfig, tmp_path: Path) -> None:
    manifest = _publish(central_config, tmp_path)

    async def scenario() -> None:
        service, device, inbox = await _setup(central_config, manifest.sha256)
        request = ChunkRequest(device_id="gw-1", sha256=manifest.sha256, indices=[2, 0, 2])
        await device.publish(TOPICS.chunk_request("gw-1"), encode(request))
        await wait_until_async(lambda: len(inbox.messages) == 2, what="two chunks")
        assert sorted(c.index for c in _chunks(inbox)) == [0, 2]
        await service.stop()
        assert service.stats.chunks_sent == 2

    run(scenario())


def test_chunk_request_for_unknown_sha256_is_refused(central_config: CentralConfig) -> None:
    unknown = "f" * 64

    async def scenario() -> None:
        service, device, inbox = await _setup(central_config, unknown)
        request = ChunkRequest(device_id="gw-1", sha256=unknown, indices=[0])
        await device.publish(TOPICS.chunk_request("gw-1"), encode(request))
        await service.stop()
        assert inbox.messages == []
        assert service.stats.rejected == {"chunk-request": 1}
        assert "not in the registry" in service.stats.last_rejection

    run(scenario())


def test_chunk_indices_beyond_the_artifact_are_refused_the_rest_served(
    central_config: CentralConfig, tmp_path: Path
) -> None:
    manifest = _publish(central_config, tmp_path)

    async def scenario() -> None:
        service, device, inbox = await _setup(central_config, manifest.sha256)
        request = ChunkRequest(device_id="gw-1", sha256=manifest.sha256, indices=[0, 999])
        await device.publish(TOPICS.chunk_request("gw-1"), encode(request))
        await wait_until_async(lambda: inbox.messages, what="chunk 0")
        assert [c.index for c in _chunks(inbox)] == [0]
        assert "beyond" in service.stats.last_rejection
        await service.stop()

    run(scenario())


def test_truncated_artifact_on_disk_is_never_served(
    central_config: CentralConfig, tmp_path: Path
) -> None:
    manifest = _publish(central_config, tmp_path)
    stored = central_config.artifact_dir / f"{manifest.sha256}.onnx"
    stored.write_bytes(stored.read_bytes()[:100])

    async def scenario() -> None:
        service, device, inbox = await _setup(central_config, manifest.sha256)
        request = ChunkRequest(device_id="gw-1", sha256=manifest.sha256, indices=[0])
        await device.publish(TOPICS.chunk_request("gw-1"), encode(request))
        await wait_until_async(lambda: service.stats.chunk_failures == 1, what="the refusal")
        await service.stop()
        assert inbox.messages == []
        assert service.stats.chunks_sent == 0

    run(scenario())


def test_chunks_of_an_artifact_not_deployed_to_the_device_are_refused(
    central_config: CentralConfig, tmp_path: Path
) -> None:
    manifest = _publish(central_config, tmp_path, deploy_to=("gw-1",))

    async def scenario() -> None:
        service, device, inbox = await _setup(central_config, manifest.sha256)
        request = ChunkRequest(device_id="gw-2", sha256=manifest.sha256, indices=[0, 1])
        await device.publish(TOPICS.chunk_request("gw-2"), encode(request))
        await service.stop()
        assert inbox.messages == []
        assert service.stats.chunks_refused == 1
        assert "no deployment of it is open on device gw-2" in service.stats.last_rejection

    run(scenario())


def test_chunks_are_refused_once_the_deployment_has_finished_or_failed(
    central_config: CentralConfig, tmp_path: Path
) -> None:
    manifest = _publish(central_config, tmp_path, deploy_to=("gw-1", "gw-2"))
    _finish_deployment(central_config, manifest, "gw-1", "activated")
    _finish_deployment(central_config, manifest, "gw-2", "failed")

    async def scenario() -> None:
        service, device, inbox = await _setup(central_config, manifest.sha256)
        for device_id in ("gw-1", "gw-2"):
            request = ChunkRequest(device_id=device_id, sha256=manifest.sha256, indices=[0])
            await device.publish(TOPICS.chunk_request(device_id), encode(request))
        await service.stop()
        assert inbox.messages == []
        assert service.stats.chunks_refused == 2

    run(scenario())


def test_a_device_flooding_chunk_requests_is_served_at_its_rate_only(
    central_config: CentralConfig, tmp_path: Path
) -> None:
    config = central_config.model_copy(update={"ingest": central_config.ingest.model_copy(
        update={"chunks_per_s_per_device": 1.0, "chunk_burst_per_device": 3})})
    manifest = _publish(config, tmp_path)

    async def scenario() -> None:
        service, device, inbox = await _setup(config, manifest.sha256)
        for _ in range(50):
            request = ChunkRequest(device_id="gw-1", sha256=manifest.sha256,
                                   indices=list(range(manifest.chunk_count)))
            await device.publish(TOPICS.chunk_request("gw-1"), encode(request))
        await wait_until_async(lambda: len(inbox.messages) >= 3, what="the burst's chunks")
        await service.stop()
        # The burst (3) and at most what one second of the rate refills, however many asked.
        assert 3 <= service.stats.chunks_sent <= 5
        assert service.stats.chunks_refused >= 45
        assert "chunks_per_s_per_device" in service.stats.last_rejection

    run(scenario())

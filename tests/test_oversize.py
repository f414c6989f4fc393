"""Oversized messages and over-long content: dropped unread by the transports, refused by the
contract's limits before the agent or central stores anything."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import zlib
from pathlib import Path
from typing import Any

import pytest

from central_sync.config import CentralConfig
from central_sync.registry import publish_model
from central_sync.service import CentralService
from edge_agent.buffer import Buffer
from edge_agent.config import UplinkConfig
from edge_agent.deployment.deployer import Deployer
from edge_agent.kernel.contract import (
    MAX_CHUNKS_PER_REQUEST,
    MAX_PAYLOAD_BYTES,
    MAX_RECORDS_PER_BATCH,
    ArtifactChunk,
    BatchAck,
    ChunkRequest,
    CompressedUplinkBatch,
    DeployCommand,
    Rejection,
    Topics,
    UplinkBatch,
    UplinkRecord,
    decode,
    encode,
)
from edge_agent.kernel.transport import BrokerConfig
from edge_agent.kernel.transport.memory import MemoryBroker, MemoryTransport
from edge_agent.kernel.transport.mqtt import MqttTransport
from edge_agent.model_store import ModelStore
from edge_agent.uplink import Uplink
from tests.conftest import Mosquitto
from tests.helpers import (
    SAMPLE_METADATA,
    SAMPLE_MODEL,
    TEST_SIGNER,
    TEST_VERIFIER,
    db_rows,
    manifest_for,
    wait_until_async,
    write_test_keys,
)

TOPICS = Topics()
LIMIT = 64 * 1024
BIG = b"x" * (200 * 1024)


def records(count: int, first_seq: int = 1) -> list[UplinkRecord]:
    return [UplinkRecord(seq=seq, type="sample", created_at=1.7e9, payload={})
            for seq in range(first_seq, first_seq + count)]


# --- the transports --------------------------------------------------------------------------


def test_mosquitto_message_over_the_limit_never_reaches_the_handler(
    mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        receiver = MqttTransport(BrokerConfig(port=mosquitto.port, max_message_bytes=LIMIT),
                                 "receiver")
        sender = MqttTransport(BrokerConfig(port=mosquitto.port), "sender")
        received: list[bytes] = []

        async def on_message(topic: str, payload: bytes) -> None:
            received.append(payload)

        await receiver.subscribe("plant/line-1", on_message)
        for client in (receiver, sender):
            await client.start()
            assert await client.wait_connected(10)
        await sender.publish("plant/line-1", BIG)  # QoS 1: the broker has it, in order
        await sender.publish("plant/line-1", b"small")
        await wait_until_async(lambda: received, what="the small message")
        assert received == [b"small"]  # BIG came first, in order: it was dropped, not late
        await sender.stop()
        await receiver.stop()

    with caplog.at_level(logging.WARNING, logger="edge_agent.kernel.transport.mqtt"):
        asyncio.run(scenario())
    assert any("dropped unread" in r.getMessage() and str(len(BIG)) in r.getMessage()
               for r in caplog.records)


def test_memory_transport_drops_a_message_over_its_limit() -> None:
    async def scenario() -> None:
        broker = MemoryBroker()
        receiver = MemoryTransport(broker, max_message_bytes=LIMIT)
        sender = MemoryTransport(broker)
        received: list[bytes] = []

        async def on_message(topic: str, payload: bytes) -> None:
            received.append(payload)

        for client in (receiver, sender):
            await client.start()
        await receiver.subscribe("plant/line-1", on_message)
        await sender.publish("plant/line-1", BIG)
        await sender.publish("plant/line-1", b"small")
        assert received == [b"small"]

    asyncio.run(scenario())


# --- central ---------------------------------------------------------------------------------


class Central:
    """Central's service on a MemoryBroker with one published model, and a device's view."""

    def __init__(self, tmp_path: Path, max_message_bytes: int = MAX_PAYLOAD_BYTES) -> None:
        self.config = CentralConfig.model_validate({
            "database_url": f"sqlite:///{tmp_path}/central.db",
            "artifact_dir": str(tmp_path / "artifacts"), "chunk_size_bytes": 1024,
            "web": {"port": 0}, "signing_key_path": str(write_test_keys(tmp_path / "keys")[0])})
        self.max_message_bytes = max_message_bytes
        self.acks: list[bytes] = []
        self.chunks: list[bytes] = []

    async def start(self) -> Central:
        broker = MemoryBroker()
        self.service = CentralService(
            self.config, MemoryTransport(broker, max_message_bytes=self.max_message_bytes))
        await self.service.start()
        assert self.service.db is not None
        self.manifest = await self.service.db_call(
            publish_model, self.service.db, self.config.artifact_dir, SAMPLE_MODEL,
            "extruder-scrap", "1.0.0", metadata=SAMPLE_METADATA, chunk_size_bytes=1024,
            signer=TEST_SIGNER)
        # Chunks are served only for a deployment open on the asking device.
        await self.service.db_call(self.service.db.create_deployment,
                                   DeployCommand(device_id="gw-1", manifest=self.manifest))
        self.device = MemoryTransport(broker)
        await self.device.start()
        await self.device.subscribe(TOPICS.ack("gw-1"), self._keep(self.acks))
        await self.device.subscribe(TOPICS.artifact(self.manifest.sha256),
                                    self._keep(self.chunks))
        return self

    @staticmethod
    def _keep(into: list[bytes]) -> Any:
        async def handler(topic: str, payload: bytes) -> None:
            into.append(payload)
        return handler

    async def send(self, leaf: str, payload: bytes) -> None:
        await self.device.publish(TOPICS.device("gw-1", leaf), payload)
        await wait_until_async(self.service.idle, what="central's stores")

    async def stored(self) -> int:
        assert self.service.db is not None
        return await self.service.db_call(self.service.db.count_records)


def test_central_drops_a_message_over_its_transport_limit(tmp_path: Path) -> None:
    async def scenario() -> None:
        central = await Central(tmp_path, max_message_bytes=LIMIT).start()
        big = UplinkBatch(device_id="gw-1", records=[UplinkRecord(
            seq=1, type="defect", created_at=1.7e9, payload={"image": "x" * len(BIG)})])
        await central.send("uplink", encode(big))
        await central.send("uplink", encode(UplinkBatch(device_id="gw-1", records=records(1, 2))))
        assert await central.stored() == 1
        assert len(central.acks) == 1
        await central.service.stop()

    asyncio.run(scenario())


def test_payload_over_the_contract_limit_is_refused_unread() -> None:
    rejection = decode(b"{" + b" " * MAX_PAYLOAD_BYTES + b"}")
    assert isinstance(rejection, Rejection) and "exceeds" in rejection.reason


def test_central_refuses_a_batch_claiming_more_records_than_a_batch_may_hold(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        central = await Central(tmp_path).start()
        full = UplinkBatch(device_id="gw-1", records=records(MAX_RECORDS_PER_BATCH))
        too_many = encode(full)[:-2] + b',' + b','.join(
            encode(r) for r in records(100_000, MAX_RECORDS_PER_BATCH + 1)) + b']}'
        assert len(too_many) < MAX_PAYLOAD_BYTES  # refused for its length, not its size
        await central.send("uplink", too_many)
        assert central.service.stats.rejected["uplink"] == 1
        assert "at most 5000 items" in central.service.stats.last_rejection
        assert await central.stored() == 0 and central.acks == []
        await central.send("uplink", encode(full))
        assert await central.stored() == MAX_RECORDS_PER_BATCH
        await central.service.stop()

    asyncio.run(scenario())


def test_central_refuses_a_compressed_batch_that_expands_too_far(tmp_path: Path) -> None:
    async def scenario() -> None:
        central = await Central(tmp_path).start()
        bomb = zlib.compress(b" " * (MAX_PAYLOAD_BYTES * 4 + 1), 9)
        packed = CompressedUplinkBatch(device_id="gw-1", batch_id="bomb",
                                       data_b64=base64.b64encode(bomb).decode())
        assert len(encode(packed)) < 100_000
        await central.send("uplink", encode(packed))
        assert "expands beyond" in central.service.stats.last_rejection
        assert await central.stored() == 0 and central.acks == []
        await central.service.stop()

    asyncio.run(scenario())


def test_central_refuses_a_record_in_more_chunks_than_allowed(tmp_path: Path) -> None:
    async def scenario() -> None:
        central = await Central(tmp_path).start()
        piece = {"schema_version": 1, "kind": "record_chunk", "device_id": "gw-1", "seq": 7,
                 "type": "sample", "created_at": 1.7e9, "index": 0, "count": 100_001,
                 "payload_sha256": "a" * 64, "data_b64": ""}
        await central.send("uplink", json.dumps(piece).encode())
        assert "count" in central.service.stats.last_rejection
        assert central.service.stats.rejected["uplink"] == 1
        parts = await central.service.db_call(db_rows, central.service.db,
                                              "SELECT * FROM record_parts")
        assert parts == []
        await central.service.stop()

    asyncio.run(scenario())


def test_central_refuses_chunk_requests_too_long_or_beyond_the_artifact(tmp_path: Path) -> None:
    async def scenario() -> None:
        central = await Central(tmp_path).start()
        sha256 = central.manifest.sha256
        too_many = {"schema_version": 1, "kind": "chunk_request", "device_id": "gw-1",
                    "sha256": sha256, "indices": list(range(MAX_CHUNKS_PER_REQUEST + 1))}
        await central.send("chunk-request", json.dumps(too_many).encode())
        assert central.service.stats.chunk_requests == 0
        beyond = ChunkRequest(device_id="gw-1", sha256=sha256, indices=[10**12, 2**62])
        await central.send("chunk-request", encode(beyond))
        assert "beyond" in central.service.stats.last_rejection
        assert central.chunks == [] and central.service.stats.chunks_sent == 0
        await central.service.stop()

    asyncio.run(scenario())


# --- the agent -------------------------------------------------------------------------------


def test_agent_ignores_an_artifact_chunk_claiming_an_absurd_count(tmp_path: Path) -> None:
    """A chunk whose count is not the signed manifest's cannot make the agent write or grow
    the partial download."""
    async def scenario() -> None:
        broker = MemoryBroker()
        central = MemoryTransport(broker)
        await central.start()
        requests: list[bytes] = []

        async def on_request(topic: str, payload: bytes) -> None:
            requests.append(payload)

        await central.subscribe(TOPICS.chunk_request("gw1"), on_request)
        device = MemoryTransport(broker)
        await device.start()
        store = ModelStore(tmp_path / "models")
        buffer = Buffer(tmp_path / "buffer.db", 10**7)
        deployer = Deployer("gw1", TOPICS, device, store, buffer, TEST_VERIFIER)
        await deployer.start()
        manifest = manifest_for(SAMPLE_MODEL)
        await central.publish(TOPICS.commands("gw1"), encode(
            TEST_SIGNER.signed(DeployCommand(device_id="gw1", manifest=manifest))))
        await wait_until_async(lambda: requests, what="the transfer's first chunk request")
        part = store.download_path(manifest.sha256)
        size = part.stat().st_size
        absurd = ArtifactChunk.build(manifest.sha256, 10**18 - 1, 10**18, b"x" * 16)
        await central.publish(TOPICS.artifact(manifest.sha256), encode(absurd))
        assert deployer.rejected_messages == 1
        assert part.stat().st_size == size == manifest.size_bytes
        assert deployer.fetcher.transfers[manifest.sha256].chunks.received == set()
        await deployer.stop()
        await buffer.close()

    asyncio.run(scenario())


def test_agent_survives_an_ack_listing_a_million_seqs(tmp_path: Path) -> None:
    async def scenario() -> None:
        broker = MemoryBroker()
        device = MemoryTransport(broker)
        await device.start()
        central = MemoryTransport(broker)
        await central.start()
        sent: list[UplinkBatch] = []

        async def on_uplink(topic: str, payload: bytes) -> None:
            batch = decode(payload)
            assert isinstance(batch, UplinkBatch)
            sent.append(batch)

        await central.subscribe(TOPICS.uplink("gw1"), on_uplink)
        buffer = Buffer(tmp_path / "buffer.db", 10**7)
        for i in range(10):
            await buffer.append("sample", {"i": i})
        uplink = Uplink("gw1", TOPICS, device, buffer,
                        UplinkConfig(batch_size=5, max_in_flight=1, ack_timeout_s=600))
        task = asyncio.create_task(uplink.run())
        await wait_until_async(lambda: sent, what="the first batch")
        flood = BatchAck(device_id="gw1", batch_id=sent[0].batch_id,
                         acked_seqs=list(range(1, 1_000_001)))
        assert len(encode(flood)) < MAX_PAYLOAD_BYTES
        await central.publish(TOPICS.ack("gw1"), encode(flood))
        # The five sent are gone; the five never sent stay, whatever the ack said.
        assert (await buffer.health()).depth == 5
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await buffer.close()

    asyncio.run(scenario())

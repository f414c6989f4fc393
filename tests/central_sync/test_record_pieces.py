"""Large records in pieces from a gateway with valid credentials: stored once complete, bounded
per device while unfinished, and dropped (logged, counted) when their pieces stop coming."""

from __future__ import annotations

import json

import pytest
from central_helpers import Inbox, run

from central_sync.config import CentralConfig
from central_sync.metrics import service_metric_families
from central_sync.service import CentralService
from edge_agent.kernel.contract import BatchAck, RecordChunk, Topics, decode, encode, split_record
from edge_agent.kernel.transport.memory import MemoryBroker, MemoryTransport
from tests.helpers import wait_until_async

TOPICS = Topics()


def _limits(config: CentralConfig, **limits: float) -> CentralConfig:
    return config.model_copy(update={"ingest": config.ingest.model_copy(update=limits)})


def _record(seq: int, size: int, piece_bytes: int) -> list[RecordChunk]:
    return split_record("gw-1", seq, "sample", 1.7e9, json.dumps({"image": "x" * size}),
                        piece_bytes)


async def _start(config: CentralConfig) -> tuple[CentralService, MemoryTransport, Inbox]:
    broker = MemoryBroker()
    service = CentralService(config, MemoryTransport(broker))
    await service.start()
    device = MemoryTransport(broker)
    await device.start()
    acks = Inbox()
    await device.subscribe(TOPICS.ack("gw-1"), acks)
    return service, device, acks


async def _send(device: MemoryTransport, pieces: list[RecordChunk]) -> None:
    for piece in pieces:
        await device.publish(TOPICS.uplink("gw-1"), encode(piece))


def _acked(acks: Inbox) -> list[str]:
    return [decode(payload, expect=(BatchAck,)).batch_id  # type: ignore[union-attr]
            for _, payload in acks.messages]


def test_a_record_of_hundreds_of_pieces_is_stored_once_and_acked(
    central_config: CentralConfig,
) -> None:
    pieces = _record(5, 9_600, 16)

    async def scenario() -> None:
        service, device, acks = await _start(central_config)
        assert len(pieces) > 600
        await _send(device, pieces)
        await wait_until_async(lambda: _acked(acks) == ["record-5"], what="the record's ack")
        assert service.stats.records_acked == 1
        await service.stop()

    run(scenario())


def test_a_device_over_its_pending_bytes_is_refused_new_records_until_one_completes(
    central_config: CentralConfig,
) -> None:
    first, second = _record(1, 6000, 1000), _record(2, 6000, 1000)
    config = _limits(central_config, pending_record_bytes_per_device=64 * 1024)

    async def scenario() -> None:
        service, device, acks = await _start(config)
        flood = [_record(100 + i, 12_000, 1000)[0] for i in range(10)]  # 12 KiB reserved each
        await _send(device, flood)
        assert service.stats.record_pieces_refused == 5, "five fit in 64 KiB, five do not"
        assert "pending_record_bytes_per_device" in service.stats.last_rejection
        await _send(device, first)
        assert service.stats.record_pieces_refused == 5 + len(first)
        assert _acked(acks) == []
        health = service.health()["ingest"]
        assert health["record_pieces_refused"] == 5 + len(first)
        # The records already started go on, and once they are stored there is room again.
        for i in range(5):
            await _send(device, _record(100 + i, 12_000, 1000)[1:])
        await _send(device, second)
        await wait_until_async(lambda: "record-2" in _acked(acks), what="the later record")
        await service.stop()

    run(scenario())


def test_unfinished_records_expire_and_are_reported(
    central_config: CentralConfig, caplog: pytest.LogCaptureFixture
) -> None:
    config = _limits(central_config, unfinished_record_expiry_s=0.3)
    never_finished = _record(7, 6000, 1000)[:-1]

    async def scenario() -> None:
        service, device, _acks = await _start(config)
        await _send(device, never_finished)
        await wait_until_async(lambda: service.stats.records_expired == 1,
                               what="the unfinished record expired")
        assert await service.db_call(service.db.pending_record_bytes, "gw-1") == 0
        metrics = {family.name: family.samples[0].value
                   for family in service_metric_families(service.health())
                   if family.samples}
        assert metrics["central_sync_records_expired"] == 1
        await service.stop()

    run(scenario())
    assert "unfinished record dropped device=gw-1 seq=7 pieces=6/7" in caplog.text

"""The uplink over an in-memory broker: batches go out, acks delete, silence means resend."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from edge_agent.buffer import Buffer
from edge_agent.config import UplinkConfig
from edge_agent.kernel.contract import BatchAck, Topics, UplinkBatch, decode, encode
from edge_agent.kernel.contract import uplink as uplink_contract
from edge_agent.kernel.transport.memory import MemoryBroker, MemoryTransport
from edge_agent.uplink import Uplink
from tests.helpers import wait_until_async

TOPICS = Topics()


async def start(tmp_path: Path, ack: bool, ack_timeout_s: float = 10.0,
                batch_max_bytes: int = 256 * 1024):
    broker = MemoryBroker()
    central = MemoryTransport(broker)
    await central.start()
    received: list[UplinkBatch] = []

    async def on_uplink(topic: str, payload: bytes) -> None:
        batch = decode(payload)
        received.append(batch)
        if ack:
            reply = BatchAck(device_id=batch.device_id, batch_id=batch.batch_id,
                             acked_seqs=[r.seq for r in batch.records])
            await central.publish(TOPICS.ack(batch.device_id), encode(reply))

    await central.subscribe(TOPICS.all_devices("uplink"), on_uplink)
    device = MemoryTransport(broker)
    await device.start()
    buffer = Buffer(tmp_path / "buffer.db", 10**7)
    uplink = Uplink("gw1", TOPICS, device, buffer,
                    UplinkConfig(batch_size=10, ack_timeout_s=ack_timeout_s,
                                 batch_max_bytes=batch_max_bytes))
    task = asyncio.create_task(uplink.run())
    return buffer, uplink, received, task


def test_records_are_sent_in_batches_and_deleted_once_acked(tmp_path: Path) -> None:
    async def scenario() -> None:
        buffer, uplink, received, task = await start(tmp_path, ack=True)
        for i in range(25):
            await buffer.append("prediction", {"i": i})
        await wait_until_async(lambda: uplink.stats.acked_records == 25, what="25 records acked")
        assert (await buffer.health()).depth == 0
        seqs = [r.seq for batch in received for r in batch.records]
        assert seqs == sorted(set(seqs)) and len(seqs) == 25
        assert all(len(b.records) <= 10 for b in received)
        assert uplink.health().round_trip_ms is not None
        task.cancel()
        await buffer.close()

    asyncio.run(scenario())


def test_unacked_batch_is_resent_and_kept_until_acked(tmp_path: Path) -> None:
    async def scenario() -> None:
        buffer, uplink, received, task = await start(tmp_path, ack=False, ack_timeout_s=0.2)
        await buffer.append("prediction", {"i": 1})
        await wait_until_async(lambda: len(received) >= 3, what="the batch sent three times")
        assert {b.records[0].seq for b in received} == {1}
        assert uplink.stats.resent_batches >= 2
        assert (await buffer.health()).depth == 1
        task.cancel()
        await buffer.close()

    asyncio.run(scenario())


def test_malformed_ack_is_rejected_and_nothing_deleted(tmp_path: Path) -> None:
    async def scenario() -> None:
        buffer, uplink, received, task = await start(tmp_path, ack=False)
        await buffer.append("prediction", {"i": 1})
        await wait_until_async(lambda: len(received) == 1, what="the batch sent")
        foreign = BatchAck(device_id="gw2", batch_id="x", acked_seqs=[1])
        sender = MemoryTransport(uplink._transport._broker)
        await sender.start()
        await sender.publish(TOPICS.ack("gw1"), encode(foreign))
        await sender.publish(TOPICS.ack("gw1"), b"\xff\xfe")
        assert uplink.stats.rejected_messages == 2
        assert (await buffer.health()).depth == 1
        task.cancel()
        await buffer.close()

    asyncio.run(scenario())


def test_uplink_stops_when_cancelled_as_it_is_woken(tmp_path: Path) -> None:
    """A cancel arriving in the same loop turn as a wake-up must still stop the task."""
    async def scenario() -> None:
        buffer, uplink, _, task = await start(tmp_path, ack=True)
        await wait_until_async(lambda: uplink._wake._waiters,  # type: ignore[attr-defined]
                               what="the uplink idle, waiting to be woken")
        uplink._wake.set()
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=2)
        assert done, "the uplink ignored its cancellation"
        await buffer.close()

    asyncio.run(scenario())


def test_a_record_larger_than_central_accepts_is_dropped_with_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(uplink_contract, "MAX_RECORD_BYTES", 20_000)

    async def scenario() -> None:
        buffer, uplink, received, task = await start(tmp_path, ack=True, batch_max_bytes=4096)
        await buffer.append("sample", {"image": "x" * 30_000})
        await buffer.append("prediction", {"i": 1})
        await wait_until_async(lambda: uplink.stats.acked_records == 1,
                               what="the record behind it acked")
        assert uplink.stats.records_too_large == 1
        assert (await buffer.health()).depth == 0
        assert [r.type for batch in received for r in batch.records] == ["prediction"]
        task.cancel()
        await buffer.close()

    asyncio.run(scenario())
    assert "more than the 20000 bytes central accepts" in caplog.text

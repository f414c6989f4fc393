"""The central service over the in-memory transport: ingest, acks, status, rejections."""

from __future__ import annotations

import asyncio

from central_helpers import Inbox, make_batch, run

from central_sync.config import CentralConfig
from central_sync.service import CentralService
from edge_agent.kernel.contract import BatchAck, DeviceStatus, Topics, decode, encode
from edge_agent.kernel.transport import Will
from edge_agent.kernel.transport.memory import MemoryBroker, MemoryTransport
from tests.helpers import wait_until_async

TOPICS = Topics()


async def _start(config: CentralConfig, broker: MemoryBroker) -> CentralService:
    service = CentralService(config, MemoryTransport(broker))
    await service.start()
    return service


async def _device(broker: MemoryBroker, device_id: str = "gw-1",
                  will: Will | None = None) -> tuple[MemoryTransport, Inbox]:
    device = MemoryTransport(broker, will=will)
    await device.start()
    acks = Inbox()
    await device.subscribe(TOPICS.ack(device_id), acks)
    return device, acks


async def _acks(inbox: Inbox, count: int) -> list[BatchAck]:
    """The acks central sent, once there are `count` of them (stores run beside dispatch)."""
    await wait_until_async(lambda: len(inbox.messages) >= count, what=f"{count} acks")
    acks = [decode(payload, expect=(BatchAck,)) for _, payload in inbox.messages]
    assert all(isinstance(a, BatchAck) for a in acks)
    return acks  # type: ignore[return-value]


def test_batch_is_stored_then_acked_with_every_seq(central_config: CentralConfig) -> None:
    async def scenario() -> None:
        broker = MemoryBroker()
        service = await _start(central_config, broker)
        device, inbox = await _device(broker)
        batch = make_batch("gw-1", range(1, 4))
        await device.publish(TOPICS.uplink("gw-1"), encode(batch))
        [ack] = await _acks(inbox, 1)
        assert (ack.device_id, ack.batch_id, ack.acked_seqs) == ("gw-1", batch.batch_id, [1, 2, 3])
        assert await service.db_call(service.db.count_records, "gw-1") == 3
        assert service.stats.records_acked == 3
        await service.stop()

    run(scenario())


def test_batch_stored_twice_is_acked_but_kept_once(central_config: CentralConfig) -> None:
    async def scenario() -> None:
        broker = MemoryBroker()
        service = await _start(central_config, broker)
        device, inbox = await _device(broker)
        batch = make_batch("gw-1", range(1, 6))
        await device.publish(TOPICS.uplink("gw-1"), encode(batch))
        await device.publish(TOPICS.uplink("gw-1"), encode(batch))
        assert [a.acked_seqs for a in await _acks(inbox, 2)] == [[1, 2, 3, 4, 5]] * 2
        assert await service.db_call(service.db.count_records) == 5
        assert len(await service.db_call(service.db.recent_predictions, 100)) == 5
        await service.stop()

    run(scenario())


def test_malformed_and_impersonating_payloads_are_rejected_and_ingest_goes_on(
    central_config: CentralConfig,
) -> None:
    async def scenario() -> None:
        broker = MemoryBroker()
        service = await _start(central_config, broker)
        device, inbox = await _device(broker)
        await device.publish(TOPICS.uplink("gw-1"), b"{not json")
        await device.publish(TOPICS.uplink("gw-1"), encode(make_batch("gw-2", [1])))
        await device.publish(TOPICS.uplink("gw-1"), encode(DeviceStatus(
            device_id="gw-1", state="online")))
        await device.publish(TOPICS.status("gw-1"), b"[]")
        assert service.stats.rejected == {"uplink": 3, "status": 1}
        assert inbox.messages == []
        await device.publish(TOPICS.uplink("gw-1"), encode(make_batch("gw-1", [1, 2])))
        assert [a.acked_seqs for a in await _acks(inbox, 1)] == [[1, 2]]
        assert await service.db_call(service.db.count_records) == 2
        await service.stop()

    run(scenario())


def test_batch_for_another_device_on_my_topic_names_both_devices(
    central_config: CentralConfig,
) -> None:
    async def scenario() -> None:
        broker = MemoryBroker()
        service = await _start(central_config, broker)
        device, _ = await _device(broker)
        await device.publish(TOPICS.uplink("gw-1"), encode(make_batch("gw-2", [1])))
        assert "'gw-2' does not match topic device 'gw-1'" in service.stats.last_rejection
        assert await service.db_call(service.db.count_records) == 0
        await service.stop()

    run(scenario())


def test_last_will_offline_status_marks_device_offline(central_config: CentralConfig) -> None:
    async def scenario() -> None:
        broker = MemoryBroker()
        service = await _start(central_config, broker)
        offline = DeviceStatus(device_id="gw-1", state="offline")
        will = Will(TOPICS.status("gw-1"), encode(offline))
        device, _ = await _device(broker, will=will)
        online = DeviceStatus(device_id="gw-1", state="online", agent_version="0.1.0")
        await device.publish(TOPICS.status("gw-1"), encode(online), retain=True)
        [row] = await service.db_call(service.db.list_devices)
        assert row.state == "online"
        await device.crash()
        [row] = await service.db_call(service.db.list_devices)
        assert (row.state, row.agent_version) == ("offline", "0.1.0")
        await service.stop()

    run(scenario())


def test_retained_status_is_read_when_central_starts(central_config: CentralConfig) -> None:
    async def scenario() -> None:
        broker = MemoryBroker()
        device, _ = await _device(broker, "gw-7")
        await device.publish(TOPICS.status("gw-7"), encode(DeviceStatus(
            device_id="gw-7", state="online")), retain=True)
        service = await _start(central_config, broker)
        assert [d.device_id for d in await service.db_call(service.db.list_devices)] == ["gw-7"]
        assert service.stats.statuses == 1
        await service.stop()

    run(scenario())


def test_cleared_retained_status_is_ignored(central_config: CentralConfig) -> None:
    async def scenario() -> None:
        broker = MemoryBroker()
        service = await _start(central_config, broker)
        device, _ = await _device(broker)
        await device.publish(TOPICS.status("gw-1"), b"", retain=True)
        assert service.stats.rejected == {}
        assert await service.db_call(service.db.list_devices) == []
        await service.stop()

    run(scenario())


def test_service_runs_until_cancelled_then_releases_the_database(
    central_config: CentralConfig,
) -> None:
    async def scenario() -> None:
        broker = MemoryBroker()
        service = CentralService(central_config, MemoryTransport(broker))
        task = asyncio.create_task(service.run())
        await wait_until_async(lambda: service.db is not None, what="the database opened")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert service.db is None
        assert broker.clients == []

    run(scenario())

"""Central's Prometheus `/metrics`: the fleet from the database and the ingest counters."""

from __future__ import annotations

import asyncio
import time
import urllib.request

from central_helpers import free_port, make_batch, run
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from central_sync.config import CentralConfig
from central_sync.db import CentralDB
from central_sync.metrics import central_registry
from central_sync.service import CentralService
from edge_agent.kernel.contract import DeviceStatus, Topics, encode
from edge_agent.kernel.transport.memory import MemoryBroker, MemoryTransport
from tests.helpers import Scrape, wait_until_async

TOPICS = Topics()


def _get(url: str) -> tuple[str, str]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.headers["content-type"], response.read().decode()


def test_metrics_endpoint_serves_devices_and_ingest_counters(
    central_config: CentralConfig,
) -> None:
    config = CentralConfig.model_validate(
        {**central_config.model_dump(), "web": {"host": "127.0.0.1", "port": free_port()}})

    async def scenario() -> tuple[str, str]:
        broker = MemoryBroker()
        service = CentralService(config, MemoryTransport(broker))
        await service.start()
        device = MemoryTransport(broker)
        await device.start()
        await device.publish(TOPICS.status("gw-1"), encode(DeviceStatus(
            device_id="gw-1", state="online",
            buffer={"depth": 17, "bytes_used": 1, "quota_bytes": 10, "evicted": 2},
            uplink={"connected": True, "round_trip_ms": 250.0})))
        await device.publish(TOPICS.uplink("gw-1"), encode(make_batch("gw-1", range(1, 4))))
        await device.publish(TOPICS.status("gw-1"), b"not json")
        await wait_until_async(lambda: service.stats.batches == 1, what="the batch stored")
        try:
            return await asyncio.to_thread(_get, service.web_url + "metrics")
        finally:
            await device.stop()
            await service.stop()

    content_type, text = run(scenario())
    assert content_type == CONTENT_TYPE_LATEST
    metrics = Scrape(text)
    assert metrics.value("central_sync_broker_connected") == 1
    assert metrics.value("central_sync_batches_stored_total") == 1
    assert metrics.value("central_sync_records_acked_total") == 3
    assert metrics.value("central_sync_statuses_received_total") == 1
    assert metrics.value("central_sync_store_failures_total") == 0
    assert metrics.value("central_sync_rejected_messages_total", topic="status") == 1
    assert metrics.value("central_sync_device_online", device_id="gw-1") == 1
    assert 0 <= metrics.value("central_sync_device_last_seen_age_seconds", device_id="gw-1") < 60
    assert metrics.value("central_sync_device_last_seq", device_id="gw-1") == 3
    assert metrics.value("central_sync_device_records_stored", device_id="gw-1") == 3
    assert metrics.value("central_sync_device_buffer_depth", device_id="gw-1") == 17
    assert metrics.value("central_sync_device_buffer_evicted_records_total",
                         device_id="gw-1") == 2
    assert metrics.value("central_sync_device_uplink_round_trip_seconds",
                         device_id="gw-1") == 0.25


def test_a_silent_device_is_offline_and_its_age_grows(db: CentralDB) -> None:
    now = time.time()
    db.update_status(DeviceStatus(device_id="gw-1", state="online"), received_at=now - 1000)
    db.store_batch(make_batch("gw-2", [5]), received_at=now)

    metrics = Scrape(generate_latest(central_registry(db, offline_after_s=120)).decode())
    assert metrics.value("central_sync_device_online", device_id="gw-1") == 0
    assert metrics.value("central_sync_device_last_seen_age_seconds",
                         device_id="gw-1") >= 1000
    assert metrics.value("central_sync_device_last_seq", device_id="gw-2") == 5
    # gw-2 never sent a status: nothing is made up for it.
    assert ("central_sync_device_buffer_depth", (("device_id", "gw-2"),)) not in metrics.samples
    assert "central_sync_batches_stored_total" not in metrics.names()


def test_two_registries_over_one_database_do_not_clash(db: CentralDB) -> None:
    db.update_status(DeviceStatus(device_id="gw-1", state="online"))
    for registry in (central_registry(db, 120), central_registry(db, 120)):
        metrics = Scrape(generate_latest(registry).decode())
        assert metrics.value("central_sync_device_online", device_id="gw-1") == 1

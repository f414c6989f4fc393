"""Delivery inside the running central service: receivers that hang never slow ingest."""

from __future__ import annotations

import time

from alert_receivers import WebhookReceiver, alert_message
from central_helpers import Inbox, make_batch, run

from central_sync.config import CentralConfig
from central_sync.service import CentralService
from edge_agent.kernel.contract import BatchAck, Topics, decode, encode
from edge_agent.kernel.transport.memory import MemoryBroker, MemoryTransport
from tests.helpers import wait_until_async

TOPICS = Topics()
HUNG_SENDS = 8  # twice the sends at once: every slot is taken, more wait


def test_ingest_is_acked_within_2_s_while_every_send_hangs_on_its_receiver(
        central_config: CentralConfig) -> None:
    hanging = WebhookReceiver(hang=True).start()  # answers after 30 s
    config = CentralConfig.model_validate({**central_config.model_dump(), "alerts": {
        "evaluate_interval_s": 0.5,  # the engine takes the alerts lease at its first round
        "routes": [{"name": "slow", "kind": "webhook", "url": hanging.url, "timeout_s": 30}]}})

    async def scenario() -> list[float]:
        broker = MemoryBroker()
        service = CentralService(config, MemoryTransport(broker))
        await service.start()
        assert service.db is not None and service.alerting is not None
        device = MemoryTransport(broker)
        await device.start()
        acks = Inbox()
        await device.subscribe(TOPICS.ack("gw-1"), acks)
        try:
            for i in range(HUNG_SENDS):
                message = alert_message(alert_id=f"a{i}")
                await service.db_call(service.db.enqueue_notification, message.alert_id,
                                      "fired", "slow", message.model_dump_json(), 0.0)
            service.alerting.delivery.poke()
            await wait_until_async(lambda: len(service.alerting.delivery.in_flight) >= 4, 15,  # type: ignore[union-attr]
                                   what="every send slot hanging on the receiver")
            waits = []
            for n in range(5):
                batch = make_batch("gw-1", range(10 * n + 1, 10 * n + 11))
                sent = time.monotonic()
                await device.publish(TOPICS.uplink("gw-1"), encode(batch))
                await wait_until_async(lambda n=n: len(acks.messages) > n, 2,
                                       what=f"the ack of batch {n + 1}")
                waits.append(time.monotonic() - sent)
                ack = decode(acks.messages[n][1], expect=(BatchAck,))
                assert isinstance(ack, BatchAck) and ack.batch_id == batch.batch_id
            assert len(service.alerting.delivery.in_flight) >= 4  # still hanging all along
            assert hanging.received == []
            return waits
        finally:
            hanging.stop()  # the hung requests end: nothing is left waiting on them
            await device.stop()
            await service.stop()

    waits = run(scenario(), 60)
    print(f"ingest acks while {HUNG_SENDS} sends hang: slowest {max(waits) * 1000:.0f} ms")
    assert max(waits) < 2.0

"""Central against a real Mosquitto: a raw paho client plays the device."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator

import paho.mqtt.client as paho
import pytest
from central_helpers import make_batch, run
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from central_sync.config import CentralConfig
from central_sync.service import CentralService
from edge_agent.kernel.contract import BatchAck, DeviceStatus, Topics, decode, encode
from edge_agent.kernel.transport import BrokerConfig
from edge_agent.kernel.transport.mqtt import MqttTransport
from tests.helpers import wait_until_async

TOPICS = Topics()


@pytest.fixture
def device(mosquitto) -> Iterator[tuple[paho.Client, queue.Queue[bytes]]]:
    received: queue.Queue[bytes] = queue.Queue()
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="gw-1",
                         protocol=MQTTProtocolVersion.MQTTv311)
    client.on_message = lambda _c, _u, message: received.put(bytes(message.payload))
    client.connect("127.0.0.1", mosquitto.port)
    client.subscribe(TOPICS.ack("gw-1"), qos=1)
    client.loop_start()
    yield client, received
    client.loop_stop()
    client.disconnect()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_device_batch_over_mosquitto_is_stored_and_acked(
    central_config: CentralConfig, mosquitto, device, protocol: str
) -> None:
    client, received = device
    broker = BrokerConfig(port=mosquitto.port, protocol=protocol)
    config = CentralConfig.model_validate({**central_config.model_dump(),
                                           "broker": broker.model_dump()})
    batch = make_batch("gw-1", range(1, 11))

    async def scenario() -> None:
        service = CentralService(config, MqttTransport(config.broker, config.central_id))
        await service.start()
        assert await service.transport.wait_connected(10)
        client.publish(TOPICS.status("gw-1"), encode(DeviceStatus(
            device_id="gw-1", state="online")), qos=1, retain=True)

        last_sent = [0.0]

        def ack_arrived() -> BatchAck | None:
            # Like the agent: resend until central acknowledges.
            if received.empty():
                if time.monotonic() - last_sent[0] > 0.5:
                    client.publish(TOPICS.uplink("gw-1"), encode(batch), qos=1)
                    last_sent[0] = time.monotonic()
                return None
            message = decode(received.get(), expect=(BatchAck,))
            assert isinstance(message, BatchAck)
            return message

        ack = await wait_until_async(ack_arrived, timeout_s=10, what="the batch ack")
        assert ack.batch_id == batch.batch_id
        assert ack.acked_seqs == list(range(1, 11))
        assert await service.db_call(service.db.count_records, "gw-1") == 10
        await wait_until_async(lambda: service.stats.statuses, what="the status")
        [row] = await service.db_call(service.db.list_devices)
        assert row.state == "online"
        await service.stop()

    run(scenario())

"""MqttTransport against a real Mosquitto under load: a message is acknowledged once handled, the
inbox holds at most receive_maximum messages, and the broker holds what a slow receiver has not
taken yet (the installed Mosquitto 2.0.11 sends more than receive_maximum unacked, so the bound
is kept by the receiver too)."""

from __future__ import annotations

import asyncio

import pytest

from edge_agent.kernel.transport import BrokerConfig
from edge_agent.kernel.transport.mqtt import MqttTransport
from tests.conftest import Mosquitto
from tests.helpers import wait_until_async

RECEIVE_MAXIMUM = 5

async def _started(config: BrokerConfig, name: str) -> MqttTransport:
    transport = MqttTransport(config, name)
    await transport.start()
    assert await transport.wait_connected(10)
    return transport


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_a_slow_receivers_inbox_stays_bounded_and_every_message_arrives(
    mosquitto: Mosquitto, protocol: str
) -> None:
    config = BrokerConfig(port=mosquitto.port, protocol=protocol,
                          receive_maximum=RECEIVE_MAXIMUM)

    async def scenario() -> None:
        receiver = await _started(config, "slow-receiver")
        sender = await _started(config, "fast-sender")
        received: list[bytes] = []

        async def slow(topic: str, payload: bytes) -> None:
            received.append(payload)
            await asyncio.sleep(0.01)

        await receiver.subscribe("flood/#", slow, qos=1)
        sent = [str(i).encode() for i in range(150)]
        for payload in sent:
            await sender.publish("flood/x", payload, qos=1)
        await wait_until_async(lambda: len(received) == len(sent), 30, what="every message")
        assert received == sent
        assert receiver._inbox.most_held <= RECEIVE_MAXIMUM, "the broker held the rest"
        for client in (sender, receiver):
            await client.stop()

    asyncio.run(scenario())


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_a_message_not_yet_handled_comes_again_after_the_receiver_restarts(
    mosquitto: Mosquitto, protocol: str
) -> None:
    config = BrokerConfig(port=mosquitto.port, protocol=protocol)

    async def scenario() -> None:
        receiver = await _started(config, "receiver")
        sender = await _started(config, "sender")
        started = asyncio.Event()

        async def never_finishes(topic: str, payload: bytes) -> None:
            started.set()
            await asyncio.Event().wait()

        await receiver.subscribe("work/#", never_finishes, qos=1)
        await sender.publish("work/1", b"job", qos=1)
        await asyncio.wait_for(started.wait(), 10)
        await receiver.stop()  # the handler never returned: the message was never acked

        again: list[bytes] = []

        async def record(topic: str, payload: bytes) -> None:
            again.append(payload)

        restarted = MqttTransport(config, "receiver")
        await restarted.subscribe("work/#", record, qos=1)
        await restarted.start()
        await wait_until_async(lambda: again, 10, what="the message sent again")
        assert again[0] == b"job"
        for client in (sender, restarted):
            await client.stop()

    asyncio.run(scenario())


def test_qos0_messages_wait_at_the_broker_too_and_all_arrive(mosquitto: Mosquitto) -> None:
    config = BrokerConfig(port=mosquitto.port, receive_maximum=RECEIVE_MAXIMUM)

    async def scenario() -> None:
        receiver = await _started(config, "receiver")
        sender = await _started(config, "sender")
        gate = asyncio.Event()
        received: list[bytes] = []

        async def blocked(topic: str, payload: bytes) -> None:
            await gate.wait()
            received.append(payload)

        await receiver.subscribe("noise/#", blocked, qos=0)
        sent = [str(i).encode() for i in range(100)]
        for payload in sent:
            await sender.publish("noise/x", payload, qos=0)
        await wait_until_async(lambda: len(receiver._inbox) == RECEIVE_MAXIMUM, 10,
                               what="a full inbox")
        gate.set()
        await wait_until_async(lambda: len(received) == len(sent), 10, what="every message")
        assert received == sent
        assert receiver._inbox.most_held <= RECEIVE_MAXIMUM
        for client in (sender, receiver):
            await client.stop()

    asyncio.run(scenario())


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_handlers_that_publish_and_await_their_puback_go_on_with_a_full_inbox(
    mosquitto: Mosquitto, protocol: str
) -> None:
    """As central's ingest does: each handled message is answered at QoS 1, whose PUBACK comes
    on the same socket as the messages waiting behind a full inbox."""
    config = BrokerConfig(port=mosquitto.port, protocol=protocol, receive_maximum=2)

    async def scenario() -> None:
        receiver = await _started(config, "answering-receiver")
        sender = await _started(config, "sender")
        answers: list[bytes] = []

        async def answer(topic: str, payload: bytes) -> None:
            await receiver.publish("answers/x", payload, qos=1)

        async def collect(topic: str, payload: bytes) -> None:
            answers.append(payload)

        await receiver.subscribe("asks/#", answer, qos=1)
        await sender.subscribe("answers/#", collect, qos=1)
        sent = [str(i).encode() for i in range(40)]
        for payload in sent:
            await sender.publish("asks/x", payload, qos=1)
        await wait_until_async(lambda: len(answers) == len(sent), 30, what="every answer")
        assert answers == sent
        for client in (sender, receiver):
            await client.stop()

    asyncio.run(scenario())

"""MqttTransport against a real Mosquitto: acks awaited, subscriptions renewed after a restart."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from edge_agent.kernel.contract import Topics
from edge_agent.kernel.transport import BrokerConfig, NotConnected, Will
from edge_agent.kernel.transport.memory import MemoryBroker, MemoryTransport
from edge_agent.kernel.transport.mqtt import MqttTransport
from tests.conftest import Mosquitto
from tests.helpers import wait_until_async


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_message_published_right_after_subscribe_is_received(mosquitto: Mosquitto,
                                                            protocol: str) -> None:
    async def scenario() -> None:
        config = BrokerConfig(port=mosquitto.port, protocol=protocol)
        a, b = MqttTransport(config, "client-a"), MqttTransport(config, "client-b")
        for client in (a, b):
            await client.start()
            assert await client.wait_connected(10)
        received: list[tuple[str, bytes]] = []

        async def on_message(topic: str, payload: bytes) -> None:
            received.append((topic, payload))

        await a.subscribe("t/+/x", on_message)
        await b.publish("t/1/x", b"hello")
        await wait_until_async(lambda: received, 5, what="delivery")
        assert received == [("t/1/x", b"hello")]
        for client in (a, b):
            await client.stop()

    asyncio.run(scenario())


def test_publish_while_disconnected_raises_not_connected() -> None:
    async def scenario() -> None:
        transport = MqttTransport(BrokerConfig(port=1), "nobody")
        with pytest.raises(NotConnected):
            await transport.publish("t", b"x")

    asyncio.run(scenario())


def test_subscriptions_survive_a_broker_restart(mosquitto: Mosquitto) -> None:
    async def scenario() -> None:
        config = BrokerConfig(port=mosquitto.port)
        listener = MqttTransport(config, "listener")
        received: list[bytes] = []

        async def on_message(topic: str, payload: bytes) -> None:
            received.append(payload)

        await listener.subscribe("plant/#", on_message)
        await listener.start()
        assert await listener.wait_connected(10)
        mosquitto.stop()
        await wait_until_async(lambda: not listener.connected, 10, what="disconnect noticed")
        await asyncio.to_thread(mosquitto.start)
        assert await listener.wait_connected(15)
        sender = MqttTransport(config, "sender", persistent_session=False)
        await sender.start()
        assert await sender.wait_connected(10)
        await wait_until_async(lambda: listener.connected, 5, what="listener connected")
        await sender.publish("plant/after", b"again")
        await wait_until_async(lambda: received == [b"again"], 10, what="delivery after restart")
        await sender.stop()
        await listener.stop()

    asyncio.run(scenario())


def test_last_will_is_published_when_a_client_vanishes(mosquitto: Mosquitto) -> None:
    async def scenario() -> None:
        config = BrokerConfig(port=mosquitto.port, keepalive_s=5)
        watcher = MqttTransport(config, "watcher")
        wills: list[bytes] = []

        async def on_will(topic: str, payload: bytes) -> None:
            wills.append(payload)

        await watcher.start()
        assert await watcher.wait_connected(10)
        await watcher.subscribe("status/gw", on_will)
        doomed = MqttTransport(config, "doomed", will=Will("status/gw", b"offline"))
        await doomed.start()
        assert await doomed.wait_connected(10)
        # Drop the socket without DISCONNECT, as a killed process would.
        doomed._client.socket().close()
        await wait_until_async(lambda: wills == [b"offline"], 20, what="last will")
        doomed._client.loop_stop()
        await watcher.stop()

    asyncio.run(scenario())


def shared_scenario(make: Callable[[str], object]) -> Callable[[], Awaitable[None]]:
    """Two members of one shared group and one plain subscriber, 20 messages."""

    async def scenario() -> None:
        members = [make("member-a"), make("member-b")]
        watcher, sender = make("watcher"), make("sender")
        got: dict[str, list[bytes]] = {"member-a": [], "member-b": [], "watcher": []}
        for name, client in (("member-a", members[0]), ("member-b", members[1]),
                             ("watcher", watcher)):
            await client.start()
            assert await client.wait_connected(10)

            async def on_message(topic: str, payload: bytes, name: str = name) -> None:
                got[name].append(payload)

            topic_filter = "plant/devices/+/uplink"
            if name != "watcher":
                topic_filter = Topics.shared(topic_filter, "central")
            await client.subscribe(topic_filter, on_message)
        await sender.start()
        assert await sender.wait_connected(10)
        sent = [f"m{i}".encode() for i in range(20)]
        for payload in sent:
            await sender.publish("plant/devices/gw-1/uplink", payload)
        await wait_until_async(lambda: len(got["member-a"]) + len(got["member-b"]) == 20
                               and len(got["watcher"]) == 20, 10, what="every message")
        assert sorted(got["member-a"] + got["member-b"]) == sorted(sent)  # each once
        assert got["member-a"] and got["member-b"]  # shared between the two
        for client in (*members, watcher, sender):
            await client.stop()

    return scenario


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_shared_subscription_gives_each_message_to_one_member(mosquitto: Mosquitto,
                                                              protocol: str) -> None:
    config = BrokerConfig(port=mosquitto.port, protocol=protocol)
    asyncio.run(shared_scenario(
        lambda name: MqttTransport(config, name, persistent_session=False))())


def test_memory_broker_shares_like_mosquitto() -> None:
    broker = MemoryBroker()
    asyncio.run(shared_scenario(lambda _name: MemoryTransport(broker))())

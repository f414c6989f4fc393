"""An in-memory broker and transport, for tests of logic without a broker process."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import paho.mqtt.client as paho

from edge_agent.kernel.contract import SHARED_PREFIX
from edge_agent.kernel.transport.base import Handler, NotConnected, Will
from edge_agent.kernel.transport.config import DEFAULT_MAX_MESSAGE_BYTES
from edge_agent.kernel.transport.mqtt import Subscriptions

log = logging.getLogger(__name__)

class MemoryBroker:
    """An in-process broker with retained messages and last wills, for tests of logic."""

    def __init__(self) -> None:
        self.clients: list[MemoryTransport] = []
        self.retained: dict[str, bytes] = {}
        self._turns: dict[str, int] = {}  # shared subscription -> deliveries so far

    async def route(self, topic: str, payload: bytes, retain: bool) -> None:
        """Deliver to every plain subscription, and to one member of each shared group
        (in turn), as MQTT brokers do."""
        if retain:
            self.retained[topic] = payload
        clients = [c for c in self.clients if c.connected]
        chosen: dict[str, MemoryTransport] = {}
        for group_filter in sorted({f for c in clients for f, _ in c._subs.matching(topic)
                                    if f.startswith(SHARED_PREFIX)}):
            members = [c for c in clients if group_filter in c._subs.handlers]
            turn = self._turns.get(group_filter, 0)
            chosen[group_filter] = members[turn % len(members)]
            self._turns[group_filter] = turn + 1
        for client in clients:
            if len(payload) > client.max_message_bytes:
                log.warning("message dropped unread topic=%s bytes=%d", topic, len(payload))
                continue
            await client._subs.dispatch(
                topic, payload,
                only=lambda f, c=client: not f.startswith(SHARED_PREFIX) or chosen.get(f) is c)


class MemoryTransport:
    """A Transport whose messages go through a MemoryBroker in the same process."""

    def __init__(self, broker: MemoryBroker, will: Will | None = None,
                 on_connected: Callable[[], Awaitable[None]] | None = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self._broker = broker
        self.max_message_bytes = max_message_bytes
        self._will = will
        self._on_connected = on_connected
        self._subs = Subscriptions()
        self._connected = asyncio.Event()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def start(self) -> None:
        self._broker.clients.append(self)
        self._connected.set()
        if self._on_connected:
            await self._on_connected()

    async def stop(self) -> None:
        self._connected.clear()
        if self in self._broker.clients:
            self._broker.clients.remove(self)

    async def crash(self) -> None:
        """Vanish without a clean disconnect, so the broker publishes the last will."""
        await self.stop()
        if self._will:
            await self._broker.route(self._will.topic, self._will.payload, self._will.retain)

    async def wait_connected(self, timeout_s: float | None = None) -> bool:
        return self.connected

    async def subscribe(self, topic_filter: str, handler: Handler, qos: int = 1) -> None:
        self._subs.handlers[topic_filter] = (handler, qos)
        if topic_filter.startswith(SHARED_PREFIX):
            return  # brokers send no retained messages to shared subscriptions
        for topic, payload in list(self._broker.retained.items()):
            if paho.topic_matches_sub(topic_filter, topic):
                await handler(topic, payload)

    async def unsubscribe(self, topic_filter: str) -> None:
        self._subs.handlers.pop(topic_filter, None)

    async def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        if not self.connected:
            raise NotConnected("memory transport is stopped")
        await self._broker.route(topic, payload, retain)

"""The real transport: a paho-mqtt client driven from asyncio, and topic dispatch.

Received messages are acknowledged to the broker only once their handlers have returned
(paho's manual acks), and the broker is asked to send at most `receive_maximum` unacknowledged
(MQTT 5's Receive Maximum; Mosquitto's max_inflight_messages for MQTT 3.1.1). Brokers do not
all keep to that (Mosquitto 2.0.11 sends more after each ack), so the inbox is also bounded
here: paho's network thread waits for room, the socket fills, and the broker holds the rest.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.kernel.contract import plain_filter
from edge_agent.kernel.transport.base import Handler, NotConnected, Will
from edge_agent.kernel.transport.config import BrokerConfig

log = logging.getLogger(__name__)

SUBACK_TIMEOUT_S = 10.0
# How often paho's network thread, waiting for room in the inbox, looks whether it must read on.
INBOX_RECHECK_S = 0.05
# The dispatcher taking nothing for this long while a PUBACK is awaited: a handler may be
# waiting for that PUBACK behind the messages not read yet, so the network thread reads on
# until the dispatcher takes a message again.
INBOX_STALL_S = 0.1


@dataclass(frozen=True)
class _Received:
    """A message waiting for dispatch; acked as (mid, qos) on the connection it came on."""

    topic: str
    payload: bytes
    mid: int
    qos: int
    connection: int


@dataclass
class Subscriptions:
    """Topic filters and their handlers; dispatch runs on the asyncio loop, one at a time."""

    handlers: dict[str, tuple[Handler, int]] = field(default_factory=dict)

    def matching(self, topic: str) -> list[tuple[str, Handler]]:
        """The subscriptions (shared ones by their plain filter) that `topic` matches."""
        return [(topic_filter, handler)
                for topic_filter, (handler, _qos) in list(self.handlers.items())
                if paho.topic_matches_sub(plain_filter(topic_filter), topic)]

    async def dispatch(self, topic: str, payload: bytes,
                       only: Callable[[str], bool] = lambda _filter: True) -> None:
        for topic_filter, handler in self.matching(topic):
            if not only(topic_filter):
                continue
            try:
                await handler(topic, payload)
            except Exception:
                log.exception("handler failed topic=%s filter=%s", topic, topic_filter)


class MqttTransport:
    """paho-mqtt client driven from asyncio: reconnects by itself, resubscribes on connect."""

    def __init__(
        self,
        config: BrokerConfig,
        client_id: str,
        will: Will | None = None,
        on_connected: Callable[[], Awaitable[None]] | None = None,
        persistent_session: bool = True,
    ) -> None:
        self.config = config
        self.client_id = config.client_id or client_id
        self._will = will
        self._on_connected = on_connected
        self._persistent = persistent_session
        self._subs = Subscriptions()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connected = asyncio.Event()
        self._pubacks = _AckWaiter()
        self._inbox = _Inbox(config.receive_maximum, must_read_on=self._pubacks.waiting)
        self._dispatcher: asyncio.Task[None] | None = None
        self._subacks = _AckWaiter()
        self._background: set[asyncio.Future[None]] = set()
        self.last_error: str = ""
        self._client = self._make_client()

    def _make_client(self) -> paho.Client:
        v5 = self.config.protocol == "5"
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=None if v5 else not self._persistent,
            protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
            manual_ack=True,
        )
        if self.config.username:
            client.username_pw_set(self.config.username, self.config.secret())
        if self.config.tls:
            client.tls_set(ca_certs=_str(self.config.ca_file), certfile=_str(self.config.cert_file),
                           keyfile=_str(self.config.key_file), cert_reqs=ssl.CERT_REQUIRED)
        if self._will:
            client.will_set(self._will.topic, self._will.payload, self._will.qos, self._will.retain)
        client.reconnect_delay_set(min_delay=1, max_delay=2)
        # paho's own queue lives in memory only; bound it, durability is the buffer's job.
        client.max_queued_messages_set(1000)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        return client

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._inbox.open(self._loop)
        self._dispatcher = asyncio.create_task(self._dispatch_forever(), name="mqtt-dispatch")
        properties = None
        clean_start: bool | int = paho.MQTT_CLEAN_START_FIRST_ONLY
        if self.config.protocol == "5":
            clean_start = not self._persistent
            properties = Properties(PacketTypes.CONNECT)
            properties.ReceiveMaximum = self.config.receive_maximum
            if self._persistent:
                properties.SessionExpiryInterval = 7 * 24 * 3600
        self._client.connect_async(
            self.config.host,
            self.config.port,
            keepalive=self.config.keepalive_s,
            clean_start=clean_start,
            properties=properties,
        )
        self._client.loop_start()

    async def stop(self) -> None:
        self._inbox.close()  # a network thread waiting for room must not hold up loop_stop
        self._client.disconnect()
        await asyncio.get_running_loop().run_in_executor(None, self._client.loop_stop)
        self._connected.clear()
        if self._dispatcher:
            self._dispatcher.cancel()
            await asyncio.gather(self._dispatcher, return_exceptions=True)

    async def wait_connected(self, timeout_s: float | None = None) -> bool:
        try:
            async with asyncio.timeout(timeout_s):
                await self._connected.wait()
        except TimeoutError:
            return False
        return True

    async def subscribe(self, topic_filter: str, handler: Handler, qos: int = 1) -> None:
        """Register a handler; when connected, return once the broker has granted it."""
        self._subs.handlers[topic_filter] = (handler, qos)
        if not self.connected:
            return  # subscribed on (re)connect
        loop = asyncio.get_running_loop()
        (rc, _), mid = self._subacks.call(loop, lambda: self._client.subscribe(topic_filter, qos))
        if rc != paho.MQTT_ERR_SUCCESS or mid is None:
            return  # the connection dropped; on_connect subscribes again
        try:
            async with asyncio.timeout(SUBACK_TIMEOUT_S):
                await self._subacks.wait(mid)
        except (TimeoutError, NotConnected):
            log.info("subscription not confirmed yet topic=%s; it is renewed on reconnect",
                     topic_filter)

    async def unsubscribe(self, topic_filter: str) -> None:
        self._subs.handlers.pop(topic_filter, None)
        if self.connected:
            self._client.unsubscribe(topic_filter)

    async def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Publish and, for QoS 1, wait for the broker's PUBACK."""
        if not self.connected:
            raise NotConnected(f"not connected to {self.config.host}:{self.config.port}")
        loop = asyncio.get_running_loop()
        info, mid = self._pubacks.call(
            loop, lambda: self._client.publish(topic, payload, qos=qos, retain=retain),
            track=qos > 0,
        )
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise NotConnected(f"publish to {topic} failed: {paho.error_string(info.rc)}")
        if mid is not None:
            await self._pubacks.wait(mid)

    # paho callbacks: network thread, so they only hand over to the loop.

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.last_error = f"broker refused connection: {reason_code}"
            log.warning("mqtt refused client=%s reason=%s", self.client_id, reason_code)
            return
        self.last_error = ""
        self._inbox.new_connection()  # before any message of this connection is read
        subscribed = set()
        for topic_filter, (_handler, qos) in list(self._subs.handlers.items()):
            client.subscribe(topic_filter, qos)
            subscribed.add(topic_filter)
        log.info("mqtt connected client=%s broker=%s:%s", self.client_id, self.config.host,
                 self.config.port)
        self._call_soon(self._set_connected, subscribed)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.last_error = f"disconnected: {reason_code}"
        log.info("mqtt disconnected client=%s reason=%s", self.client_id, reason_code)
        self._call_soon(self._set_disconnected)

    def _on_message(self, client, userdata, message) -> None:
        if len(message.payload) > self.config.max_message_bytes:
            log.warning("message dropped unread topic=%s bytes=%d limit=%d (max_message_bytes)",
                        message.topic, len(message.payload), self.config.max_message_bytes)
            self._call_soon(self._ack_unread, message.mid, message.qos)
            return
        # Blocks while the inbox is full: paho reads no further, so the broker keeps the rest.
        self._inbox.put(message.topic, bytes(message.payload), message.mid, message.qos)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        self._call_soon(self._pubacks.resolve, mid)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        refused = [str(code) for code in reason_codes if code.is_failure]
        if refused:
            log.warning("mqtt subscription refused client=%s mid=%s reason=%s", self.client_id,
                        mid, ", ".join(refused))
        self._call_soon(self._subacks.resolve, mid)

    def _call_soon(self, fn: Callable[..., object], *args: object) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(fn, *args)

    def _ack_unread(self, mid: int, qos: int) -> None:
        """A message refused unread is done with: acked, so the broker does not resend it."""
        if qos > 0 and self.connected:
            self._client.ack(mid, qos)

    def _set_connected(self, subscribed: set[str]) -> None:
        # A handler registered after on_connect's snapshot saw "not connected" and left its
        # subscription to us: both run on this loop, so none falls between the two.
        for topic_filter, (_handler, qos) in list(self._subs.handlers.items()):
            if topic_filter not in subscribed:
                self._client.subscribe(topic_filter, qos)
        self._connected.set()
        if self._on_connected:
            task = asyncio.ensure_future(self._on_connected())
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def _set_disconnected(self) -> None:
        self._connected.clear()
        self._pubacks.fail_all(NotConnected("connection lost before PUBACK"))
        self._subacks.fail_all(NotConnected("connection lost before SUBACK"))

    async def _dispatch_forever(self) -> None:
        while True:
            message = await self._inbox.get()
            await self._subs.dispatch(message.topic, message.payload)
            # Handled: now the broker may forget it and send the next. A message of an earlier
            # connection is not acked (its id may name another message now): the broker sent
            # it again on reconnecting, and handlers take a message twice without harm.
            if message.qos > 0 and message.connection == self._inbox.connection and self.connected:
                self._client.ack(message.mid, message.qos)


class _Inbox:
    """Received messages handed from paho's network thread to the dispatcher on the loop.

    Holds at most `max_messages`: `put` waits for room. A handler awaiting a PUBACK
    (`must_read_on()`) while the dispatcher takes nothing needs the packets behind: then `put`
    reads on, and the inbox exceeds its bound by what the broker sent ahead of that PUBACK.
    """

    def __init__(self, max_messages: int, must_read_on: Callable[[], bool]) -> None:
        self._max = max_messages
        self._must_read_on = must_read_on
        self._items: deque[_Received] = deque()
        self._room = threading.Condition()
        self._connection = 0
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = asyncio.Event()
        self._taken = 0  # messages the dispatcher has taken: tells a slow one from a stuck one
        self.most_held = 0

    def open(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._room:
            self._loop, self._closed = loop, False

    def close(self) -> None:
        with self._room:
            self._closed = True
            self._room.notify_all()

    def new_connection(self) -> None:
        """Network thread: count a connection; a message is acked only on the one it came on."""
        with self._room:
            self._connection += 1

    @property
    def connection(self) -> int:
        return self._connection

    def __len__(self) -> int:
        return len(self._items)

    def put(self, topic: str, payload: bytes, mid: int, qos: int) -> None:
        """Network thread: add a message, first waiting while the inbox is full."""
        with self._room:
            taken, since = self._taken, time.monotonic()
            while len(self._items) >= self._max and not self._closed:
                if self._taken != taken:
                    taken, since = self._taken, time.monotonic()
                elif time.monotonic() - since >= INBOX_STALL_S and self._must_read_on():
                    break
                self._room.wait(INBOX_RECHECK_S)
            self._items.append(_Received(topic, payload, mid, qos, self._connection))
            self.most_held = max(self.most_held, len(self._items))
            loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._ready.set)

    async def get(self) -> _Received:
        """Loop: the oldest message, waiting for one; its room goes back to the network thread."""
        while True:
            self._ready.clear()
            with self._room:
                if self._items:
                    self._taken += 1
                    self._room.notify()
                    return self._items.popleft()
            await self._ready.wait()


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


class _AckWaiter:
    """Futures for broker acknowledgements (PUBACK, SUBACK) keyed by message id.

    Everything here runs on the event loop thread: paho's thread only schedules `resolve`
    there. So an ack can never be handled before its id is registered, and no lock is held
    while paho takes its own (holding one across paho calls deadlocked with its thread).
    """

    def __init__(self) -> None:
        self._pending: dict[int, asyncio.Future[None]] = {}

    def waiting(self) -> bool:
        """Whether an ack is awaited (read from paho's thread: a snapshot is enough)."""
        return bool(self._pending)

    def call(self, loop: asyncio.AbstractEventLoop, send: Callable[[], Any],
             track: bool = True) -> tuple[Any, int | None]:
        """Run `send` (returning paho's info or (rc, mid)) and register its mid for waiting."""
        result = send()
        mid = result[1] if isinstance(result, tuple) else result.mid
        if not track or mid is None:
            return result, None
        self._pending[mid] = loop.create_future()
        return result, mid

    async def wait(self, mid: int) -> None:
        try:
            await self._pending[mid]
        finally:
            self._pending.pop(mid, None)

    def resolve(self, mid: int) -> None:
        future = self._pending.get(mid)
        if future is not None and not future.done():
            future.set_result(None)

    def fail_all(self, exc: Exception) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(exc)


"""A Sparkplug B consumer for tests: its own protobuf wire decoder, not the product's classes.

Reading the bytes field by field (numbers from Eclipse Tahu's sparkplug_b.proto) means a wrong
field number, wire type or value encoding in the product shows up here instead of cancelling out.
"""

from __future__ import annotations

import queue
import struct
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

DATATYPES = {4: "Int64", 9: "Float", 10: "Double", 11: "Boolean", 12: "String", 13: "DateTime"}


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def _fields(data: bytes) -> list[tuple[int, int, Any]]:
    """(field number, wire type, raw value) of every field of one protobuf message."""
    out, at = [], 0
    while at < len(data):
        key, at = _varint(data, at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, at = _varint(data, at)
        elif wire == 1:
            value, at = data[at:at + 8], at + 8
        elif wire == 2:
            length, at = _varint(data, at)
            value, at = data[at:at + length], at + length
        elif wire == 5:
            value, at = data[at:at + 4], at + 4
        else:
            raise ValueError(f"wire type {wire} not expected in a Sparkplug payload")
        out.append((number, wire, value))
    return out


@dataclass
class Metric:
    name: str | None = None
    alias: int | None = None
    datatype: str | None = None
    is_null: bool = False
    value: Any = None


@dataclass
class Message:
    topic: str
    timestamp: int | None = None
    seq: int | None = None
    metrics: list[Metric] = field(default_factory=list)

    @property
    def kind(self) -> str:
        parts = self.topic.split("/")
        return "STATE" if parts[1] == "STATE" else parts[2]

    @property
    def device(self) -> str | None:
        parts = self.topic.split("/")
        return parts[4] if len(parts) > 4 else None

    def by_name(self) -> dict[str, Metric]:
        return {m.name: m for m in self.metrics if m.name}


def _metric(data: bytes) -> Metric:
    metric = Metric()
    for number, _wire, raw in _fields(data):
        if number == 1:
            metric.name = raw.decode()
        elif number == 2:
            metric.alias = raw
        elif number == 4:
            metric.datatype = DATATYPES.get(raw, str(raw))
        elif number == 7:
            metric.is_null = bool(raw)
        elif number == 11:
            metric.value = raw - (1 << 64) if raw >= 1 << 63 else raw
        elif number == 12:
            metric.value = struct.unpack("<f", raw)[0]
        elif number == 13:
            metric.value = struct.unpack("<d", raw)[0]
        elif number == 14:
            metric.value = bool(raw)
        elif number == 15:
            metric.value = raw.decode()
    return metric


def decode(topic: str, data: bytes) -> Message:
    message = Message(topic)
    if message.kind == "STATE":
        return message  # a host's JSON, not protobuf (Sparkplug 3.0)
    for number, _wire, raw in _fields(data):
        if number == 1:
            message.timestamp = raw
        elif number == 2:
            message.metrics.append(_metric(raw))
        elif number == 3:
            message.seq = raw
    return message


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def rebirth_command() -> bytes:
    """An NCMD payload asking for a rebirth, as a SCADA host sends it (by name)."""
    name = b"Node Control/Rebirth"
    metric = (b"\x0a" + _encode_varint(len(name)) + name + b"\x20\x0b" + b"\x70\x01")
    return b"\x08" + _encode_varint(int(time.time() * 1000)) + b"\x12" + \
        _encode_varint(len(metric)) + metric


class Consumer:
    """Subscribes to everything under spBv1.0/ and hands decoded messages to the test."""

    def __init__(self, port: int) -> None:
        self.messages: queue.Queue[Message] = queue.Queue()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"scada-{uuid.uuid4()}")
        subscribed = threading.Event()
        self.client.on_connect = lambda c, *_: c.subscribe("spBv1.0/#", 1)
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = lambda _c, _u, m: self.messages.put(
            decode(m.topic, bytes(m.payload)))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not subscribed.wait(10):
            raise AssertionError("the test's Sparkplug consumer could not subscribe")

    def next(self, kind: str | None = None, timeout_s: float = 15.0) -> Message:
        """The next message (of `kind`, skipping others), or fail at the deadline."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {kind or 'Sparkplug'} message in {timeout_s}s")
            try:
                message = self.messages.get(timeout=left)
            except queue.Empty:
                continue
            if kind is None or message.kind == kind:
                return message

    def send(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()

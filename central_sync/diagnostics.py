"""Asking a gateway for its logs, a diagnosis or a restart, and measuring its clock.

Requests are signed like deploy commands, recorded before they are sent (so the gateway's
answer is taken, and only then: central_sync.diagnostics_inbox) and audited. Clock probes are
unsigned (they change nothing); their ids carry a tag only central can make, so a reply is
taken only for a probe central sent, by whichever central process of a scale-out receives it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from central_sync.db import CentralDB
from edge_agent.kernel.contract import (
    DIAGNOSTIC_TYPES,
    MAX_FOLLOW_S,
    ClockProbe,
    ClockReply,
    DiagnoseRequest,
    DiagnosticReply,
    LogBatch,
    LogRequest,
    Rejection,
    RestartCommand,
    Topics,
    decode,
    encode,
)
from edge_agent.kernel.signing import Signer
from edge_agent.kernel.transport import NotConnected, Transport

log = logging.getLogger(__name__)

DiagnosticCommand = LogRequest | DiagnoseRequest | RestartCommand
ACTIONS: dict[type[BaseModel], str] = {LogRequest: "logs", DiagnoseRequest: "diagnose",
                                       RestartCommand: "restart"}
DEFAULT_REPLY_TIMEOUT_S = 20.0
# A clock reply later than this after its probe is refused: the offset is only known to
# within half the round trip, and an old reply says nothing of the clock now.
MAX_PROBE_ROUND_TRIP_S = 10.0
MAX_REMEMBERED = 10_000  # devices whose last probe time is kept; probes answered


class UnknownDevice(LookupError):
    """Central has not heard from the device."""


class DeviceOffline(Exception):
    """The device is not online; the message says since when."""


def describe_age(at: float | None, now: float | None = None) -> str:
    """'12 s ago', '3 min ago', '5 h ago', 'never'."""
    if at is None:
        return "never"
    age = max(0.0, (time.time() if now is None else now) - at)
    for unit, seconds in (("d", 86400), ("h", 3600), ("min", 60)):
        if age >= seconds:
            return f"{int(age // seconds)} {unit} ago"
    return f"{int(age)} s ago"


def require_online(db: CentralDB, device_id: str, offline_after_s: float,
                   now: float | None = None) -> dict[str, Any]:
    """The device's presence row when it is online; UnknownDevice or DeviceOffline, saying
    what to check, otherwise."""
    found = db.device_presence(device_id)
    if found is None:
        raise UnknownDevice(f"central has not heard from {device_id}; `central-sync devices` "
                            "lists the gateways it knows")
    now = time.time() if now is None else now
    last_seen = found["last_seen"]
    if found["state"] != "online" or last_seen is None or now - last_seen > offline_after_s:
        raise DeviceOffline(
            f"{device_id} is offline (last seen {describe_age(last_seen, now)}); it answers "
            "once it is back online: check its power, network and `systemctl status "
            "edge-agent` on the gateway")
    return found


def issue(db: CentralDB, signer: Signer, command: DiagnosticCommand) -> DiagnosticCommand:
    """Sign a request and record it (audited), ready to send; the gateway's answer is taken
    only for a recorded request."""
    signed = signer.signed(command)
    follow_until = None
    detail = ""
    if isinstance(signed, LogRequest):
        follow_until = signed.issued_at + signed.follow_s if signed.follow_s else None
        detail = f"level={signed.level} lines={signed.lines} follow_s={signed.follow_s:g}"
    elif isinstance(signed, RestartCommand):
        detail = f"pipeline={signed.pipeline}" if signed.pipeline else "agent"
    db.record_diagnostic_request(signed.command_id, signed.device_id, ACTIONS[type(signed)],
                                 signed.issued_at, signed.issued_by, follow_until, detail)
    return signed


async def send(db: CentralDB, transport: Transport, signer: Signer, topics: Topics,
               command: DiagnosticCommand) -> DiagnosticCommand:
    """Issue the request (database work in a thread) and publish it to the device's commands
    topic, QoS 1. NotConnected when it cannot be sent (the request is then closed as not
    sent)."""
    signed = await asyncio.to_thread(issue, db, signer, command)
    try:
        await transport.publish(topics.commands(signed.device_id), encode(signed), qos=1)
    except NotConnected as exc:
        await asyncio.to_thread(db.mark_diagnostic_request, signed.command_id, False,
                                f"not sent: {exc}")
        raise
    log.info("diagnostic request sent device=%s action=%s request=%s by=%s", signed.device_id,
             ACTIONS[type(signed)], signed.command_id, signed.issued_by)
    return signed


Answer = DiagnosticReply | LogBatch


async def send_and_follow(db: CentralDB, transport: Transport, signer: Signer, topics: Topics,
                          command: DiagnosticCommand, on_answer: Callable[[Answer], None],
                          timeout_s: float = DEFAULT_REPLY_TIMEOUT_S) -> Answer | None:
    """Send a request and hand each answer to it (log batches, the reply) to `on_answer`
    until the last one: a DiagnosticReply, or a final LogBatch. None when nothing came for
    `timeout_s` (a follow waits its length more)."""
    answers: asyncio.Queue[Answer] = asyncio.Queue(maxsize=1000)
    device_id = command.device_id
    topic = topics.diagnostics(device_id)

    async def collect(_topic: str, payload: bytes) -> None:
        message = decode(payload, expect=DIAGNOSTIC_TYPES, topic_device_id=device_id)
        if isinstance(message, DiagnosticReply | LogBatch) and not answers.full():
            answers.put_nowait(message)
        elif isinstance(message, Rejection):
            log.warning("diagnostic answer rejected topic=%s reason=%s", _topic, message.reason)

    await transport.subscribe(topic, collect, qos=1)
    try:
        signed = await send(db, transport, signer, topics, command)
        follow_s = signed.follow_s if isinstance(signed, LogRequest) else 0.0
        return await _follow(answers, signed.command_id, timeout_s, follow_s, on_answer)
    finally:
        await transport.unsubscribe(topic)


async def _follow(answers: asyncio.Queue[Answer], request_id: str, timeout_s: float,
                  follow_s: float, on_answer: Callable[[Answer], None]) -> Answer | None:
    loop = asyncio.get_running_loop()
    first_deadline = loop.time() + timeout_s
    follow_ends = loop.time() + follow_s + timeout_s
    heard = False
    while True:
        remaining = (follow_ends if heard else first_deadline) - loop.time()
        if remaining <= 0:
            return None
        try:
            async with asyncio.timeout(remaining):
                answer = await answers.get()
        except TimeoutError:
            return None
        if answer.request_id != request_id:
            continue
        heard = True
        on_answer(answer)
        if isinstance(answer, DiagnosticReply) or answer.final:
            return answer


def log_request(device_id: str, by: str, level: str = "INFO", lines: int = 100,
                follow_s: float = 0.0) -> LogRequest:
    """A LogRequest (unsigned); ValueError saying the bound when follow_s is too long."""
    if follow_s > MAX_FOLLOW_S:
        raise ValueError(f"a follow lasts at most {MAX_FOLLOW_S:g} s; ask again to go on")
    return LogRequest(device_id=device_id, issued_by=by, level=level, lines=lines,
                      follow_s=follow_s)


# --- the gateway's clock --------------------------------------------------------------------


@dataclass(frozen=True)
class ClockReading:
    """The gateway's clock minus central's, to within half the round trip."""

    device_id: str
    offset_s: float
    rtt_ms: float
    measured_at: float


def clock_offset(central_sent_at: float, central_received_at: float,
                 device_time: float) -> tuple[float, float]:
    """(offset_s, rtt_ms): the device's time against the middle of the round trip, as NTP
    does with one exchange."""
    offset_s = device_time - (central_sent_at + central_received_at) / 2
    return offset_s, (central_received_at - central_sent_at) * 1000.0


class _TagKey(BaseModel):
    """What central signs to derive the probe tags' key; never sent."""

    purpose: str = "central-sync clock probe ids"


class ClockProbes:
    """Clock probes out and their replies in: at most one probe per device per
    `interval_s`, a reply taken once, only for a probe central made (its tag) and within
    MAX_PROBE_ROUND_TRIP_S. Memory is bounded: MAX_REMEMBERED devices and answered probes."""

    def __init__(self, signer: Signer, interval_s: float,
                 clock: Callable[[], float] = time.time) -> None:
        # Ed25519 signatures are deterministic: every central process holding the key gets
        # the same tag key, and nobody else can.
        self._key = hashlib.sha256(signer.sign(_TagKey()).encode()).digest()
        self.interval_s = interval_s
        self._clock = clock
        self._last_probe: OrderedDict[str, float] = OrderedDict()
        self._answered: OrderedDict[str, float] = OrderedDict()

    def _tag(self, device_id: str, sent_at: float, nonce: str) -> str:
        text = f"{device_id}\x1f{sent_at!r}\x1f{nonce}".encode()
        return hmac.new(self._key, text, hashlib.sha256).hexdigest()[:32]

    def due(self, device_id: str) -> ClockProbe | None:
        """A probe to send now, or None when the device had one within `interval_s`."""
        now = self._clock()
        last = self._last_probe.get(device_id)
        if last is not None and now - last < self.interval_s:
            return None
        _remember(self._last_probe, device_id, now)
        nonce = secrets.token_hex(8)
        return ClockProbe(device_id=device_id, central_sent_at=now,
                          probe_id=f"{nonce}-{self._tag(device_id, now, nonce)}")

    def forget(self, device_id: str) -> None:
        """The probe was not sent: the next status may try again."""
        self._last_probe.pop(device_id, None)

    def accept(self, reply: ClockReply) -> ClockReading | str:
        """The reading a reply gives, or why it is refused."""
        now = self._clock()
        nonce, _, tag = reply.probe_id.partition("-")
        expected = self._tag(reply.device_id, reply.central_sent_at, nonce)
        if not hmac.compare_digest(tag, expected):
            return f"probe {reply.probe_id[:20]} is not one central sent to {reply.device_id}"
        if reply.probe_id in self._answered:
            return f"probe {reply.probe_id[:20]} was answered already"
        if not 0 <= now - reply.central_sent_at <= MAX_PROBE_ROUND_TRIP_S:
            return (f"reply came {now - reply.central_sent_at:.1f} s after its probe, more "
                    f"than {MAX_PROBE_ROUND_TRIP_S:g} s")
        _remember(self._answered, reply.probe_id, now)
        offset_s, rtt_ms = clock_offset(reply.central_sent_at, now, reply.device_time)
        return ClockReading(reply.device_id, offset_s, rtt_ms, now)


def _remember(seen: OrderedDict[str, float], key: str, at: float) -> None:
    seen[key] = at
    seen.move_to_end(key)
    while len(seen) > MAX_REMEMBERED:
        seen.popitem(last=False)

"""The service's side of diagnostics: what gateways send on their diagnostics topic (log lines,
replies, clock readings), taken only for central's own requests and probes and within a rate
per gateway; and the clock probe sent on a gateway's status."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from pydantic import BaseModel

from central_sync.config import ClockConfig
from central_sync.db import CentralDB, DatabaseError
from central_sync.db.diagnostics import DiagnosticRefused
from central_sync.diagnostics import MAX_REMEMBERED, ClockProbes, ClockReading
from central_sync.ratelimit import TokenBuckets
from edge_agent.kernel.contract import (
    DIAGNOSTIC_TYPES,
    ClockReply,
    DeviceStatus,
    DiagnosticReply,
    LogBatch,
    Topics,
    encode,
)
from edge_agent.kernel.signing import Signer
from edge_agent.kernel.transport import NotConnected, Transport

log = logging.getLogger(__name__)

LEAF = "diagnostics"
# Per gateway, in units of one message plus one per log line: a follow sends about 50 lines
# a second; a burst holds two full tails (2 x 500 lines) and their replies.
UNITS_PER_S_PER_DEVICE = 60.0
UNIT_BURST_PER_DEVICE = 1200


class Counts(Protocol):
    """The service's counters this inbox adds to (IngestStats)."""

    diagnostic_replies: int
    log_lines_stored: int
    clock_readings: int
    clock_probes: int


DbCall = Callable[..., Awaitable[Any]]
Decode = Callable[[str, bytes, tuple[type[BaseModel], ...]], BaseModel | None]
Reject = Callable[[str, str, str], None]
Failed = Callable[[str, str, Exception], None]


class DiagnosticsInbox:
    """Handles `{prefix}/devices/+/diagnostics` for the service, and probes clocks.

    Every message costs its gateway units of a token bucket before any database work, so a
    gateway flooding its topic costs central at most its rate; memory is bounded by the
    buckets' and probes' limits whatever device ids arrive."""

    def __init__(self, db: CentralDB, clock: ClockConfig, signer: Signer, transport: Transport,
                 topics: Topics, counts: Counts, *, db_call: DbCall, decode: Decode,
                 reject: Reject, failed: Failed) -> None:
        self.db = db
        self.clock = clock
        self.transport = transport
        self.topics = topics
        self.counts = counts
        self.probes = ClockProbes(signer, clock.probe_interval_s)
        self.buckets = TokenBuckets(UNITS_PER_S_PER_DEVICE, UNIT_BURST_PER_DEVICE,
                                    max_keys=MAX_REMEMBERED)
        self._db_call = db_call
        self._decode = decode
        self._reject = reject
        self._failed = failed
        db.clock_warn_offset_s = clock.warn_offset_s

    async def on_message(self, topic: str, payload: bytes) -> None:
        message = self._decode(topic, payload, DIAGNOSTIC_TYPES)
        if message is None:
            return
        assert isinstance(message, DiagnosticReply | LogBatch | ClockReply)
        cost = 1 + len(message.lines) if isinstance(message, LogBatch) else 1
        if self.buckets.take(message.device_id, cost) < cost:
            self._reject(topic, LEAF, f"over the rate of {UNITS_PER_S_PER_DEVICE:g} messages "
                         f"and log lines a second per gateway")
            return
        if isinstance(message, ClockReply):
            await self._on_clock_reply(topic, message)
        elif isinstance(message, LogBatch):
            await self._on_log_batch(topic, message)
        else:
            await self._on_reply(topic, message)

    async def _on_log_batch(self, topic: str, batch: LogBatch) -> None:
        try:
            stored = await self._db_call(self.db.store_log_batch, batch)
        except DiagnosticRefused as exc:
            self._reject(topic, LEAF, str(exc))
            return
        except DatabaseError as exc:
            self._failed(topic, f"log lines not stored request={batch.request_id}", exc)
            return
        self.counts.log_lines_stored += stored
        log.debug("log lines stored device=%s request=%s lines=%d new=%d dropped=%d final=%s",
                  batch.device_id, batch.request_id, len(batch.lines), stored, batch.dropped,
                  batch.final)

    async def _on_reply(self, topic: str, reply: DiagnosticReply) -> None:
        try:
            stored = await self._db_call(self.db.store_diagnostic_reply, reply)
        except DiagnosticRefused as exc:
            self._reject(topic, LEAF, str(exc))
            return
        except DatabaseError as exc:
            self._failed(topic, f"diagnostic reply not stored request={reply.request_id}", exc)
            return
        if stored:
            self.counts.diagnostic_replies += 1
            log.info("diagnostic reply device=%s action=%s request=%s ok=%s %s",
                     reply.device_id, reply.action, reply.request_id, reply.ok, reply.detail)

    async def _on_clock_reply(self, topic: str, reply: ClockReply) -> None:
        reading = self.probes.accept(reply)
        if not isinstance(reading, ClockReading):
            self._reject(topic, LEAF, reading)
            return
        try:
            await self._db_call(self.db.record_clock, reading.device_id, reading.offset_s,
                                reading.rtt_ms, reading.measured_at)
        except DatabaseError as exc:
            self._failed(topic, "clock offset not stored", exc)
            return
        self.counts.clock_readings += 1
        level = logging.WARNING if abs(reading.offset_s) > self.clock.warn_offset_s else \
            logging.DEBUG
        log.log(level, "clock offset device=%s offset_s=%+.3f rtt_ms=%.1f warn_offset_s=%g",
                reading.device_id, reading.offset_s, reading.rtt_ms, self.clock.warn_offset_s)

    async def on_status(self, status: DeviceStatus) -> None:
        """Probe an online gateway's clock, at most once per clock.probe_interval_s."""
        if status.state != "online":
            return
        probe = self.probes.due(status.device_id)
        if probe is None:
            return
        try:
            # QoS 0: a probe held for an offline gateway would only measure the wait.
            await self.transport.publish(self.topics.commands(status.device_id),
                                         encode(probe), qos=0)
        except NotConnected:
            self.probes.forget(status.device_id)
            return
        self.counts.clock_probes += 1

"""Uplink: drains the buffer to central in batches and forgets records only on central's ack.

A batch not acked in time is sent again (central's insert is idempotent, so a duplicate costs
only bandwidth). The pipelines never wait for the uplink.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

from edge_agent.buffer import Buffer, StoredRecord
from edge_agent.config import UplinkConfig
from edge_agent.kernel.contract import (
    BatchAck,
    RecordTooLarge,
    Rejection,
    Topics,
    UplinkHealth,
    chunked_batch_id,
    decode,
    encode,
    encode_uplink_batch,
    split_record,
)
from edge_agent.kernel.transport import NotConnected, Transport

log = logging.getLogger(__name__)

MAX_ACK_TIMEOUT_S = 60.0  # resends back off up to this while central or the broker struggles
RATE_WINDOW_S = 60.0  # records_per_s is the rate over the last minute
EVICTION_REPORT_EVERY_S = 2.0  # evictions become `eviction` records this often at most
BROKER_WAIT_S = 1.0  # how often the uplink looks again while the broker is away
IDLE_WAIT_S = 0.2  # with nothing to send, look again this often (or when woken by an ack)
BASE64_PAYLOAD_SHARE = 3 / 4  # base64 grows a piece by a third: keep it within batch_max_bytes


@dataclass
class _InFlight:
    seqs: list[int]
    sent_at: float


@dataclass
class UplinkStats:
    acked_records: int = 0
    resent_batches: int = 0
    rejected_messages: int = 0
    records_too_large: int = 0  # dropped: larger than central accepts (MAX_RECORD_BYTES)
    round_trip_ms: float | None = None
    _rate_window: list[tuple[float, int]] = field(default_factory=list)

    def record_ack(self, count: int, round_trip_s: float) -> None:
        now = time.monotonic()
        self.acked_records += count
        self.round_trip_ms = round(round_trip_s * 1000, 1)
        self._rate_window.append((now, count))
        self._rate_window = [(t, n) for t, n in self._rate_window if now - t <= RATE_WINDOW_S]

    def records_per_s(self) -> float:
        now = time.monotonic()
        recent = [(t, n) for t, n in self._rate_window if now - t <= RATE_WINDOW_S]
        if not recent:
            return 0.0
        span = max(now - recent[0][0], 1.0)
        return round(sum(n for _, n in recent) / span, 2)


class Uplink:
    def __init__(self, device_id: str, topics: Topics, transport: Transport, buffer: Buffer,
                 config: UplinkConfig) -> None:
        self.device_id = device_id
        self._topics = topics
        self._transport = transport
        self._buffer = buffer
        self._config = config
        self._in_flight: dict[str, _InFlight] = {}
        self._ack_timeout_s = config.ack_timeout_s
        self._wake = asyncio.Event()
        self._next_eviction_report = 0.0
        self._highest_sent = 0  # no ack may delete a seq above it: it was never sent
        self.stats = UplinkStats()

    def health(self) -> UplinkHealth:
        return UplinkHealth(
            connected=self._transport.connected,
            acked_records=self.stats.acked_records,
            records_per_s=self.stats.records_per_s(),
            round_trip_ms=self.stats.round_trip_ms,
        )

    async def run(self) -> None:
        await self._transport.subscribe(self._topics.ack(self.device_id), self._on_ack)
        while True:
            if not self._transport.connected:
                await self._forget_in_flight()
                await self._transport.wait_connected(BROKER_WAIT_S)
                continue
            await self._expire_unacked()
            await self._report_evictions()
            if len(self._in_flight) < self._config.max_in_flight and await self._send_next():
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(IDLE_WAIT_S):
                    await self._wake.wait()

    async def _forget_in_flight(self) -> None:
        """Acks may have been lost with the connection: everything in flight is sent again."""
        if self._in_flight:
            self._in_flight.clear()
            await self._buffer.release()

    async def _expire_unacked(self) -> None:
        deadline = time.monotonic() - self._ack_timeout_s
        expired = [b for b, flight in self._in_flight.items() if flight.sent_at < deadline]
        for batch_id in expired:
            flight = self._in_flight.pop(batch_id)
            await self._buffer.release(flight.seqs)
            self.stats.resent_batches += 1
            log.info("uplink batch not acked in %.0f s, will resend device=%s batch=%s "
                     "records=%d", self._ack_timeout_s, self.device_id, batch_id,
                     len(flight.seqs))
        if expired:
            # Central or the broker is struggling: give it longer before the next resend.
            self._ack_timeout_s = min(self._ack_timeout_s * 2, MAX_ACK_TIMEOUT_S)

    async def _report_evictions(self) -> None:
        if time.monotonic() >= self._next_eviction_report:
            self._next_eviction_report = time.monotonic() + EVICTION_REPORT_EVERY_S
            await self._buffer.take_eviction_report()

    async def _send_next(self) -> bool:
        records = await self._buffer.next_batch(self._config.batch_size,
                                                self._config.batch_max_bytes)
        if not records:
            return False
        if records[0].size_bytes > self._config.batch_max_bytes:
            return await self._send_in_chunks(records[0])
        batch_id, payload = encode_uplink_batch(
            self.device_id,
            ((r.seq, r.type, r.created_at, r.payload_json) for r in records),
            compress=self._config.compress,
        )
        seqs = [r.seq for r in records]
        self._in_flight[batch_id] = _InFlight(seqs, time.monotonic())
        self._highest_sent = max(self._highest_sent, *seqs)
        try:
            await self._transport.publish(self._topics.uplink(self.device_id), payload, qos=1)
        except NotConnected as exc:
            self._in_flight.pop(batch_id, None)
            await self._buffer.release(seqs)
            log.info("uplink paused device=%s reason=%s", self.device_id, exc)
            return False
        log.debug("uplink sent device=%s batch=%s first_seq=%d count=%d bytes=%d",
                  self.device_id, batch_id, seqs[0], len(seqs), len(payload))
        return True

    async def _send_in_chunks(self, record: StoredRecord) -> bool:
        """A record larger than a batch may be goes as pieces that central puts together."""
        try:
            pieces = split_record(self.device_id, record.seq, record.type, record.created_at,
                                  record.payload_json,
                                  int(self._config.batch_max_bytes * BASE64_PAYLOAD_SHARE))
        except RecordTooLarge as exc:
            # Central would refuse every try: keeping it would stop the uplink behind it.
            await self._buffer.ack([record.seq])
            self.stats.records_too_large += 1
            log.error("uplink dropped a record central cannot accept device=%s seq=%d: %s",
                      self.device_id, record.seq, exc)
            return True
        batch_id = chunked_batch_id(record.seq)
        self._in_flight[batch_id] = _InFlight([record.seq], time.monotonic())
        self._highest_sent = max(self._highest_sent, record.seq)
        try:
            for piece in pieces:
                await self._transport.publish(self._topics.uplink(self.device_id),
                                              encode(piece), qos=1)
        except NotConnected as exc:
            self._in_flight.pop(batch_id, None)
            await self._buffer.release([record.seq])
            log.info("uplink paused device=%s reason=%s", self.device_id, exc)
            return False
        log.debug("uplink sent device=%s seq=%d in %d chunks", self.device_id, record.seq,
                  len(pieces))
        return True

    async def _on_ack(self, topic: str, payload: bytes) -> None:
        message = decode(payload, expect=(BatchAck,), topic_device_id=self.device_id)
        if isinstance(message, Rejection):
            self.stats.rejected_messages += 1
            log.warning("ack rejected device=%s reason=%s", self.device_id, message.reason)
            return
        assert isinstance(message, BatchAck)
        # Acks are not authenticated: a forged or corrupted one may name seqs this uplink has
        # not sent yet, or that no database holds; those records stay.
        await self._buffer.ack([s for s in message.acked_seqs if 0 < s <= self._highest_sent])
        flight = self._in_flight.pop(message.batch_id, None)
        if flight is not None:
            self.stats.record_ack(len(message.acked_seqs), time.monotonic() - flight.sent_at)
            self._ack_timeout_s = self._config.ack_timeout_s
        self._wake.set()

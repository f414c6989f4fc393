"""Large records received in pieces: kept as bytes, counted per record, joined once complete.

Each record being received has one row in record_assemblies (its count, pieces and bytes so
far, and the bytes it reserves against its device's limit), so a new piece costs the same
whatever came before it; the pieces are read once, when the last one arrives.
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from central_sync.db.connection import Connection, serialised
from edge_agent.kernel.contract import (
    RecordChunk,
    Rejection,
    UplinkBatch,
    chunked_batch_id,
    record_from_pieces,
)

log = logging.getLogger(__name__)

# Records a device may have partly received at once: more than its uplink ever has in flight
# (max_in_flight <= 64), few enough that summing them on every piece stays cheap.
MAX_PENDING_RECORDS_PER_DEVICE = 100

# What store_record_chunk returns: the seqs to ack once the record is stored, None while
# pieces are missing, or a Rejection saying why the piece was refused (not kept).
PieceOutcome = list[int] | Rejection | None


@dataclass(frozen=True)
class ExpiredRecord:
    """A large record dropped unfinished: no new piece came within the expiry time."""

    device_id: str
    seq: int
    pieces: int
    count: int
    bytes: int


class RecordPartQueries:
    """Mixed into CentralDB: `_db` is its connection and `_store_batch_unlocked` its ingest."""

    _db: Connection
    _store_batch_unlocked: Callable[[UplinkBatch, float | None], list[int]]  # CentralDB's

    @serialised
    def store_record_chunk(self, chunk: RecordChunk, pending_bytes_limit: int,
                           received_at: float | None = None) -> PieceOutcome:
        """Keep one piece of a large record; once all are here, store the record.

        A piece that would take its device's partly received records beyond
        `pending_bytes_limit` bytes (pieces x piece size), or beyond
        MAX_PENDING_RECORDS_PER_DEVICE records, is refused; the pieces already kept stay.
        """
        now = time.time() if received_at is None else received_at
        try:
            data = base64.b64decode(chunk.data_b64, validate=True)
        except (ValueError, binascii.Error) as exc:
            return Rejection(f"record {chunk.seq} piece {chunk.index} is not base64: {exc}")
        with self._db.atomic():
            if self._record_stored(chunk.device_id, chunk.seq):
                return [chunk.seq]
            assembly = self._assembly(chunk)
            reserved = max(chunk.count * len(data), assembly["reserved_bytes"] if assembly else 0)
            refusal = self._over_limit(chunk, assembly, reserved, pending_bytes_limit)
            if refusal is not None:
                return refusal
            if assembly is None:
                self._db.execute(
                    "INSERT INTO record_assemblies (device_id, seq, type, created_at, "
                    "payload_sha256, count, pieces, bytes, reserved_bytes, started_at, last_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, 0, 0, ?, ?, ?)",
                    (chunk.device_id, chunk.seq, chunk.type, chunk.created_at,
                     chunk.payload_sha256, chunk.count, reserved, now, now))
            added = self._db.execute(
                "INSERT OR IGNORE INTO record_parts (device_id, seq, idx, data) "
                "VALUES (?, ?, ?, ?)", (chunk.device_id, chunk.seq, chunk.index, data))
            self._db.execute(
                "UPDATE record_assemblies SET pieces = pieces + ?, bytes = bytes + ?, "
                "reserved_bytes = ?, last_at = ? WHERE device_id = ? AND seq = ?",
                (added, len(data) if added else 0, reserved, now, chunk.device_id, chunk.seq))
            pieces = (assembly["pieces"] if assembly else 0) + added
            if pieces < chunk.count:
                return None
            raw = b"".join(bytes(row["data"]) for row in self._db.query(
                "SELECT data FROM record_parts WHERE device_id = ? AND seq = ? ORDER BY idx",
                (chunk.device_id, chunk.seq)))
            self._forget_assembly(chunk.device_id, chunk.seq)
        record = record_from_pieces(chunk, raw, chunk.count)
        if isinstance(record, Rejection):
            log.warning("large record dropped device=%s seq=%d reason=%s", chunk.device_id,
                        chunk.seq, record.reason)
            return record
        batch = UplinkBatch(device_id=chunk.device_id, batch_id=chunked_batch_id(chunk.seq),
                            records=[record])
        return self._store_batch_unlocked(batch, now)

    @serialised
    def expire_record_assemblies(self, idle_since: float) -> list[ExpiredRecord]:
        """Drop every partly received record with no new piece since `idle_since`."""
        with self._db.atomic():
            expired = [ExpiredRecord(row["device_id"], row["seq"], row["pieces"], row["count"],
                                     row["bytes"]) for row in self._db.query(
                "SELECT device_id, seq, pieces, count, bytes FROM record_assemblies "
                "WHERE last_at < ?", (idle_since,))]
            for record in expired:
                self._forget_assembly(record.device_id, record.seq)
        return expired

    @serialised
    def pending_record_bytes(self, device_id: str) -> int:
        """Bytes a device's partly received records reserve against its limit."""
        row = next(self._db.query(
            "SELECT COALESCE(SUM(reserved_bytes), 0) AS held FROM record_assemblies "
            "WHERE device_id = ?", (device_id,)))
        return int(row["held"])

    def _record_stored(self, device_id: str, seq: int) -> bool:
        return next(self._db.query("SELECT 1 AS found FROM records WHERE device_id = ? AND "
                                   "seq = ?", (device_id, seq)), None) is not None

    def _assembly(self, chunk: RecordChunk) -> dict[str, Any] | None:
        """The record's assembly row; one begun with another count or hash starts over."""
        row = next(self._db.query(
            "SELECT count, payload_sha256, pieces, reserved_bytes FROM record_assemblies "
            "WHERE device_id = ? AND seq = ?", (chunk.device_id, chunk.seq)), None)
        if row is not None and (row["count"], row["payload_sha256"]) != (
                chunk.count, chunk.payload_sha256):
            log.warning("large record started over device=%s seq=%d: its pieces changed "
                        "(count %d -> %d)", chunk.device_id, chunk.seq, row["count"],
                        chunk.count)
            self._forget_assembly(chunk.device_id, chunk.seq)
            return None
        return row

    def _over_limit(self, chunk: RecordChunk, assembly: dict[str, Any] | None, reserved: int,
                    pending_bytes_limit: int) -> Rejection | None:
        held = next(self._db.query(
            "SELECT COUNT(*) AS records, COALESCE(SUM(reserved_bytes), 0) AS held "
            "FROM record_assemblies WHERE device_id = ?", (chunk.device_id,)))
        before = assembly["reserved_bytes"] if assembly else 0
        if held["held"] - before + reserved > pending_bytes_limit:
            return Rejection(
                f"record {chunk.seq} piece {chunk.index} refused: device {chunk.device_id} "
                f"has {held['held']} bytes of unfinished records, this one needs {reserved}, "
                f"the limit is {pending_bytes_limit} (ingest.pending_record_bytes_per_device);"
                " the device sends it again later")
        if assembly is None and held["records"] >= MAX_PENDING_RECORDS_PER_DEVICE:
            return Rejection(
                f"record {chunk.seq} refused: device {chunk.device_id} has "
                f"{held['records']} unfinished records, the most it may have; the device "
                "sends it again later")
        return None

    def _forget_assembly(self, device_id: str, seq: int) -> None:
        self._db.execute("DELETE FROM record_parts WHERE device_id = ? AND seq = ?",
                         (device_id, seq))
        self._db.execute("DELETE FROM record_assemblies WHERE device_id = ? AND seq = ?",
                         (device_id, seq))

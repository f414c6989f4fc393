"""Diagnostics as central stores them: the requests it sent to gateways, the log lines and the
newest diagnosis they answered with, each gateway's clock offset, and the records whose times
cannot be trusted (part of CentralDB).

A gateway's answer is taken only for a request central issued to that gateway; its log lines
are bounded (the newest MAX_LOG_LINES_PER_DEVICE per gateway, trimmed as they are stored).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from central_sync.db.connection import Connection, serialised
from edge_agent.kernel.contract import (
    LOG_LEVELS,
    DiagnosticReply,
    LogBatch,
    LogLine,
    UplinkBatch,
)

MAX_LOG_LINES_PER_DEVICE = 2000
DEFAULT_CLOCK_WARN_OFFSET_S = 2.0
# A log batch is taken this long after its follow ended (or after a plain tail was asked for):
# the last lines are on their way when the follow ends.
LOG_BATCH_MARGIN_S = 60.0
MAX_REASON_CHARS = 200


class DiagnosticRefused(Exception):
    """A gateway's answer that central did not ask that gateway for (another gateway's request,
    an unknown one, a follow that ended); it changed nothing."""


@dataclass(frozen=True)
class DiagnosticRequest:
    """A request central sent to a gateway: logs, diagnose or restart, and its answer."""

    request_id: str
    device_id: str
    action: str
    issued_at: float
    issued_by: str
    follow_until: float | None
    answered_at: float | None
    ok: bool | None
    detail: str


@dataclass(frozen=True)
class Diagnosis:
    """The newest diagnosis a gateway sent: versions, effective configuration, states."""

    device_id: str
    request_id: str
    at: float
    ok: bool
    detail: str
    report: dict[str, Any]


def levels_from(level: str) -> tuple[str, ...]:
    """`level` and the levels above it: what a filter at `level` shows."""
    return LOG_LEVELS[LOG_LEVELS.index(level):]


def suspect_reason(created_at: float, received_at: float, offset_s: float | None,
                   warn_offset_s: float) -> str | None:
    """Why a record's time cannot be trusted, or None: its gateway's clock was measured off by
    more than `warn_offset_s`, or the record says it was made further than that (beyond the
    measured offset) in central's future."""
    if offset_s is not None and abs(offset_s) > warn_offset_s:
        return f"the gateway's clock was {offset_s:+.1f} s off central's when it was stored"
    ahead_s = created_at - received_at - (offset_s or 0.0)
    if ahead_s > warn_offset_s:
        return f"made {ahead_s:.1f} s in central's future by its own time"
    return None


def _line_key(line: LogLine) -> str:
    """Identifies a line, so a tail asked twice (or two follows at once) stores it once."""
    text = f"{line.at!r}\x1f{line.level}\x1f{line.logger}\x1f{line.message}"
    return hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()[:24]


def _request(row: dict[str, Any]) -> DiagnosticRequest:
    return DiagnosticRequest(
        request_id=row["request_id"], device_id=row["device_id"], action=row["action"],
        issued_at=row["issued_at"], issued_by=row["issued_by"],
        follow_until=row["follow_until"], answered_at=row["answered_at"],
        ok=None if row["ok"] is None else bool(row["ok"]), detail=row["detail"])


class DiagnosticQueries:
    """Diagnostic requests, log lines, diagnoses, clocks and suspect records; mixed into
    CentralDB, whose connection, lock and audit it uses."""

    _db: Connection
    _audit: Callable[[str, str, str, str], None]  # CentralDB's: actor, action, subject, detail
    dialect: str
    # Central's clock.warn_offset_s; the service sets it from its configuration.
    clock_warn_offset_s: float = DEFAULT_CLOCK_WARN_OFFSET_S

    @serialised
    def record_diagnostic_request(self, request_id: str, device_id: str, action: str,
                                  issued_at: float, issued_by: str,
                                  follow_until: float | None = None, detail: str = "") -> None:
        """Record a request before it is sent, so the gateway's answer is taken; audited."""
        with self._db.atomic():
            self._db.execute(
                "INSERT INTO diagnostic_requests (request_id, device_id, action, issued_at, "
                "issued_by, follow_until) VALUES (?, ?, ?, ?, ?, ?)",
                (request_id, device_id, action, issued_at, issued_by, follow_until))
            self._audit(issued_by, f"device.{action}", device_id,
                        f"request={request_id}{' ' + detail if detail else ''}")

    @serialised
    def mark_diagnostic_request(self, request_id: str, ok: bool, detail: str) -> None:
        """Close a request from central's side (e.g. it could not be sent)."""
        self._db.execute(
            "UPDATE diagnostic_requests SET answered_at = ?, ok = ?, detail = ? "
            "WHERE request_id = ?", (time.time(), int(ok), detail, request_id))

    @serialised
    def diagnostic_request(self, request_id: str) -> DiagnosticRequest | None:
        row = next(self._db.query("SELECT * FROM diagnostic_requests WHERE request_id = ?",
                                  (request_id,)), None)
        return _request(row) if row else None

    @serialised
    def diagnostic_requests(self, device_id: str, limit: int = 10) -> list[DiagnosticRequest]:
        """The newest requests sent to a gateway, newest first."""
        return [_request(row) for row in self._db.query(
            "SELECT * FROM diagnostic_requests WHERE device_id = ? "
            "ORDER BY issued_at DESC LIMIT ?", (device_id, limit))]

    def _issued(self, device_id: str, request_id: str, action: str) -> DiagnosticRequest:
        """The request an answer names, when central issued it to this gateway for this
        action; DiagnosticRefused otherwise."""
        row = next(self._db.query("SELECT * FROM diagnostic_requests WHERE request_id = ?",
                                  (request_id,)), None)
        if row is None:
            raise DiagnosticRefused(f"central issued no request {request_id}")
        if row["device_id"] != device_id:
            raise DiagnosticRefused(f"request {request_id} was issued to {row['device_id']}")
        if row["action"] != action:
            raise DiagnosticRefused(f"request {request_id} asked for {row['action']}, "
                                    f"not {action}")
        return _request(row)

    @serialised
    def store_log_batch(self, batch: LogBatch, received_at: float | None = None) -> int:
        """Store a gateway's log lines answering a log request central issued to it, while
        its follow lasts (and LOG_BATCH_MARGIN_S after); keeps the newest
        MAX_LOG_LINES_PER_DEVICE lines of the gateway. Returns the lines new here."""
        received_at = time.time() if received_at is None else received_at
        with self._db.atomic():
            request = self._issued(batch.device_id, batch.request_id, "logs")
            ends = max(request.follow_until or 0.0, request.issued_at) + LOG_BATCH_MARGIN_S
            if received_at > ends:
                raise DiagnosticRefused(f"log request {batch.request_id} ended "
                                        f"{received_at - ends + LOG_BATCH_MARGIN_S:.0f} s ago")
            inserted = self._db.executemany(
                "INSERT OR IGNORE INTO device_logs (device_id, at, level, logger, message, "
                "request_id, received_at, line_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(batch.device_id, line.at, line.level, line.logger, line.message,
                  batch.request_id, received_at, _line_key(line)) for line in batch.lines])
            if batch.final:
                self._db.execute(
                    "UPDATE diagnostic_requests SET answered_at = ?, ok = 1 "
                    "WHERE request_id = ? AND answered_at IS NULL",
                    (received_at, batch.request_id))
            self._trim_logs(batch.device_id)
        return max(inserted, 0)

    def _trim_logs(self, device_id: str) -> None:
        """Drop a gateway's lines older than its newest MAX_LOG_LINES_PER_DEVICE."""
        oldest_kept = next(self._db.query(
            "SELECT at, id FROM device_logs WHERE device_id = ? ORDER BY at DESC, id DESC "
            "LIMIT 1 OFFSET ?", (device_id, MAX_LOG_LINES_PER_DEVICE - 1)), None)
        if oldest_kept is not None:
            self._db.execute(
                "DELETE FROM device_logs WHERE device_id = ? AND (at < ? OR (at = ? AND id < ?))",
                (device_id, oldest_kept["at"], oldest_kept["at"], oldest_kept["id"]))

    @serialised
    def device_logs(self, device_id: str, level: str = "DEBUG",
                    limit: int = 200) -> list[dict[str, Any]]:
        """The newest `limit` lines of a gateway at `level` or above, oldest first."""
        levels = levels_from(level)
        rows = list(self._db.query(
            "SELECT at, level, logger, message, request_id, received_at FROM device_logs "
            f"WHERE device_id = ? AND level IN ({', '.join('?' * len(levels))}) "
            "ORDER BY at DESC, id DESC LIMIT ?", (device_id, *levels, limit)))
        rows.reverse()
        return rows

    @serialised
    def count_device_logs(self, device_id: str) -> int:
        return next(self._db.query("SELECT COUNT(*) AS n FROM device_logs WHERE device_id = ?",
                                   (device_id,)))["n"]

    @serialised
    def store_diagnostic_reply(self, reply: DiagnosticReply,
                               received_at: float | None = None) -> bool:
        """Store a gateway's answer to a request central issued to it; a diagnosis becomes
        the gateway's newest. Returns False when the request was already answered (a
        duplicate); raises DiagnosticRefused, changing nothing, for a request not its own."""
        received_at = time.time() if received_at is None else received_at
        with self._db.atomic():
            self._issued(reply.device_id, reply.request_id, reply.action)
            answered = self._db.execute(
                "UPDATE diagnostic_requests SET answered_at = ?, ok = ?, detail = ? "
                "WHERE request_id = ? AND answered_at IS NULL",
                (received_at, int(reply.ok), reply.detail, reply.request_id))
            if not answered:
                return False
            if reply.action == "diagnose":
                self._db.execute(
                    "INSERT INTO device_diagnoses (device_id, request_id, at, ok, detail, "
                    "report) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (device_id) DO UPDATE SET "
                    "request_id = excluded.request_id, at = excluded.at, ok = excluded.ok, "
                    "detail = excluded.detail, report = excluded.report "
                    "WHERE excluded.at >= device_diagnoses.at",
                    (reply.device_id, reply.request_id, received_at, int(reply.ok),
                     reply.detail, json.dumps(reply.report)))
        return True

    @serialised
    def device_diagnosis(self, device_id: str) -> Diagnosis | None:
        row = next(self._db.query("SELECT * FROM device_diagnoses WHERE device_id = ?",
                                  (device_id,)), None)
        if row is None:
            return None
        return Diagnosis(device_id=row["device_id"], request_id=row["request_id"],
                         at=row["at"], ok=bool(row["ok"]), detail=row["detail"],
                         report=json.loads(row["report"]))

    @serialised
    def device_presence(self, device_id: str) -> dict[str, Any] | None:
        """A device's reported state, last_seen and clock, without the fleet view's counts;
        None when central has not heard from it."""
        return next(self._db.query(
            "SELECT device_id, state, last_seen, clock_offset_s, clock_rtt_ms, "
            "clock_measured_at FROM devices WHERE device_id = ?", (device_id,)), None)

    # --- the gateway's clock --------------------------------------------------------------

    @serialised
    def record_clock(self, device_id: str, offset_s: float, rtt_ms: float,
                     measured_at: float) -> bool:
        """Store a measured clock offset on a device central knows; False when it knows none."""
        return self._db.execute(
            "UPDATE devices SET clock_offset_s = ?, clock_rtt_ms = ?, clock_measured_at = ? "
            "WHERE device_id = ?", (offset_s, rtt_ms, measured_at, device_id)) == 1

    def _flag_suspect_records(self, batch: UplinkBatch, device: dict[str, Any] | None,
                              received_at: float) -> None:
        """At ingest, inside its transaction: note the records whose times are suspect. Only
        flagged records cost a write."""
        offset_s = device.get("clock_offset_s") if device else None
        flagged = []
        for record in batch.records:
            reason = suspect_reason(record.created_at, received_at, offset_s,
                                    self.clock_warn_offset_s)
            if reason is not None:
                flagged.append((batch.device_id, record.seq, reason[:MAX_REASON_CHARS]))
        if flagged:  # most batches: none, and no statement at all
            self._db.executemany("INSERT OR IGNORE INTO suspect_records (device_id, seq, "
                                 "reason) VALUES (?, ?, ?)", flagged)

    @serialised
    def suspect_record(self, device_id: str, seq: int) -> str | None:
        """Why a record's time is suspect, or None when it is not."""
        row = next(self._db.query(
            "SELECT reason FROM suspect_records WHERE device_id = ? AND seq = ?",
            (device_id, seq)), None)
        return row["reason"] if row else None

    @serialised
    def count_suspect_records(self, device_id: str) -> int:
        return next(self._db.query(
            "SELECT COUNT(*) AS n FROM suspect_records WHERE device_id = ?", (device_id,)))["n"]

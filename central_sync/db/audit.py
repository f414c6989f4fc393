"""The audit log (part of CentralDB): who did what, when, as a hash chain. Each entry holds its
seq, the previous entry's hash and its own, so an entry altered, deleted, inserted or reordered
after it was written shows when the chain is verified."""

from __future__ import annotations

import datetime
import hashlib
import itertools
import json
import logging
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from central_sync.db.connection import NUL_STAND_IN, Connection, serialised

log = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64  # the prev_hash of entry 1
# pg_advisory_xact_lock key: one writer at a time takes the chain's head, across processes.
AUDIT_CHAIN_LOCK_KEY = 0x61756474
VERIFY_PAGE = 1000  # entries read at a time while verifying
MAX_FINDINGS = 100  # findings kept in a report; the rest are only counted
MAX_FILTER_CHARS = 200
COLUMNS = ("seq", "at", "actor", "action", "subject", "detail", "prev_hash", "entry_hash")
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM audit_log"
_INSERT = f"INSERT INTO audit_log ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"


def entry_hash(seq: int, at: float, actor: str, action: str, subject: str, detail: str,
               prev_hash: str) -> str:
    """sha256 hex of the entry's canonical encoding: a compact JSON array (ASCII, `at` as the
    shortest float that reads back exactly)."""
    canonical = json.dumps([int(seq), float(at), actor, action, subject, detail, prev_hash],
                           separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def chained_row(head: tuple[int, str], at: float, actor: str, action: str, subject: str,
                detail: str) -> tuple[Any, ...]:
    """The columns of the entry that follows `head` (its seq and entry_hash), as _INSERT
    takes them, the text as it will be stored."""
    seq, prev_hash = head[0] + 1, head[1]
    actor, action, subject, detail = map(_text, (actor, action, subject, detail))
    digest = entry_hash(seq, at, actor, action, subject, detail, prev_hash)
    return (seq, at, actor, action, subject, detail, prev_hash, digest)


def _text(value: object) -> str:
    # Stored as hashed: PostgreSQL text cannot hold NUL, so neither database gets one.
    return str(value).replace("\x00", NUL_STAND_IN)


@dataclass(frozen=True)
class AuditFilter:
    """Which entries to list or export; every field optional. `action` and `subject` are
    prefixes ("model." matches model.publish and model.deploy, "surface-defects@" every
    version of that model); `until` is exclusive."""

    actor: str | None = None
    action: str | None = None
    since: float | None = None
    until: float | None = None
    subject: str | None = None

    @classmethod
    def from_text(cls, actor: str | None = None, action: str | None = None,
                  since: str | None = None, until: str | None = None,
                  subject: str | None = None) -> AuditFilter:
        """A filter from what a person typed: dates (2026-03-01, the whole day for `until`)
        or times (2026-03-01T14:30) in central's local time. ValueError says what is wrong."""
        for name, value in (("actor", actor), ("action", action), ("subject", subject)):
            if value and len(value) > MAX_FILTER_CHARS:
                raise ValueError(f"{name} is longer than {MAX_FILTER_CHARS} characters")
        start, end = _moment(since, "since", False), _moment(until, "until", True)
        if start is not None and end is not None and start >= end:
            raise ValueError("since must be before until")
        return cls(actor or None, action or None, start, end, subject or None)

    def where(self) -> tuple[str, list[Any]]:
        clauses, params = ["seq IS NOT NULL"], []
        if self.actor:
            clauses.append("actor = ?")
            params.append(self.actor)
        for column in ("action", "subject"):  # literal prefixes: LIKE's wildcards and case
            prefix = getattr(self, column)     # rules differ between the databases
            if prefix:
                clauses.append(f"substr({column}, 1, {len(prefix)}) = ?")
                params.append(prefix)
        for bound, clause in (("since", "at >= ?"), ("until", "at < ?")):
            if getattr(self, bound) is not None:
                clauses.append(clause)
                params.append(getattr(self, bound))
        return " WHERE " + " AND ".join(clauses), params

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def _moment(text: str | None, name: str, end_of_day: bool) -> float | None:
    if not text:
        return None
    try:
        moment = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{name} must be a date like 2026-03-01 or a time like "
                         f"2026-03-01T14:30, got {text[:40]!r}") from None
    if end_of_day and len(text.strip()) == 10:  # a date: up to the end of that day
        moment += datetime.timedelta(days=1)
    return moment.timestamp()


@dataclass(frozen=True)
class ChainFinding:
    """One thing wrong with the chain; `seq` is the first entry it concerns."""

    seq: int | None
    problem: str  # altered | missing | broken_link | out_of_order | unchained | anchor
    message: str


@dataclass
class ChainReport:
    """What verifying the chain found. `verified_up_to`: every entry up to this seq is intact
    and linked (the head's seq when nothing is wrong)."""

    entries: int = 0
    head_seq: int = 0
    head_hash: str = GENESIS_HASH
    findings: list[ChainFinding] = field(default_factory=list)
    more_findings: int = 0  # found but not kept (past MAX_FINDINGS)
    verified_up_to: int = 0

    @property
    def intact(self) -> bool:
        return not self.findings and not self.more_findings

    @property
    def first_broken(self) -> int | None:
        return next((f.seq for f in self.findings if f.seq is not None), None)

    def add(self, finding: ChainFinding) -> None:
        if len(self.findings) < MAX_FINDINGS:
            self.findings.append(finding)
        else:
            self.more_findings += 1


def verify_chain(entries: Iterable[dict[str, Any]],
                 start: tuple[int, str] = (0, GENESIS_HASH)) -> ChainReport:
    """Walk chained entries in seq order; a finding for every altered entry (its hash does not
    match its contents), every run of missing seqs (deleted entries), every entry whose
    prev_hash is not its predecessor's hash (inserted, replaced or reordered before it).
    `start`: the (seq, entry_hash) the entries follow, when they are not the whole chain."""
    report = ChainReport(head_seq=start[0], head_hash=start[1])
    expected, previous = start[0] + 1, start[1]
    broken = False
    for entry in entries:
        seq = entry["seq"]
        report.entries += 1
        problems = []
        if seq > expected:
            first = f"entry {expected}" if seq == expected + 1 \
                else f"entries {expected} to {seq - 1}"
            problems.append(ChainFinding(expected, "missing",
                                         f"{first} missing (deleted): entry {seq} comes next"))
        elif seq < expected:
            problems.append(ChainFinding(seq, "out_of_order",
                                         f"entry {seq} is out of order after entry {expected - 1}"))
        elif entry["prev_hash"] != previous:
            problems.append(ChainFinding(
                seq, "broken_link",
                f"entry {seq} does not follow entry {seq - 1}: its prev_hash is not that "
                f"entry's hash (entry {seq - 1} was replaced, or entries were inserted or "
                "reordered)" if seq > 1 else
                "entry 1 does not start the chain: its prev_hash is not the genesis value"))
        recomputed = entry_hash(seq, entry["at"], entry["actor"], entry["action"],
                                entry["subject"], entry["detail"], entry["prev_hash"] or "")
        if recomputed != entry["entry_hash"]:
            problems.append(ChainFinding(
                seq, "altered", f"entry {seq} was altered: its contents do not match its hash "
                f"({entry['action']} by {entry['actor']})"))
        for problem in problems:
            report.add(problem)
        if problems and not broken:
            broken = True
            report.verified_up_to = min(p.seq or seq for p in problems) - 1
        expected, previous = max(expected, seq + 1), entry["entry_hash"]
        report.head_seq, report.head_hash = seq, entry["entry_hash"]
    if not broken:
        report.verified_up_to = report.head_seq
    return report


def _through(where: tuple[str, list[Any]], seq: int | None) -> tuple[str, list[Any]]:
    return where if seq is None else (where[0] + " AND seq <= ?", [*where[1], seq])


def parse_anchor(text: str) -> tuple[int, str]:
    """'1234:9f86d0…' (a seq and the entry hash recorded earlier) -> (1234, '9f86d0…')."""
    seq, _, digest = text.partition(":")
    if not seq.isdigit() or len(digest) != 64 or any(c not in "0123456789abcdef"
                                                        for c in digest):
        raise ValueError(f"{text[:80]!r} is not SEQ:HASH, e.g. 1234:<64 hex digits> as "
                         "`central-sync audit verify` printed it")
    return int(seq), digest


class AuditQueries:
    """Mixed into CentralDB, whose connection and lock it uses."""

    _db: Connection
    _lock: threading.RLock
    dialect: str

    @serialised
    def audit(self, actor: str, action: str, subject: str, detail: str = "") -> None:
        self._audit(actor, action, subject, detail)

    def _audit(self, actor: str, action: str, subject: str, detail: str) -> None:
        """Append an entry to the chain, inside the caller's transaction if one is open (the
        entry then commits or rolls back with the change it records)."""
        with self._db.atomic():
            row = chained_row(self._lock_chain_head(), time.time(), actor or "unknown", action,
                              subject, detail)
            self._db.execute(_INSERT, row)

    def _lock_chain_head(self) -> tuple[int, str]:
        """(seq, entry_hash) of the chain's last entry, (0, GENESIS_HASH) when empty; no other
        writer can append until this transaction ends (SQLite: atomic() holds the write lock
        from its start; PostgreSQL: an advisory lock, for every process on the database)."""
        if self.dialect == "postgresql":
            self._db.execute("SELECT pg_advisory_xact_lock(?)", (AUDIT_CHAIN_LOCK_KEY,))
        row = next(self._db.query("SELECT seq, entry_hash FROM audit_log WHERE seq IS NOT NULL "
                                  "ORDER BY seq DESC LIMIT 1"), None)
        return (row["seq"], row["entry_hash"]) if row else (0, GENESIS_HASH)

    def _chain_unchained_audit(self) -> int:
        """Chain the entries written without a seq (before schema 13, or by an older
        central-sync beside this one), oldest first, after the head; one transaction.
        Returns how many; 0 and no lock taken when there are none."""
        if next(self._db.query("SELECT 1 AS found FROM audit_log WHERE seq IS NULL LIMIT 1"),
                None) is None:
            return 0
        # The row's physical id: the entries have no key of their own before they are chained.
        row_id, by_id = ("CAST(ctid AS TEXT)", "ctid = CAST(? AS tid)") \
            if self.dialect == "postgresql" else ("rowid", "rowid = ?")
        with self._db.atomic():
            head = self._lock_chain_head()
            rows = list(self._db.query(
                f"SELECT {row_id} AS row_id, at, actor, action, subject, detail FROM audit_log "
                "WHERE seq IS NULL ORDER BY at, actor, action, subject, detail"))
            chained = []
            for row in rows:
                chained.append(chained_row(head, float(row["at"]), row["actor"], row["action"],
                                           row["subject"], row["detail"]))
                head = (chained[-1][0], chained[-1][-1])
            # By id: an older central-sync beside this one may be adding unchained entries.
            self._db.executemany(f"DELETE FROM audit_log WHERE {by_id}",
                                 [(row["row_id"],) for row in rows])
            self._db.executemany(_INSERT, chained)
        log.info("audit log: chained %d entries written without a seq db=%s", len(rows),
                 self._db.name)
        return len(rows)

    @serialised
    def list_audit(self, limit: int = 100, filters: AuditFilter | None = None,
                   before_seq: int | None = None) -> list[dict[str, Any]]:
        """Chained entries, newest first; `before_seq` pages on (entries older than it)."""
        where, params = (filters or AuditFilter()).where()
        if before_seq is not None:
            where, params = where + " AND seq < ?", [*params, before_seq]
        return list(self._db.query(f"{_SELECT}{where} ORDER BY seq DESC LIMIT ?",
                                   (*params, limit)))

    def iter_audit(self, filters: AuditFilter | None = None, through_seq: int | None = None,
                   page: int = VERIFY_PAGE, after_seq: int | None = None
                   ) -> Iterator[dict[str, Any]]:
        """Every matching chained entry after `after_seq` up to `through_seq` (None: no
        bound), oldest first, read a page at a time (for exports and verification)."""
        where, params = _through((filters or AuditFilter()).where(), through_seq)
        after = after_seq
        while True:
            more, more_params = ("", []) if after is None else (" AND seq > ?", [after])
            with self._lock:
                rows = list(self._db.query(f"{_SELECT}{where}{more} ORDER BY seq LIMIT ?",
                                           (*params, *more_params, page)))
            yield from rows
            if len(rows) < page:
                return
            after = rows[-1]["seq"]

    @serialised
    def count_audit(self, filters: AuditFilter | None = None,
                    through_seq: int | None = None) -> int:
        where, params = _through((filters or AuditFilter()).where(), through_seq)
        return next(self._db.query(f"SELECT COUNT(*) AS n FROM audit_log{where}", params))["n"]

    @serialised
    def audit_head_seq(self) -> int:
        """The seq of the chain's last entry; 0 when the log is empty."""
        return next(self._db.query("SELECT MAX(seq) AS n FROM audit_log"))["n"] or 0

    @serialised
    def audit_actions(self, limit: int = 500) -> list[str]:
        """The distinct actions in the log (model.publish, user.add, ...), sorted."""
        return [row["action"] for row in self._db.query(
            "SELECT DISTINCT action FROM audit_log ORDER BY action LIMIT ?", (limit,))]

    def verify_audit_chain(self, anchor: tuple[int, str] | None = None,
                           start: tuple[int, str] | None = None) -> ChainReport:
        """Verify the whole chain (read a page at a time, so writers go on meanwhile); entries
        without a seq are findings too. `anchor`: (seq, hash) recorded earlier, which must
        still be there, unchanged: only that shows entries cut off the end. `start`: verify
        only from the entry of this (seq, hash) on, the ones before verified already (its
        hash is checked again, and it is taken as the anchor)."""
        if start is None:
            report = verify_chain(self.iter_audit())
        else:
            anchor, entries = start, self.iter_audit(after_seq=start[0] - 1)
            first = next(entries, None)
            report = ChainReport() if first is None or first["seq"] != start[0] else \
                verify_chain(itertools.chain([first], entries),
                             (start[0] - 1, first["prev_hash"]))
        with self._lock:
            unchained = next(self._db.query(
                "SELECT COUNT(*) AS n FROM audit_log WHERE seq IS NULL"))["n"]
            anchored = next(self._db.query("SELECT entry_hash FROM audit_log WHERE seq = ?",
                                           (anchor[0],)), None) if anchor else None
        if unchained:
            report.add(ChainFinding(None, "unchained", f"{unchained} entries have no seq: "
                                    "written by hand or by a central-sync older than schema "
                                    "13; central-sync chains them when it next starts"))
        if anchor and anchored is None:
            report.add(ChainFinding(anchor[0], "anchor", f"entry {anchor[0]} that you "
                                    "recorded is gone: entries were deleted from the end"))
        elif anchor and anchored is not None and anchored["entry_hash"] != anchor[1]:
            report.add(ChainFinding(anchor[0], "anchor", f"entry {anchor[0]} no longer has "
                                    "the hash you recorded: the chain was rewritten up to it"))
        return report

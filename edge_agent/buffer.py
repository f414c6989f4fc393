"""The store-and-forward buffer: everything that must leave the gateway waits here in SQLite.

One thread owns the SQLite connection (WAL mode, synchronous=FULL) and runs every statement;
appends waiting in its queue are committed together in one transaction, so the asyncio loop
never blocks on disk and many small records cost one fsync. A record is deleted only when
central has acknowledged its seq, or evicted (lowest priority, oldest first) when the quota
is exceeded; evictions are counted per kind and reported to central as `eviction` records.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from edge_agent.kernel.contract import (
    RECORD_DEFECT,
    RECORD_DEPLOYMENT_EVENT,
    RECORD_EVICTION,
    RECORD_MODEL_STATS,
    RECORD_MODEL_WATCH,
    RECORD_PREDICTION,
    RECORD_RECOMMENDATION,
    RECORD_RECOMMENDATION_ANSWER,
    RECORD_RECOMMENDATION_OUTCOME,
    RECORD_REJECT_WRITE,
    RECORD_SAMPLE,
    RECORD_SETPOINT_WRITE,
    RECORD_SOURCE_GAP,
    BufferHealth,
)

log = logging.getLogger(__name__)

# Higher is evicted later; every record kind the agent writes has one.
DEFAULT_PRIORITIES: dict[str, int] = {
    RECORD_EVICTION: 100,
    RECORD_DEPLOYMENT_EVENT: 90,
    RECORD_SETPOINT_WRITE: 85,  # the audit of what the agent did to the line
    RECORD_REJECT_WRITE: 85,  # the same audit for the reject output
    RECORD_RECOMMENDATION_ANSWER: 80,  # an operator's decision is small and not repeatable
    RECORD_RECOMMENDATION_OUTCOME: 75,
    RECORD_DEFECT: 70,
    RECORD_SOURCE_GAP: 65,
    RECORD_MODEL_WATCH: 64,  # one per model and watch window; may carry an alert
    RECORD_RECOMMENDATION: 60,
    RECORD_MODEL_STATS: 45,  # one record sums a whole interval of predictions
    RECORD_SAMPLE: 30,
    RECORD_PREDICTION: 20,
}
DEFAULT_PRIORITY = 50  # a record kind configured nowhere: between model stats and defects
DEFAULT_KEEP = frozenset({RECORD_EVICTION, RECORD_DEPLOYMENT_EVENT})
MAX_RANGES_PER_REPORT = 2000  # keeps one eviction record well under a batch's size
_MAX_COALESCED_JOBS = 512  # appends committed in one transaction at most: bounds its latency
NO_SIZE_LIMIT = 1 << 30  # a batch bounded by its record count only
BUSY_TIMEOUT_MS = 5000  # another process (`edge-agent status`) reading the file: wait for it
EVICTION_SCAN_ROWS = 256  # candidates read at once while evicting over quota
# Freed pages go back to the file system past either many pages or a good share of the file.
COMPACT_FREE_PAGES, COMPACT_MIN_FREE_PAGES, COMPACT_FREE_SHARE = 4096, 64, 1 / 4

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    type TEXT NOT NULL,
    priority INTEGER NOT NULL,
    created_at REAL NOT NULL,
    payload TEXT NOT NULL,
    size_bytes INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS records_eviction ON records (priority, seq);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS evictions (
    first_seq INTEGER PRIMARY KEY,
    last_seq INTEGER NOT NULL,
    type TEXT NOT NULL,
    reported INTEGER NOT NULL DEFAULT 0
);
"""


@dataclass(frozen=True)
class BufferPolicy:
    """How much disk the buffer may use and what goes first when it is full."""

    quota_bytes: int
    priorities: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_PRIORITIES))
    keep: frozenset[str] = DEFAULT_KEEP

    def priority(self, record_type: str) -> int:
        return self.priorities.get(record_type, DEFAULT_PRIORITY)


class NewRecord(NamedTuple):
    """A record to append; a tuple because producers make many of them."""

    type: str
    payload: dict[str, Any]
    created_at: float


class StoredRecord(NamedTuple):
    """A buffered record as the uplink sends it: the payload stays serialised JSON."""

    seq: int
    type: str
    created_at: float
    payload_json: str
    size_bytes: int


@dataclass
class _Job:
    """Work for the buffer thread: `fn(*args)`, or for appends (fn None) the records in args[0],
    which the thread commits together with other appends waiting in the queue."""

    fn: Callable[..., Any] | None
    args: tuple[Any, ...]
    future: Future[Any]


class Buffer:
    """Durable queue of uplink records with a disk quota; safe to use from any thread."""

    def __init__(self, path: Path, policy: BufferPolicy | int, synchronous: str = "FULL") -> None:
        self.path = Path(path)
        self.policy = policy if isinstance(policy, BufferPolicy) else BufferPolicy(policy)
        self._synchronous = synchronous
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._conn: sqlite3.Connection | None = None
        self._in_flight: set[int] = set()
        self._used_bytes = 0
        self._depth = 0
        self._cursor = 0  # highest seq handed out since the last release
        self._thread = threading.Thread(target=self._work, name="buffer-writer", daemon=True)
        self._thread.start()
        self._call(self._open).result()

    # --- async API (used by the agent) ---

    async def append(self, type_: str, payload: dict[str, Any],
                     created_at: float | None = None) -> int:
        record = NewRecord(type_, payload, time.time() if created_at is None else created_at)
        seqs = await asyncio.wrap_future(self._call(None, [record]))
        return seqs[0]

    async def next_batch(self, max_records: int,
                         max_bytes: int = NO_SIZE_LIMIT) -> list[StoredRecord]:
        """The oldest records not in flight (marking them in flight), bounded by count and size."""
        return await asyncio.wrap_future(self._call(self._next_batch, max_records, max_bytes))

    async def ack(self, seqs: Iterable[int]) -> int:
        """Central stored these: delete them."""
        return await asyncio.wrap_future(self._call(self._ack, list(seqs)))

    async def release(self, seqs: Iterable[int] | None = None) -> None:
        """These (or all) in-flight records were not acked: hand them out again."""
        await asyncio.wrap_future(self._call(self._release, None if seqs is None else list(seqs)))

    async def take_eviction_report(self) -> int:
        """Turn unreported evictions into `eviction` records; returns how many were made."""
        return await asyncio.wrap_future(self._call(self._take_eviction_report))

    async def health(self) -> BufferHealth:
        return await asyncio.wrap_future(self._call(self._health))

    async def close(self) -> None:
        await asyncio.wrap_future(self._call(self._close))
        self._jobs.put(None)
        await asyncio.to_thread(self._thread.join)

    # --- the same from synchronous code (CLI, tests, benchmarks) ---

    def append_many_sync(self, records: list[NewRecord]) -> list[int]:
        return self._call(None, records).result()

    def next_batch_sync(self, max_records: int,
                        max_bytes: int = NO_SIZE_LIMIT) -> list[StoredRecord]:
        return self._call(self._next_batch, max_records, max_bytes).result()

    def ack_sync(self, seqs: list[int]) -> int:
        return self._call(self._ack, seqs).result()

    def health_sync(self) -> BufferHealth:
        return self._call(self._health).result()

    def close_sync(self) -> None:
        self._call(self._close).result()
        self._jobs.put(None)
        self._thread.join()

    # --- the buffer thread ---

    def _call(self, fn: Callable[..., Any] | None, *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self._jobs.put(_Job(fn, args, future))
        return future

    def _work(self) -> None:
        carried: list[_Job | None] = []  # a job taken while coalescing, run next
        while True:
            job = carried.pop() if carried else self._jobs.get()
            if job is None:
                return
            if not job.future.set_running_or_notify_cancel():
                continue  # the caller gave up before the job started
            if job.fn is not None:
                _run(job)
                continue
            appends = [job]
            while len(appends) < _MAX_COALESCED_JOBS:
                try:
                    following = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if following is None or following.fn is not None:
                    carried.append(following)
                    break
                if following.future.set_running_or_notify_cancel():
                    appends.append(following)
            self._append_jobs(appends)

    def _append_jobs(self, jobs: list[_Job]) -> None:
        """Commit the records of several append calls in one transaction.

        Each call's records are serialised first, so one caller's bad record (NaN, say) fails
        that caller alone.
        """
        ready: list[tuple[_Job, list[tuple[Any, ...]]]] = []
        for job in jobs:
            try:
                ready.append((job, self._rows(job.args[0])))
            except (TypeError, ValueError) as exc:
                job.future.set_exception(exc)
        if not ready:
            return
        try:
            with self._transaction():
                results = [self._insert_rows(rows) for _, rows in ready]
                self._evict_over_quota()
        except Exception as exc:
            self._count_records()
            for job, _ in ready:
                job.future.set_exception(exc)
            return
        for (job, _), seqs in zip(ready, results, strict=True):
            job.future.set_result(seqs)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        # Must precede the first table: lets freed pages go back to the file system.
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL in WAL mode: a committed record survives power loss, not only a killed process.
        conn.execute(f"PRAGMA synchronous={self._synchronous}")
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        conn.executescript(_SCHEMA)
        self._conn = conn
        self._count_records()

    def _count_records(self) -> None:
        """Depth and bytes are kept in memory; this sets them from the table."""
        self._depth, self._used_bytes = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(size_bytes), 0) FROM records").fetchone()

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError(f"buffer {self.path} is closed")
        return self._conn

    def _rows(self, records: list[NewRecord]) -> list[tuple[Any, ...]]:
        priority = self.policy.priority
        dumps = _compact_json
        rows = []
        for type_, body, created_at in records:
            payload = dumps(body)
            rows.append((type_, priority(type_), created_at, payload, len(payload)))
        return rows

    def _insert_rows(self, rows: list[tuple[Any, ...]]) -> list[int]:
        if not rows:
            return []
        self._db.executemany(
            "INSERT INTO records (type, priority, created_at, payload, size_bytes)"
            " VALUES (?, ?, ?, ?, ?)", rows)
        # Inside our write transaction AUTOINCREMENT hands out consecutive seqs.
        last = self._db.execute("SELECT last_insert_rowid()").fetchone()[0]
        self._used_bytes += sum(row[4] for row in rows)
        self._depth += len(rows)
        return list(range(last - len(rows) + 1, last + 1))

    def _next_batch(self, max_records: int, max_bytes: int) -> list[StoredRecord]:
        # Records at or below the cursor were handed out already (in flight or acked), unless
        # released, which moves the cursor back; so a scan never wades through the window.
        batch: list[StoredRecord] = []
        size = 0
        while len(batch) < max_records:
            rows = self._db.execute(
                "SELECT seq, type, created_at, payload, size_bytes FROM records WHERE seq > ?"
                " ORDER BY seq LIMIT ?", (self._cursor, max_records)).fetchall()
            if not rows:
                break
            for row in rows:
                if row[0] in self._in_flight:
                    self._cursor = row[0]
                    continue
                if batch and (size + row[4] > max_bytes or len(batch) == max_records):
                    return self._mark(batch)
                batch.append(StoredRecord._make(row))
                size += row[4]
                self._cursor = row[0]
        return self._mark(batch)

    def _mark(self, batch: list[StoredRecord]) -> list[StoredRecord]:
        self._in_flight.update(r.seq for r in batch)
        return batch

    def _ack(self, seqs: list[int]) -> int:
        deleted = 0
        with self._transaction():
            for first, last in _runs(sorted(set(seqs))):
                freed = self._db.execute(
                    "SELECT COALESCE(SUM(size_bytes), 0) FROM records WHERE seq BETWEEN ? AND ?",
                    (first, last)).fetchone()[0]
                deleted += self._db.execute(
                    "DELETE FROM records WHERE seq BETWEEN ? AND ?", (first, last)).rowcount
                self._used_bytes -= freed
        self._depth -= deleted
        self._in_flight.difference_update(seqs)
        self._compact_if_worthwhile()
        return deleted

    def _release(self, seqs: list[int] | None) -> None:
        if seqs is None:
            self._in_flight.clear()
            self._cursor = 0
        elif seqs:
            self._in_flight.difference_update(seqs)
            self._cursor = min(self._cursor, min(seqs) - 1)

    def _evict_over_quota(self) -> None:
        """Delete lowest-priority, oldest records (never a kept kind, never one in flight)."""
        if self._used_bytes <= self.policy.quota_bytes:
            return
        keep = sorted(self.policy.keep | {RECORD_EVICTION})
        marks = ",".join("?" * len(keep))
        evicted: list[tuple[int, str]] = []
        cursor = (-1, 0)  # (priority, seq) of the last candidate looked at
        while self._used_bytes > self.policy.quota_bytes:
            rows = self._db.execute(
                f"SELECT priority, seq, type, size_bytes FROM records WHERE type NOT IN ({marks})"
                " AND (priority > ? OR (priority = ? AND seq > ?))"
                " ORDER BY priority, seq LIMIT ?",
                (*keep, cursor[0], *cursor, EVICTION_SCAN_ROWS)).fetchall()
            if not rows:
                log.error("buffer over quota but nothing may be evicted used=%d quota=%d",
                          self._used_bytes, self.policy.quota_bytes)
                break
            cursor = (rows[-1][0], rows[-1][1])
            for _priority, seq, type_, size in rows:
                if self._used_bytes <= self.policy.quota_bytes:
                    break
                if seq in self._in_flight:
                    continue
                self._db.execute("DELETE FROM records WHERE seq = ?", (seq,))
                self._used_bytes -= size
                self._depth -= 1
                evicted.append((seq, type_))
        if evicted:
            self._record_evictions(evicted)

    def _record_evictions(self, evicted: list[tuple[int, str]]) -> None:
        by_type: dict[str, int] = {}
        for seq, type_ in sorted(evicted):
            by_type[type_] = by_type.get(type_, 0) + 1
            # Extend the latest unreported range of this kind when the seq follows it.
            extended = self._db.execute(
                "UPDATE evictions SET last_seq = ? WHERE reported = 0 AND type = ?"
                " AND last_seq = ?", (seq, type_, seq - 1)).rowcount
            if not extended:
                self._db.execute("INSERT INTO evictions (first_seq, last_seq, type)"
                                 " VALUES (?, ?, ?)", (seq, seq, type_))
        for type_, count in by_type.items():
            self._db.execute(
                "INSERT INTO counters (name, value) VALUES (?, ?)"
                " ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                (f"evicted:{type_}", count))
        log.warning("buffer over quota evicted=%s quota_bytes=%d", by_type,
                    self.policy.quota_bytes)

    def _take_eviction_report(self) -> int:
        made = 0
        with self._transaction():
            while True:
                ranges = self._db.execute(
                    "SELECT first_seq, last_seq, type FROM evictions WHERE reported = 0"
                    " ORDER BY first_seq LIMIT ?", (MAX_RANGES_PER_REPORT,)).fetchall()
                if not ranges:
                    break
                by_type: dict[str, int] = {}
                for first, last, type_ in ranges:
                    by_type[type_] = by_type.get(type_, 0) + last - first + 1
                payload = {"ranges": [list(r) for r in ranges], "by_kind": by_type}
                self._insert_rows(self._rows([NewRecord(RECORD_EVICTION, payload, time.time())]))
                self._db.executemany("UPDATE evictions SET reported = 1 WHERE first_seq = ?",
                                     [(r[0],) for r in ranges])
                made += 1
            self._db.execute("DELETE FROM evictions WHERE reported = 1")
        return made

    def _health(self) -> BufferHealth:
        depth = self._depth
        row = self._db.execute("SELECT created_at FROM records ORDER BY seq LIMIT 1").fetchone()
        oldest = row[0] if row else None
        evicted = {
            name.split(":", 1)[1]: value
            for name, value in self._db.execute(
                "SELECT name, value FROM counters WHERE name LIKE 'evicted:%'")
        }
        return BufferHealth(
            depth=depth,
            oldest_age_s=None if oldest is None else max(0.0, time.time() - oldest),
            bytes_used=self._used_bytes,
            quota_bytes=self.policy.quota_bytes,
            evicted=sum(evicted.values()),
            evicted_by_kind=evicted,
        )

    def _compact_if_worthwhile(self) -> None:
        """Give freed pages back once they are a good share of the file, then trim the WAL."""
        free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        total = self._db.execute("PRAGMA page_count").fetchone()[0]
        if free > COMPACT_FREE_PAGES or (free > COMPACT_MIN_FREE_PAGES
                                         and free > total * COMPACT_FREE_SHARE):
            # executescript steps the pragma to the end; execute() would free a single page.
            self._db.executescript("PRAGMA incremental_vacuum;")
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


def _runs(seqs: list[int]) -> Iterable[tuple[int, int]]:
    """Contiguous runs of sorted seqs as (first, last): acks are mostly one run per batch."""
    if not seqs:
        return
    first = last = seqs[0]
    for seq in seqs[1:]:
        if seq != last + 1:
            yield first, last
            first = seq
        last = seq
    yield first, last


_compact_json = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def _run(job: _Job) -> None:
    try:
        job.future.set_result(job.fn(*job.args))
    except Exception as exc:  # handed to the caller, who decides
        job.future.set_exception(exc)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK when the block raises."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._conn.execute("COMMIT" if exc_type is None else "ROLLBACK")

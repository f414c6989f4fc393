"""The store-and-forward buffer: everything that must leave the gateway waits here in SQLite.

One thread owns the SQLite connection (WAL mode) and runs every statement, so the asyncio loop
never blocks on disk. A record is deleted only when central has acknowledged its seq.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.contract import (
    RECORD_DEPLOYMENT_EVENT,
    RECORD_PREDICTION,
    BufferHealth,
    UplinkRecord,
)

log = logging.getLogger(__name__)

# Lower numbers are evicted first when the quota is exceeded.
PRIORITY_BY_TYPE = {RECORD_PREDICTION: 10, RECORD_DEPLOYMENT_EVENT: 90}
DEFAULT_PRIORITY = 50

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
"""


@dataclass(frozen=True)
class NewRecord:
    type: str
    payload: dict[str, Any]
    created_at: float


class Buffer:
    """Durable queue of uplink records, with a disk quota enforced by eviction."""

    def __init__(self, path: Path, quota_bytes: int) -> None:
        self.path = Path(path)
        self.quota_bytes = quota_bytes
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="buffer")
        self._conn: sqlite3.Connection | None = None
        self._executor.submit(self._open).result()

    # --- async API (used by the agent) ---

    async def append(self, type_: str, payload: dict[str, Any], created_at: float | None = None
                     ) -> int:
        record = NewRecord(type_, payload, created_at if created_at is not None else time.time())
        seqs = await self._run(self.append_many_sync, [record])
        return seqs[0]

    async def next_batch(self, limit: int, exclude: set[int]) -> list[UplinkRecord]:
        return await self._run(self.next_batch_sync, limit, exclude)

    async def ack(self, seqs: list[int]) -> int:
        return await self._run(self.ack_sync, seqs)

    async def health(self) -> BufferHealth:
        return await self._run(self.health_sync)

    async def close(self) -> None:
        await self._run(self._close)
        self._executor.shutdown(wait=True)

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # --- blocking implementation (runs on the buffer thread only) ---

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a killed process; only power loss may drop the last commit.
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.executescript(_SCHEMA)
        self._conn = conn

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError(f"buffer {self.path} is closed")
        return self._conn

    def append_many_sync(self, records: list[NewRecord]) -> list[int]:
        seqs = []
        with self._transaction():
            for record in records:
                payload = json.dumps(record.payload, separators=(",", ":"), allow_nan=False)
                cursor = self._db.execute(
                    "INSERT INTO records (type, priority, created_at, payload, size_bytes)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (record.type, PRIORITY_BY_TYPE.get(record.type, DEFAULT_PRIORITY),
                     record.created_at, payload, len(payload)),
                )
                seqs.append(int(cursor.lastrowid or 0))
            self._evict_over_quota()
        return seqs

    def next_batch_sync(self, limit: int, exclude: set[int]) -> list[UplinkRecord]:
        """The oldest records not already in flight, in seq order."""
        batch: list[UplinkRecord] = []
        after = 0
        while len(batch) < limit:
            rows = self._db.execute(
                "SELECT seq, type, created_at, payload FROM records WHERE seq > ?"
                " ORDER BY seq LIMIT ?",
                (after, limit + len(exclude)),
            ).fetchall()
            if not rows:
                break
            for seq, type_, created_at, payload in rows:
                after = seq
                if seq not in exclude:
                    batch.append(UplinkRecord(seq=seq, type=type_, created_at=created_at,
                                              payload=json.loads(payload)))
                    if len(batch) == limit:
                        break
        return batch

    def ack_sync(self, seqs: list[int]) -> int:
        if not seqs:
            return 0
        with self._transaction():
            deleted = 0
            for start in range(0, len(seqs), 500):
                chunk = seqs[start:start + 500]
                marks = ",".join("?" * len(chunk))
                cursor = self._db.execute(f"DELETE FROM records WHERE seq IN ({marks})", chunk)
                deleted += cursor.rowcount
        return deleted

    def health_sync(self) -> BufferHealth:
        depth, oldest, used = self._db.execute(
            "SELECT COUNT(*), MIN(created_at), COALESCE(SUM(size_bytes), 0) FROM records"
        ).fetchone()
        return BufferHealth(
            depth=depth,
            oldest_age_s=None if oldest is None else max(0.0, time.time() - oldest),
            bytes_used=used,
            quota_bytes=self.quota_bytes,
            evicted=self._counter("evicted"),
        )

    def _evict_over_quota(self) -> None:
        used = self._db.execute("SELECT COALESCE(SUM(size_bytes), 0) FROM records").fetchone()[0]
        evicted = 0
        while used > self.quota_bytes:
            row = self._db.execute(
                "SELECT seq, size_bytes FROM records ORDER BY priority, seq LIMIT 1"
            ).fetchone()
            if row is None:
                break
            self._db.execute("DELETE FROM records WHERE seq = ?", (row[0],))
            used -= row[1]
            evicted += 1
        if evicted:
            self._db.execute(
                "INSERT INTO counters (name, value) VALUES ('evicted', ?)"
                " ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                (evicted,),
            )
            log.warning("buffer over quota evicted=%d quota_bytes=%d", evicted, self.quota_bytes)

    def _counter(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._conn.execute("COMMIT" if exc_type is None else "ROLLBACK")

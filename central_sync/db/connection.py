"""Database connections for the repository: SQLite (embedded, the default) or PostgreSQL.

Both take the same plain SQL with `?` placeholders and `INSERT OR IGNORE`; the PostgreSQL side
rewrites those two forms (`%s`, `ON CONFLICT DO NOTHING`). What differs beyond that (JSON
functions, upserts) the repository asks for by `dialect`. Rows come back as dicts.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Literal, ParamSpec, Protocol, TypeVar

from sqlite_utils import Database

log = logging.getLogger(__name__)

SQLITE_PREFIX = "sqlite:///"
POSTGRES_PREFIXES = ("postgresql://", "postgres://")

Dialect = Literal["sqlite", "postgresql"]


P = ParamSpec("P")
R = TypeVar("R")


def serialised(method: Callable[P, R]) -> Callable[P, R]:
    """One call at a time on the repository's one connection (its `_lock`)."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with args[0]._lock:  # type: ignore[attr-defined]
            return method(*args, **kwargs)

    return wrapper


class DatabaseUrlError(ValueError):
    """The database URL names no database this version can open; the message says which."""


def _driver_errors() -> tuple[type[Exception], ...]:
    try:
        import psycopg
    except ImportError:
        return ()
    return (psycopg.Error,)


# What a failed database call raises, whichever the database: callers catch this.
DatabaseError: tuple[type[Exception], ...] = (sqlite3.Error, DatabaseUrlError,
                                              *_driver_errors())


class Connection(Protocol):
    dialect: Dialect
    name: str  # for logs: a path, or the URL without its password

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int: ...

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> int: ...

    def query(self, sql: str, params: Sequence[Any] = ()) -> Iterator[dict[str, Any]]: ...

    def atomic(self) -> AbstractContextManager[Any]: ...

    def close(self) -> None: ...


def open_connection(target: str | Path, busy_timeout_ms: int = 5000) -> Connection:
    """A connection for a path or sqlite:///PATH (SQLite) or postgresql://... (PostgreSQL)."""
    text = str(target)
    if text.startswith(POSTGRES_PREFIXES):
        return PostgresConnection(text)
    if "://" in text and not text.startswith(SQLITE_PREFIX):
        raise DatabaseUrlError(
            f"database {redact(text)} is neither sqlite:///PATH nor postgresql://USER@HOST/DB")
    return SQLiteConnection(Path(text.removeprefix(SQLITE_PREFIX)), busy_timeout_ms)


def redact(url: str) -> str:
    """The URL with any password replaced, for logs and messages."""
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


class SQLiteConnection:
    """SQLite in WAL mode through sqlite-utils, autocommit outside `atomic()`."""

    dialect: Dialect = "sqlite"

    def __init__(self, path: Path, busy_timeout_ms: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.name = str(path)
        conn = sqlite3.connect(path, timeout=busy_timeout_ms / 1000, check_same_thread=False,
                               isolation_level=None)
        self._db = Database(conn)
        self._db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        self._db.enable_wal()
        self._db.execute("PRAGMA synchronous = NORMAL")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._db.execute(sql, tuple(params)).rowcount

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        return self._db.conn.executemany(sql, rows).rowcount

    def query(self, sql: str, params: Sequence[Any] = ()) -> Iterator[dict[str, Any]]:
        return self._db.query(sql, tuple(params))

    def atomic(self) -> AbstractContextManager[Any]:
        """A transaction (nested: a savepoint) that takes the write lock when it begins
        (BEGIN IMMEDIATE). One that read first would fail at its first write if another
        process wrote meanwhile; this one waits for it (busy_timeout) and reads after it, so
        a read-then-write such as the audit chain's head cannot act on a stale read."""
        if self._db.conn.in_transaction:
            return self._db.atomic()
        return self._immediate()

    @contextlib.contextmanager
    def _immediate(self) -> Iterator[Database]:
        conn = self._db.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            if conn.in_transaction:  # an error may have ended it already
                conn.execute("ROLLBACK")
            raise
        try:
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self._db.close()


# PostgreSQL text cannot hold NUL. A device's free text with one (an agent version, a step's
# detail) is stored with this character in its place, rather than refused on every resend.
NUL_STAND_IN = "\ufffd"


def without_nul(params: Sequence[Any]) -> tuple[Any, ...]:
    """The parameters with NUL in any text replaced by NUL_STAND_IN."""
    return tuple(p.replace("\x00", NUL_STAND_IN) if isinstance(p, str) and "\x00" in p else p
                 for p in params)


class PostgresConnection:
    """PostgreSQL through psycopg 3 (the `postgres` extra), autocommit outside `atomic()`."""

    dialect: Dialect = "postgresql"

    def __init__(self, url: str) -> None:
        try:
            import psycopg
            from psycopg.rows import dict_row
        except ImportError as exc:
            raise DatabaseUrlError(
                "PostgreSQL needs psycopg: pip install 'edge-mlops[postgres]'") from exc
        self.name = redact(url)
        self._connect = lambda: psycopg.connect(url, autocommit=True, row_factory=dict_row)
        try:
            self._conn = self._connect()
        except psycopg.OperationalError as exc:
            raise DatabaseUrlError(f"cannot connect to {self.name}: {exc}".strip()) from exc

    def _live(self) -> Any:
        """The connection, opened again when the server dropped it (a restart, a network cut):
        the call that found it broken failed, the next one goes through."""
        if self._conn.broken or self._conn.closed:
            log.warning("database connection lost, reconnecting db=%s", self.name)
            self._conn = self._connect()
        return self._conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        with self._live().cursor() as cursor:
            cursor.execute(to_postgres(sql), without_nul(params))
            return cursor.rowcount

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        if not rows:
            return 0
        with self._live().cursor() as cursor:
            cursor.executemany(to_postgres(sql), [without_nul(row) for row in rows])
            return cursor.rowcount

    def query(self, sql: str, params: Sequence[Any] = ()) -> Iterator[dict[str, Any]]:
        with self._live().cursor() as cursor:
            cursor.execute(to_postgres(sql), without_nul(params))
            rows = cursor.fetchall() if cursor.description else []
        return iter(rows)

    def atomic(self) -> AbstractContextManager[Any]:
        return self._live().transaction()

    def close(self) -> None:
        self._conn.close()


_INSERT_OR_IGNORE = re.compile(r"^\s*INSERT OR IGNORE INTO", re.IGNORECASE)


def to_postgres(sql: str) -> str:
    """SQLite-style SQL as psycopg takes it: `?` -> `%s` (a literal `%` doubled), and
    `INSERT OR IGNORE INTO ...` -> `INSERT INTO ... ON CONFLICT DO NOTHING`."""
    converted = sql.replace("%", "%%").replace("?", "%s")
    if _INSERT_OR_IGNORE.match(converted):
        converted = _INSERT_OR_IGNORE.sub("INSERT INTO", converted, count=1) \
            + " ON CONFLICT DO NOTHING"
    return converted

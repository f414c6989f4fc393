"""Benchmark: what the audit log's hash chain costs, on SQLite and PostgreSQL.

1. Appending an entry (locking the chain's head, hashing, inserting) against the plain insert
   of an unchained entry that central made before, each in its own transaction.
2. On a log of `--entries` entries (100,000): verifying the whole chain, the audit page's
   queries (newest page, a filtered page, a deep page by seq), and chaining that many entries
   written without a seq, as the first start after schema 13 does.
Not a test: run it by hand.

    .venv/bin/python tests/benchmarks/bench_audit.py
    .venv/bin/python tests/benchmarks/bench_audit.py --entries 20000 --backends sqlite
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from central_sync.db import CentralDB  # noqa: E402
from central_sync.db.audit import GENESIS_HASH, AuditFilter, entry_hash  # noqa: E402
from tests.conftest import postgres_database  # noqa: E402

ACTIONS = ("model.publish", "model.deploy", "rollout.start", "defect.label", "user.login")


@contextlib.contextmanager
def database(backend: str) -> Iterator[str]:
    if backend == "postgresql":
        with postgres_database() as url:
            yield url
        return
    with tempfile.TemporaryDirectory() as folder:
        yield f"sqlite:///{folder}/central.db"


def per_call_ms(call: Callable[[], object], n: int) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def fill(db: CentralDB, n: int, chained: bool) -> None:
    """n entries in bulk, chained as _audit would chain them (or without a seq)."""
    rows, previous, at = [], GENESIS_HASH, time.time() - n
    for seq in range(1, n + 1):
        action = ACTIONS[seq % len(ACTIONS)]
        actor, subject, detail = f"user{seq % 40}", f"thing-{seq}", f"n={seq}"
        if chained:
            digest = entry_hash(seq, at + seq, actor, action, subject, detail, previous)
            rows.append((seq, at + seq, actor, action, subject, detail, previous, digest))
            previous = digest
        else:
            rows.append((None, at + seq, actor, action, subject, detail, None, None))
    with db._lock, db._db.atomic():
        db._db.executemany("INSERT INTO audit_log (seq, at, actor, action, subject, detail, "
                           "prev_hash, entry_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)


def seconds(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def run(backend: str, entries: int, appends: int) -> list[tuple[str, str, str, str]]:
    rows = []
    with database(backend) as url:
        db = CentralDB(url)

        def plain() -> None:
            with db._lock, db._db.atomic():
                db._db.execute("INSERT INTO audit_log (at, actor, action, subject, detail) "
                               "VALUES (?, 'bench', 'model.deploy', 'x@1.0.0', '')",
                               (time.time(),))

        chained = per_call_ms(lambda: db.audit("bench", "model.deploy", "x@1.0.0"), appends)
        unchained = per_call_ms(plain, appends)
        rows.append((backend, "append one entry", f"{chained:.3f} ms",
                     f"{chained / unchained:.2f}x the unchained insert ({unchained:.3f} ms)"))
        db._db.execute("DELETE FROM audit_log")
        fill(db, entries, chained=True)
        verify = seconds(db.verify_audit_chain)
        rows.append((backend, f"verify {entries:,} entries", f"{verify:.2f} s",
                     f"{verify / entries * 1e6:.1f} µs per entry"))
        for what, call in (
                ("newest page (100)", lambda: db.list_audit(101)),
                ("filtered page (actor, action prefix)", lambda: db.list_audit(
                    101, AuditFilter(actor="user7", action="model."))),
                ("deep page by seq", lambda: db.list_audit(101, before_seq=entries // 10))):
            rows.append((backend, what, f"{per_call_ms(call, 20):.2f} ms", ""))
        db._db.execute("DELETE FROM audit_log")
        fill(db, entries, chained=False)
        db.close()
        start = time.perf_counter()
        CentralDB(url).close()  # the first start chains them
        rows.append((backend, f"chain {entries:,} unchained entries at start",
                     f"{time.perf_counter() - start:.2f} s", "once, after schema 13"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--appends", type=int, default=500)
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"])
    args = parser.parse_args()
    table = Table(title="Audit log hash chain")
    for column in ("database", "what", "time", "against"):
        table.add_column(column)
    for backend in args.backends:
        for row in run(backend, args.entries, args.appends):
            table.add_row(*row)
    Console().print(table)


if __name__ == "__main__":
    main()

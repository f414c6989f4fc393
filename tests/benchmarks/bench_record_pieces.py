"""Benchmark: what one more piece of a large record costs central, at the start of the record and
after thousands of its pieces.

A record of `--pieces` pieces (4,000) of `--piece-bytes` bytes (1 KiB) goes into a fresh SQLite
database through `CentralDB.store_record_chunk`. Printed: the mean time per piece over the
first `--window` pieces and over the last `--window`, and their ratio (about 1x: a piece is
counted without reading the others). For comparison, in the same run, the earlier way (every
piece re-read and re-parsed all pieces of its record so far) on the same pieces, whose ratio
grows with the record. Not a test: run it by hand.

    .venv/bin/python tests/benchmarks/bench_record_pieces.py
    .venv/bin/python tests/benchmarks/bench_record_pieces.py --pieces 8000
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from central_sync.db import CentralDB  # noqa: E402
from edge_agent.kernel.contract import RecordChunk, split_record  # noqa: E402

NO_LIMIT = 1 << 40


def _pieces(count: int, piece_bytes: int) -> list[RecordChunk]:
    payload = json.dumps({"image": "x" * (count * piece_bytes - 20)})
    return split_record("gw-bench", 1, "sample", 1.7e9, payload, piece_bytes)[:count - 1]


def _timed(pieces: list[RecordChunk], store: Callable[[RecordChunk], object],
           window: int) -> tuple[float, float]:
    """Mean ms per piece over the first and the last `window` pieces."""
    times = []
    for piece in pieces:
        started = time.perf_counter()
        store(piece)
        times.append(time.perf_counter() - started)
    return (sum(times[:window]) / window * 1000, sum(times[-window:]) / window * 1000)


def _earlier_way(path: Path) -> Callable[[RecordChunk], object]:
    """Each piece stored as its JSON, then every piece so far read back and parsed."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("CREATE TABLE parts (device_id TEXT, seq INTEGER, idx INTEGER, count INTEGER, "
               "chunk TEXT, PRIMARY KEY (device_id, seq, idx))")

    def store(piece: RecordChunk) -> object:
        with db:
            db.execute("INSERT OR REPLACE INTO parts VALUES (?, ?, ?, ?, ?)",
                       (piece.device_id, piece.seq, piece.index, piece.count,
                        piece.model_dump_json()))
            return [RecordChunk.model_validate_json(row[0]) for row in db.execute(
                "SELECT chunk FROM parts WHERE device_id = ? AND seq = ? AND count = ? "
                "ORDER BY idx", (piece.device_id, piece.seq, piece.count))]

    return store


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pieces", type=int, default=4000)
    parser.add_argument("--piece-bytes", type=int, default=1024)
    parser.add_argument("--window", type=int, default=200)
    args = parser.parse_args()
    pieces = _pieces(args.pieces, args.piece_bytes)
    with tempfile.TemporaryDirectory() as folder:
        db = CentralDB(Path(folder) / "central.db")
        now_first, now_last = _timed(pieces, lambda p: db.store_record_chunk(p, NO_LIMIT),
                                     args.window)
        db.close()
        old_first, old_last = _timed(pieces, _earlier_way(Path(folder) / "earlier.db"),
                                     args.window)
    print(f"{len(pieces)} pieces of {args.piece_bytes} bytes; mean ms per piece over the "
          f"first and the last {args.window}:")
    print(f"  now:     {now_first:7.3f} -> {now_last:7.3f} ms  ratio {now_last / now_first:5.2f}x")
    print(f"  earlier: {old_first:7.3f} -> {old_last:7.3f} ms  ratio {old_last / old_first:5.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

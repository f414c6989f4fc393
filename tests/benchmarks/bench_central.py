"""Benchmark: central's review pages and queries on a large database, and ingest with one and
two central-sync processes.

1. For SQLite and PostgreSQL: a database with `--defects` defects (100,000) and
   `--predictions` predictions (10 million), filled in bulk. Then p50/p99 time of the pages a
   quality engineer uses (the review grid, filtered, a deep page, the summary, the newest
   predictions), through the web app in-process, against the baseline a first version would
   use for the same page: filtering the raw records' JSON and paging by OFFSET.
2. Ingest on PostgreSQL: devices drain `--ingest-records` records each through Mosquitto into
   one central-sync process, then into two sharing an ingest group; records/s and the ratio.
Not a test: run it by hand (it fills a few GB; `--predictions 1000000` for a quicker run).

    .venv/bin/python tests/benchmarks/bench_central.py
    .venv/bin/python tests/benchmarks/bench_central.py --predictions 1000000 --backends sqlite
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
from fastapi.testclient import TestClient
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "central_sync"))

from review_helpers import jpeg_b64  # noqa: E402
from test_scale_out import start_central  # noqa: E402

from central_sync.accounts import hash_password  # noqa: E402
from central_sync.db import CentralDB  # noqa: E402
from central_sync.db.review import DefectFilter  # noqa: E402
from central_sync.web import create_app  # noqa: E402
from edge_agent.buffer import Buffer, BufferPolicy, NewRecord  # noqa: E402
from edge_agent.config import UplinkConfig  # noqa: E402
from edge_agent.kernel.contract import Topics  # noqa: E402
from edge_agent.kernel.transport import BrokerConfig  # noqa: E402
from edge_agent.kernel.transport.mqtt import MqttTransport  # noqa: E402
from edge_agent.uplink import Uplink  # noqa: E402
from tests.conftest import Mosquitto, free_port, postgres_database  # noqa: E402

console = Console(width=120)
DEVICES = [f"line{i:02d}-gw1" for i in range(1, 21)]
CAMERAS = ["strip-top", "strip-bottom", "edge-left", "edge-right"]
LABELS = ["scratch", "pit", "stain"]
CHUNK = 50_000
PASSWORD = "benchmark password"
T0 = 1_790_000_000.0


def defect_rows(count: int) -> Iterator[tuple[tuple, tuple]]:
    """(records row, defects row) of `count` defects, one image each (small, as thumbnails)."""
    image = jpeg_b64(7)
    for i in range(count):
        device, seq = DEVICES[i % len(DEVICES)], 10_000_000 + i // len(DEVICES)
        camera, label = CAMERAS[i % 4], LABELS[i % 3]
        confidence = round(0.5 + (i * 7919 % 500) / 1000, 3)
        version = "1.0.0" if i % 5 else "1.1.0"
        created = T0 + i * 3.0
        payload = json.dumps({"pipeline": "surface", "camera": camera, "roi": "inspection",
                              "label": label, "confidence": confidence,
                              "model": {"name": "surface-defects", "version": version,
                                        "sha256": "a" * 64},
                              "images": {"annotated": {"jpeg_b64": image, "width": 80,
                                                       "height": 60}}})
        yield ((device, seq, "defect", created, created, payload),
               (device, seq, created, "surface", camera, "inspection", label, confidence,
                "surface-defects", version))


def prediction_rows(count: int) -> Iterator[tuple[tuple, tuple]]:
    for i in range(count):
        device, seq = DEVICES[i % len(DEVICES)], 1 + i // len(DEVICES)
        created = T0 + i * 0.03
        inputs = json.dumps({"zone2_temp_c": 180 + i % 100 / 10, "screw_speed_rpm": 60.0})
        outputs = json.dumps({"scrap_rate_pct": 2.0 + i % 50 / 25})
        payload = ('{"pipeline":"scrap","model":{"name":"extruder-scrap","version":"1.0.0",'
                   f'"sha256":"{"5" * 64}"}},"inputs":{inputs},"outputs":{outputs},'
                   '"latency_ms":1.2}')
        yield ((device, seq, "prediction", created, created, payload),
               (device, seq, created, "scrap", "extruder-scrap", "1.0.0", "5" * 64, outputs,
                inputs, 1.2))


RECORD_COLUMNS = "device_id, seq, type, created_at, received_at, payload"
TABLE_COLUMNS = {
    "defects": "device_id, seq, created_at, pipeline, camera, roi, label, confidence, "
               "model_name, model_version",
    "predictions": "device_id, seq, created_at, pipeline, model_name, model_version, "
                   "model_sha256, outputs, inputs, latency_ms",
}


def fill(db: CentralDB, url: str, table: str, rows: Iterator[tuple[tuple, tuple]],
         total: int, progress: Progress) -> float:
    """Bulk-load records and their projection; returns seconds."""
    task = progress.add_task(f"{db.dialect}: {total:,} {table}", total=total)
    started = time.perf_counter()
    with (psycopg.connect(url) if db.dialect == "postgresql" else _nothing()) as pg:
        while chunk := [next(rows, None) for _ in range(CHUNK)]:
            chunk = [c for c in chunk if c is not None]
            if not chunk:
                break
            if pg is not None:
                _copy(pg, "records", RECORD_COLUMNS, [c[0] for c in chunk])
                _copy(pg, table, TABLE_COLUMNS[table], [c[1] for c in chunk])
                pg.commit()
            else:
                marks = ", ".join("?" * 6)
                with db._db.atomic():
                    db._db.executemany(f"INSERT INTO records ({RECORD_COLUMNS}) VALUES "
                                       f"({marks})", [c[0] for c in chunk])
                    n = len(chunk[0][1])
                    db._db.executemany(f"INSERT INTO {table} ({TABLE_COLUMNS[table]}) VALUES "
                                       f"({', '.join('?' * n)})", [c[1] for c in chunk])
            progress.advance(task, len(chunk))
    return time.perf_counter() - started


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _copy(pg: psycopg.Connection, table: str, columns: str, rows: list[tuple]) -> None:
    with pg.cursor() as cursor, cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


def timed(call: Callable[[], object], repeat: int) -> dict[str, float]:
    call()  # warm the caches
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {"p50": statistics.median(times), "p99": times[min(len(times) - 1,
                                                                int(len(times) * 0.99))]}


def naive_page(db: CentralDB, where: str, params: list, offset: int) -> list:
    """The first version's query: the raw records' JSON, OFFSET paging."""
    if db.dialect == "postgresql":
        field = "CAST(payload AS jsonb) ->> '{}'"
    else:
        field = "json_extract(payload, '$.{}')"
    where_sql = " AND ".join(f"{field.format(k)} = ?" for k in where.split(",") if k)
    return list(db._db.query(
        f"SELECT device_id, seq, created_at, {field.format('label')} AS label FROM records "
        f"WHERE type = 'defect'{' AND ' + where_sql if where_sql else ''} "
        "ORDER BY created_at DESC LIMIT 48 OFFSET ?", (*params, offset)))


def bench_pages(db: CentralDB, repeat: int) -> list[tuple[str, dict, dict | None]]:
    client = TestClient(create_app(db, offline_after_s=120))
    reply = client.post("/login", data={"username": "qa", "password": PASSWORD})
    assert reply.status_code == 200, reply.text
    rows = list(db._db.query("SELECT created_at, device_id, seq FROM defects ORDER BY "
                             "created_at DESC, device_id DESC, seq DESC LIMIT 1 OFFSET ?",
                             (min(48 * 1000, db.defect_summary(DefectFilter())["total"]) - 1,)))
    cursor = f"{rows[0]['created_at']!r}:{rows[0]['device_id']}:{rows[0]['seq']}"
    cases = [
        ("review, first page", "/review", ("", [], 0)),
        ("review, class filter", "/review?label=pit", ("label", ["pit"], 0)),
        ("review, device + camera", f"/review?device_id={DEVICES[6]}&camera=edge-left",
         ("camera", ["edge-left"], 0)),
        ("review, unreviewed, conf >= 0.9", "/review?verdict=unreviewed&min_confidence=0.9",
         None),
        ("review, page 1,001", f"/review?after={cursor}", ("", [], 48 * 1000)),
        ("newest predictions (API)", "/api/predictions?limit=50", None),
    ]
    results = []
    for label, url, naive in cases:
        page = timed(lambda url=url: _ok(client.get(url)), repeat)
        # The baseline scans every record's JSON: a few runs tell its time.
        baseline = timed(lambda n=naive: naive_page(db, *n), max(3, repeat // 10)) \
            if naive else None
        results.append((label, page, baseline))
    return results


def _ok(reply: object) -> None:
    assert reply.status_code == 200, reply.text  # type: ignore[attr-defined]


async def drain(port: int, folder: Path, devices: int, records: int) -> float:
    buffers, uplinks, transports = [], [], []
    for d in range(devices):
        buffer = Buffer(folder / f"dev{d}.db", BufferPolicy(quota_bytes=10**9))
        now = time.time()
        buffer.append_many_sync([NewRecord("metric", {"tag": "t", "value": i}, now)
                                 for i in range(records)])
        transport = MqttTransport(BrokerConfig(port=port), client_id=f"bench-dev{d}")
        await transport.start()
        buffers.append(buffer)
        transports.append(transport)
        uplinks.append(Uplink(f"bench-dev{d}", Topics(), transport, buffer,
                              UplinkConfig(batch_size=500)))
    started = time.perf_counter()
    tasks = [asyncio.create_task(u.run()) for u in uplinks]
    while any([(await b.health()).depth for b in buffers]):
        await asyncio.sleep(0.05)
    elapsed = time.perf_counter() - started
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for transport, buffer in zip(transports, buffers, strict=True):
        await transport.stop()
        await buffer.close()
    return elapsed


def bench_ingest(folder: Path, devices: int, records: int) -> list[tuple[int, float]]:
    results = []
    for processes in (1, 2):
        broker = Mosquitto(free_port(), folder / f"mosquitto-{processes}")
        broker.workdir.mkdir(parents=True)
        broker.start()
        with postgres_database() as url:
            CentralDB(url).close()  # migrated before the processes start
            centrals = [start_central(folder / f"c{processes}-{i}", f"central-{i}",
                                      broker.port, url, 0) for i in range(processes)]
            try:
                time.sleep(3)
                elapsed = asyncio.run(drain(broker.port, folder / f"d{processes}", devices,
                                            records))
                results.append((processes, devices * records / elapsed))
            finally:
                for process in centrals:
                    process.terminate()
                    process.wait(20)
                broker.stop()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--defects", type=int, default=100_000)
    parser.add_argument("--predictions", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=30, help="timings per page")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--ingest-records", type=int, default=20_000,
                        help="records per device (4 devices) for the ingest part; 0: skip")
    args = parser.parse_args()
    table = Table(title=f"Central with {args.defects:,} defects and {args.predictions:,} "
                        f"predictions: page time in ms (p50 / p99)")
    for column in ("backend", "page", "central p50", "central p99", "naive p50", "naive p99",
                   "naive/central"):
        table.add_column(column, justify="left" if column in ("backend", "page") else "right")
    with tempfile.TemporaryDirectory(prefix="bench-central-") as tmp:
        for backend in args.backends.split(","):
            with (postgres_database() if backend == "postgresql"
                  else _sqlite(Path(tmp))) as url:
                db = CentralDB(url)
                db.add_user("qa", hash_password(PASSWORD), "quality", by="bench")
                with Progress(console=console) as progress:
                    fill_defects = fill(db, url, "defects", defect_rows(args.defects),
                                        args.defects, progress)
                    fill_predictions = fill(db, url, "predictions",
                                            prediction_rows(args.predictions),
                                            args.predictions, progress)
                if db.dialect == "postgresql":
                    db._db.execute("ANALYZE")
                console.print(f"{backend}: filled in {fill_defects + fill_predictions:.0f} s")
                for label, page, naive in bench_pages(db, args.repeat):
                    table.add_row(backend, label, f"{page['p50']:.1f}", f"{page['p99']:.1f}",
                                  f"{naive['p50']:.1f}" if naive else "",
                                  f"{naive['p99']:.1f}" if naive else "",
                                  f"{naive['p50'] / page['p50']:.1f}x" if naive else "")
                db.close()
        console.print(table)
        if args.ingest_records:
            ingest = bench_ingest(Path(tmp), 4, args.ingest_records)
            rates = Table(title="Ingest on PostgreSQL through Mosquitto (4 devices)")
            for column in ("central-sync processes", "records/s", "vs one process"):
                rates.add_column(column, justify="right")
            for processes, rate in ingest:
                rates.add_row(str(processes), f"{rate:,.0f}", f"{rate / ingest[0][1]:.2f}")
            console.print(rates)
    console.print("naive: the same page's query on the raw records' JSON with OFFSET paging "
                  "(the query alone, without rendering the page).")
    return 0


class _sqlite:
    def __init__(self, folder: Path) -> None:
        self.path = folder / "central.db"

    def __enter__(self) -> str:
        return f"sqlite:///{self.path}"

    def __exit__(self, *exc: object) -> None:
        self.path.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())

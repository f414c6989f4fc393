"""Benchmark: buffer inserts and the buffer -> uplink -> central -> ack path, against baselines.

Runs side by side on loopback with a private Mosquitto and a real `central-sync serve`:
  1. buffer inserts vs raw `sqlite3.executemany` into the same table (same durability);
  2. the agent's uplink draining the buffer into central (stored, acked, deleted) vs a naive
     uplink publishing one record per QoS 1 message and waiting for each PUBACK.
Prints records/s, ratios, CPU seconds and peak RSS. Not a test: run it by hand.

    .venv/bin/python tests/benchmarks/bench_store_and_forward.py --records 200000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from edge_agent.buffer import Buffer, BufferPolicy, NewRecord  # noqa: E402
from edge_agent.config import UplinkConfig  # noqa: E402
from edge_agent.kernel.contract import Topics  # noqa: E402
from edge_agent.kernel.gctune import tune_for_service  # noqa: E402
from edge_agent.kernel.signing import Signer  # noqa: E402
from edge_agent.kernel.transport import BrokerConfig  # noqa: E402
from edge_agent.kernel.transport.mqtt import MqttTransport  # noqa: E402
from edge_agent.uplink import Uplink  # noqa: E402
from tests.benchmarks.procstats import proc_cpu_s, proc_peak_rss_mb, self_cpu_s  # noqa: E402
from tests.conftest import free_port, wait_for_port  # noqa: E402

DEVICE = "bench-gw"
DRAIN_DEADLINE_S = 300
console = Console(width=110)


MODEL = {"name": "extruder-scrap", "version": "1.0.0", "sha256": "5" * 64}


def small_payload(i: int) -> dict:
    """A small record: one tag reading, as a metric (about 40 bytes of JSON)."""
    return {"tag": "zone2_temp_c", "value": 187.25 + (i % 100) / 100}


def prediction_payload(i: int) -> dict:
    """A real prediction record's payload (about 200 bytes), projected by central."""
    return {"pipeline": "scrap", "model": MODEL,
            "inputs": {"zone2_temp_c": 187.25, "screw_speed_rpm": 60.5},
            "outputs": {"scrap_rate_pct": 2.5 + (i % 100) / 100}, "latency_ms": 0.4}





# --- 1. inserts -------------------------------------------------------------------------------


def bench_raw_executemany(path: Path, n: int, batch: int) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE records (seq INTEGER PRIMARY KEY AUTOINCREMENT, type TEXT, "
                 "priority INTEGER, created_at REAL, payload TEXT, size_bytes INTEGER)")
    started = time.perf_counter()
    for start in range(0, n, batch):
        rows = []
        for i in range(start, min(start + batch, n)):
            payload = json.dumps(small_payload(i), separators=(",", ":"))
            rows.append(("prediction", 20, time.time(), payload, len(payload)))
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO records (type, priority, created_at, payload, size_bytes)"
                         " VALUES (?, ?, ?, ?, ?)", rows)
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return n / elapsed


def bench_buffer_batches(path: Path, n: int, batch: int) -> float:
    buffer = Buffer(path, BufferPolicy(quota_bytes=10**10))
    started = time.perf_counter()
    for start in range(0, n, batch):
        buffer.append_many_sync([NewRecord("prediction", small_payload(i), time.time())
                                 for i in range(start, min(start + batch, n))])
    elapsed = time.perf_counter() - started
    buffer.close_sync()
    return n / elapsed


def bench_buffer_concurrent_appends(path: Path, n: int) -> float:
    """Pipelines appending one record each, concurrently: the writer coalesces them."""
    async def produce() -> float:
        buffer = Buffer(path, BufferPolicy(quota_bytes=10**10))
        started = time.perf_counter()
        for start in range(0, n, 1000):
            await asyncio.gather(*(buffer.append("prediction", small_payload(i))
                                   for i in range(start, min(start + 1000, n))))
        elapsed = time.perf_counter() - started
        await buffer.close()
        return n / elapsed

    return asyncio.run(produce())


# --- 2. end to end ----------------------------------------------------------------------------


class Plant:
    """A private Mosquitto and a real central-sync process."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.mqtt_port = free_port()
        self.processes: list[subprocess.Popen] = []

    def start(self) -> None:
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(f"listener {self.mqtt_port} 127.0.0.1\nallow_anonymous true\n"
                        "max_queued_messages 100000\nmax_inflight_messages 0\n"
                        f"{'user root' if os.geteuid() == 0 else ''}\n")
        mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.processes.append(subprocess.Popen([mosquitto, "-c", str(conf)],
                                               stdout=subprocess.DEVNULL,
                                               stderr=subprocess.DEVNULL))
        wait_for_port(self.mqtt_port)
        central_cfg = self.workdir / "central.yaml"
        central_cfg.write_text(
            f"central_id: bench-central\nbroker: {{port: {self.mqtt_port}}}\n"
            "database_url: sqlite:///central.db\nartifact_dir: artifacts\nweb: {port: 0}\n"
            "signing_key_path: keys/signing.key\n")
        Signer.generate().save(self.workdir / "keys" / "signing.key")
        log = (self.workdir / "central.log").open("w")
        self.central = subprocess.Popen(
            [str(Path(sys.executable).parent / "central-sync"), "--log-level", "warning",
             "serve", "-c", str(central_cfg)], stdout=log, stderr=log)
        self.processes.append(self.central)
        self._wait_central_subscribed()

    def _wait_central_subscribed(self) -> None:
        """Central is ready once a status message shows up in its database."""
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-probe")
        client.connect("127.0.0.1", self.mqtt_port)
        client.loop_start()
        deadline = time.monotonic() + 30
        db = self.workdir / "central.db"
        status = json.dumps({"schema_version": 1, "kind": "device_status", "device_id": "probe",
                             "state": "online"})
        while True:
            if time.monotonic() > deadline or self.central.poll() is not None:
                raise RuntimeError(f"central-sync did not start; see {self.workdir}/central.log")
            client.publish(Topics().status("probe"), status, qos=1).wait_for_publish(5)
            time.sleep(0.3)
            if db.exists():
                with sqlite3.connect(db) as conn:
                    try:
                        if conn.execute("SELECT 1 FROM devices WHERE device_id='probe'").fetchone():
                            break
                    except sqlite3.OperationalError:
                        pass
        client.loop_stop()
        client.disconnect()

    def central_rows(self, device: str) -> int:
        with sqlite3.connect(self.workdir / "central.db") as conn:
            return conn.execute("SELECT COUNT(*) FROM records WHERE device_id = ?",
                                (device,)).fetchone()[0]

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def bench_uplink(plant: Plant, n: int, compress: bool, kind: str) -> dict[str, float]:
    """Fill a buffer with n records, then time the uplink until central acked them all."""
    device = f"{DEVICE}-{kind}-{'zlib' if compress else 'plain'}"
    path = plant.workdir / f"{device}.db"
    buffer = Buffer(path, BufferPolicy(quota_bytes=10**10))
    make = prediction_payload if kind == "prediction" else small_payload
    for start in range(0, n, 5000):
        buffer.append_many_sync([NewRecord(kind, make(i), time.time())
                                 for i in range(start, min(start + 5000, n))])

    async def drain_with_deadline() -> float:
        try:
            async with asyncio.timeout(DRAIN_DEADLINE_S):
                return await drain()
        except TimeoutError:
            for task in asyncio.all_tasks():
                task.print_stack(limit=6, file=sys.stderr)
            raise RuntimeError(f"uplink run did not end in {DRAIN_DEADLINE_S} s; "
                               "task stacks above") from None

    async def drain() -> float:
        transport = MqttTransport(BrokerConfig(port=plant.mqtt_port), device,
                                  persistent_session=False)
        uplink = Uplink(device, Topics(), transport, buffer,
                        UplinkConfig(batch_size=5000, batch_max_bytes=1 << 20, max_in_flight=8,
                                     compress=compress))
        await transport.start()
        await transport.wait_connected(10)
        task = asyncio.create_task(uplink.run())
        started = time.perf_counter()
        while (await buffer.health()).depth > 0:
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - started
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await transport.stop()
        await buffer.close()
        return elapsed

    cpu_agent, cpu_central = self_cpu_s(), proc_cpu_s(plant.central.pid)
    elapsed = asyncio.run(drain_with_deadline())
    stored = plant.central_rows(device)
    if stored != n:
        raise RuntimeError(f"central stored {stored} records, expected {n}")
    return {
        "rate": n / elapsed,
        "cpu_agent": self_cpu_s() - cpu_agent,
        "cpu_central": proc_cpu_s(plant.central.pid) - cpu_central,
        "seconds": elapsed,
    }


def bench_naive(plant: Plant, n: int) -> dict[str, float]:
    """One record per QoS 1 message, waiting for each PUBACK."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="naive-uplink")
    client.connect("127.0.0.1", plant.mqtt_port)
    client.loop_start()
    topic = "bench/naive/records"
    cpu = self_cpu_s()
    started = time.perf_counter()
    for i in range(n):
        client.publish(topic, json.dumps(small_payload(i)), qos=1).wait_for_publish(10)
    elapsed = time.perf_counter() - started
    client.loop_stop()
    client.disconnect()
    return {"rate": n / elapsed, "cpu_agent": self_cpu_s() - cpu, "seconds": elapsed}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=200_000, help="records per end-to-end run")
    parser.add_argument("--naive-records", type=int, default=5_000,
                        help="records for the naive one-message-per-record uplink")
    parser.add_argument("--insert-records", type=int, default=200_000)
    args = parser.parse_args()
    tune_for_service()  # as `edge-agent run` does: this process plays the agent

    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        workdir = Path(tmp)
        console.print(f"[bold]1. buffer inserts[/] ({args.insert_records:,} small records, "
                      "WAL, synchronous=FULL, 1000 per transaction; median of 3 alternating runs)")
        # Alternate the two, three times each, and compare medians: this machine is noisy.
        raws, ourses = [], []
        for round_ in range(3):
            raws.append(bench_raw_executemany(workdir / f"raw{round_}.db", args.insert_records,
                                              1000))
            ourses.append(bench_buffer_batches(workdir / f"buffer{round_}.db",
                                               args.insert_records, 1000))
        raw, ours = statistics.median(raws), statistics.median(ourses)
        coalesced = bench_buffer_concurrent_appends(workdir / "buffer2.db",
                                                    args.insert_records // 4)
        inserts = Table("path", "records/s", "vs raw executemany")
        inserts.add_row("raw sqlite3.executemany (baseline)", f"{raw:,.0f}", "1.00x")
        inserts.add_row("Buffer.append_many (1000 per call)", f"{ours:,.0f}", f"{ours / raw:.2f}x")
        inserts.add_row("Buffer.append, 1000 concurrent callers", f"{coalesced:,.0f}",
                        f"{coalesced / raw:.2f}x")
        console.print(inserts)

        console.print(f"[bold]2. end to end[/] buffer → uplink → Mosquitto → central-sync "
                      f"(stored, acked) → deleted; {args.records:,} records per run; uplink "
                      "batch_size 5000, batch_max_bytes 1 MiB, 8 batches in flight")
        plant = Plant(workdir)
        plant.start()
        try:
            naive = bench_naive(plant, args.naive_records)
            runs = [
                ("edge-agent uplink, small records", bench_uplink(plant, args.records, False,
                                                                  "metric")),
                ("edge-agent uplink, small records, zlib",
                 bench_uplink(plant, args.records, True, "metric")),
                ("edge-agent uplink, prediction records",
                 bench_uplink(plant, args.records, False, "prediction")),
            ]
            central_rss = proc_peak_rss_mb(plant.central.pid)
        finally:
            plant.stop()
        agent_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        table = Table("uplink", "records/s", "vs naive", "agent CPU s", "central CPU s",
                      "seconds")
        table.add_row("naive: 1 record per QoS 1 message, wait PUBACK (baseline)",
                      f"{naive['rate']:,.0f}", "1.0x", f"{naive['cpu_agent']:.1f}", "-",
                      f"{naive['seconds']:.1f}")
        for label, result in runs:
            table.add_row(label, f"{result['rate']:,.0f}", f"{result['rate'] / naive['rate']:.1f}x",
                          f"{result['cpu_agent']:.1f}", f"{result['cpu_central']:.1f}",
                          f"{result['seconds']:.1f}")
        console.print(table)
        console.print(f"peak RSS: benchmark process (agent side) {agent_rss:.0f} MB, "
                      f"central-sync {central_rss:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

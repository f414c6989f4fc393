"""A whole plant of real processes for fault tests, and the "nothing lost, nothing doubled" oracle.

`Plant` runs `central-sync serve` and `edge-agent run` as subprocesses against a real Mosquitto
and the real OPC-UA line simulator, publishes and deploys the sample model so the agent
predicts about 20 times a second (by default), and lets a test stop, kill, pause and restart
the parts.

The oracle reads both SQLite databases directly. The agent's `records` table uses AUTOINCREMENT,
so the seqs it ever accepted are exactly 1..N with N in `sqlite_sequence` (seqs are never
reused and a rolled-back insert leaves no gap). Once the agent's buffer is empty, central must
hold exactly those seqs for the device, each once, and one prediction row per prediction record.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from tests.conftest import LineSimulatorProcess, Mosquitto
from tests.helpers import REPO, SAMPLE_METADATA, SAMPLE_MODEL, wait_until

BIN = Path(sys.executable).parent
DEVICE = "line1-gw1"
MODEL = "extruder-scrap"
VERSION = "1.0.0"
TAGS = ("zone1_temp_c", "zone2_temp_c", "zone3_temp_c", "melt_pressure_bar",
        "screw_speed_rpm", "ambient_humidity_pct")
CENTRAL_ID = "fault-central"
AGENT = "edge-agent"
CENTRAL = "central-sync"


@dataclass(frozen=True)
class Delivery:
    """What the oracle found once everything was drained."""

    produced: int
    stored: int
    predictions: int
    types: dict[str, int]

    def __str__(self) -> str:
        kinds = ", ".join(f"{kind}={count}" for kind, count in sorted(self.types.items()))
        return (f"produced N={self.produced}, stored {self.stored} ({kinds}), "
                f"prediction rows {self.predictions}")


def _central_yaml(broker: str) -> str:
    return (f"central_id: {CENTRAL_ID}\n"
            f"broker: {broker}\n"
            "database_url: sqlite:///central/central.db\n"
            "artifact_dir: central/artifacts\n"
            "chunk_size_bytes: 16384\n"
            "web: {port: 0}\n"
            "models: {require_approval: false}\n"
            "signing_key_path: central/keys/signing.key\n")


def _central_cli(config: Path, *args: str, timeout_s: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / CENTRAL), *args, "-c", str(config)],
                          capture_output=True, text=True, timeout=timeout_s, cwd=REPO)


def publish_sample(config: Path) -> Path:
    """`central-sync keys init` and `model publish` of the sample model for the central that
    `config` describes (written here if missing); returns central's folder beside it, which
    `Plant(published=...)` copies instead of publishing again (the broker is not needed)."""
    if not config.exists():
        config.write_text(_central_yaml("{host: 127.0.0.1, port: 1883}"))
    keys = _central_cli(config, "keys", "init")
    assert keys.returncode == 0, keys.stdout + keys.stderr
    published = _central_cli(config, "model", "publish", str(SAMPLE_MODEL), "--name", MODEL,
                             "--version", VERSION, "--metadata", str(SAMPLE_METADATA))
    assert published.returncode == 0, published.stdout + published.stderr
    return config.parent / "central"


class Plant:
    """Broker, line simulator, central and one agent, each a real process."""

    def __init__(self, workdir: Path, broker: Mosquitto, simulator: LineSimulatorProcess,
                 protocol: str = "5", quota_bytes: int | None = None,
                 published: Path | None = None, predict_every_s: float = 0.05,
                 central_extra: str = "") -> None:
        self.workdir = workdir
        self.central_extra = central_extra  # more of central's YAML (alerts, offline_after_s)
        self.published = published
        self.broker = broker
        self.simulator = simulator
        self.protocol = protocol
        self.quota_bytes = quota_bytes
        self.predict_every_s = predict_every_s
        self.central_id = CENTRAL_ID
        self.central_config = workdir / "central.yaml"
        self.agent_config = workdir / "agent.yaml"
        self.buffer_path = workdir / "agent" / "buffer.db"
        self.central_db_path = workdir / "central" / "central.db"
        self.processes: dict[str, subprocess.Popen] = {}
        self.restarts: dict[str, int] = {AGENT: 0, CENTRAL: 0}
        self._write_configs()

    # --- configuration ---------------------------------------------------------------------

    def _write_configs(self) -> None:
        broker = (f"{{host: 127.0.0.1, port: {self.broker.port}, protocol: '{self.protocol}', "
                  "keepalive_s: 5}")
        self.central_config.write_text(_central_yaml(broker) + self.central_extra)
        nodes = ", ".join(f"{tag}: 'ns=2;s=line1.{tag}'" for tag in TAGS)
        self.agent_config.write_text(
            f"device_id: {DEVICE}\n"
            "data_dir: agent\n"
            f"broker: {broker}\n"
            "sources:\n"
            f"  - {{name: line1, endpoint: '{self.simulator.endpoint}',"
            f" sampling_interval_ms: 100, reconnect_max_backoff_s: 1, nodes: {{{nodes}}}}}\n"
            "pipelines:\n"
            f"  - {{name: scrap, source: line1, model: {MODEL},"
            f" interval_s: {self.predict_every_s}}}\n"
            "uplink: {batch_size: 20, ack_timeout_s: 2}\n"
            "ui: {port: 0}\n"
            "security: {central_public_key: central/keys/signing.pub}\n"
            "status_interval_s: 1\n"
            + (f"buffer: {{quota_bytes: {self.quota_bytes}}}\n" if self.quota_bytes else "")
        )

    # --- whole plant -----------------------------------------------------------------------

    def start(self) -> Plant:
        """Publish the sample model (or copy central's folder from `published`), start central
        and the agent, deploy, wait for records."""
        if self.published is None:
            publish_sample(self.central_config)
        else:
            shutil.copytree(self.published, self.central_db_path.parent)
        self.start_central()
        self.start_agent()
        wait_until(lambda: self.device_state() == "online", 30, what="agent online in central")
        # Launched without waiting, the line may have started along with central and the agent;
        # the agent's source retries within a second until it can connect.
        self.simulator.wait_ready()
        deployed = self.central_cli("deploy", f"{MODEL}@{VERSION}", "--device", DEVICE,
                                    "--wait", "60")
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr + self.log(AGENT)
        self.wait_stored(40, timeout_s=30)
        return self

    def close(self, diagnose: bool = False) -> None:
        """Kill whatever still runs (also a paused process); the fixtures stop broker and
        simulator. `diagnose` first makes live processes dump their threads, then prints the
        logs."""
        live = [p for p in self.processes.values() if p.poll() is None]
        for process in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGCONT)
                if diagnose:
                    process.send_signal(signal.SIGABRT)
        for process in live:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5 if diagnose else 0.01)
            process.kill()
            process.wait(timeout=10)
        if diagnose:
            self.print_logs()

    def print_logs(self, tail_chars: int = 8000) -> None:
        for name in (AGENT, CENTRAL):
            print(f"----- {name}.log (tail) -----\n{self.log(name, tail_chars)}")
        print(f"----- mosquitto.log (tail) -----\n{self.broker_log()[-tail_chars:]}")

    # --- processes -------------------------------------------------------------------------

    def central_cli(self, *args: str, timeout_s: float = 90) -> subprocess.CompletedProcess:
        return _central_cli(self.central_config, *args, timeout_s=timeout_s)

    def _start(self, name: str, *args: str) -> None:
        running = self.processes.get(name)
        assert running is None or running.poll() is not None, f"{name} is already running"
        with (self.workdir / f"{name}.log").open("ab") as log:
            log.write(f"===== test: starting {name} at {time.time():.3f}\n".encode())
            log.flush()
            # faulthandler: a process that hangs is sent SIGABRT and dumps its threads here.
            self.processes[name] = subprocess.Popen(
                [str(BIN / name), *args], stdout=log, stderr=log, cwd=REPO,
                env={**os.environ, "PYTHONFAULTHANDLER": "1"})

    def wait_connected(self, name: str, timeout_s: float = 30) -> None:
        """Wait until the latest start of `name` has reached the broker (it is up and handles
        SIGTERM)."""
        wait_until(lambda: "mqtt connected" in self.log(name, 10**8).rsplit("===== test:", 1)[-1],
                   timeout_s, what=f"{name} connected to the broker")

    def connected_at(self, name: str) -> float | None:
        """Wall-clock time of the last "mqtt connected" line in `name`'s log."""
        lines = [line for line in self.log(name, 10**8).splitlines() if "mqtt connected" in line]
        if not lines:
            return None
        stamp = datetime.strptime(lines[-1][:23], "%Y-%m-%d %H:%M:%S,%f")
        return stamp.timestamp()

    def running(self, name: str) -> bool:
        process = self.processes.get(name)
        return process is not None and process.poll() is None

    def start_central(self) -> None:
        if CENTRAL in self.processes:
            self.restarts[CENTRAL] += 1
        self._start(CENTRAL, "serve", "-c", str(self.central_config))

    def start_agent(self) -> None:
        if AGENT in self.processes:
            self.restarts[AGENT] += 1
        self._start(AGENT, "run", "-c", str(self.agent_config))

    def terminate(self, name: str, timeout_s: float = 20) -> None:
        """SIGTERM, and the process must stop cleanly (exit status 0) in time."""
        process = self.processes[name]
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGABRT)  # dumps every thread's stack into its log
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
            raise AssertionError(f"{name} did not stop within {timeout_s}s of SIGTERM; its "
                                 f"threads at SIGABRT:\n{self.log(name)}") from None
        assert code == 0, f"{name} exited with {code} after SIGTERM\n{self.log(name)}"

    def kill(self, name: str) -> None:
        """SIGKILL: no shutdown code runs, as on a power cut of the process."""
        process = self.processes[name]
        process.kill()
        process.wait(timeout=10)

    def pause(self, name: str) -> None:
        os.kill(self.processes[name].pid, signal.SIGSTOP)

    def resume(self, name: str) -> None:
        os.kill(self.processes[name].pid, signal.SIGCONT)

    def stop_simulator(self) -> None:
        """The line stops: killed, as its graceful stop takes asyncua over a second and what
        the agent sees is the same, a closed connection."""
        process = self.simulator.process
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)

    def log(self, name: str, tail_chars: int = 4000) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace")[-tail_chars:] if path.exists() else ""

    def broker_log(self) -> str:
        path = self.broker.workdir / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # --- observations ----------------------------------------------------------------------

    @contextlib.contextmanager
    def _connect(self, path: Path) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(path, timeout=10, isolation_level=None)
        try:
            yield conn
        finally:
            conn.close()

    def _agent_query(self, sql: str) -> list[tuple]:
        if not self.buffer_path.exists():
            return []
        with self._connect(self.buffer_path) as conn:
            return conn.execute(sql).fetchall()

    def _central_query(self, sql: str, params: tuple = ()) -> list[tuple]:
        if not self.central_db_path.exists():
            return []
        with self._connect(self.central_db_path) as conn:
            return conn.execute(sql, params).fetchall()

    def produced(self) -> int:
        """N: the highest seq the agent's buffer ever handed out."""
        rows = self._agent_query("SELECT seq FROM sqlite_sequence WHERE name = 'records'")
        return int(rows[0][0]) if rows else 0

    def buffered(self) -> int:
        """Records still waiting in the agent's buffer for central's ack."""
        return int(self._agent_query("SELECT COUNT(*) FROM records")[0][0])

    def stored(self) -> int:
        """Records central holds for the device."""
        rows = self._central_query("SELECT COUNT(*) FROM records WHERE device_id = ?", (DEVICE,))
        return int(rows[0][0]) if rows else 0

    def device_state(self) -> str | None:
        rows = self._central_query("SELECT state FROM devices WHERE device_id = ?", (DEVICE,))
        return rows[0][0] if rows else None

    def wait_stored(self, at_least: int, timeout_s: float = 30) -> int:
        wait_until(lambda: self.stored() >= at_least, timeout_s,
                   what=f"{at_least} records stored in central")
        return self.stored()

    def wait_produced(self, more: int, timeout_s: float = 30) -> int:
        """Wait until the agent has buffered `more` new records (it is predicting)."""
        target = self.produced() + more
        wait_until(lambda: self.produced() >= target, timeout_s,
                   what=f"agent producing (seq {target})")
        return self.produced()

    # --- the oracle ------------------------------------------------------------------------

    def stop_producing_and_drain(self, timeout_s: float = 40) -> None:
        """Stop the line, restart the agent without tags (it cannot predict, it only drains)
        and wait until its buffer is empty."""
        self.stop_simulator()
        if self.running(AGENT):
            self.terminate(AGENT)
        if not self.running(CENTRAL):
            self.start_central()
            self.wait_connected(CENTRAL)
        self.start_agent()
        self.wait_connected(AGENT)
        wait_until(lambda: self.buffered() == 0, timeout_s,
                   what=f"agent buffer drained ({self.buffered()} records left)")

    def assert_exactly_once(self) -> Delivery:
        """Central holds exactly the seqs 1..N the agent accepted, each once."""
        produced = self.produced()
        assert produced > 0, "the agent produced nothing"
        assert self.buffered() == 0, "the oracle needs a drained buffer"
        expected = set(range(1, produced + 1))
        seqs = [row[0] for row in self._central_query(
            "SELECT seq FROM records WHERE device_id = ?", (DEVICE,))]
        (count, distinct, max_seq), = self._central_query(
            "SELECT COUNT(*), COUNT(DISTINCT seq), MAX(seq) FROM records WHERE device_id = ?",
            (DEVICE,))
        missing = sorted(expected - set(seqs))
        unexpected = sorted(set(seqs) - expected)
        assert not missing, (f"central lacks {len(missing)} of {produced} seqs, first "
                             f"{missing[:20]}; agent evictions: {self._evictions()}")
        assert not unexpected, f"central holds seqs the agent never accepted: {unexpected[:20]}"
        assert count == distinct == len(seqs) == produced, (count, distinct, len(seqs), produced)
        assert max_seq == produced
        types = dict(self._central_query(
            "SELECT type, COUNT(*) FROM records WHERE device_id = ? GROUP BY type", (DEVICE,)))
        (predictions, joined), = self._central_query(
            "SELECT COUNT(*), COUNT(r.seq) FROM predictions p LEFT JOIN records r "
            "ON r.device_id = p.device_id AND r.seq = p.seq AND r.type = 'prediction' "
            "WHERE p.device_id = ?", (DEVICE,))
        assert predictions == types.get("prediction", 0) == joined, (predictions, types, joined)
        assert predictions > 0
        # Nothing was produced while we looked: the numbers above describe a settled state.
        assert self.produced() == produced and self.buffered() == 0
        return Delivery(produced, count, predictions, types)

    def finish(self, timeout_s: float = 40) -> Delivery:
        self.stop_producing_and_drain(timeout_s)
        delivery = self.assert_exactly_once()
        self.terminate(AGENT)
        self.terminate(CENTRAL)
        return delivery

    def _evictions(self) -> str:
        for sql in ("SELECT type, COUNT(*), SUM(last_seq - first_seq + 1) FROM evictions "
                    "GROUP BY type", "SELECT name, value FROM counters"):
            with contextlib.suppress(sqlite3.Error):
                return repr(self._agent_query(sql))
        return "unknown"

    def evicted_by_agent(self) -> dict[str, int]:
        """The agent's own eviction counters, per record kind."""
        return {name.split(":", 1)[1]: int(value) for name, value in self._agent_query(
            "SELECT name, value FROM counters WHERE name LIKE 'evicted:%'")}

    def gaps_in_central(self) -> set[int]:
        """Seqs central was told the agent evicted."""
        return {seq for first, last in self._central_query(
            "SELECT first_seq, last_seq FROM gaps WHERE device_id = ?", (DEVICE,))
            for seq in range(first, last + 1)}

    def stored_seqs(self) -> list[int]:
        return [row[0] for row in self._central_query(
            "SELECT seq FROM records WHERE device_id = ?", (DEVICE,))]

    # --- central's database held from outside ----------------------------------------------

    @contextlib.contextmanager
    def central_db_write_lock(self) -> Iterator[None]:
        """Hold SQLite's write lock on central's database: its ingest blocks meanwhile."""
        conn = sqlite3.connect(self.central_db_path, timeout=10, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield
            conn.execute("COMMIT")
        finally:
            conn.close()

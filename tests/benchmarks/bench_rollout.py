"""Benchmark: a staged rollout of a large model to a fleet, against one transfer per device.

Runs on loopback with a private Mosquitto, a real `central-sync serve` and one real
`edge-agent run` process per gateway. Warm-up rollouts of models of the same size come first
(not measured), so every measured phase upgrades gateways that already serve such a model and
whose memory has settled. Then, each phase with its own model bytes:
  1. `central-sync rollout start --canary 0 --waves 100%`: every device at once, so the devices
     of the wave share chunk publications;
  2. (unless --no-canary) the same with one canary device first;
  3. baseline: `central-sync deploy --wait` to each device, one after another, so the broker
     carries the whole artifact once per device.
For each phase it prints the wall time, the bytes through the broker (from its $SYS counters:
received is mostly what central published, sent is what the broker delivered), central's and
the broker's CPU seconds, and the peak RSS of central, of one agent and of the largest agent
during the phase. Not a test: run it by hand.

    .venv/bin/python tests/benchmarks/bench_rollout.py --agents 20 --model-mb 20
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import paho.mqtt.client as paho
from onnx import TensorProto, helper, numpy_helper
from paho.mqtt.enums import CallbackAPIVersion
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from central_sync.db import CentralDB  # noqa: E402
from edge_agent.kernel.contract import ArtifactChunk, Topics, encode  # noqa: E402
from tests.benchmarks.procstats import proc_cpu_s, proc_peak_rss_mb  # noqa: E402
from tests.conftest import free_port, wait_for_port  # noqa: E402

MODEL = "big-model"
LABEL = "bench"
OFFLINE_AFTER_S = 120.0  # central's default: a device heard from within this long is online
MB = 1_000_000
BIN = Path(sys.executable).parent
console = Console(width=110)


# --- measurements ------------------------------------------------------------------------------




def reset_peak_rss(pid: int) -> None:
    """Start a new peak: the kernel sets VmHWM back to the current RSS."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError as exc:
        console.print(f"[yellow]cannot reset the peak RSS of {pid} ({exc}); peaks then cover "
                      "the whole run[/]")


class BrokerBytes:
    """Mosquitto's $SYS byte counters; it publishes them (about every 1-2 s with
    `sys_interval 1`) only when they changed."""

    def __init__(self, port: int) -> None:
        self.topics = {"$SYS/broker/bytes/sent": "sent", "$SYS/broker/bytes/received": "received"}
        self._lock = threading.Lock()
        self._values: dict[str, tuple[int, float]] = {}
        self._client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-sys-monitor")
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        for topic in self.topics:
            client.subscribe(topic)

    def _on_message(self, client, userdata, message) -> None:
        with self._lock:
            self._values[self.topics[message.topic]] = (int(message.payload), time.monotonic())

    def snapshot(self) -> tuple[int, int]:
        """(sent, received) covering everything up to now.

        A one-byte message nobody subscribes to changes the received counter, so the broker
        publishes both counters again; the first values that arrive after it are current.
        """
        after = time.monotonic() + 0.05
        self._client.publish("bench/tick", b".", qos=0)
        deadline = after + 10
        while True:
            with self._lock:
                values = dict(self._values)
            if all(key in values and values[key][1] > after for key in ("sent", "received")):
                return values["sent"][0], values["received"][0]
            if time.monotonic() > deadline:
                raise RuntimeError("no fresh $SYS byte counters from Mosquitto within 10 s "
                                   "(is sys_interval set?)")
            time.sleep(0.02)

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


# --- the model --------------------------------------------------------------------------------


def write_model(path: Path, megabytes: float, seed: int) -> int:
    """features [N, 6] -> MatMul with a [6, K] float32 weight -> ReduceSum -> y [N, 1].

    K is chosen so the file has about `megabytes` MB; zeros in give zeros out (finite).
    Returns the file's size in bytes.
    """
    width = max(1, int(megabytes * MB / 4 / 6))
    rng = np.random.default_rng(seed)
    weight = (rng.standard_normal((6, width)) * 0.01).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "weight"], ["hidden"]),
         helper.make_node("ReduceSum", ["hidden", "axes"], ["y"], keepdims=1)],
        "bench_rollout",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
        initializer=[numpy_helper.from_array(weight, "weight"),
                     numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path.stat().st_size


def wire_bytes(path: Path, chunk_size: int) -> int:
    """One copy of the artifact as MQTT PUBLISH packets of its chunks (payload, topic, header)."""
    data = path.read_bytes()
    sha256 = hashlib.sha256(data).hexdigest()
    topic = Topics().artifact(sha256)
    count = -(-len(data) // chunk_size)
    total = 0
    for index in range(count):
        chunk = ArtifactChunk.build(sha256, index, count,
                                    data[index * chunk_size:(index + 1) * chunk_size])
        payload = len(encode(chunk))
        # fixed header (1 + up to 4 length bytes), topic length (2), topic, packet id (2)
        total += 1 + 4 + 2 + len(topic) + 2 + payload
    return total


# --- the plant --------------------------------------------------------------------------------


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"({path}: {exc})"


class Plant:
    """A private Mosquitto, a real central-sync serve and N real edge-agent processes."""

    def __init__(self, workdir: Path, agents: int, chunk_size: int) -> None:
        self.workdir = workdir
        self.mqtt_port = free_port()
        self.devices = [f"gw{i:02d}" for i in range(agents)]
        self.chunk_size = chunk_size
        self.central_cfg = workdir / "central.yaml"
        self.mosquitto: subprocess.Popen | None = None
        self.central: subprocess.Popen | None = None
        self.agents: dict[str, subprocess.Popen] = {}
        self._db: CentralDB | None = None

    # setup

    def start_broker(self) -> None:
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(f"listener {self.mqtt_port} 127.0.0.1\nallow_anonymous true\n"
                        "sys_interval 1\nmax_queued_messages 10000\nmax_inflight_messages 0\n"
                        f"log_dest file {self.workdir}/mosquitto.log\n"
                        f"{'user root' if os.geteuid() == 0 else ''}\n")
        mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.mosquitto = subprocess.Popen([mosquitto, "-c", str(conf)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.mqtt_port)

    def configure_central(self) -> None:
        self.central_cfg.write_text(
            f"central_id: bench-central\nbroker: {{port: {self.mqtt_port}}}\n"
            "database_url: sqlite:///central.db\nartifact_dir: artifacts\n"
            f"chunk_size_bytes: {self.chunk_size}\nweb: {{port: 0}}\n"
            "models: {require_approval: false}\n"
            "signing_key_path: keys/signing.key\n")
        self.cli("keys", "init")

    def cli(self, *args: str, timeout_s: float = 600) -> str:
        """Run `central-sync ARGS -c central.yaml`; its output, or an error with it."""
        command = [str(BIN / "central-sync"), *args, "-c", str(self.central_cfg)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s,
                              env={**os.environ, "COLUMNS": "200"})
        if done.returncode != 0:
            raise RuntimeError(f"`central-sync {' '.join(args)}` exited with {done.returncode}:\n"
                               f"{done.stdout}{done.stderr}\n--- central.log ---\n"
                               f"{tail(self.workdir / 'central.log')}")
        return done.stdout

    def publish(self, file: Path, version: str) -> None:
        meta = self.workdir / "models" / "meta.json"
        meta.write_text(json.dumps({"probation": {"duration_s": 0}}))
        self.cli("model", "publish", str(file), "--name", MODEL, "--version", version,
                 "--metadata", str(meta))

    def start_central(self) -> None:
        log = (self.workdir / "central.log").open("w")
        self.central = subprocess.Popen(
            [str(BIN / "central-sync"), "--log-level", "info", "serve", "-c",
             str(self.central_cfg)], stdout=log, stderr=log)

    def start_agents(self) -> None:
        for device in self.devices:
            # The group a rollout selects comes from provisioning (`device add --labels`); the
            # broker here is anonymous, so only the account's labels matter.
            self.db.add_broker_account(device, "device", [LABEL], "unused", by="bench")
            cfg = self.workdir / f"{device}.yaml"
            cfg.write_text(
                f"device_id: {device}\ndata_dir: {device}\nlabels: [{LABEL}]\n"
                f"broker: {{port: {self.mqtt_port}}}\nui: {{port: 0}}\n"
                "security: {central_public_key: keys/signing.pub}\nstatus_interval_s: 5\n")
            log = (self.workdir / f"{device}.log").open("w")
            self.agents[device] = subprocess.Popen(
                [str(BIN / "edge-agent"), "run", "-c", str(cfg), "--log-level", "warning"],
                stdout=log, stderr=log)

    @property
    def db(self) -> CentralDB:
        if self._db is None:
            self._db = CentralDB(self.workdir / "central.db")
        return self._db

    def check_alive(self) -> None:
        assert self.central is not None
        if self.central.poll() is not None:
            raise RuntimeError(f"central-sync exited with {self.central.returncode}:\n"
                               f"{tail(self.workdir / 'central.log')}")
        for device, process in self.agents.items():
            if process.poll() is not None:
                raise RuntimeError(f"agent {device} exited with {process.returncode}:\n"
                                   f"{tail(self.workdir / f'{device}.log')}")

    def wait_for_fleet(self, timeout_s: float) -> None:
        started = time.monotonic()
        last_print = 0.0
        while True:
            self.check_alive()
            now = time.time()
            seen = sorted(d.device_id for d in self.db.list_devices()
                          if d.presence(now, OFFLINE_AFTER_S) == "online")
            if seen == sorted(self.devices):
                console.print(f"  all {len(seen)} agents online after "
                              f"{time.monotonic() - started:.0f} s")
                return
            if time.monotonic() - started > timeout_s:
                raise RuntimeError(f"only {len(seen)} of {len(self.devices)} agents came "
                                   f"online within {timeout_s:.0f} s")
            if time.monotonic() - last_print > 10:
                last_print = time.monotonic()
                console.print(f"  {len(seen)}/{len(self.devices)} agents seen by central")
            time.sleep(0.5)

    def stop(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        # Agents first (all at once), then central, then the broker.
        for group in (list(self.agents.values()), [self.central], [self.mosquitto]):
            alive = [p for p in group if p is not None and p.poll() is None]
            for process in alive:
                process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 20
            for process in alive:
                try:
                    process.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


# --- phases -----------------------------------------------------------------------------------


@dataclass
class Phase:
    label: str
    seconds: float = 0.0
    sent: int = 0  # bytes the broker delivered
    received: int = 0  # bytes the broker received
    central_cpu: float = 0.0
    broker_cpu: float = 0.0
    central_rss_start: float = 0.0
    central_rss: float = 0.0
    agent_rss_start: float = 0.0  # the first agent
    agent_rss: float = 0.0
    max_agent_rss: float = 0.0
    per_device: list[float] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.sent + self.received


class Meter:
    """Bytes, CPU and peak RSS over one phase."""

    def __init__(self, plant: Plant, counters: BrokerBytes) -> None:
        self.plant = plant
        self.counters = counters

    def __enter__(self) -> Meter:
        plant = self.plant
        assert plant.central is not None and plant.mosquitto is not None
        self.pids = [plant.central.pid, *(p.pid for p in plant.agents.values())]
        for pid in self.pids:
            reset_peak_rss(pid)
        self.central_rss = proc_peak_rss_mb(self.pids[0])
        self.agent_rss = proc_peak_rss_mb(self.pids[1])
        self.sent, self.received = self.counters.snapshot()
        self.central_cpu = proc_cpu_s(plant.central.pid)
        self.broker_cpu = proc_cpu_s(plant.mosquitto.pid)
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.started

    def fill(self, phase: Phase) -> Phase:
        plant = self.plant
        assert plant.central is not None and plant.mosquitto is not None
        phase.seconds = self.seconds
        phase.central_rss_start, phase.agent_rss_start = self.central_rss, self.agent_rss
        phase.central_cpu = proc_cpu_s(plant.central.pid) - self.central_cpu
        phase.broker_cpu = proc_cpu_s(plant.mosquitto.pid) - self.broker_cpu
        phase.central_rss = proc_peak_rss_mb(plant.central.pid)
        agent_peaks = [proc_peak_rss_mb(p.pid) for p in plant.agents.values()]
        phase.agent_rss = agent_peaks[0]
        phase.max_agent_rss = max(agent_peaks)
        sent, received = self.counters.snapshot()
        phase.sent, phase.received = sent - self.sent, received - self.received
        return phase


def run_rollout(plant: Plant, version: str, canary: int, timeout_s: float) -> float:
    """Start a rollout with the CLI and wait until central's engine completed it; seconds."""
    started = time.perf_counter()
    before = {r.rollout_id for r in plant.db.list_rollouts()}
    plant.cli("rollout", "start", f"{MODEL}@{version}", "--group", LABEL, "--canary",
              str(canary), "--waves", "100%", "--no-follow", "--by", "bench")
    new = [r for r in plant.db.list_rollouts() if r.rollout_id not in before]
    if len(new) != 1:
        raise RuntimeError(f"expected one new rollout, found {len(new)}")
    rollout_id = new[0].rollout_id
    last_print = time.perf_counter()
    while True:
        rollout = plant.db.get_rollout(rollout_id)
        assert rollout is not None
        if rollout.state == "completed":
            elapsed = time.perf_counter() - started
            console.print(f"  rollout {rollout_id} completed in {elapsed:.1f} s: "
                          f"{rollout.detail}", highlight=False)
            return elapsed
        if rollout.state in ("halted", "aborted", "rolled_back") or \
                time.perf_counter() - started > timeout_s:
            devices = plant.db.rollout_devices(rollout_id)
            lines = "\n".join(f"    {d.device_id} wave {d.wave + 1} {d.state}: {d.detail}"
                              for d in devices)
            ended = f"is {rollout.state}" if rollout.state != "running" else \
                f"is still running after the --timeout of {timeout_s:g} s"
            raise RuntimeError(
                f"rollout {rollout_id} {ended}: {rollout.detail}\n{lines}\n"
                f"--- central.log ---\n{tail(plant.workdir / 'central.log')}")
        plant.check_alive()
        if time.perf_counter() - last_print >= 5:
            last_print = time.perf_counter()
            states = Counter(d.state for d in plant.db.rollout_devices(rollout_id))
            console.print(f"  {time.perf_counter() - started:5.0f} s: "
                          f"{states['succeeded']}/{len(plant.devices)} confirmed, "
                          f"{states['sent']} under way, {states['pending']} pending "
                          f"({rollout.detail})", highlight=False)
        time.sleep(0.2)


def run_sequential(plant: Plant, version: str, wait_s: float) -> list[float]:
    """`central-sync deploy --wait` to each device in turn; seconds per device."""
    per_device = []
    for number, device in enumerate(plant.devices, 1):
        started = time.perf_counter()
        plant.cli("deploy", f"{MODEL}@{version}", "--device", device, "--wait", f"{wait_s:g}",
                  "--by", "bench", timeout_s=wait_s + 60)
        per_device.append(time.perf_counter() - started)
        console.print(f"  {number:2d}/{len(plant.devices)} {device} activated in "
                      f"{per_device[-1]:.1f} s", highlight=False)
    return per_device


# --- report -----------------------------------------------------------------------------------


def report(phases: list[Phase], baseline: Phase, wire: int, idle_rate: float,
           cli_start_s: float) -> None:
    traffic = Table("phase", "wall s", "MB in", "MB out", "MB total", "copies in/out",
                    "x time", "x MB in", "x MB total",
                    title="Rollout vs the whole artifact to each device in turn")
    for phase in [*phases, baseline]:
        traffic.add_row(
            phase.label, f"{phase.seconds:.1f}", f"{phase.received / MB:.1f}",
            f"{phase.sent / MB:.1f}", f"{phase.total / MB:.1f}",
            f"{phase.received / wire:.1f} / {phase.sent / wire:.1f}",
            f"{baseline.seconds / phase.seconds:.2f}",
            f"{baseline.received / phase.received:.2f}", f"{baseline.total / phase.total:.2f}")
    console.print(traffic)
    console.print(
        f"MB = 10^6 bytes. MB in: bytes the broker received (central's chunk publications, plus "
        f"chunk requests, events and statuses); MB out: bytes it delivered. copies: those bytes "
        f"/ one copy of the artifact as chunk messages ({wire / MB:.1f} MB). x: the baseline's "
        f"figure / this phase's. Idle traffic ({idle_rate / 1000:.1f} kB/s) is included.",
        highlight=False)
    resources = Table("phase", "central CPU s", "broker CPU s", "central RSS MiB",
                      "gw00 RSS MiB", "max agent peak MiB",
                      title="CPU seconds during each phase; RSS at its start -> its peak")
    for phase in [*phases, baseline]:
        resources.add_row(phase.label, f"{phase.central_cpu:.2f}", f"{phase.broker_cpu:.2f}",
                          f"{phase.central_rss_start:.0f} -> {phase.central_rss:.0f}",
                          f"{phase.agent_rss_start:.0f} -> {phase.agent_rss:.0f}",
                          f"{phase.max_agent_rss:.0f}")
    console.print(resources)
    console.print(
        f"Baseline: median {float(np.median(baseline.per_device)):.1f} s per device, each in "
        f"its own `central-sync deploy` process (a bare `central-sync model list` takes "
        f"{cli_start_s:.1f} s here). An agent's RSS grows over its first few deploys (freed "
        f"memory stays with the process), so every phase follows warm-up rollouts.",
        highlight=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=20, help="edge-agent processes (20)")
    parser.add_argument("--model-mb", type=float, default=20.0,
                        help="model size in MB, 10^6 bytes (20)")
    parser.add_argument("--chunk-kb", type=int, default=256,
                        help="central's chunk_size_bytes in KiB (256)")
    parser.add_argument("--no-canary", action="store_true",
                        help="skip the rollout with one canary device first")
    parser.add_argument("--warm-ups", type=int, default=2, metavar="N",
                        help="unmeasured rollouts of a model of the same size first (2)")
    parser.add_argument("--timeout", type=float, default=1800.0, metavar="SECONDS",
                        help="longest wait for one rollout, or one device's deploy (1800)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the work folder (logs, databases) and print its path")
    args = parser.parse_args()
    if not 1 <= args.agents <= 100 or args.warm_ups < 0:
        parser.error("--agents must be between 1 and 100, --warm-ups at least 0")

    tmp = None if args.keep else tempfile.TemporaryDirectory(prefix="bench-rollout-")
    workdir = Path(tmp.name if tmp else tempfile.mkdtemp(prefix="bench-rollout-"))
    chunk_size = args.chunk_kb * 1024
    plant = Plant(workdir, args.agents, chunk_size)
    counters: BrokerBytes | None = None
    try:
        models = workdir / "models"
        models.mkdir()
        warm_ups = [f"0.{i + 1}.0" for i in range(args.warm_ups)]
        files = {}
        for seed, version in enumerate([*warm_ups, "1.0.0", "1.1.0", "1.2.0"]):
            files[version] = (models / f"big-{version}.onnx", args.model_mb, seed)
        sizes = {v: write_model(path, mb, seed) for v, (path, mb, seed) in files.items()}
        size = sizes["1.0.0"]
        wire = wire_bytes(files["1.0.0"][0], chunk_size)
        chunks = -(-size // chunk_size)
        console.print(f"[bold]rollout benchmark[/]: {args.agents} agents, model "
                      f"{size / MB:.1f} MB ({size:,} bytes) in {chunks} chunks of "
                      f"{args.chunk_kb} KiB, {wire / MB:.1f} MB on the wire per copy; "
                      f"work folder {workdir}", highlight=False)

        plant.start_broker()
        counters = BrokerBytes(plant.mqtt_port)
        plant.configure_central()
        started = time.perf_counter()
        plant.cli("model", "list")
        cli_start_s = time.perf_counter() - started
        for version, (path, _, _) in files.items():
            if version == "1.1.0" and args.no_canary:
                continue
            plant.publish(path, version)
        plant.start_central()
        console.print(f"starting {args.agents} agents")
        plant.start_agents()
        plant.wait_for_fleet(timeout_s=300)

        for version in warm_ups:
            console.print(f"warm-up: rollout of {MODEL}@{version} (same size, not measured)")
            run_rollout(plant, version, canary=0, timeout_s=args.timeout)

        idle_sent, idle_received = counters.snapshot()
        time.sleep(5)
        sent, received = counters.snapshot()
        idle_rate = (sent - idle_sent + received - idle_received) / 5

        phases = []
        console.print(f"[bold]1. rollout[/] of {MODEL}@1.0.0 to {args.agents} agents, "
                      "all in one wave (--canary 0 --waves 100%)")
        with Meter(plant, counters) as meter:
            run_rollout(plant, "1.0.0", canary=0, timeout_s=args.timeout)
        phases.append(meter.fill(Phase("rollout, one wave")))

        if not args.no_canary:
            console.print(f"[bold]2. rollout[/] of {MODEL}@1.1.0 with a canary "
                          "(--canary 1 --waves 100%)")
            with Meter(plant, counters) as meter:
                run_rollout(plant, "1.1.0", canary=1, timeout_s=args.timeout)
            phases.append(meter.fill(Phase("rollout, canary+wave")))
        baseline_version = "1.2.0"

        console.print(f"[bold]{len(phases) + 1}. baseline[/]: `central-sync deploy "
                      f"{MODEL}@{baseline_version} --wait` to each agent, one after another")
        with Meter(plant, counters) as meter:
            per_device = run_sequential(plant, baseline_version, wait_s=args.timeout)
        baseline = meter.fill(Phase("baseline, one by one", per_device=per_device))

        report(phases, baseline, wire, idle_rate, cli_start_s)
        return 0
    except RuntimeError as exc:
        console.print("benchmark failed:", style="bold red")
        console.print(str(exc), markup=False, highlight=False)
        return 1
    finally:
        if counters is not None:
            counters.close()
        plant.stop()
        if tmp is None:
            console.print(f"work folder kept: {workdir}")
        else:
            tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())

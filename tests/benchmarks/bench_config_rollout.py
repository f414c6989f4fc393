"""Benchmark: changing a line's configuration on a fleet from central, against editing each
gateway's YAML and restarting its agent.

Runs on loopback with a private Mosquitto, the OPC-UA line simulator, a real `central-sync
serve` and one real `edge-agent run` process per gateway, each predicting the sample process
model from the line's tags (`--interval` seconds apart). Measured, each phase from the same
running fleet:
  1. `central-sync config push` of a changed pipeline (its source unchanged: the new pipeline
     starts beside the old one) to every gateway, canary first, then 50 %, then 100 %;
  2. the same with a changed source (sampling interval): stop, then start;
  3. baseline: what a plant does without central configuration: write the new YAML on each
     gateway and restart its agent (SIGTERM, start), one gateway after another.
For each it prints the wall time from the first command to the last gateway confirmed (or
predicting again), and the longest gap between two predictions of any gateway during the phase,
from the predictions central stored (their gateway timestamps), against the prediction interval.
Not a test: run it by hand.

    .venv/bin/python tests/benchmarks/bench_config_rollout.py --agents 10
"""

from __future__ import annotations

import argparse
import itertools
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.benchmarks.bench_rollout import LABEL, Plant, tail  # noqa: E402
from tests.conftest import LineSimulatorProcess, free_port, start_line_simulator  # noqa: E402
from tests.helpers import SAMPLE_METADATA, SAMPLE_MODEL  # noqa: E402

BIN = Path(sys.executable).parent
MODEL = "extruder-scrap"
CONFIG = "line1"
TAGS = ("zone1_temp_c", "zone2_temp_c", "zone3_temp_c", "melt_pressure_bar",
        "screw_speed_rpm", "ambient_humidity_pct")
console = Console(width=110)


def lines_yaml(endpoint: str, interval_s: float, sampling_ms: int) -> str:
    """The line's sources and pipelines, as a gateway's YAML (and a config document) has them."""
    nodes = ", ".join(f"{tag}: 'ns=2;s=line1.{tag}'" for tag in TAGS)
    return (
        "sources:\n"
        f"  - {{name: line1, endpoint: '{endpoint}', sampling_interval_ms: {sampling_ms},"
        f" reconnect_max_backoff_s: 1, nodes: {{{nodes}}}}}\n"
        "pipelines:\n"
        f"  - {{name: scrap, source: line1, model: {MODEL}, interval_s: {interval_s:g}}}\n")


class ConfigPlant(Plant):
    """bench_rollout's plant, its agents predicting from the line simulator."""

    def __init__(self, workdir: Path, agents: int, simulator: LineSimulatorProcess,
                 interval_s: float) -> None:
        super().__init__(workdir, agents, chunk_size=256 * 1024)
        self.simulator = simulator
        self.interval_s = interval_s

    def agent_yaml(self, device: str, body: str) -> str:
        return (f"device_id: {device}\ndata_dir: {device}\nlabels: [{LABEL}]\n"
                f"broker: {{port: {self.mqtt_port}}}\nui: {{port: 0}}\n"
                "uplink: {batch_size: 50, ack_timeout_s: 2}\n"
                "security: {central_public_key: keys/signing.pub}\nstatus_interval_s: 2\n"
                + body)

    def start_agents(self, body: str = "") -> None:  # type: ignore[override]
        for device in self.devices:
            self.db.add_broker_account(device, "device", [LABEL], "unused", by="bench")
            self.start_agent(device, body)

    def start_agent(self, device: str, body: str) -> None:
        cfg = self.workdir / f"{device}.yaml"
        cfg.write_text(self.agent_yaml(device, body))
        log = (self.workdir / f"{device}.log").open("a")
        self.agents[device] = subprocess.Popen(
            [str(BIN / "edge-agent"), "run", "-c", str(cfg), "--log-level", "warning"],
            stdout=log, stderr=log, cwd=self.workdir)

    def restart_agent(self, device: str, body: str) -> None:
        process = self.agents[device]
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        self.start_agent(device, body)

    def prediction_times(self, device: str, since: float) -> list[float]:
        with sqlite3.connect(self.workdir / "central.db", timeout=30) as db:
            return [row[0] for row in db.execute(
                "SELECT created_at FROM predictions WHERE device_id = ? AND created_at >= ? "
                "ORDER BY created_at", (device, since))]

    def predicting_since(self, since: float) -> set[str]:
        """Devices with a prediction made after `since`."""
        with sqlite3.connect(self.workdir / "central.db", timeout=30) as db:
            return {row[0] for row in db.execute(
                "SELECT DISTINCT device_id FROM predictions WHERE created_at > ?", (since,))}


@dataclass
class Phase:
    label: str
    seconds: float
    longest_gap_s: float
    worst_device: str
    gaps: list[float]


def longest_gaps(plant: ConfigPlant, since: float, until: float) -> dict[str, float]:
    """Per device, the longest time between consecutive predictions in [since, until]."""
    gaps = {}
    for device in plant.devices:
        times = [t for t in plant.prediction_times(device, since) if t <= until]
        edges = [since, *times, until]
        gaps[device] = max(b - a for a, b in itertools.pairwise(edges))
    return gaps


def wait_predicting(plant: ConfigPlant, since: float, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while plant.predicting_since(since) != set(plant.devices):
        plant.check_alive()
        if time.monotonic() > deadline:
            missing = sorted(set(plant.devices) - plant.predicting_since(since))
            raise RuntimeError(f"no prediction from {missing} within {timeout_s:g} s:\n"
                               f"{tail(plant.workdir / f'{missing[0]}.log')}")
        time.sleep(0.5)


def settle(plant: ConfigPlant, seconds: float) -> float:
    """Let the fleet predict undisturbed for a while; the time the next phase starts."""
    time.sleep(seconds)
    return time.time()


def push(plant: ConfigPlant, body: str, name: str, timeout_s: float) -> float:
    """`central-sync config push` and wait for the rollout to complete; seconds."""
    file = plant.workdir / f"{name}.yaml"
    file.write_text(body)
    before = {r.rollout_id for r in plant.db.list_rollouts()}
    started = time.perf_counter()
    plant.cli("config", "push", str(file), "--name", CONFIG, "--group", LABEL, "--canary", "1",
              "--waves", "50%,100%", "--probation-s", "5", "--by", "bench")
    new = [r for r in plant.db.list_rollouts() if r.rollout_id not in before]
    if len(new) != 1:
        raise RuntimeError(f"expected one new rollout, found {len(new)}")
    rollout_id, last_print = new[0].rollout_id, time.perf_counter()
    while True:
        rollout = plant.db.get_rollout(rollout_id)
        assert rollout is not None
        if rollout.state == "completed":
            return time.perf_counter() - started
        if rollout.state in ("halted", "aborted", "rolled_back") or \
                time.perf_counter() - started > timeout_s:
            devices = "\n".join(f"    {d.device_id} wave {d.wave + 1} {d.state}: {d.detail}"
                                for d in plant.db.rollout_devices(rollout_id))
            raise RuntimeError(f"config rollout {rollout_id} is {rollout.state}: "
                               f"{rollout.detail}\n{devices}\n--- central.log ---\n"
                               f"{tail(plant.workdir / 'central.log')}")
        plant.check_alive()
        if time.perf_counter() - last_print >= 5:
            last_print = time.perf_counter()
            states = Counter(d.state for d in plant.db.rollout_devices(rollout_id))
            console.print(f"  {time.perf_counter() - started:5.0f} s: "
                          f"{states['succeeded']}/{len(plant.devices)} confirmed "
                          f"({rollout.detail})", highlight=False)
        time.sleep(0.2)


def measured(plant: ConfigPlant, label: str, action: Callable[[], float],
             quiet_s: float) -> Phase:
    since = settle(plant, quiet_s)
    seconds = action()
    until = settle(plant, quiet_s)
    wait_predicting(plant, until - quiet_s / 2, timeout_s=60)
    time.sleep(3)  # the last predictions reach central
    gaps = longest_gaps(plant, since, until)
    worst = max(gaps, key=gaps.__getitem__)
    console.print(f"  {label}: {seconds:.1f} s, longest prediction gap {gaps[worst]:.2f} s "
                  f"({worst})", highlight=False)
    return Phase(label, seconds, gaps[worst], worst, sorted(gaps.values()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=10, help="edge-agent processes (10)")
    parser.add_argument("--interval", type=float, default=0.2,
                        help="seconds between two predictions of a gateway (0.2)")
    parser.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS",
                        help="longest wait for one rollout (600)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the work folder (logs, databases) and print its path")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-config-"))
    simulator = start_line_simulator(free_port(), interval_s=0.1)
    plant = ConfigPlant(workdir, args.agents, simulator, args.interval)
    endpoint = simulator.endpoint
    start = lines_yaml(endpoint, args.interval, 100)
    try:
        console.print(f"[bold]configuration rollout benchmark[/]: {args.agents} agents, a "
                      f"prediction every {args.interval:g} s each; work folder {workdir}",
                      highlight=False)
        plant.start_broker()
        plant.configure_central()
        plant.cli("model", "publish", str(SAMPLE_MODEL), "--name", MODEL, "--version", "1.0.0",
                  "--metadata", str(SAMPLE_METADATA))
        plant.start_central()
        plant.start_agents(start)
        plant.wait_for_fleet(timeout_s=300)
        plant.cli("rollout", "start", f"{MODEL}@1.0.0", "--group", LABEL, "--canary", "0",
                  "--waves", "100%", "--no-follow", "--by", "bench")
        wait_predicting(plant, time.time(), timeout_s=180)
        console.print("fleet predicting; measuring")
        phases = []
        first = lines_yaml(endpoint, args.interval * 0.9, 100)
        phases.append(measured(plant, "config push: pipeline changed", lambda: push(
            plant, first, "pipeline-changed", args.timeout), quiet_s=5))
        second = lines_yaml(endpoint, args.interval * 0.9, 50)
        phases.append(measured(plant, "config push: source changed", lambda: push(
            plant, second, "source-changed", args.timeout), quiet_s=5))
        third = lines_yaml(endpoint, args.interval, 100)

        def restart_each() -> float:
            started = time.perf_counter()
            for device in plant.devices:
                since = time.time()
                plant.restart_agent(device, third)
                wait_predicting_one(plant, device, since)
            return time.perf_counter() - started

        phases.append(measured(plant, "baseline: edit YAML, restart agent", restart_each,
                               quiet_s=5))
        report(phases, args.interval)
    finally:
        plant.stop()
        simulator.kill()
        if args.keep:
            console.print(f"work folder kept: {workdir}")
    return 0


def wait_predicting_one(plant: ConfigPlant, device: str, since: float) -> None:
    deadline = time.monotonic() + 120
    while device not in plant.predicting_since(since):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{device} not predicting again:\n"
                               f"{tail(plant.workdir / f'{device}.log')}")
        time.sleep(0.2)


def report(phases: list[Phase], interval_s: float) -> None:
    baseline = phases[-1]
    table = Table("phase", "wall s", "longest gap s", "gap / interval", "median device gap s",
                  "x gap vs baseline", title="Changing the line's configuration on the fleet")
    for phase in phases:
        median = phase.gaps[len(phase.gaps) // 2]
        table.add_row(phase.label, f"{phase.seconds:.1f}", f"{phase.longest_gap_s:.2f}",
                      f"{phase.longest_gap_s / interval_s:.1f}", f"{median:.2f}",
                      f"{baseline.longest_gap_s / phase.longest_gap_s:.2f}")
    console.print(table)
    console.print(f"wall s: from the command to every gateway confirmed (config push: canary, "
                  f"50 %, 100 %, each with 5 s of probation) or predicting again (baseline: "
                  f"one gateway after another). gap: the longest time between two predictions "
                  f"of one gateway during the phase; a prediction is due every {interval_s:g} s."
                  f" x gap: the baseline's longest gap / this phase's.", highlight=False)


if __name__ == "__main__":
    raise SystemExit(main())

"""The whole loop with real processes: Mosquitto, the OPC-UA line simulator, central and an agent.

A model published and deployed from central becomes active on the agent, its predictions
arrive in central's database, and a killed agent shows as offline through its last will.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from central_sync.db import CentralDB
from tests.conftest import LineSimulatorProcess, Mosquitto, free_port, start_line_simulator
from tests.helpers import REPO, SAMPLE_METADATA, SAMPLE_MODEL, wait_until

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
DEVICE = "line1-gw1"


@dataclass
class Plant:
    workdir: Path
    central_config: Path
    agent_config: Path
    agent_port: int
    line: LineSimulatorProcess
    processes: dict[str, subprocess.Popen]

    def central(self, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "central-sync"), *args, "-c", str(self.central_config)],
                              capture_output=True, text=True, timeout=timeout_s, cwd=REPO)

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = (self.workdir / f"{name}.log").open("ab")
        process = subprocess.Popen([str(BIN / name), *args], stdout=log, stderr=log, cwd=REPO)
        self.processes[name] = process
        return process

    def log(self, name: str) -> str:
        return (self.workdir / f"{name}.log").read_text(errors="replace")[-4000:]

    def db(self) -> CentralDB:
        return CentralDB(self.workdir / "central" / "central.db")


def write_configs(workdir: Path, mqtt_port: int, opcua_endpoint: str, protocol: str
                  ) -> tuple[Path, Path, int]:
    central = workdir / "central.yaml"
    central.write_text(
        "central_id: test-central\n"
        f"broker: {{host: 127.0.0.1, port: {mqtt_port}, protocol: '{protocol}'}}\n"
        "database_url: sqlite:///central/central.db\n"
        "artifact_dir: central/artifacts\n"
        "chunk_size_bytes: 16384\n"
        "web: {port: 0}\n"
        "models: {require_approval: false}\n"
        "signing_key_path: central/keys/signing.key\n"
    )
    agent_port = free_port()
    agent = workdir / "agent.yaml"
    tags = ["zone1_temp_c", "zone2_temp_c", "zone3_temp_c", "melt_pressure_bar",
            "screw_speed_rpm", "ambient_humidity_pct"]
    agent.write_text(
        f"device_id: {DEVICE}\n"
        "data_dir: agent\n"
        f"broker: {{host: 127.0.0.1, port: {mqtt_port}, protocol: '{protocol}', keepalive_s: 5}}\n"
        "sources:\n"
        f"  - {{name: line1, endpoint: '{opcua_endpoint}', sampling_interval_ms: 100,\n"
        "      nodes: {" + ", ".join(f"{t}: 'ns=2;s=line1.{t}'" for t in tags) + "}}\n"
        "pipelines:\n"
        "  - {name: scrap, source: line1, model: extruder-scrap, interval_s: 0.1}\n"
        "uplink: {batch_size: 20, ack_timeout_s: 3}\n"
        f"ui: {{port: {agent_port}}}\n"
        "security: {central_public_key: central/keys/signing.pub}\n"
        "status_interval_s: 1\n"
    )
    return central, agent, agent_port


@pytest.fixture
def line_simulator() -> Iterator[LineSimulatorProcess]:
    """The line, launched without waiting for it: it starts while central and the agent do (the
    agent's source retries until it can connect); a test that needs its values waits for it."""
    simulator = start_line_simulator(free_port(), wait=False)
    yield simulator
    simulator.kill()


@pytest.fixture(params=["5", "3.1.1"], ids=["mqtt5", "mqtt311"])
def plant(request: pytest.FixtureRequest, tmp_path: Path, mosquitto: Mosquitto,
          line_simulator: LineSimulatorProcess) -> Iterator[Plant]:
    central_cfg, agent_cfg, agent_port = write_configs(
        tmp_path, mosquitto.port, line_simulator.endpoint, request.param)
    plant = Plant(tmp_path, central_cfg, agent_cfg, agent_port, line_simulator, {})
    keys = plant.central("keys", "init")
    assert keys.returncode == 0, keys.stderr
    yield plant
    for process in plant.processes.values():
        if process.poll() is None:
            process.kill()
            process.wait()


def test_model_deployed_from_central_serves_predictions_back_to_central(plant: Plant) -> None:
    published = plant.central("model", "publish", str(SAMPLE_MODEL), "--name", "extruder-scrap",
                              "--version", "1.0.0", "--metadata", str(SAMPLE_METADATA))
    assert published.returncode == 0, published.stderr
    plant.start("central-sync", "serve", "-c", str(plant.central_config))
    plant.start("edge-agent", "run", "-c", str(plant.agent_config))
    db = plant.db()
    wait_until(lambda: any(d.device_id == DEVICE and d.state == "online"
                           for d in db.list_devices()), 30, what="agent online in central")
    plant.line.wait_ready()

    deployed = plant.central("deploy", "extruder-scrap@1.0.0", "--device", DEVICE,
                             "--wait", "90")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr + plant.log("edge-agent")
    assert "activated" in deployed.stdout

    pointer = plant.workdir / "agent" / "models" / "extruder-scrap" / "active.json"
    assert json.loads(pointer.read_text())["active"] == "1.0.0"
    sha256 = db.get_model("extruder-scrap", "1.0.0").sha256

    predictions = wait_until(lambda: db.recent_predictions(limit=10, device_id=DEVICE), 60,
                             what="predictions in central")
    newest = predictions[0]
    assert newest["model_name"] == "extruder-scrap"
    assert newest["model_version"] == "1.0.0"
    assert newest["model_sha256"] == sha256
    assert 0 <= json_value(newest["outputs"])["scrap_rate_pct"] <= 100

    wait_until(lambda: db.count_records(DEVICE) >= 10, 60, what="ten records stored")
    seqs = [p["seq"] for p in db.recent_predictions(limit=1000, device_id=DEVICE)]
    assert len(seqs) == len(set(seqs))
    # The agent's next status (every second) tells central what it serves.
    wait_until(lambda: [m.version for m in next(
        d for d in db.list_devices() if d.device_id == DEVICE).active_models] == ["1.0.0"], 10,
        what="central showing 1.0.0 active on the device")

    agent = plant.processes["edge-agent"]
    os.kill(agent.pid, signal.SIGKILL)
    agent.wait()
    wait_until(lambda: next(d for d in db.list_devices() if d.device_id == DEVICE).state
               == "offline", 30, what="last will marks the agent offline")


def test_agent_stops_cleanly_on_sigterm_and_says_offline(plant: Plant) -> None:
    plant.start("central-sync", "serve", "-c", str(plant.central_config))
    agent = plant.start("edge-agent", "run", "-c", str(plant.agent_config))
    db = plant.db()
    wait_until(lambda: any(d.device_id == DEVICE and d.state == "online"
                           for d in db.list_devices()), 30, what="agent online")
    wait_until(lambda: "source=line1 state=connected" in plant.log("edge-agent"), 30,
               what="the agent's source connected to the line")
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(timeout=20) == 0, plant.log("edge-agent")
    assert "Traceback" not in plant.log("edge-agent")
    wait_until(lambda: next(d for d in db.list_devices() if d.device_id == DEVICE).state
               == "offline", 15, what="offline status")
    central = plant.processes["central-sync"]
    central.send_signal(signal.SIGINT)
    assert central.wait(timeout=20) == 0, plant.log("central-sync")


def json_value(value: object) -> dict:
    return json.loads(value) if isinstance(value, str) else value  # type: ignore[return-value]

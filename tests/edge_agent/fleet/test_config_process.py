"""A real `edge-agent run` process killed with SIGKILL in the middle of a configuration switch
comes back on its last good configuration and reports the switch rolled back."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.kernel.contract import (
    RECORD_DEPLOYMENT_EVENT,
    DeviceStatus,
    decode,
)
from edge_agent.kernel.transport import BrokerConfig
from edge_agent.kernel.transport.mqtt import MqttTransport
from edge_agent.model_store import ModelStore
from tests.conftest import Mosquitto
from tests.edge_agent.fleet.fleet_parts import (
    DEVICE,
    TOPICS,
    Central,
    camera,
    deploy,
    document,
    install_surface_model,
    vision,
)
from tests.helpers import wait_until_async, write_test_keys

AGENT = Path(sys.executable).parent / "edge-agent"
GOOD = {"sources": [camera("cam1")], "pipelines": [vision("surface", "cam1")]}
NEWER = {"sources": [camera("cam1", max_fps=5)], "pipelines": [vision("surface", "cam1")]}


def agent_yaml(tmp_path: Path, port: int) -> Path:
    path = tmp_path / "edge-agent.yaml"
    path.write_text(
        f"device_id: {DEVICE}\n"
        f"data_dir: {tmp_path / 'agent'}\n"
        f"broker: {{host: 127.0.0.1, port: {port}}}\n"
        "ui: {port: 0}\n"
        f"security: {{central_public_key: {write_test_keys(tmp_path / 'keys')[1]}}}\n"
        "status_interval_s: 1\n")
    return path


@contextlib.contextmanager
def agent_process(config: Path) -> Iterator[subprocess.Popen]:
    log = (config.parent / "agent.log").open("ab")
    process = subprocess.Popen([str(AGENT), "run", "-c", str(config)], stdout=log,
                               stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
        log.close()


def durable_steps(buffer: Path, command_id: str) -> list[tuple[str, str]]:
    """The (step, detail) of a command's events in the agent's buffer."""
    with contextlib.closing(sqlite3.connect(f"file:{buffer}?mode=ro", uri=True)) as db:
        rows = db.execute("SELECT payload FROM records WHERE type = ? ORDER BY seq",
                          (RECORD_DEPLOYMENT_EVENT,)).fetchall()
    events = [json.loads(payload) for (payload,) in rows]
    return [(e["step"], e["detail"]) for e in events if e["command_id"] == command_id]


@pytest.mark.slow
def test_agent_killed_mid_switch_runs_its_last_good_configuration(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    config = agent_yaml(tmp_path, mosquitto.port)
    install_surface_model(ModelStore(tmp_path / "agent" / "models"))
    good, slow = document(GOOD), document(NEWER, 2, probation_s=600)
    statuses: list[DeviceStatus] = []

    async def on_status(topic: str, payload: bytes) -> None:
        status = decode(payload)
        if isinstance(status, DeviceStatus):
            statuses.append(status)

    async def in_force(ref: object) -> None:
        await wait_until_async(lambda: any(s.state == "online" and s.config == ref
                                           for s in statuses[-3:]), 30,
                               what=lambda: f"{ref} in force: {statuses[-3:]}")

    async def first_run(central: Central) -> str:
        with agent_process(config) as agent:
            await in_force(None)
            command = deploy(good)
            await central.send(command)
            assert (await central.outcome(command.command_id)).step == "confirmed"
            await in_force(good.ref)
            switch = deploy(slow)
            await central.send(switch)
            await wait_until_async(lambda: "activated" in central.steps(switch.command_id), 30)
            agent.kill()  # SIGKILL in the middle of the probation
            agent.wait(timeout=10)
        return switch.command_id

    async def main() -> None:
        central = Central(MqttTransport(BrokerConfig(port=mosquitto.port), "central"))
        await central.start()
        await central.transport.subscribe(TOPICS.status(DEVICE), on_status)
        switch = await first_run(central)
        assert (tmp_path / "agent" / "config" / "pending.json").exists()
        statuses.clear()
        with agent_process(config):
            await in_force(good.ref)
            buffer = tmp_path / "agent" / "buffer.db"
            await wait_until_async(lambda: ("rolled_back", "the agent restarted during the switch; "
                                "line-3@1 runs") in durable_steps(buffer, switch), 30)
            assert not (tmp_path / "agent" / "config" / "pending.json").exists()
        await central.transport.stop()
        shown = subprocess.run([str(AGENT), "status", "-c", str(config)], capture_output=True,
                               text=True, timeout=60, check=True, env={**os.environ,
                                                                       "COLUMNS": "200"})
        assert "sources and pipelines: line-3@1 from central (published " in shown.stdout
        assert "by alice), in place of this file's" in shown.stdout

    asyncio.run(asyncio.wait_for(main(), 120))

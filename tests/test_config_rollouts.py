"""A configuration pushed with `central-sync config push` reaches real agents over a real
Mosquitto in two waves: central's service (in this process) carries the rollout out, each
agent (the agent's own `Agent`, in this process) checks the signed configuration, switches its
sources and pipelines to it and confirms it after its probation. A version that is unhealthy
on the canary is reverted there by the agent itself and halts the rollout before the others.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import yaml

from central_sync.cli import main
from central_sync.config import load_central_config
from central_sync.db import CentralDB
from central_sync.service import CentralService
from edge_agent.app import Agent
from edge_agent.config import AgentConfig
from edge_agent.kernel.transport.mqtt import MqttTransport
from tests.central_sync.central_helpers import write_config
from tests.conftest import Mosquitto
from tests.edge_agent.fleet.fleet_parts import camera, install_surface_model, vision
from tests.helpers import wait_until_async, write_test_keys

DEVICES = ("gw1", "gw2")
GOOD = {"sources": [camera("cam1")], "pipelines": [vision("surface", "cam1")]}


def _agent(tmp: Path, device_id: str, port: int) -> Agent:
    _, public = write_test_keys(tmp / "agent-keys")
    agent = Agent(AgentConfig.model_validate({
        "device_id": device_id, "data_dir": str(tmp / device_id), "labels": ["line-3"],
        "broker": {"port": port}, "ui": {"port": 0},
        "security": {"central_public_key": str(public)}, "status_interval_s": 0.5}))
    install_surface_model(agent.store)
    return agent


def _push(config_path: Path, file: Path, body: dict) -> int:
    file.write_text(yaml.safe_dump(body, sort_keys=False))
    return main(["config", "push", str(file), "--name", "line-3", "--group", "line-3",
                 "--canary", "1", "--probation-s", "1", "--wait", "--timeout", "60",
                 "-c", str(config_path), "--by", "alice"])


def _reported(db: CentralDB) -> dict[str, str | None]:
    return {d.device_id: d.status.config.label if d.status and d.status.config else None
            for d in db.list_devices()}


def test_a_pushed_configuration_reaches_the_line_in_two_waves_and_a_bad_one_stops_at_the_canary(
        mosquitto: Mosquitto, tmp_path: Path, capsys) -> None:
    config_path = write_config(tmp_path, broker_port=mosquitto.port)
    config = load_central_config(config_path)

    async def scenario() -> None:
        central = CentralService(config, MqttTransport(config.broker, "central"))
        await central.start()
        db = central.db
        assert db is not None
        agents = {d: _agent(tmp_path, d, mosquitto.port) for d in DEVICES}
        stop = asyncio.Event()
        tasks = [asyncio.create_task(a.run(stop)) for a in agents.values()]
        try:
            for device in DEVICES:  # as `central-sync device add ID --labels line-3` does
                db.add_broker_account(device, "device", ["line-3"], "unused", by="test")
            await wait_until_async(lambda: all(
                d.presence(time.time(), 30) == "online" for d in db.list_devices())
                and len(db.list_devices()) == 2, 20, what="both agents online")

            assert await asyncio.to_thread(_push, config_path, tmp_path / "line-3.yaml",
                                           GOOD) == 0
            for agent in agents.values():
                assert agent.configs.current.label == "line-3@1"
                assert [p.name for p in agent.pipelines] == ["surface"]
            await wait_until_async(lambda: _reported(db) == {"gw1": "line-3@1",
                                                             "gw2": "line-3@1"},
                                   10, what="central's fleet view showing line-3@1")
            [rollout] = db.list_rollouts()
            assert (rollout.kind, rollout.waves, rollout.state) == ("config", 2, "completed")

            gone = tmp_path / "gone.mp4"  # a camera that never opens: unhealthy in probation
            bad = {"sources": [camera("cam1", gone)], "pipelines": [vision("surface", "cam1")]}
            assert await asyncio.to_thread(_push, config_path, tmp_path / "line-3.yaml",
                                           bad) == 1
            halted = db.list_rollouts()[0]
            assert halted.state == "halted" and "rolled_back" in halted.detail
            assert f"{gone} does not exist" in halted.detail
            [canary] = [d for d in db.rollout_devices(halted.rollout_id) if d.wave == 0]
            other = next(d for d in DEVICES if d != canary.device_id)
            assert db.last_config_deployments()[other].version == "1", "gw2 never got @2"
            for agent in agents.values():
                assert agent.configs.current.label == "line-3@1"
        finally:
            stop.set()
            await asyncio.gather(*tasks)
            await central.stop()

    asyncio.run(asyncio.wait_for(scenario(), 120))
    out = " ".join(capsys.readouterr().out.split())
    assert "published line-3@1" in out and "published line-3@2" in out
    assert main(["config", "where", "line-3", "-c", str(config_path)]) == 0
    where = capsys.readouterr().out
    assert where.count("line-3@1") >= 2 and "rolled_back" in where

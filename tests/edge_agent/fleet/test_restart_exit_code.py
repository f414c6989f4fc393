"""A real `edge-agent run` process asked by central (a signed RestartCommand over a real
Mosquitto) to restart answers, stops cleanly and exits 75, which systemd and the update
launcher take as 'start me again'."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import yaml

from edge_agent.cli import EXIT_RESTART
from edge_agent.kernel.contract import DiagnosticReply, RestartCommand
from edge_agent.kernel.transport import BrokerConfig
from edge_agent.kernel.transport.mqtt import MqttTransport
from tests.conftest import REPO, Mosquitto
from tests.edge_agent.fleet.diagnostics_parts import DEVICE, TOPICS, Central
from tests.helpers import wait_until_async, write_test_keys


def test_edge_agent_run_exits_75_when_central_asks_for_a_restart(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    config = tmp_path / "edge-agent.yaml"
    config.write_text(yaml.safe_dump({
        "device_id": DEVICE, "data_dir": str(tmp_path / "agent"), "ui": {"port": 0},
        "broker": {"port": mosquitto.port},
        "security": {"central_public_key": str(write_test_keys(tmp_path / "keys")[1])},
    }))
    agent = subprocess.Popen([sys.executable, "-m", "edge_agent.cli", "run", "-c", str(config)],
                             cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    async def central_side() -> DiagnosticReply:
        central = Central(MqttTransport(BrokerConfig(port=mosquitto.port), "central-restart",
                                        persistent_session=False))
        await central.transport.subscribe(TOPICS.diagnostics(DEVICE), central.on_answer)
        await central.transport.subscribe(TOPICS.status(DEVICE), central.on_status)
        await central.transport.start()
        try:
            await wait_until_async(lambda: central.online or agent.poll() is not None, 60,
                                   what="the agent process online")
            sent = await central.send(RestartCommand(device_id=DEVICE, issued_by="alice"))
            await wait_until_async(lambda: central.replies(sent.command_id), 20,
                                   what="the restart answered")
            return central.replies(sent.command_id)[0]
        finally:
            await central.transport.stop()

    try:
        reply = asyncio.run(central_side())
        code = agent.wait(timeout=30)
    finally:
        if agent.poll() is None:
            agent.kill()
        _out, err = agent.communicate(timeout=10)
    assert reply.ok, reply
    assert code == EXIT_RESTART == 75, err
    assert "agent restart requested" in err and "alice" in err
    assert "agent stopped" in err  # a clean shutdown: buffer closed, offline said

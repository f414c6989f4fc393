"""A camera's password, written in its URL or taken from the environment, appears nowhere the
running agent shows its sources: /api/status, the operator page, the retained status on a real
Mosquitto, the logs."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest

from edge_agent.app import Agent
from edge_agent.config import AgentConfig
from edge_agent.kernel.contract import DeviceStatus, decode
from tests.conftest import Mosquitto, free_port
from tests.edge_agent.sources.test_camera import MjpegServer
from tests.edge_agent.test_operator_page import running
from tests.helpers import wait_until, write_test_keys

SECRETS = ("Secret-77", "t0ken-9", "Other-88")


@contextmanager
def locked_camera(password: str) -> Iterator[MjpegServer]:
    camera = MjpegServer(free_port(), credentials=("viewer", password))
    camera.start()
    try:
        yield camera
    finally:
        camera.stop()


@contextmanager
def retained_statuses(port: int, topic: str) -> Iterator[list[bytes]]:
    """Every status payload the broker delivers on `topic`, raw."""
    payloads: list[bytes] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="status-watcher")
    client.on_message = lambda _c, _u, message: payloads.append(bytes(message.payload))
    client.connect("127.0.0.1", port)
    client.subscribe(topic, qos=1)
    client.loop_start()
    try:
        yield payloads
    finally:
        client.loop_stop()
        client.disconnect()


def both_connected(payloads: list[bytes]) -> DeviceStatus | None:
    for payload in reversed(payloads):
        status = decode(payload, expect=(DeviceStatus,))
        if isinstance(status, DeviceStatus) and len(status.sources) == 2 and all(
                s.state == "connected" for s in status.sources.values()):
            return status
    return None


def test_camera_passwords_appear_nowhere_the_agent_shows_its_sources(
        tmp_path: Path, mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("DOCK_CAMERA_PASSWORD", "Other-88")
    ui_port = free_port()
    with locked_camera("Secret-77") as inline, locked_camera("Other-88") as from_env:
        agent = Agent(AgentConfig.model_validate({
            "device_id": "gw-7", "data_dir": str(tmp_path / "agent"),
            "broker": {"port": mosquitto.port}, "status_interval_s": 0.5,
            "sources": [
                {"type": "camera", "name": "strip", "max_fps": 5,
                 "url": f"http://viewer:Secret-77@127.0.0.1:{inline.port}/s.mjpg?token=t0ken-9"},
                {"type": "camera", "name": "dock", "max_fps": 5,
                 "url": f"http://viewer@127.0.0.1:{from_env.port}/s.mjpg",
                 "password_env": "DOCK_CAMERA_PASSWORD"}],
            "ui": {"port": ui_port},
            "security": {"central_public_key": str(write_test_keys(tmp_path / "keys")[1])},
        }))
        with retained_statuses(mosquitto.port, agent.topics.status("gw-7")) as payloads, \
                running(agent):
            status = wait_until(lambda: both_connected(payloads), 30, what=lambda: (
                f"both cameras connected: {[s.state for s in agent.sources.values()]}"))
            api = httpx.get(f"http://127.0.0.1:{ui_port}/api/status").text
            page = httpx.get(f"http://127.0.0.1:{ui_port}/").text

    assert status is not None
    assert status.sources["strip"].detail.startswith(
        f"http://viewer:***@127.0.0.1:{inline.port}/s.mjpg?token=*** ")
    assert status.sources["dock"].detail.startswith(
        f"http://viewer@127.0.0.1:{from_env.port}/s.mjpg ")
    assert f"viewer:***@127.0.0.1:{inline.port}" in api
    assert f"127.0.0.1:{inline.port}" in page
    broker = b"".join(payloads).decode()
    for shown, text in {"broker": broker, "api": api, "page": page, "logs": caplog.text}.items():
        for secret in SECRETS:
            assert secret not in text, f"{secret} in the {shown}"

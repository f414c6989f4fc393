"""What the diagnostics tests share: a gateway configuration with secrets in it, a real agent
running in this process on a real Mosquitto, and central's side of the broker sending signed
requests and collecting every answer raw."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from edge_agent.app import Agent
from edge_agent.config import AgentConfig
from edge_agent.kernel.contract import (
    DIAGNOSTIC_TYPES,
    DeviceStatus,
    DiagnosticReply,
    LogBatch,
    Rejection,
    Topics,
    decode,
    encode,
)
from edge_agent.kernel.transport import BrokerConfig
from edge_agent.kernel.transport.mqtt import MqttTransport
from tests.conftest import SAMPLE_DATA, free_port
from tests.helpers import TEST_SIGNER, wait_until_async, write_test_keys

DEVICE = "gw-diag"
TOPICS = Topics()
BROKER_PASSWORD = "Broker-Secret-93"
CAMERA_PASSWORD = "Cam-Secret-51"
UI_TOKEN = "ui-token-secret-4711"
FEATURES = ["zone1_temp_c", "zone2_temp_c"]


def gateway_config(tmp_path: Path, port: int, **more: Any) -> dict[str, Any]:
    """A gateway's YAML as a dict: a broker password, a camera whose URL holds its password,
    an OPC-UA source nobody serves, and a pipeline on each."""
    keys = tmp_path / "keys"
    public = keys / "signing.pub" if (keys / "signing.pub").exists() else \
        write_test_keys(keys)[1]
    return {
        "device_id": DEVICE, "data_dir": str(tmp_path / "agent"), "status_interval_s": 0.5,
        "broker": {"port": port, "username": DEVICE, "password": BROKER_PASSWORD},
        "sources": [
            {"name": "line-1", "endpoint": "opc.tcp://127.0.0.1:9/line-1",
             "nodes": {tag: f"ns=2;s={tag}" for tag in FEATURES},
             "reconnect_max_backoff_s": 1},
            {"type": "camera", "name": "cam-1", "max_fps": 2,
             "url": str(SAMPLE_DATA / "surface_line.mp4")},
            {"type": "camera", "name": "dock", "max_fps": 2,
             "url": f"http://viewer:{CAMERA_PASSWORD}@127.0.0.1:{free_port()}/s.mjpg"}],
        "pipelines": [
            {"name": "scrap", "source": "line-1", "model": "extruder-scrap"},
            {"type": "vision", "name": "surface", "source": "cam-1", "model": "surface-defects",
             "defects": {"classes": ["scratch", "pit", "stain"]}}],
        "ui": {"port": 0, "token": UI_TOKEN},
        "security": {"central_public_key": str(public)},
        **more,
    }


@dataclass
class Central:
    """Central's side of the broker: signs and sends requests, keeps every answer."""

    transport: MqttTransport
    raw: list[bytes] = field(default_factory=list)
    answers: list[BaseModel] = field(default_factory=list)
    undecodable: list[str] = field(default_factory=list)
    online: bool = False

    async def on_answer(self, _topic: str, payload: bytes) -> None:
        self.raw.append(payload)
        message = decode(payload, expect=DIAGNOSTIC_TYPES, topic_device_id=DEVICE)
        if isinstance(message, Rejection):
            self.undecodable.append(message.reason)
        else:
            self.answers.append(message)

    async def on_status(self, _topic: str, payload: bytes) -> None:
        status = decode(payload, expect=(DeviceStatus,))
        self.online = isinstance(status, DeviceStatus) and status.state == "online"

    async def send(self, command: BaseModel, sign: bool = True) -> Any:
        """Publish a command (signed by central's test key unless `sign` is False)."""
        sent = TEST_SIGNER.signed(command) if sign else command
        await self.transport.publish(TOPICS.commands(DEVICE), encode(sent), qos=1)
        return sent

    def batches(self, request_id: str) -> list[LogBatch]:
        return [a for a in self.answers if isinstance(a, LogBatch)
                and a.request_id == request_id]

    def replies(self, request_id: str | None = None) -> list[DiagnosticReply]:
        return [a for a in self.answers if isinstance(a, DiagnosticReply)
                and (request_id is None or a.request_id == request_id)]

    def answered(self, request_id: str) -> bool:
        """A reply, or a final log batch, came for the request."""
        return bool(self.replies(request_id)) or any(b.final for b in self.batches(request_id))


@dataclass
class Gateway:
    agent: Agent
    central: Central
    run: asyncio.Task[None]
    stop: asyncio.Event


@asynccontextmanager
async def running_gateway(tmp_path: Path, port: int,
                          edit: Callable[[dict[str, Any]], None] | None = None,
                          ) -> AsyncIterator[Gateway]:
    """A real agent running in this process, online on the broker at `port`, and central's
    side subscribed to its diagnostics and status."""
    raw = gateway_config(tmp_path, port)
    if edit is not None:
        edit(raw)
    agent = Agent(AgentConfig.model_validate(raw))
    central = Central(MqttTransport(BrokerConfig(port=port), "central-diag",
                                    persistent_session=False))
    await central.transport.subscribe(TOPICS.diagnostics(DEVICE), central.on_answer)
    await central.transport.subscribe(TOPICS.status(DEVICE), central.on_status)
    await central.transport.start()
    stop = asyncio.Event()
    run = asyncio.create_task(agent.run(stop))
    try:
        # The agent subscribes before it says online: a command sent now reaches it.
        await wait_until_async(lambda: central.online or run.done(), 20, what="agent online")
        assert not run.done(), run
        yield Gateway(agent, central, run, stop)
    finally:
        stop.set()
        await asyncio.gather(run, return_exceptions=True)
        await central.transport.stop()

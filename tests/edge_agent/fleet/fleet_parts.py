"""What the fleet tests share: the sample vision model installed, a camera reading the sample
images, configuration documents and commands signed as central signs them, and central's side
of the broker collecting the gateway's deployment steps."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from edge_agent.config import AgentConfig
from edge_agent.kernel.contract import (
    ConfigDeployCommand,
    ConfigDocument,
    ConfigRollbackCommand,
    DeploymentEvent,
    DeviceStatus,
    Topics,
    config_body_sha256,
    decode,
    encode,
)
from edge_agent.kernel.transport import Transport
from edge_agent.model_store import ModelStore
from tests.helpers import REPO, TEST_SIGNER, manifest_of, wait_until_async, write_test_keys

DEVICE = "gw1"
TOPICS = Topics()
SURFACE_MODEL = REPO / "sample_data" / "surface_defects.onnx"
SURFACE_META = json.loads((REPO / "sample_data" / "surface_defects.json").read_text())
SAMPLE_IMAGES = REPO / "sample_data" / "vision_samples"
DAY_S = 86400.0
PUBLISHED_AT = 1_750_000_000.0  # fixed: the same body and version make the same document


def install_surface_model(store: ModelStore) -> None:
    """The sample vision model, installed and active as `surface-defects`."""
    store.install(manifest_of(SURFACE_MODEL, SURFACE_META, name="surface-defects"),
                  SURFACE_MODEL)
    store.activate("surface-defects", "1.0.0")


def camera(name: str = "cam1", url: str | Path = SAMPLE_IMAGES, **more: Any) -> dict[str, Any]:
    """A camera source reading the sample images (a folder, played at 10 frames/s)."""
    return {"type": "camera", "name": name, "url": str(url), **more}


def vision(name: str = "surface", source: str = "cam1", **more: Any) -> dict[str, Any]:
    return {"type": "vision", "name": name, "source": source, "model": "surface-defects",
            "defects": {"classes": ["scratch", "pit", "stain"], "min_confidence": 0.6},
            **more}


def local_config(tmp_path: Path, **more: Any) -> AgentConfig:
    """The gateway's own file: identity, data folder, central's key; page off."""
    keys = tmp_path / "keys"
    public = keys / "signing.pub" if (keys / "signing.pub").exists() else \
        write_test_keys(keys)[1]
    return AgentConfig.model_validate({
        "device_id": DEVICE, "data_dir": str(tmp_path / "agent"), "ui": {"port": 0},
        "security": {"central_public_key": str(public)}, **more})


def document(body: dict[str, Any], version: int = 1, name: str = "line-3",
             probation_s: float = 1.0) -> ConfigDocument:
    return TEST_SIGNER.signed(ConfigDocument(
        name=name, version=version, body=body, sha256=config_body_sha256(body),
        probation_s=probation_s, published_by="alice", published_at=PUBLISHED_AT))


def deploy(doc: ConfigDocument, **more: Any) -> ConfigDeployCommand:
    return TEST_SIGNER.signed(ConfigDeployCommand(device_id=DEVICE, document=doc, **more))


def rollback(name: str = "line-3", to_version: int | None = None,
             **more: Any) -> ConfigRollbackCommand:
    return TEST_SIGNER.signed(ConfigRollbackCommand(device_id=DEVICE, name=name,
                                                    to_version=to_version, **more))


def stale(command_type: type, **fields: Any) -> Any:
    """A command central signed two days ago."""
    return TEST_SIGNER.signed(command_type(device_id=DEVICE, issued_at=time.time() - 2 * DAY_S,
                                           **fields))


class Central:
    """Central's side of the broker: sends commands, collects the gateway's config steps."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.events: list[DeploymentEvent] = []
        self.statuses: list[DeviceStatus] = []

    async def start(self) -> None:
        await self.transport.start()
        await self.transport.subscribe(TOPICS.all_devices("deployment"), self._on_event)
        await self.transport.subscribe(TOPICS.status(DEVICE), self._on_status)

    async def _on_status(self, topic: str, payload: bytes) -> None:
        status = decode(payload)
        if isinstance(status, DeviceStatus):
            self.statuses.append(status)

    async def _on_event(self, topic: str, payload: bytes) -> None:
        event = decode(payload)
        assert isinstance(event, DeploymentEvent), event
        self.events.append(event)

    async def send(self, command: Any) -> None:
        await self.transport.publish(TOPICS.commands(DEVICE), encode(command))

    def steps(self, command_id: str) -> list[str]:
        return [e.step for e in self.events if e.command_id == command_id]

    def last(self, command_id: str) -> DeploymentEvent:
        return [e for e in self.events if e.command_id == command_id][-1]

    async def outcome(self, command_id: str, timeout_s: float = 20.0) -> DeploymentEvent:
        """The command's final step: confirmed, failed or rolled_back."""
        final = {"confirmed", "failed", "rolled_back"}
        await wait_until_async(lambda: final & set(self.steps(command_id)), timeout_s,
                               what=lambda: f"an outcome of {command_id}: {self.events}")
        return self.last(command_id)

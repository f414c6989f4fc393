"""Deploying a model version: command on the wire, deployment recorded, steps followed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from central_helpers import make_onnx_model, run

from central_sync.config import CentralConfig
from central_sync.db import CentralDB
from central_sync.deployments import UnknownModel, deploy, deploy_and_wait
from central_sync.registry import publish_model
from central_sync.service import CentralService
from edge_agent.kernel.contract import DeployCommand, DeploymentEvent, Topics, decode, encode
from edge_agent.kernel.transport.memory import MemoryBroker, MemoryTransport
from tests.helpers import TEST_SIGNER, TEST_VERIFIER

TOPICS = Topics()


class FakeDevice:
    """Answers every deploy command with the given steps on its deployment topic."""

    def __init__(self, broker: MemoryBroker, device_id: str, steps: Sequence[str]) -> None:
        self.transport = MemoryTransport(broker)
        self.device_id = device_id
        self.steps = steps
        self.commands: list[DeployCommand] = []

    async def start(self) -> None:
        await self.transport.start()
        await self.transport.subscribe(TOPICS.commands(self.device_id), self._on_command)

    async def _on_command(self, topic: str, payload: bytes) -> None:
        command = decode(payload, expect=(DeployCommand,), topic_device_id=self.device_id)
        assert isinstance(command, DeployCommand)
        self.commands.append(command)
        for step in self.steps:
            event = DeploymentEvent(device_id=self.device_id, command_id=command.command_id,
                                    model_name=command.manifest.name,
                                    version=command.manifest.version, step=step,
                                    detail="health check failed" if step == "failed" else "")
            await self.transport.publish(TOPICS.deployment(self.device_id), encode(event))


@pytest.fixture
def published(central_config: CentralConfig, tmp_path: Path) -> CentralConfig:
    db = CentralDB(central_config.database_url)
    publish_model(db, central_config.artifact_dir, make_onnx_model(tmp_path / "m.onnx"),
                  "scrap-model", "1.0.0", signer=TEST_SIGNER)
    db.close()
    return central_config


def test_deploy_sends_the_stored_manifest_and_records_deployment_and_audit(
    published: CentralConfig,
) -> None:
    async def scenario() -> None:
        broker = MemoryBroker()
        device = FakeDevice(broker, "gw-1", steps=[])
        await device.start()
        central = MemoryTransport(broker)
        await central.start()
        db = CentralDB(published.database_url)
        command = await deploy(db, central, TEST_SIGNER, "scrap-model", "1.0.0", "gw-1",
                               "alice", approval_required=False)
        [received] = device.commands
        assert received == command
        assert received.manifest == db.get_model("scrap-model", "1.0.0")
        TEST_VERIFIER.verify(received, "deploy command")
        TEST_VERIFIER.verify(received.manifest, "manifest")
        assert db.get_deployment(command.command_id)["state"] == "issued"
        assert ("model.deploy", "alice") in {(a["action"], a["actor"]) for a in db.list_audit()}
        db.close()

    run(scenario())


def test_deploy_of_unknown_version_is_refused_before_sending(published: CentralConfig) -> None:
    async def scenario() -> None:
        broker = MemoryBroker()
        device = FakeDevice(broker, "gw-1", steps=[])
        await device.start()
        central = MemoryTransport(broker)
        await central.start()
        db = CentralDB(published.database_url)
        with pytest.raises(UnknownModel, match=r"scrap-model 9\.0\.0 is not in the registry"):
            await deploy(db, central, TEST_SIGNER, "scrap-model", "9.0.0", "gw-1", "alice")
        assert device.commands == []
        db.close()

    run(scenario())


def test_deployment_steps_reach_the_service_and_its_database(published: CentralConfig) -> None:
    async def scenario() -> None:
        broker = MemoryBroker()
        service = CentralService(published, MemoryTransport(broker))
        await service.start()
        device = FakeDevice(broker, "gw-1", ["received", "downloading", "activated"])
        await device.start()
        cli = MemoryTransport(broker)
        await cli.start()
        seen: list[str] = []
        command, final = await deploy_and_wait(
            service.db, cli, TEST_SIGNER, "scrap-model", "1.0.0", "gw-1", "alice", timeout_s=5,
            on_event=lambda e: seen.append(e.step), approval_required=False)
        assert final is not None and final.step == "activated"
        assert seen == ["received", "downloading", "activated"]
        row = await service.db_call(service.db.get_deployment, command.command_id)
        assert row["state"] == "activated"
        assert service.stats.deployment_events == 3
        await service.stop()

    run(scenario())


def test_failed_deployment_is_reported_with_its_detail(published: CentralConfig) -> None:
    async def scenario() -> None:
        broker = MemoryBroker()
        await FakeDevice(broker, "gw-1", ["received", "failed"]).start()
        cli = MemoryTransport(broker)
        await cli.start()
        db = CentralDB(published.database_url)
        _, final = await deploy_and_wait(db, cli, TEST_SIGNER, "scrap-model", "1.0.0", "gw-1",
                                         "alice", timeout_s=5, approval_required=False)
        assert final is not None
        assert (final.step, final.detail) == ("failed", "health check failed")
        db.close()

    run(scenario())


def test_silent_device_times_out_without_final_event(published: CentralConfig) -> None:
    async def scenario() -> None:
        broker = MemoryBroker()
        await FakeDevice(broker, "gw-1", ["received"]).start()
        cli = MemoryTransport(broker)
        await cli.start()
        db = CentralDB(published.database_url)
        _, final = await deploy_and_wait(db, cli, TEST_SIGNER, "scrap-model", "1.0.0", "gw-1",
                                         "alice", timeout_s=0.2, approval_required=False)
        assert final is None
        db.close()

    run(scenario())

"""Agent releases on central: a real wheel of this project published (its METADATA read, signed,
stored by sha256, immutable), foreign wheels refused, and its chunks served only while an agent
deployment of it is open on the asking gateway."""

from __future__ import annotations

import hashlib
import shutil
import zipfile
from pathlib import Path

import pytest
from central_helpers import Inbox, run

from central_sync.agent_releases import (
    AgentReleaseError,
    agent_update_command,
    publish_agent,
    record_agent_command,
)
from central_sync.config import CentralConfig
from central_sync.db import CentralDB, DatabaseError
from central_sync.registry import artifact_path
from central_sync.service import CentralService
from edge_agent.kernel.contract import (
    ArtifactChunk,
    ChunkRequest,
    DeploymentEvent,
    Topics,
    decode,
    encode,
)
from edge_agent.kernel.transport.memory import MemoryBroker, MemoryTransport
from tests.agent_wheels import GOOD_VERSION, AgentWheels
from tests.helpers import wait_until_async

TOPICS = Topics()


def _publish(config: CentralConfig, db: CentralDB, wheel: Path):  # type: ignore[no-untyped-def]
    return publish_agent(db, config.signer(), wheel, "engineer", config.artifact_dir,
                         config.chunk_size_bytes)


def test_a_wheel_is_published_from_its_own_metadata_signed_and_stored_by_sha256(
        central_config: CentralConfig, agent_wheels: AgentWheels) -> None:
    db = CentralDB(central_config.database_url)
    try:
        package, new = _publish(central_config, db, agent_wheels.good)
        assert new and package.version == GOOD_VERSION
        assert package.filename == agent_wheels.good.name
        assert "onnxruntime>=1.17" in package.requires
        assert any('extra == "dev"' in requirement for requirement in package.requires)
        assert package.requires_python == ">=3.11"
        central_config.signer().own_keys().verify(package, "agent package")
        stored = artifact_path(central_config.artifact_dir, package.sha256)
        assert hashlib.sha256(stored.read_bytes()).hexdigest() == package.sha256
        assert package.chunk_size_bytes == central_config.chunk_size_bytes
        again, new = _publish(central_config, db, agent_wheels.good)
        assert not new and again == package
        assert [p.package.version for p in db.list_agent_packages()] == [GOOD_VERSION]
        assert db.get_agent_package_by_sha256(package.sha256) == package
        entries = [e for e in db.list_audit() if e["action"] == "agent.publish"]
        assert len(entries) == 1 and entries[0]["actor"] == "engineer"
    finally:
        db.close()


def test_a_published_release_is_immutable(central_config: CentralConfig,
                                          agent_wheels: AgentWheels, tmp_path: Path) -> None:
    other = tmp_path / agent_wheels.good.name
    shutil.copy(agent_wheels.good, other)
    with zipfile.ZipFile(other, "a") as wheel:
        wheel.writestr("edge_agent/extra.txt", "other bytes, same version")
    db = CentralDB(central_config.database_url)
    try:
        package, _ = _publish(central_config, db, agent_wheels.good)
        with pytest.raises(AgentReleaseError, match="immutable"):
            _publish(central_config, db, other)
        with pytest.raises(DatabaseError), db._lock:
            db._db.execute("UPDATE agent_packages SET sha256 = 'x' WHERE version = ?",
                           (package.version,))
    finally:
        db.close()


def _wheel(path: Path, metadata: str, init: str = '__version__ = "1.0.0"\n') -> Path:
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("edge_mlops-1.0.0.dist-info/METADATA", metadata)
        wheel.writestr("edge_agent/__init__.py", init)
    return path


@pytest.mark.parametrize(("content", "message"), [
    (None, "not a wheel"),
    ("Metadata-Version: 2.1\nName: requests\nVersion: 1.0.0\n", "not of edge-mlops"),
    ("Metadata-Version: 2.1\nName: edge-mlops\nVersion: 1.0\n", "not a semantic version"),
    ("Metadata-Version: 2.1\nName: edge_mlops\nVersion: 1.0.1\n", "its edge_agent says 1.0.0"),
])
def test_wheels_that_are_not_an_agent_release_are_refused_saying_why(
        central_config: CentralConfig, tmp_path: Path, content: str | None,
        message: str) -> None:
    wheel = tmp_path / "edge_mlops-1.0.0-py3-none-any.whl"
    if content is None:
        wheel.write_text("not a zip")
    else:
        _wheel(wheel, content)
    db = CentralDB(central_config.database_url)
    try:
        with pytest.raises(AgentReleaseError, match=message):
            _publish(central_config, db, wheel)
        assert db.list_agent_packages() == []
    finally:
        db.close()


def test_a_wheels_chunks_are_served_only_while_its_agent_deployment_is_open(
        central_config: CentralConfig, agent_wheels: AgentWheels) -> None:
    db = CentralDB(central_config.database_url)
    try:
        package, _ = _publish(central_config, db, agent_wheels.good)
        command = agent_update_command(db, central_config.signer(), GOOD_VERSION, "gw-1", "me")
        record_agent_command(db, command)
        assert db.agent_deployment_open_for("gw-1", package.sha256)
        assert not db.agent_deployment_open_for("gw-2", package.sha256)
        assert not db.deployment_open_for("gw-1", package.sha256), "not a model deployment"
    finally:
        db.close()

    async def scenario() -> None:
        broker = MemoryBroker()
        service = CentralService(central_config, MemoryTransport(broker))
        await service.start()
        device = MemoryTransport(broker)
        await device.start()
        inbox = Inbox()
        await device.subscribe(TOPICS.artifact(package.sha256), inbox)
        for device_id in ("gw-1", "gw-2"):
            request = ChunkRequest(device_id=device_id, sha256=package.sha256, indices=[0, 1])
            await device.publish(TOPICS.chunk_request(device_id), encode(request))
        await wait_until_async(lambda: len(inbox.messages) == 2, what="gw-1's two chunks")
        chunks = [decode(payload, expect=(ArtifactChunk,)) for _, payload in inbox.messages]
        assert sorted(c.index for c in chunks) == [0, 1]  # type: ignore[union-attr]
        assert service.stats.chunks_refused == 1  # gw-2: no agent deployment there
        assert service.db is not None
        service.db.record_deployment_event(DeploymentEvent(
            device_id="gw-1", command_id=command.command_id, subject="agent",
            model_name="edge-agent", version=GOOD_VERSION, step="activated"))
        request = ChunkRequest(device_id="gw-1", sha256=package.sha256, indices=[2])
        await device.publish(TOPICS.chunk_request("gw-1"), encode(request))
        await service.stop()
        assert len(inbox.messages) == 2 and service.stats.chunks_refused == 2

    run(scenario())

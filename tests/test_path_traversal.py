"""Identifiers that become file paths (model names, versions, sha256s, device ids) cannot
reach outside the agent's model store, central's artifact folder or a defects export."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import zipfile
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from central_sync.config import CentralConfig
from central_sync.db import CentralDB
from central_sync.db.review import DefectFilter
from central_sync.registry import artifact_path
from central_sync.service import CentralService
from central_sync.web.review import _write_export
from edge_agent.buffer import Buffer
from edge_agent.deployment.deployer import Deployer
from edge_agent.kernel.contract import (
    ArtifactChunk,
    ChunkRequest,
    DeployCommand,
    DeploymentEvent,
    ModelManifest,
    ModelRef,
    RecordChunk,
    Topics,
    UplinkBatch,
    UplinkRecord,
    decode,
    encode,
)
from edge_agent.kernel.transport.memory import MemoryBroker, MemoryTransport
from edge_agent.model_store import ModelStore, ModelStoreError
from tests.central_sync.review_helpers import defect_payload
from tests.helpers import (
    SAMPLE_MODEL,
    TEST_SIGNER,
    TEST_VERIFIER,
    manifest_for,
    wait_until_async,
    write_test_keys,
)

TOPICS = Topics()
SHA = "a" * 64
TRAVERSING_NAMES = ["..", "../x", "../../etc/x", "a/../../x", "a/b", "a\\..\\b", "/etc/passwd",
                    "a\x00b", "abc\n", ".hidden", ""]
TRAVERSING_VERSIONS = ["../1.0.0", "1.0.0/../..", "1.0.0\\..", "1.0.0\n", "1.0.0\x00", "/1.0.0"]
TRAVERSING_SHA256S = ["../x", "../../outside", "a" * 63 + "/", "/" + "a" * 63, "A" * 64,
                      "a" * 64 + "\n", "a" * 63 + "\x00"]


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


def forged(manifest: ModelManifest, **fields: Any) -> DeployCommand:
    """A command whose manifest carries `fields` unvalidated, signed by the trusted key: what
    a compromised or buggy central could send."""
    bad = TEST_SIGNER.signed(manifest.model_construct(**{**dict(manifest), **fields}))
    command = DeployCommand(device_id="gw1", manifest=manifest)
    return TEST_SIGNER.signed(command.model_construct(**{**dict(command), "manifest": bad}))


# --- the contract ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", TRAVERSING_NAMES)
def test_contract_refuses_a_model_or_device_name_that_is_a_path(name: str) -> None:
    with pytest.raises(ValidationError):
        ModelRef(name=name, version="1.0.0", sha256=SHA)
    with pytest.raises(ValidationError):
        RecordChunk(device_id=name, seq=1, type="sample", created_at=1.0, index=0, count=1,
                    payload_sha256=SHA, data_b64="")
    with pytest.raises(ValueError, match="not valid"):
        TOPICS.uplink(name)


@pytest.mark.parametrize("version", TRAVERSING_VERSIONS)
def test_contract_refuses_a_version_that_is_a_path(version: str) -> None:
    with pytest.raises(ValidationError):
        ModelRef(name="m", version=version, sha256=SHA)


@pytest.mark.parametrize("sha256", TRAVERSING_SHA256S)
def test_contract_refuses_an_artifact_sha256_that_is_a_path(sha256: str) -> None:
    with pytest.raises(ValidationError):
        ArtifactChunk(sha256=sha256, index=0, count=1, chunk_sha256=SHA, data_b64="")
    with pytest.raises(ValidationError):
        ChunkRequest(device_id="gw1", sha256=sha256, indices=[0])
    with pytest.raises(ValueError, match="SHA-256"):
        TOPICS.artifact(sha256)


def test_a_record_type_or_command_id_with_a_path_is_refused() -> None:
    with pytest.raises(ValidationError):
        UplinkRecord(seq=1, type="../x", created_at=1.0, payload={})
    with pytest.raises(ValidationError):
        DeployCommand(command_id="x" * 65, device_id="gw1", manifest=manifest_for(SAMPLE_MODEL))


# --- the agent's model store -----------------------------------------------------------------


@pytest.mark.parametrize("name", TRAVERSING_NAMES)
def test_model_store_refuses_a_name_outside_its_root_when_called_directly(
    tmp_path: Path, name: str,
) -> None:
    store = ModelStore(tmp_path / "models")
    calls = [lambda: store.get(name, "1.0.0"), lambda: store.versions(name),
             lambda: store.active(name), lambda: store.activate(name, "1.0.0"),
             lambda: store.rollback(name), lambda: store.deactivate(name),
             lambda: store.newest_version(name)]
    for call in calls:
        with pytest.raises(ModelStoreError):
            call()
    manifest = manifest_for(SAMPLE_MODEL)
    with pytest.raises(ModelStoreError):
        store.install(manifest.model_construct(**{**dict(manifest), "name": name}), SAMPLE_MODEL)
    assert files_under(tmp_path) == set()


@pytest.mark.parametrize("version", TRAVERSING_VERSIONS)
def test_model_store_refuses_a_version_outside_its_folder(tmp_path: Path, version: str) -> None:
    store = ModelStore(tmp_path / "models")
    manifest = manifest_for(SAMPLE_MODEL)
    with pytest.raises(ModelStoreError):
        store.install(manifest.model_construct(**{**dict(manifest), "version": version}),
                      SAMPLE_MODEL)
    with pytest.raises(ModelStoreError):
        store.get(manifest.name, version)
    assert files_under(tmp_path) == set()


@pytest.mark.parametrize("sha256", TRAVERSING_SHA256S)
def test_model_store_refuses_a_download_path_outside_its_downloads(
    tmp_path: Path, sha256: str,
) -> None:
    with pytest.raises(ModelStoreError):
        ModelStore(tmp_path / "models").download_path(sha256)


def test_model_store_refuses_a_model_folder_that_links_outside(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    (tmp_path / "elsewhere").mkdir()
    (store.root / "linked").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ModelStoreError, match="outside the model store"):
        store.get("linked", "1.0.0")


def test_dots_inside_a_valid_name_stay_inside_the_store(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    installed = store.install(manifest_for(SAMPLE_MODEL, name="a..b"), SAMPLE_MODEL)
    assert installed.path.resolve().is_relative_to(store.root.resolve())
    assert store.versions("a..b") == ["1.0.0"]


# --- the agent's deployer --------------------------------------------------------------------


class Gateway:
    """A deployer on a MemoryBroker, with what it published to central."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.requests: list[ChunkRequest] = []
        self.events: list[DeploymentEvent] = []

    async def start(self) -> Gateway:
        broker = MemoryBroker()
        self.central = MemoryTransport(broker)
        await self.central.start()
        await self.central.subscribe(TOPICS.chunk_request("gw1"), self._collect)
        await self.central.subscribe(TOPICS.deployment("gw1"), self._collect)
        device = MemoryTransport(broker)
        await device.start()
        self.store = ModelStore(self.tmp_path / "models")
        self.buffer = Buffer(self.tmp_path / "buffer.db", 10**7)
        self.deployer = Deployer("gw1", TOPICS, device, self.store, self.buffer, TEST_VERIFIER)
        await self.deployer.start()
        return self

    async def _collect(self, topic: str, payload: bytes) -> None:
        message = decode(payload)
        if isinstance(message, ChunkRequest):
            self.requests.append(message)
        elif isinstance(message, DeploymentEvent):
            self.events.append(message)

    async def stop(self) -> None:
        await self.deployer.stop()
        await self.buffer.close()

    def written_outside_the_store(self) -> set[Path]:
        return {p for p in files_under(self.tmp_path)
                if not p.is_relative_to(self.store.root) and not p.name.startswith("buffer.db")}


@pytest.mark.parametrize("field, value", [
    ("name", "../../etc/x"), ("name", ".."), ("version", "../../x"),
    ("sha256", "../../outside"), ("sha256", "/tmp/x"),
])
def test_signed_deploy_naming_a_path_is_refused_on_the_commands_topic(
    tmp_path: Path, field: str, value: str,
) -> None:
    async def scenario() -> None:
        gateway = await Gateway(tmp_path).start()
        command = forged(manifest_for(SAMPLE_MODEL), **{field: value})
        await gateway.central.publish(TOPICS.commands("gw1"), encode(command))
        await wait_until_async(lambda: gateway.deployer.rejected_messages == 1, 10,
                               what="the command rejected")
        assert gateway.requests == [] and gateway.events == []
        assert gateway.written_outside_the_store() == set()
        await gateway.stop()

    asyncio.run(scenario())


def test_deployer_called_directly_with_a_sha256_path_fails_and_writes_nothing_outside(
    tmp_path: Path,
) -> None:
    """Past the contract (a caller in-process), the store's own check still holds."""
    async def scenario() -> None:
        gateway = await Gateway(tmp_path).start()
        command = forged(manifest_for(SAMPLE_MODEL), sha256="../../outside")
        assert await gateway.deployer.deploy(command) is False
        assert gateway.events[-1].step == "failed"
        assert "SHA-256" in gateway.events[-1].detail
        assert not (tmp_path / "outside.part").exists()
        assert gateway.written_outside_the_store() == set()
        assert gateway.store.versions(command.manifest.name) == []
        await gateway.stop()

    asyncio.run(scenario())


def test_deployer_called_directly_with_a_name_path_is_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        gateway = await Gateway(tmp_path).start()
        with pytest.raises(ModelStoreError, match="not valid"):
            await gateway.deployer.deploy(forged(manifest_for(SAMPLE_MODEL), name="../../x"))
        assert gateway.written_outside_the_store() == set()
        await gateway.stop()

    asyncio.run(scenario())


def test_chunk_for_a_sha256_path_is_refused_during_a_transfer(tmp_path: Path) -> None:
    async def scenario() -> None:
        gateway = await Gateway(tmp_path).start()
        manifest = manifest_for(SAMPLE_MODEL)
        await gateway.central.publish(TOPICS.commands("gw1"), encode(
            TEST_SIGNER.signed(DeployCommand(device_id="gw1", manifest=manifest))))
        await wait_until_async(lambda: gateway.requests, 10, what="the transfer's first request")
        chunk = ArtifactChunk.build(manifest.sha256, 0, manifest.chunk_count, b"x" * 10)
        for sha256 in ("../x", "../../outside", manifest.sha256 + "/.."):
            bad = chunk.model_construct(**{**dict(chunk), "sha256": sha256})
            await gateway.central.publish(TOPICS.artifact(manifest.sha256),
                                          bad.model_dump_json().encode())
        assert gateway.deployer.rejected_messages == 3
        assert gateway.written_outside_the_store() == set()
        await gateway.stop()

    asyncio.run(scenario())


# --- central ---------------------------------------------------------------------------------


@pytest.mark.parametrize("sha256", TRAVERSING_SHA256S)
def test_artifact_path_refuses_anything_but_a_sha256(tmp_path: Path, sha256: str) -> None:
    with pytest.raises(ValueError, match="SHA-256"):
        artifact_path(tmp_path, sha256)
    assert artifact_path(tmp_path, SHA).parent == tmp_path


def test_central_refuses_ids_that_are_paths_and_stores_nothing(tmp_path: Path) -> None:
    config = CentralConfig.model_validate({
        "database_url": f"sqlite:///{tmp_path}/central.db",
        "artifact_dir": str(tmp_path / "artifacts"), "web": {"port": 0},
        "signing_key_path": str(write_test_keys(tmp_path / "keys")[0])})

    async def scenario() -> None:
        broker = MemoryBroker()
        service = CentralService(config, MemoryTransport(broker))
        await service.start()
        device = MemoryTransport(broker)
        await device.start()
        record = UplinkRecord(seq=1, type="sample", created_at=1.0, payload={})
        batch = UplinkBatch(device_id="gw-1", records=[record])
        chunk = RecordChunk(device_id="gw-1", seq=1, type="sample", created_at=1.0, index=0,
                            count=1, payload_sha256=SHA, data_b64="")
        request = ChunkRequest(device_id="gw-1", sha256=SHA, indices=[0])
        sent = [
            ("edge-mlops/devices/../uplink", encode(batch)),
            (TOPICS.uplink("gw-1"), encode(batch.model_construct(
                **{**dict(batch), "device_id": "../gw-1"}))),
            (TOPICS.uplink("gw-1"), encode(chunk.model_construct(
                **{**dict(chunk), "device_id": "gw-1/.."}))),
            (TOPICS.uplink("gw-1"), encode(batch.model_construct(**{**dict(batch), "records": [
                record.model_construct(**{**dict(record), "type": "../x"})]}))),
            (TOPICS.chunk_request("gw-1"), encode(request.model_construct(
                **{**dict(request), "sha256": "../../etc/passwd"}))),
        ]
        for topic, payload in sent:
            await device.publish(topic, payload)
        assert sum(service.stats.rejected.values()) == len(sent)
        assert service.stats.chunk_requests == 0
        assert await service.db_call(service.db.count_records) == 0
        assert await service.db_call(service.db.list_devices) == []
        await service.stop()

    asyncio.run(scenario())
    assert not (tmp_path / "artifacts").exists() or files_under(tmp_path / "artifacts") == set()


def test_defects_export_names_no_file_outside_its_images_folder(tmp_path: Path) -> None:
    """A device id that never passed ingest (written to the database some other way) must not
    become a zip entry like images/../../evil-1.jpg."""
    db = CentralDB(f"sqlite:///{tmp_path}/central.db")
    jpeg = base64.b64encode(hashlib.sha256(b"frame").digest()).decode()
    defect = {**defect_payload(1, camera="cam1"),
              "images": {"frame": {"jpeg_b64": jpeg, "width": 8, "height": 8}}}
    for device_id in ("gw-1", "../../evil", "gw/../../x"):
        db.store_batch(UplinkBatch.model_construct(
            device_id=device_id, batch_id="b", records=[
                UplinkRecord(seq=1, type="defect", created_at=1.7e9, payload=defect)]))
    out = io.BytesIO()
    assert _write_export(db, DefectFilter(), False, out) == 3
    db.close()
    names = zipfile.ZipFile(out).namelist()
    assert sorted(names) == ["images/gw-1-1.jpg", "manifest.csv", "manifest.json"]

"""Central sends only manifests it can vouch for: a stored manifest must verify against the key
that signed it (the current one or a retired one) before it is sent or re-signed; an unsigned
row, one by an unknown key or one whose signature does not match is refused with what to do."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import pytest
from central_helpers import make_onnx_model, run

from central_sync.db import CentralDB
from central_sync.deployments import TamperedManifest, deploy
from central_sync.registry import publish_model
from central_sync.rollouts import RolloutError, start_rollout
from edge_agent.kernel.contract import DeployCommand, ModelManifest, Topics, decode
from edge_agent.kernel.signing import (
    Signer,
    Verifier,
    promote_next_key,
    retired_keys_dir,
    start_key_change,
    write_key_pair,
)
from edge_agent.kernel.transport.memory import MemoryBroker, MemoryTransport
from tests.helpers import db_rows

TOPICS = Topics()
MODEL = "scrap-model"


def insert_row(db: CentralDB, manifest: ModelManifest) -> None:
    """A models row written straight into the database, past the registry."""
    with db._lock:
        db._db.execute(
            "INSERT INTO models (name, version, kind, sha256, size_bytes, manifest, "
            "published_at, published_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (manifest.name, manifest.version, manifest.kind, manifest.sha256,
             manifest.size_bytes, manifest.model_dump_json(), time.time(), "mallory"))


def published(db: CentralDB, tmp_path: Path, signer: Signer, version: str = "1.0.0",
              ) -> ModelManifest:
    return publish_model(db, tmp_path / "artifacts",
                         make_onnx_model(tmp_path / f"m-{version}.onnx", weight=float(version[0])),
                         MODEL, version, signer=signer)


def deploy_to_device(db: CentralDB, signer: Signer, version: str) -> list[DeployCommand]:
    """Deploy through a broker to one listening device; the commands that reached it."""
    async def scenario() -> list[DeployCommand]:
        broker = MemoryBroker()
        device, central = MemoryTransport(broker), MemoryTransport(broker)
        await device.start()
        await central.start()
        received: list[DeployCommand] = []

        async def on_command(_topic: str, payload: bytes) -> None:
            message = decode(payload, expect=(DeployCommand,))
            assert isinstance(message, DeployCommand)
            received.append(message)

        await device.subscribe(TOPICS.commands("gw-1"), on_command)
        try:
            await deploy(db, central, signer, MODEL, version, "gw-1", "alice", TOPICS,
                         approval_required=False)
        finally:
            await central.stop()
            await device.stop()
        return received

    return run(scenario())


@pytest.fixture
def key_path(tmp_path: Path) -> Path:
    private = tmp_path / "keys" / "signing.key"
    write_key_pair(private)
    return private


def rotated(key_path: Path) -> Signer:
    """`keys next`, then `keys promote`: the signer central runs with afterwards."""
    start_key_change(key_path, key_path.with_name("signing.next.key"))
    promote_next_key(key_path, key_path.with_name("signing.next.key"))
    return Signer.from_file(key_path)


def test_an_unsigned_row_inserted_in_the_database_is_refused_at_deploy(
        db: CentralDB, tmp_path: Path, key_path: Path) -> None:
    signer = Signer.from_file(key_path)
    honest = published(db, tmp_path, signer)
    forged = honest.model_copy(update={"version": "6.6.6", "key_id": "", "signature": ""})
    insert_row(db, forged)

    with pytest.raises(TamperedManifest, match=f"{MODEL} 6.6.6 .*unsigned.*publish"):
        deploy_to_device(db, signer, "6.6.6")
    assert db_rows(db, "SELECT * FROM deployments") == []


def test_an_unsigned_row_is_refused_when_a_rollout_starts(
        db: CentralDB, tmp_path: Path, key_path: Path) -> None:
    signer = Signer.from_file(key_path)
    honest = published(db, tmp_path, signer)
    insert_row(db, honest.model_copy(update={"version": "6.6.6", "key_id": "",
                                             "signature": ""}))

    with pytest.raises(RolloutError, match=f"{MODEL} 6.6.6 .*unsigned"):
        start_rollout(db, MODEL, "6.6.6", ["gw-1"], "devices gw-1", "alice", signer=signer)
    assert db.list_rollouts(("running", "paused")) == []


def test_a_row_claiming_an_unknown_key_is_refused(
        db: CentralDB, tmp_path: Path, key_path: Path) -> None:
    signer = Signer.from_file(key_path)
    stranger = Signer.generate()
    honest = published(db, tmp_path, signer)
    insert_row(db, stranger.signed(honest.model_copy(update={"version": "6.6.6"})))

    with pytest.raises(TamperedManifest, match=f"key {stranger.key_id}.*not central's"):
        deploy_to_device(db, signer, "6.6.6")


def test_a_manifest_signed_by_a_retired_key_is_re_signed_by_the_current_key(
        db: CentralDB, tmp_path: Path, key_path: Path) -> None:
    old = Signer.from_file(key_path)
    stored = published(db, tmp_path, old)
    current = rotated(key_path)
    assert (retired_keys_dir(key_path) / f"{old.key_id}.pub").is_file()

    [command] = deploy_to_device(db, current, "1.0.0")

    assert command.manifest.key_id == current.key_id != old.key_id
    Verifier(current.public_key).verify(command.manifest, "manifest")
    assert command.manifest.model_copy(update={"key_id": "", "signature": ""}) == \
        stored.model_copy(update={"key_id": "", "signature": ""})


def test_a_tampered_manifest_of_a_retired_key_is_refused_not_re_signed(
        db: CentralDB, tmp_path: Path, key_path: Path) -> None:
    old = Signer.from_file(key_path)
    honest = published(db, tmp_path, old)
    raw = bytearray(base64.b64decode(honest.signature))
    raw[7] ^= 0x01
    insert_row(db, honest.model_copy(update={
        "version": "1.0.1", "signature": base64.b64encode(bytes(raw)).decode()}))
    current = rotated(key_path)

    with pytest.raises(TamperedManifest, match=f"{MODEL} 1.0.1 .*does not match"):
        deploy_to_device(db, current, "1.0.1")
    with pytest.raises(TamperedManifest, match="does not match"):
        deploy_to_device(db, old, "1.0.1")  # nor by the key that signed it


def test_replacing_a_key_with_init_force_keeps_the_old_public_key(key_path: Path) -> None:
    old = Signer.from_file(key_path)
    _, _, new = write_key_pair(key_path, force=True)

    assert Signer.from_file(key_path).key_id == new.key_id
    retired = Verifier.from_file(retired_keys_dir(key_path) / f"{old.key_id}.pub")
    assert list(retired.keys) == [old.key_id]
    assert set(Signer.from_file(key_path).retired_keys) == {old.key_id}

"""Configuration deployments in central's database, on SQLite and PostgreSQL: a gateway's steps
move only a configuration deployment central issued to that gateway, and only as configuration
steps; its credentials are no licence to move another gateway's, or another kind's, state."""

from __future__ import annotations

import pytest
from config_helpers import line_body

from central_sync.configs import config_deploy_command, config_rollback_command, publish_config
from central_sync.db import CentralDB, DeploymentEventRefused
from edge_agent.kernel.contract import (
    DeployCommand,
    DeploymentEvent,
    UplinkBatch,
    UplinkRecord,
)
from tests.helpers import TEST_SIGNER, manifest_for

GW1, GW2 = "gw1", "gw2"


def _config_command(db: CentralDB, device_id: str = GW1, version: int = 1):
    if db.get_config("line-3", version) is None:
        publish_config(db, TEST_SIGNER, "line-3", line_body(4 + version), "alice")
    command = config_deploy_command(db, TEST_SIGNER, "line-3", version, device_id, "alice")
    db.create_config_deployment(command)
    return command


def _step(command_id: str, step: str, at: float, device_id: str = GW1,
          subject: str = "config", version: str = "1") -> DeploymentEvent:
    return DeploymentEvent(device_id=device_id, command_id=command_id, subject=subject,
                           model_name="line-3", version=version, step=step, at=at)


def test_a_gateway_s_configuration_steps_move_its_deployment(db: CentralDB) -> None:
    command = _config_command(db)
    deployment = db.get_deployment(command.command_id)
    assert (deployment["kind"], deployment["model_name"], deployment["version"],
            deployment["state"]) == ("config", "line-3", "1", "issued")
    for at, step in enumerate(("received", "activated", "confirmed"), 1):
        assert db.record_deployment_event(_step(command.command_id, step, float(at)))
    assert db.get_deployment(command.command_id)["state"] == "confirmed"
    audit = [e for e in db.list_audit() if e["action"] == "config.deploy"]
    assert [(e["actor"], e["subject"]) for e in audit] == [("alice", "line-3@1")]
    assert f"device={GW1}" in audit[0]["detail"]


def test_a_model_step_cannot_move_a_configuration_deployment(db: CentralDB) -> None:
    command = _config_command(db)
    with pytest.raises(DeploymentEventRefused, match="deploys a config, the step is of a model"):
        db.record_deployment_event(_step(command.command_id, "failed", 5.0, subject="model",
                                         version="1.0.0"))
    assert db.get_deployment(command.command_id)["state"] == "issued"
    assert db.deployment_events(command.command_id) == []


def test_a_configuration_step_cannot_move_a_model_deployment(db: CentralDB, tmp_path) -> None:
    from central_helpers import make_onnx_model

    manifest = manifest_for(make_onnx_model(tmp_path / "m.onnx"), name="line-3")
    command = DeployCommand(device_id=GW1, manifest=manifest, issued_by="bob")
    db.create_deployment(command)
    with pytest.raises(DeploymentEventRefused, match="deploys a model, the step is of a config"):
        db.record_deployment_event(_step(command.command_id, "confirmed", 5.0))
    assert db.get_deployment(command.command_id)["state"] == "issued"


def test_another_gateway_s_configuration_deployment_is_out_of_reach(db: CentralDB) -> None:
    command = _config_command(db, GW1)
    forged = _step(command.command_id, "rolled_back", 5.0, device_id=GW2)
    with pytest.raises(DeploymentEventRefused, match=f"issued to {GW1}"):
        db.record_deployment_event(forged)
    record = UplinkRecord(seq=1, type="deployment_event", created_at=5.0,
                          payload=forged.model_dump(mode="json"))
    db.store_batch(UplinkBatch(device_id=GW2, records=[record]))  # through the buffer too
    assert db.count_records(GW2) == 1, "the rest of the batch is stored"
    assert db.get_deployment(command.command_id)["state"] == "issued"
    with pytest.raises(DeploymentEventRefused, match="central issued no command"):
        db.record_deployment_event(_step("made-up", "confirmed", 6.0))


def test_a_configuration_deployment_opens_no_artifact_for_download(db: CentralDB) -> None:
    command = _config_command(db)
    assert not db.deployment_open_for(GW1, command.document.sha256)


def test_a_rollback_is_recorded_so_its_steps_count(db: CentralDB) -> None:
    _config_command(db)
    rollback = config_rollback_command(TEST_SIGNER, "line-3", GW1, "rollout r1")
    db.record_config_rollback(rollback)
    assert db.record_deployment_event(_step(rollback.command_id, "activated", 9.0,
                                            version="1"))
    deployment = db.get_deployment(rollback.command_id)
    assert (deployment["kind"], deployment["version"], deployment["state"]) == (
        "config", "previous", "activated")
    assert [e["action"] for e in db.list_audit(limit=1)] == ["config.rollback"]


def test_each_device_s_newest_configuration_deployment(db: CentralDB) -> None:
    first = _config_command(db, GW1, 1)
    second = _config_command(db, GW1, 2)
    other = _config_command(db, GW2, 1)
    db.record_deployment_event(_step(first.command_id, "confirmed", 1e10))  # a late step
    newest = db.last_config_deployments()
    assert {d: n.command_id for d, n in newest.items()} == {
        GW1: second.command_id, GW2: other.command_id}
    assert (newest[GW1].name, newest[GW1].version, newest[GW1].state) == ("line-3", "2",
                                                                         "issued")
    assert db.last_config_deployments("other-name") == {}

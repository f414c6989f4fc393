"""`central-sync config ...` in-process through main(), on SQLite and PostgreSQL; deploy and
rollback over a real Mosquitto with a gateway answering as the agent does."""

from __future__ import annotations

import threading
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from central_helpers import write_config
from config_helpers import body_yaml, line_body
from paho.mqtt.enums import CallbackAPIVersion

from central_sync.cli import main
from central_sync.config import load_central_config
from central_sync.configs import config_deploy_command
from central_sync.db import CentralDB
from edge_agent.kernel.contract import (
    ConfigDeployCommand,
    ConfigRef,
    ConfigRollbackCommand,
    DeploymentEvent,
    DeviceStatus,
    Topics,
    decode,
    encode,
)
from tests.helpers import TEST_SIGNER, TEST_VERIFIER

TOPICS = Topics()


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _write(path: Path, interval_s: float = 5, prefix: str = "") -> Path:
    path.write_text(prefix + body_yaml(line_body(interval_s)))
    return path


def _db(config_file: Path) -> CentralDB:
    return CentralDB(load_central_config(config_file).database_url)


def test_publish_list_show_and_diff(config_file: Path, tmp_path: Path, capsys,
                                    monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    conf = ["-c", str(config_file)]
    file = _write(tmp_path / "line-3.yaml", 5)
    assert main(["config", "publish", str(file), "--name", "line-3", "--by", "alice", *conf]) == 0
    assert "published line-3@1" in capsys.readouterr().out
    assert main(["config", "publish", str(file), "--name", "line-3", *conf]) == 1
    assert "unchanged: line-3@1 already has this body" in _one_line(capsys.readouterr().out)
    _write(file, 10)
    assert main(["config", "publish", str(file), "--name", "line-3", "--probation-s", "30",
                 "--notes", "slower scrap", *conf]) == 0
    capsys.readouterr()

    assert main(["config", "list", *conf]) == 0
    out = capsys.readouterr().out
    assert "line1" in out and "scrap" in out and "slower scrap" in out and "alice" in out
    assert main(["config", "show", "line-3", *conf]) == 0  # the newest
    out = capsys.readouterr().out
    assert "line-3@2" in out and "30 s" in out and "interval_s: 10" in out
    assert main(["config", "diff", "line-3@1", "line-3@2", *conf]) == 0
    out = capsys.readouterr().out
    assert "\n-  interval_s: 5\n+  interval_s: 10\n" in out
    assert "probation_s: 60.0 → 30.0" in out
    assert main(["config", "diff", "line-3@1", "1", *conf]) == 0
    assert "same body" in capsys.readouterr().out
    assert main(["config", "show", "line-3@7", *conf]) == 2
    assert "line-3@7 is not in the registry (the newest of line-3 is version 2)" in \
        _one_line(capsys.readouterr().err)


def test_a_bad_file_is_refused_pointing_at_its_line(config_file: Path, tmp_path: Path,
                                                    capsys) -> None:
    file = tmp_path / "line-3.yaml"
    file.write_text(body_yaml(line_body()).replace("source: line1", "source: line9"))
    assert main(["config", "publish", str(file), "--name", "line-3", "-c",
                 str(config_file)]) == 2
    err = capsys.readouterr().err
    assert "pipeline 'scrap' uses source 'line9', which is not defined (sources: line1)" in err
    assert "edge-agent config-schema" in err
    file.write_text(body_yaml(line_body()) + "broker:\n  host: elsewhere\n")
    line = len(file.read_text().splitlines()) - 1
    assert main(["config", "publish", str(file), "--name", "line-3", "-c",
                 str(config_file)]) == 2
    assert f"{file}:{line}: broker: central may not set this" in capsys.readouterr().err
    db = _db(config_file)
    assert db.list_configs() == []
    db.close()


def test_push_publishes_when_changed_and_starts_a_config_rollout(
        config_file: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    db = _db(config_file)
    for device in ("gw1", "gw2"):
        db.add_broker_account(device, "device", ["line-3"], "unused", by="test")
    db.close()
    conf = ["-c", str(config_file)]
    file = _write(tmp_path / "line-3.yaml", 5)
    assert main(["config", "push", str(file), "--name", "line-3", "--group", "nowhere",
                 *conf]) == 2
    assert "no provisioned device has the label(s) nowhere" in capsys.readouterr().err
    db = _db(config_file)
    assert db.list_configs() == [], "a typo in the group publishes nothing"
    db.close()

    assert main(["config", "push", str(file), "--name", "line-3", "--group", "line-3",
                 "--canary", "0", "--waves", "50%,100%", *conf]) == 0
    out = _one_line(capsys.readouterr().out)
    assert "published line-3@1" in out and "of configuration line-3@1 to group line-3" in out
    assert "wave 1 of 2: gw1" in out and "wave 2 of 2: gw2" in out
    db = _db(config_file)
    [rollout] = db.list_rollouts()
    assert (rollout.kind, rollout.model_name, rollout.version) == ("config", "line-3", "1")
    db.close()

    assert main(["config", "push", str(file), "--name", "line-3", "--device", "gw1",
                 "--canary", "0", "--probation-s", "5", *conf]) == 2
    captured = capsys.readouterr()
    assert "unchanged: line-3@1 already has this body" in _one_line(captured.out)
    assert "it keeps its own probation (60 s) and notes" in _one_line(captured.out)
    assert f"rollout {rollout.rollout_id} of configuration line-3@1 is still running on gw1" \
        in _one_line(captured.err)
    assert main(["rollout", "status", *conf]) == 0
    assert "configuration line-3@1" in capsys.readouterr().out


def test_where_shows_what_each_gateway_runs_and_was_sent(config_file: Path, tmp_path: Path,
                                                         capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    conf = ["-c", str(config_file)]
    assert main(["config", "publish", str(_write(tmp_path / "a.yaml")), "--name", "line-3",
                 *conf]) == 0
    db = _db(config_file)
    document = db.get_config("line-3", 1)
    db.update_status(DeviceStatus(device_id="gw1", state="online", config=ConfigRef(
        name="line-3", version=1, sha256=document.sha256)))
    db.update_status(DeviceStatus(device_id="gw2", state="online"))
    db.update_status(DeviceStatus(device_id="gw3", state="online"))
    db.create_config_deployment(config_deploy_command(db, TEST_SIGNER, "line-3", 1, "gw2",
                                                      "alice"))
    db.close()
    capsys.readouterr()
    assert main(["config", "where", "line-3", *conf]) == 0
    lines = capsys.readouterr().out.splitlines()
    gw1 = next(line for line in lines if "gw1" in line)
    gw2 = next(line for line in lines if "gw2" in line)
    assert "line-3@1" in gw1 and "online" in gw1
    assert "local YAML only" in gw2 and "line-3@1" in gw2 and "issued" in gw2
    assert not any("gw3" in line for line in lines), "gw3 neither runs nor was sent line-3"
    assert main(["config", "where", *conf]) == 0
    assert "gw3" in capsys.readouterr().out


class ConfigGateway:
    """A raw paho client answering configuration commands with the given steps, as an agent
    does: the deployment's steps on its deployment topic, with subject config."""

    def __init__(self, port: int, steps: list[str], device_id: str = "gw1") -> None:
        self.steps, self.device_id = steps, device_id
        self.commands: list[ConfigDeployCommand | ConfigRollbackCommand] = []
        self.subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=device_id)
        self.client.on_connect = lambda c, *_: c.subscribe(TOPICS.commands(device_id), qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.subscribed.wait(10)

    def _on_message(self, client, userdata, message) -> None:
        command = decode(message.payload, expect=(ConfigDeployCommand, ConfigRollbackCommand),
                         topic_device_id=self.device_id)
        assert isinstance(command, ConfigDeployCommand | ConfigRollbackCommand)
        TEST_VERIFIER.verify(command, "command")
        self.commands.append(command)
        if isinstance(command, ConfigRollbackCommand):  # as the agent answers one
            event = DeploymentEvent(
                device_id=self.device_id, command_id=command.command_id, subject="config",
                model_name=command.name, version="1", step="rolled_back",
                detail="from line-3@2 to line-3@1")
            client.publish(TOPICS.deployment(self.device_id), encode(event), qos=1)
            return
        name = command.document.name
        for step in self.steps:
            event = DeploymentEvent(
                device_id=self.device_id, command_id=command.command_id, subject="config",
                model_name=name, version="1", step=step,
                detail="source line1 failed: connection refused" if step == "rolled_back"
                else "")
            client.publish(TOPICS.deployment(self.device_id), encode(event), qos=1)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.mark.parametrize(("steps", "code", "shown"), [
    (["received", "activated", "confirmed"], 0, "line-3@1 on gw1: confirmed"),
    (["received", "activated", "rolled_back"], 1,
     "line-3@1 on gw1: rolled_back source line1 failed: connection refused"),
])
def test_deploy_wait_follows_the_gateway_to_the_end_of_its_probation(
        mosquitto, tmp_path: Path, capsys, steps: list[str], code: int, shown: str) -> None:
    config = write_config(tmp_path, broker_port=mosquitto.port)
    assert main(["config", "publish", str(_write(tmp_path / "a.yaml")), "--name", "line-3",
                 "-c", str(config)]) == 0
    gateway = ConfigGateway(mosquitto.port, steps)
    try:
        assert main(["config", "deploy", "line-3@1", "--device", "gw1", "--wait", "--timeout",
                     "10", "-c", str(config), "--by", "alice"]) == code
    finally:
        gateway.close()
    out = _one_line(capsys.readouterr().out)
    assert shown in out
    [command] = gateway.commands
    assert command.document.label == "line-3@1" and command.issued_by == "alice"
    db = _db(config)
    deployment = db.get_deployment(command.command_id)
    assert (deployment["kind"], deployment["issued_by"]) == ("config", "alice")
    db.close()


def test_rollback_names_the_configuration_the_gateway_runs(mosquitto, tmp_path: Path,
                                                          capsys) -> None:
    config = write_config(tmp_path, broker_port=mosquitto.port)
    conf = ["-c", str(config)]
    assert main(["config", "rollback", "--device", "gw1", *conf]) == 2
    assert "nothing to roll back" in capsys.readouterr().err
    assert main(["config", "publish", str(_write(tmp_path / "a.yaml")), "--name", "line-3",
                 *conf]) == 0
    db = _db(config)
    db.update_status(DeviceStatus(device_id="gw1", state="online", config=ConfigRef(
        name="line-3", version=1, sha256=db.get_config("line-3", 1).sha256)))
    db.close()
    gateway = ConfigGateway(mosquitto.port, ["received", "activated", "confirmed"])
    try:
        assert main(["config", "rollback", "--device", "gw1", "--wait", *conf]) == 0
        assert "rolled_back from line-3@2 to line-3@1" in _one_line(capsys.readouterr().out)
        assert main(["config", "rollback", "--device", "gw1", "--to", "4", *conf]) == 2
    finally:
        gateway.close()
    assert "line-3@4 is not in the registry" in _one_line(capsys.readouterr().err)
    [command] = gateway.commands
    assert isinstance(command, ConfigRollbackCommand)
    assert (command.name, command.to_version) == ("line-3", None)


def test_deploy_with_unreachable_broker_exits_1_recording_nothing(tmp_path: Path,
                                                                  capsys) -> None:
    from central_helpers import free_port

    config = write_config(tmp_path, broker_port=free_port())
    assert main(["config", "publish", str(_write(tmp_path / "a.yaml")), "--name", "line-3",
                 "-c", str(config)]) == 0
    assert main(["config", "deploy", "line-3@1", "--device", "gw1", "--connect-timeout",
                 "0.5", "-c", str(config)]) == 1
    assert "cannot reach the MQTT broker" in capsys.readouterr().out
    db = _db(config)
    assert db.last_config_deployments() == {}
    db.close()

"""`central-sync agent ...` in-process: publish and list a real release wheel, refuse what cannot
be sent, and send a signed, recorded update and rollback over Mosquitto."""

from __future__ import annotations

from pathlib import Path

import pytest
from central_helpers import write_config

from central_sync.cli import main
from central_sync.db import CentralDB
from edge_agent.kernel.contract import AgentRollbackCommand, AgentUpdateCommand, Topics, decode
from tests.agent_wheels import GOOD_VERSION, AgentWheels
from tests.helpers import TEST_VERIFIER, wait_until

TOPICS = Topics()


@pytest.mark.parametrize("command", [["agent"], ["agent", "publish"], ["agent", "list"],
                                     ["agent", "deploy"], ["agent", "rollout"],
                                     ["agent", "rollback"]])
def test_every_agent_command_has_help_with_examples(command: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*command, "--help"])
    assert exited.value.code == 0 and "examples:" in capsys.readouterr().out


def test_publish_then_list_shows_the_release(tmp_path: Path, agent_wheels: AgentWheels,
                                             capsys) -> None:
    config = write_config(tmp_path)
    assert main(["agent", "list", "-c", str(config)]) == 0
    assert "no agent release published" in capsys.readouterr().out
    assert main(["agent", "publish", str(agent_wheels.good), "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert f"published edge-agent {GOOD_VERSION}" in out and "agent deploy" in out
    assert main(["agent", "publish", str(agent_wheels.good), "-c", str(config)]) == 0
    assert "already published, unchanged" in capsys.readouterr().out
    assert main(["agent", "list", "-c", str(config)]) == 0
    assert GOOD_VERSION in capsys.readouterr().out


def test_deploy_of_an_unknown_release_or_bad_device_is_a_usage_error(tmp_path: Path,
                                                                     capsys) -> None:
    config = write_config(tmp_path)
    assert main(["agent", "deploy", "9.9.9", "--device", "gw-1", "-c", str(config)]) == 2
    assert "not published" in capsys.readouterr().err
    assert main(["agent", "deploy", "9.9.9", "--device", "gw 1", "-c", str(config)]) == 2
    assert "not valid" in capsys.readouterr().err
    assert main(["agent", "rollout", "9.9.9", "-c", str(config)]) == 2
    assert "--group LABEL or --device ID" in capsys.readouterr().err


def test_deploy_and_rollback_send_signed_recorded_commands(
        mosquitto, tmp_path: Path, agent_wheels: AgentWheels, capsys) -> None:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    config = write_config(tmp_path, broker_port=mosquitto.port)
    assert main(["agent", "publish", str(agent_wheels.good), "-c", str(config)]) == 0
    received: list[bytes] = []
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="gw-1")
    client.on_message = lambda _c, _u, message: received.append(message.payload)
    client.connect("127.0.0.1", mosquitto.port)
    client.subscribe(TOPICS.commands("gw-1"), qos=1)
    client.loop_start()
    try:
        assert main(["agent", "deploy", GOOD_VERSION, "--device", "gw-1", "--healthy-within",
                     "30", "-c", str(config)]) == 0
        assert main(["agent", "rollback", "--device", "gw-1", "-c", str(config)]) == 0
        wait_until(lambda: len(received) == 2, 10, what="both commands at the gateway")
    finally:
        client.loop_stop()
        client.disconnect()
    update, rollback = (decode(p, expect=(AgentUpdateCommand, AgentRollbackCommand))
                        for p in received)
    assert isinstance(update, AgentUpdateCommand) and isinstance(rollback, AgentRollbackCommand)
    TEST_VERIFIER.verify(update, "command")
    TEST_VERIFIER.verify(update.package, "agent package")
    TEST_VERIFIER.verify(rollback, "command")
    assert update.package.version == GOOD_VERSION and update.healthy_within_s == 30
    db = CentralDB(f"sqlite:///{tmp_path / 'var' / 'central.db'}")
    try:
        for command in (update, rollback):
            stored = db.get_deployment(command.command_id)
            assert stored is not None and stored["kind"] == "agent"
            assert stored["state"] == "issued"
    finally:
        db.close()
    assert "add --wait 300 to follow it" in capsys.readouterr().out


def test_rollout_records_an_agent_rollout_for_serve_to_carry_out(
        tmp_path: Path, agent_wheels: AgentWheels, capsys) -> None:
    config = write_config(tmp_path)
    assert main(["agent", "publish", str(agent_wheels.good), "-c", str(config)]) == 0
    assert main(["agent", "rollout", GOOD_VERSION, "--device", "gw-1", "--device", "gw-2",
                 "--canary", "0", "--no-follow", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert f"of edge-agent {GOOD_VERSION} to devices gw-1, gw-2: 2 device(s)" in out
    db = CentralDB(f"sqlite:///{tmp_path / 'var' / 'central.db'}")
    try:
        [rollout] = db.list_rollouts(("running",))
        assert (rollout.kind, rollout.model_name, rollout.version) == (
            "agent", "edge-agent", GOOD_VERSION)
    finally:
        db.close()

"""`central-sync device logs|diagnose|restart` over a real Mosquitto, against a gateway that
speaks the contract: what is printed, what is recorded, and the errors that say what to do."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from central_helpers import free_port, write_config
from fake_gateway import FakeGateway, log_lines

from central_sync.accounts import hash_password
from central_sync.cli import main
from central_sync.db import CentralDB
from edge_agent.kernel.contract import DeviceStatus, LogLine, LogRequest

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def config(tmp_path: Path, mosquitto, database_url: str) -> Path:
    path = write_config(tmp_path, broker_port=mosquitto.port, database_url=database_url)
    db = CentralDB(database_url)
    db.update_status(DeviceStatus(device_id="gw-1", state="online"))
    db.close()
    return path


@pytest.fixture
def gateway(mosquitto) -> Iterator[FakeGateway]:
    fake = FakeGateway(mosquitto.port, "gw-1", tail=3)
    yield fake
    fake.stop()


def cli(config: Path, *args: str) -> int:
    return main(["device", *args, "-c", str(config), "--timeout", "5"])


def test_logs_prints_the_tail_and_records_the_signed_request(
        config: Path, gateway: FakeGateway, database_url: str, capsys) -> None:
    assert cli(config, "logs", "gw-1", "--lines", "2", "--level", "warning") == 0
    out = capsys.readouterr().out
    assert "line 1" in out and "line 2" in out and "line 0" not in out
    assert "edge_agent.app" in out and "(end of the tail: 2 lines)" in out
    [request] = gateway.of_kind(LogRequest)
    assert (request.level, request.lines, request.follow_s) == ("WARNING", 2, 0.0)
    assert gateway.forged == []
    db = CentralDB(database_url)
    [recorded] = db.diagnostic_requests("gw-1")
    assert recorded.request_id == request.command_id and recorded.action == "logs"
    assert db.list_audit(1)[0]["action"] == "device.logs"
    db.close()


def test_logs_follow_prints_lines_as_they_come_until_the_follow_ends(
        config: Path, gateway: FakeGateway, capsys) -> None:
    gateway.follow_batches = [log_lines(2, "live"), log_lines(1, "later")]
    assert cli(config, "logs", "gw-1", "--follow", "30") == 0
    out = capsys.readouterr().out
    assert out.index("line 2") < out.index("live 1") < out.index("later 0")
    assert "(follow ended: 6 lines; 14 left out by the gateway's rate limit)" in out
    assert gateway.follows[0].follow_s == 30


def test_a_gateways_control_characters_never_reach_the_terminal(
        config: Path, gateway: FakeGateway, capsys) -> None:
    gateway.tail = 0
    gateway.follow_batches = [[LogLine(at=time.time(), level="ERROR", logger="x\x1b[2J",
                                       message="clear\x1b[2J\x07screen")]]
    assert cli(config, "logs", "gw-1", "--follow") == 0
    out = capsys.readouterr().out
    assert "\x1b[2J" not in out and "\x07" not in out
    assert "clear\\x1b[2J\\x07screen" in out


def test_diagnose_prints_versions_configuration_clock_and_the_effective_config(
        config: Path, gateway: FakeGateway, database_url: str, capsys) -> None:
    db = CentralDB(database_url)
    db.record_clock("gw-1", 30.25, 4.0, time.time())
    db.close()
    assert cli(config, "diagnose", "gw-1") == 0
    out = capsys.readouterr().out
    assert "agent 1.4.2 · python 3.11.9 · Linux-6.1-aarch64" in out
    assert "line-3-vision@4 (sha256 bbbbbbbbbbbb)" in out
    assert "+30.250 s (round trip 4 ms" in out and "more than 2 s off" in out
    assert "cam1:\n  state: connected" in out and "depth: 12" in out
    assert "uptime_s       5321.5" in out and "- name: surface" in out
    assert "effective configuration (secrets redacted by the gateway):" in out
    assert "password: '***'" in out
    assert cli(config, "diagnose", "gw-1", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["report"]["buffer"]["depth"] == 12
    assert report["clock"]["clock_offset_s"] == 30.25


def test_restart_prints_the_gateways_reply(config: Path, gateway: FakeGateway, capsys) -> None:
    assert cli(config, "restart", "gw-1", "--pipeline", "surface") == 0
    assert "gw-1: pipeline surface restarted" in capsys.readouterr().out
    assert cli(config, "restart", "gw-1", "--pipeline", "nope") == 1
    assert "did not restart pipeline nope: no pipeline nope here" in capsys.readouterr().out
    assert cli(config, "restart", "gw-1") == 0
    out = capsys.readouterr().out
    assert "the agent restarts" in out and "back online" in out


def test_unknown_offline_and_silent_gateways_get_errors_that_say_what_to_check(
        config: Path, gateway: FakeGateway, database_url: str, capsys) -> None:
    assert cli(config, "logs", "gw-9") == 2
    assert "central has not heard from gw-9" in capsys.readouterr().err
    db = CentralDB(database_url)
    db.update_status(DeviceStatus(device_id="gw-old", state="online"),
                     received_at=time.time() - 600)
    db.close()
    assert cli(config, "diagnose", "gw-old") == 1
    assert "gw-old is offline (last seen 10 min ago)" in capsys.readouterr().out
    gateway.answer = False
    assert main(["device", "diagnose", "gw-1", "-c", str(config), "--timeout", "0.5"]) == 1
    out = capsys.readouterr().out
    assert "no reply from gw-1 within 0.5 s" in out and "central-sync devices" in out
    with pytest.raises(SystemExit) as exited:
        cli(config, "restart", "gw-1", "--pipeline", "bad name")
    assert exited.value.code == 2 and "not a pipeline name" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli(config, "logs", "gw-1", "--follow", "601")
    assert "a follow lasts 1 to 600 s" in capsys.readouterr().err


def test_an_unreachable_broker_is_said_so(tmp_path: Path, database_url: str, capsys) -> None:
    config = write_config(tmp_path, broker_port=free_port(), database_url=database_url)
    db = CentralDB(database_url)
    db.update_status(DeviceStatus(device_id="gw-1", state="online"))
    db.close()
    assert main(["device", "logs", "gw-1", "-c", str(config), "--connect-timeout", "0.5"]) == 1
    assert "cannot reach the MQTT broker" in capsys.readouterr().out


def test_once_central_has_accounts_a_viewer_may_not_ask(
        config: Path, gateway: FakeGateway, database_url: str, capsys, monkeypatch) -> None:
    db = CentralDB(database_url)
    db.add_user("vera", hash_password("correct horse battery"), "viewer", by="admin")
    db.close()
    monkeypatch.setenv("CENTRAL_SYNC_USER", "vera")
    monkeypatch.setenv("CENTRAL_SYNC_PASSWORD", "correct horse battery")
    assert cli(config, "logs", "gw-1") == 2
    assert "needs the engineer role" in capsys.readouterr().err
    assert gateway.received == []

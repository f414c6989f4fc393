"""`central-sync alerts list|ack|silence|unsilence|test|rules` on a real SQLite database, a real
HTTP receiver and a real Mosquitto. AlertQueries itself runs on both databases in
tests/central_sync/db."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from central_helpers import write_config

from central_sync.accounts import hash_password
from central_sync.cli import main
from central_sync.db import CentralDB
from central_sync.db.alerts import Alert
from edge_agent.kernel.contract import Topics
from edge_agent.kernel.transport.config import BrokerConfig
from edge_agent.kernel.transport.mqtt import MqttTransport
from tests.helpers import wait_until_async

PASSWORD = "correct horse battery"
ALERTS_YAML = """\
alerts:
  rules:
    - name: defect-rate
      kind: defect_rate
      threshold: 4
      targets: {{cameras: [cam2]}}
  routes:
    - name: ops-webhook
      kind: webhook
      url: {url}
      template: json
    - name: shift-mail
      kind: smtp
      host: mail.plant.invalid
      from: central@plant.invalid
      to: [shift@plant.invalid]
      min_severity: critical
    - name: chat
      kind: webhook
      url_env: CHAT_WEBHOOK_URL
      template: slack
      rules: [drift]
"""


class Receiver:
    """A webhook receiver on a free port: records what it gets, answers `status`."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.status = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.bodies.append(json.loads(body))
                self.send_response(receiver.status)
                self.end_headers()
                self.wfile.write(b"receiver says no" if receiver.status >= 300 else b"ok")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


def _central(tmp_path: Path, url: str, broker_port: int = 1883) -> tuple[Path, CentralDB]:
    config = write_config(tmp_path, broker_port=broker_port,
                          database_url=f"sqlite:///{tmp_path / 'central.db'}")
    config.write_text(config.read_text() + ALERTS_YAML.format(url=url))
    return config, CentralDB(tmp_path / "central.db")


@pytest.fixture
def central(tmp_path: Path, receiver: Receiver) -> Iterator[tuple[Path, CentralDB]]:
    config, db = _central(tmp_path, receiver.url)
    yield config, db
    db.close()


@pytest.fixture(autouse=True)
def _wide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")


def _fire(db: CentralDB, rule: str, device: str, severity: str = "critical",
          summary: str = "") -> Alert:
    alert = db.fire_alert(rule, f"device={device}", kind=rule.replace("-", "_"),
                          severity=severity, summary=summary or f"{rule} on {device}",
                          devices=[device], labels={"device": device})
    assert alert is not None
    return alert


@pytest.mark.parametrize("command", [["alerts"], *[["alerts", action] for action in (
    "list", "ack", "silence", "unsilence", "test", "rules")]], ids=" ".join)
def test_every_alerts_command_has_help_with_examples(command: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*command, "--help"])
    assert exited.value.code == 0 and "examples:" in capsys.readouterr().out


def test_list_shows_open_alerts_and_all_with_history(central, capsys) -> None:
    config, db = central
    assert main(["alerts", "list", "-c", str(config)]) == 0
    assert "no open alerts" in capsys.readouterr().out
    down = _fire(db, "source-down", "line1-gw1", summary="camera [cam1] on line1-gw1 down")
    filling = _fire(db, "buffer-filling", "line2-gw1", severity="warning")
    gone = _fire(db, "gateway-offline", "line1-gw2")
    db.resolve_alert(gone.alert_id)

    assert main(["alerts", "list", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert down.alert_id in out and filling.alert_id in out and gone.alert_id not in out
    assert "camera [cam1] on line1-gw1 down" in out and "firing" in out  # not markup
    assert main(["alerts", "list", "--all", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert gone.alert_id in out and "resolved" in out
    assert main(["alerts", "list", "--all", "--device", "line1-gw2", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert gone.alert_id in out and down.alert_id not in out
    assert main(["alerts", "list", "--rule", "buffer-filling", "--json", "-c",
                 str(config)]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [a["alert_id"] for a in listed] == [filling.alert_id]
    assert listed[0]["devices"] == ["line2-gw1"] and listed[0]["group_key"] == "device=line2-gw1"
    assert listed[0]["severity"] == "warning" and listed[0]["acked_by"] is None


def test_ack_records_who_and_why_and_is_audited(central, capsys) -> None:
    config, db = central
    alert = _fire(db, "source-down", "line1-gw1")
    assert main(["alerts", "ack", alert.alert_id, "--reason", "cleaning camera 2", "--by",
                 "anna", "-c", str(config)]) == 0
    assert f"acknowledged {alert.alert_id}" in capsys.readouterr().out
    acked = db.get_alert(alert.alert_id)
    assert acked is not None and (acked.acked_by, acked.ack_reason) == ("anna",
                                                                        "cleaning camera 2")
    assert [e.event for e in db.alert_events(alert.alert_id)] == ["fired", "acked"]
    entry = db.list_audit(1)[0]
    assert (entry["actor"], entry["action"], entry["subject"]) == ("anna", "alert.ack",
                                                                   alert.alert_id)
    assert main(["alerts", "list", "-c", str(config)]) == 0
    assert "anna: cleaning camera 2" in capsys.readouterr().out


def test_ack_errors_say_what_to_do(central, capsys) -> None:
    config, db = central
    assert main(["alerts", "ack", "a0nosuch", "--reason", "x", "-c", str(config)]) == 2
    assert "no alert a0nosuch; list them with `central-sync alerts list" in \
        capsys.readouterr().err
    alert = _fire(db, "source-down", "line1-gw1")
    assert main(["alerts", "ack", alert.alert_id, "--reason", "  ", "-c", str(config)]) == 2
    assert "needs a reason" in capsys.readouterr().err
    db.resolve_alert(alert.alert_id)
    assert main(["alerts", "ack", alert.alert_id, "--reason", "late", "-c", str(config)]) == 2
    assert "resolved already" in capsys.readouterr().err
    assert db.get_alert(alert.alert_id).acked_by is None  # type: ignore[union-attr]


def test_with_accounts_ack_needs_quality_and_silence_engineer(
        central, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    config, db = central
    db.add_user("root", hash_password(PASSWORD), "admin", by="setup")
    db.add_user("vic", hash_password(PASSWORD), "viewer", by="root")
    db.add_user("quinn", hash_password(PASSWORD), "quality", by="root")
    monkeypatch.setenv("CENTRAL_SYNC_PASSWORD", PASSWORD)
    alert = _fire(db, "source-down", "line1-gw1")
    monkeypatch.setenv("CENTRAL_SYNC_USER", "vic")
    assert main(["alerts", "ack", alert.alert_id, "--reason", "on it", "-c", str(config)]) == 2
    assert "vic is a viewer; this needs the quality role" in capsys.readouterr().err
    monkeypatch.setenv("CENTRAL_SYNC_USER", "quinn")
    assert main(["alerts", "ack", alert.alert_id, "--reason", "on it", "-c", str(config)]) == 0
    assert db.get_alert(alert.alert_id).acked_by == "quinn"  # type: ignore[union-attr]
    assert main(["alerts", "silence", alert.alert_id, "--hours", "1", "--reason", "x", "-c",
                 str(config)]) == 2
    assert "needs the engineer role" in capsys.readouterr().err
    assert db.active_silences() == []


def test_silence_an_alert_then_a_whole_rule_and_lift_them(central, capsys) -> None:
    config, db = central
    alert = _fire(db, "source-down", "line1-gw1")
    other = _fire(db, "source-down", "line1-gw2")
    before = time.time()
    assert main(["alerts", "silence", alert.alert_id, "--hours", "2", "--reason",
                 "camera being replaced", "--by", "eve", "-c", str(config)]) == 0
    assert "silenced rule source-down, device=line1-gw1 until" in capsys.readouterr().out
    [silence] = db.active_silences()
    assert (silence.rule, silence.group_key, silence.created_by) == (
        "source-down", "device=line1-gw1", "eve")
    assert before + 7200 <= silence.until <= time.time() + 7200
    assert db.get_alert(other.alert_id).silenced_until is None  # type: ignore[union-attr]
    assert main(["alerts", "list", "-c", str(config)]) == 0
    assert ": camera being replaced" in capsys.readouterr().out

    assert main(["alerts", "silence", "--rule", "source-down", "--hours", "8", "--reason",
                 "line 1 maintenance", "--by", "eve", "-c", str(config)]) == 0
    assert "rule source-down (every group)" in capsys.readouterr().out
    assert db.get_alert(other.alert_id).silence_reason == "line 1 maintenance"  # type: ignore[union-attr]
    assert [a["action"] for a in db.list_audit(2)] == ["alert.silence", "alert.silence"]

    assert main(["alerts", "unsilence", "--rule", "source-down", "--by", "eve", "-c",
                 str(config)]) == 0
    assert "lifted the silence on rule source-down (every group)" in capsys.readouterr().out
    assert main(["alerts", "unsilence", alert.alert_id, "-c", str(config)]) == 0
    assert db.active_silences() == []
    assert main(["alerts", "unsilence", "--rule", "source-down", "-c", str(config)]) == 1
    assert "no silence in force on rule source-down" in capsys.readouterr().out
    assert db.list_audit(1)[0]["action"] == "alert.unsilence"


@pytest.mark.parametrize(("args", "message"), [
    (["--hours", "1", "--reason", "x"], "name what to silence"),
    (["a0x", "--rule", "drift", "--hours", "1", "--reason", "x"], "name what to silence"),
    (["--rule", "source-dwn", "--hours", "1", "--reason", "x"],
     "no rule source-dwn; the rules are buffer-evicting"),
    (["--rule", "drift", "--hours", "500", "--reason", "x"], "--hours must be between"),
    (["a0nosuch", "--hours", "1", "--reason", "x"], "no alert a0nosuch"),
    (["--rule", "drift", "--hours", "1", "--reason", ""], "needs a reason"),
], ids=["nothing", "both", "typo", "too-long", "unknown-id", "no-reason"])
def test_silence_refuses_what_would_silence_nothing_or_everything(
        central, capsys, args: list[str], message: str) -> None:
    config, db = central
    assert main(["alerts", "silence", *args, "-c", str(config)]) == 2
    assert message in capsys.readouterr().err
    assert db.active_silences() == []


def test_rules_prints_thresholds_durations_and_routes(central, capsys) -> None:
    config, _ = central
    assert main(["alerts", "rules", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    for name in ("gateway-offline", "buffer-filling", "buffer-evicting", "source-down",
                 "model-rolled-back", "drift", "defect-rate", "ops-webhook", "shift-mail",
                 "scada-topic", "cameras cam2", "$CHAT_WEBHOOK_URL (the URL carries a token"):
        assert name in out, name
    assert "None" not in out
    assert main(["alerts", "rules", "--json", "-c", str(config)]) == 0
    printed = json.loads(capsys.readouterr().out)
    rules = {rule["name"]: rule for rule in printed["rules"]}
    assert rules["defect-rate"]["threshold"] == 4.0
    assert rules["defect-rate"]["routes"] == ["scada-topic", "ops-webhook"]  # warning: no mail
    assert rules["source-down"]["routes"] == ["scada-topic", "ops-webhook", "shift-mail"]
    assert (rules["gateway-offline"]["for_s"], rules["drift"]["resolve_after_s"]) == (60, 900)
    assert rules["drift"]["routes"] == ["scada-topic", "ops-webhook", "chat"]
    assert [r["name"] for r in printed["routes"]] == ["ops-webhook", "shift-mail", "chat"]
    assert printed["routes"][1]["from"] == "central@plant.invalid"


def test_test_sends_through_a_webhook_and_reports_a_refusal(
        central, receiver: Receiver, capsys) -> None:
    config, db = central
    assert main(["alerts", "test", "ops-webhook", "--by", "eve", "-c", str(config)]) == 0
    assert "test message sent through ops-webhook: HTTP 200" in capsys.readouterr().out
    [body] = receiver.bodies
    assert body["event"] == "test" and body["central_id"] == "central-test"
    entry = db.list_audit(1)[0]
    assert (entry["actor"], entry["action"], entry["subject"]) == ("eve", "alert.test",
                                                                   "ops-webhook")
    receiver.status = 503
    assert main(["alerts", "test", "ops-webhook", "-c", str(config)]) == 1
    assert "did not get through: HTTP 503" in capsys.readouterr().out
    assert "failed: HTTP 503" in db.list_audit(1)[0]["detail"]
    assert main(["alerts", "test", "pager", "-c", str(config)]) == 2
    assert "no route pager in alerts.routes; configured: ops-webhook, shift-mail, chat, " \
        "scada-topic" in capsys.readouterr().err


def test_test_of_the_scada_topic_publishes_on_the_events_topic(
        tmp_path: Path, mosquitto, capsys) -> None:
    config, db = _central(tmp_path, "http://127.0.0.1:9/hook", broker_port=mosquitto.port)
    events = Topics().alerts_events()
    received: list[bytes] = []

    async def scenario() -> int:
        listener = MqttTransport(BrokerConfig(port=mosquitto.port), client_id="scada-screen")
        await listener.start()
        try:
            assert await listener.wait_connected(10)

            async def on_message(topic: str, payload: bytes) -> None:
                received.append(payload)

            await listener.subscribe(events, on_message)
            code = await asyncio.to_thread(main, ["alerts", "test", "scada-topic", "-c",
                                                  str(config)])
            await wait_until_async(lambda: received, what="the test on the events topic")
            return code
        finally:
            await listener.stop()

    try:
        assert asyncio.run(asyncio.wait_for(scenario(), 30)) == 0
    finally:
        db.close()
    assert "test message sent through scada-topic" in capsys.readouterr().out
    message = json.loads(received[0])
    assert message["event"] == "test" and message["rule"]

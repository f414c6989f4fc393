"""Six causes on a running plant (real central, agent, line simulator and Mosquitto), each told
exactly once through a real webhook receiver, a real SMTP server (STARTTLS and login) and the
SCADA topic, and each resolved by itself; a webhook receiver that was down gets what it
missed once it is back. Prints the delay from each cause to each notification."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from edge_agent.kernel.contract import (
    BufferHealth,
    DeployCommand,
    DeploymentEvent,
    DeviceStatus,
    UplinkBatch,
    UplinkRecord,
    encode,
)
from tests.central_sync.alerts.alert_receivers import (
    SMTP_PASSWORD,
    SMTP_USER,
    SmtpReceiver,
    WebhookReceiver,
)
from tests.central_sync.fake_gateway import FakeGateway
from tests.central_sync.review_helpers import defect_payload
from tests.conftest import LineSimulatorProcess, Mosquitto, start_line_simulator
from tests.edge_agent.kernel.test_httpserver import self_signed_certificate
from tests.faults.conftest import running_plant
from tests.faults.harness import AGENT, DEVICE, MODEL, VERSION, Plant
from tests.helpers import SAMPLE_METADATA, wait_until

pytestmark = pytest.mark.slow

OTHER = "line2-gw1"  # a gateway speaking the contract from the test, for the other causes
WINDOW_S = 15  # of the rollback, drift and defect-rate rules: each resolves this long after


def operator_page_alerts(listener: ScadaListener, device_id: str) -> list[str] | None:
    """The rules of the alerts central last published for the device's operator page."""
    topic = f"edge-mlops/devices/{device_id}/alerts"
    payloads = [payload for _, t, payload, _ in list(listener.messages) if t == topic]
    if not payloads:
        return None
    return [alert["rule"] for alert in json.loads(payloads[-1])["alerts"]]


def central_alerts_yaml(webhook: WebhookReceiver, mail: SmtpReceiver, ca_file: Path) -> str:
    rules = [
        {"name": "gateway-offline", "kind": "gateway_offline", "severity": "critical",
         "for_s": 2, "resolve_after_s": 0},
        {"name": "buffer-filling", "kind": "buffer_filling", "for_s": 1, "resolve_after_s": 1},
        {"name": "buffer-evicting", "kind": "buffer_evicting", "enabled": False},
        {"name": "source-down", "kind": "source_down", "severity": "critical", "for_s": 2,
         "resolve_after_s": 1, "operator": True},
        {"name": "model-rolled-back", "kind": "model_rolled_back", "window_s": WINDOW_S,
         "resolve_after_s": 0},
        {"name": "drift", "kind": "drift", "window_s": WINDOW_S, "resolve_after_s": 0},
        {"name": "defect-rate", "kind": "defect_rate", "window_s": WINDOW_S, "min_count": 5,
         "fixed_per_hour": 60, "resolve_after_s": 0},
    ]
    routes = [
        {"name": "hook", "kind": "webhook", "url": webhook.url, "min_severity": "info"},
        {"name": "mail", "kind": "smtp", "host": "127.0.0.1", "port": mail.port,
         "ca_file": str(ca_file), "username": SMTP_USER,
         "password_env": "ALERT_SMTP_PASSWORD", "from": "central@plant.example",
         "to": ["quality@plant.example"], "min_severity": "info"},
    ]
    alerts = {"evaluate_interval_s": 1, "retry_initial_s": 0.5, "retry_max_s": 2,
              "rules": rules, "routes": routes}
    return f"offline_after_s: 30\nalerts: {json.dumps(alerts)}\n"


class ScadaListener:
    """A SCADA client on the broker: every message on the alert topics, with its arrival."""

    def __init__(self, port: int) -> None:
        self.messages: list[tuple[float, str, bytes, bool]] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="scada-host")
        self.client.on_message = lambda _c, _u, m: self.messages.append(
            (time.time(), m.topic, m.payload, bool(m.retain)))
        self.client.on_connect = lambda c, *_: c.subscribe(
            [("edge-mlops/alerts/#", 1), ("edge-mlops/devices/+/alerts", 1)])
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class Arrivals:
    """Stamps each notification a receiver got with the time it was first seen (every 20 ms),
    so a delay does not depend on the order the test looks at the receivers in."""

    def __init__(self, webhook: WebhookReceiver, mail: SmtpReceiver,
                 listener: ScadaListener) -> None:
        self.sources = {"webhook": webhook.received, "mail": mail.mails,
                        "scada": listener.messages}
        self.seen: dict[str, list[tuple[float, Any]]] = {name: [] for name in self.sources}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(0.02):
            for name, items in self.sources.items():
                seen = self.seen[name]
                for item in list(items)[len(seen):]:
                    seen.append((time.time(), item))

    def of(self, route: str, rule: str, event: str) -> list[float]:
        """Arrival times of the notifications about `rule` and `event` on one route."""
        return [at for at, item in list(self.seen[route]) if _about(route, item) == (rule, event)]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


def _about(route: str, item: Any) -> tuple[str, str] | None:
    """(rule, event) a received notification is about."""
    if route == "webhook":
        body = item.json()
        return body["rule"], body["event"]
    if route == "mail":
        message = item[2]
        rule = str(message.get_payload()).split("Rule: ", 1)[1].split(" ", 1)[0]
        return rule, "resolved" if str(message["Subject"]).startswith("[RESOLVED]") else "fired"
    _, topic, payload, _ = item
    if not topic.endswith("/alerts/events"):
        return None
    body = json.loads(payload)
    return body["rule"], body["event"]


class OtherGateway:
    """`OTHER`, online and reporting what the test says; its status repeats every 2 s."""

    def __init__(self, port: int) -> None:
        self.gateway = FakeGateway(port, OTHER)
        self.buffer = BufferHealth(depth=0, bytes_used=0, quota_bytes=1000)
        self.seq = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._repeat, daemon=True)
        self._thread.start()

    def _repeat(self) -> None:
        while not self._stop.is_set():
            self.send_status()
            self._stop.wait(2)

    def send_status(self) -> None:
        status = DeviceStatus(device_id=OTHER, state="online", buffer=self.buffer)
        self.gateway.call(self.gateway.transport.publish(
            f"edge-mlops/devices/{OTHER}/status", encode(status), retain=True))

    def records(self, kind: str, payloads: list[dict[str, Any]]) -> None:
        records = []
        for payload in payloads:
            self.seq += 1
            records.append(UplinkRecord(seq=self.seq, type=kind, created_at=time.time(),
                                        payload=payload))
        self.gateway.send(UplinkBatch(device_id=OTHER, records=records), leaf="uplink")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.gateway.stop()


def drifted_stats() -> dict[str, Any]:
    """A model_stats record whose every input sits in the reference's last bin."""
    reference = json.loads(SAMPLE_METADATA.read_text())["reference"]
    now = time.time()
    inputs = {name: {"count": 200, "histogram": {
        "edges": h["edges"], "counts": [0] * (len(h["counts"]) - 1) + [200]}}
        for name, h in reference["inputs"].items()}
    return {"pipeline": "scrap", "model": {"name": MODEL, "version": VERSION,
                                           "sha256": "a" * 64},
            "started_at": now - 5, "ended_at": now, "predictions": 200,
            "latency_ms": {"edges": [0.0, 10.0], "counts": [200]}, "inputs": inputs}


def scratch(i: int) -> dict[str, Any]:
    """A defect record's payload as a vision pipeline sends it: a scratch on cam-1."""
    payload = defect_payload(i, camera="cam-1")
    return {**payload, "label": "scratch", "result": {**payload["result"], "label": "scratch"}}


@pytest.fixture
def receivers(tmp_path: Path) -> Iterator[tuple[WebhookReceiver, SmtpReceiver, Path]]:
    webhook = WebhookReceiver()  # down until the test starts it
    cert_file, key_file = self_signed_certificate(tmp_path / "smtp-tls")
    mail = SmtpReceiver(cert_file, key_file).start()
    yield webhook, mail, cert_file
    webhook.stop()
    mail.stop()


@pytest.fixture
def alert_plant(request: pytest.FixtureRequest, tmp_path: Path, mosquitto: Mosquitto,
                line_simulator: LineSimulatorProcess, published: Path,
                receivers: tuple[WebhookReceiver, SmtpReceiver, Path],
                monkeypatch: pytest.MonkeyPatch) -> Iterator[Plant]:
    monkeypatch.setenv("ALERT_SMTP_PASSWORD", SMTP_PASSWORD)  # inherited by central
    yield from running_plant(request, Plant(tmp_path, mosquitto, line_simulator,
                                            published=published,
                                            central_extra=central_alerts_yaml(*receivers)))


def test_each_cause_is_told_once_on_every_route_and_resolves_by_itself(
        alert_plant: Plant, mosquitto: Mosquitto,
        receivers: tuple[WebhookReceiver, SmtpReceiver, Path]) -> None:
    plant, (webhook, mail, _) = alert_plant, receivers
    listener = ScadaListener(mosquitto.port)
    other = OtherGateway(mosquitto.port)
    got = Arrivals(webhook, mail, listener)
    causes: dict[tuple[str, str], float] = {}
    restarted: list[LineSimulatorProcess] = []  # the line started again: stopped at the end

    def told(rule: str, event: str, route: str = "webhook", timeout_s: float = 30) -> None:
        wait_until(lambda: got.of(route, rule, event), timeout_s,
                   what=f"{rule} {event} on the {route} route")

    try:
        # 1. The gateway is killed while the webhook receiver is down.
        causes[("gateway-offline", "fired")] = time.time()
        plant.kill(AGENT)
        told("gateway-offline", "fired", "scada")
        told("gateway-offline", "fired", "mail")
        webhook_up = time.time()
        webhook.start()
        told("gateway-offline", "fired")  # what it missed, once it is back
        missed_s = got.of("webhook", "gateway-offline", "fired")[0] - webhook_up
        causes[("gateway-offline", "resolved")] = time.time()
        plant.start_agent()
        told("gateway-offline", "resolved", timeout_s=40)

        # 2. The line's OPC-UA server stops: the agent's source reconnects; then it is back.
        plant.wait_connected(AGENT)
        causes[("source-down", "fired")] = time.time()
        port = plant.simulator.port
        plant.stop_simulator()
        told("source-down", "fired")
        wait_until(lambda: operator_page_alerts(listener, DEVICE) == ["source-down"], 10,
                   what="the source-down alert on the gateway's alerts topic")
        causes[("source-down", "resolved")] = time.time()
        plant.simulator = start_line_simulator(port)
        restarted.append(plant.simulator)
        told("source-down", "resolved", timeout_s=40)
        wait_until(lambda: operator_page_alerts(listener, DEVICE) == [], 10,
                   what="the gateway's alerts topic cleared")

        # 3. The other gateway's buffer fills to 85 % of its quota, then drains.
        causes[("buffer-filling", "fired")] = time.time()
        other.buffer = BufferHealth(depth=900, bytes_used=850, quota_bytes=1000)
        other.send_status()
        told("buffer-filling", "fired")
        causes[("buffer-filling", "resolved")] = time.time()
        other.buffer = BufferHealth(depth=10, bytes_used=100, quota_bytes=1000)
        other.send_status()
        told("buffer-filling", "resolved")

        # 4-6. A model rolled back in probation, drift on one line, a burst of scratches.
        deployed = plant.central_cli("deploy", f"{MODEL}@{VERSION}", "--device", OTHER)
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        wait_until(lambda: other.gateway.of_kind(DeployCommand), 30, what="deploy command")
        command = other.gateway.of_kind(DeployCommand)[0]
        causes[("model-rolled-back", "fired")] = time.time()
        other.gateway.send(DeploymentEvent(
            device_id=OTHER, command_id=command.command_id, model_name=MODEL,
            version=VERSION, step="rolled_back",
            detail="probation: 41 % of predictions out of range"), leaf="deployment")
        causes[("drift", "fired")] = time.time()
        other.records("model_stats", [drifted_stats()])
        causes[("defect-rate", "fired")] = time.time()
        other.records("defect", [scratch(i) for i in range(8)])
        windowed = ("model-rolled-back", "drift", "defect-rate")
        for rule in windowed:
            told(rule, "fired")
            causes[(rule, "resolved")] = causes[(rule, "fired")] + WINDOW_S
        for rule in windowed:
            told(rule, "resolved", timeout_s=40)
        # The mails and SCADA events of the last ones settle too.
        wait_until(lambda: all(got.of(route, rule, event) for rule, event in causes
                               for route in ("mail", "scada")), 30,
                   what="every mail and SCADA event")
    finally:
        got.close()
        other.close()
        listener.close()
        for simulator in restarted:
            simulator.kill()

    report = []
    for (rule, event), cause in causes.items():
        counts = {route: len(got.of(route, rule, event)) for route in got.seen}
        assert counts == {"webhook": 1, "mail": 1, "scada": 1}, (rule, event, counts)
        hook_s = (f"{missed_s:4.1f} s after it came back"
                  if (rule, event) == ("gateway-offline", "fired") else
                  f"{got.of('webhook', rule, event)[0] - cause:4.1f} s")
        report.append(f"{rule:18} {event:8} webhook {hook_s}, mail "
                      f"{got.of('mail', rule, event)[0] - cause:4.1f} s, SCADA "
                      f"{got.of('scada', rule, event)[0] - cause:4.1f} s")
    assert {item.json()["rule"] for item in webhook.received} == {rule for rule, _ in causes}
    # No alert is left open on the SCADA topic: each retained one was cleared.
    retained = {topic: payload for _, topic, payload, _ in listener.messages
                if "/alerts/open/" in topic}
    assert retained and all(payload == b"" for payload in retained.values())
    print("\ndelay from cause to notification (windowed rules: from the end of the window)")
    print("\n".join(report))

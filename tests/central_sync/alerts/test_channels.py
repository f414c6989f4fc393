"""Each channel against a real receiver: webhooks over HTTP, mail over SMTP with STARTTLS and
AUTH, MQTT and the SCADA topic on Mosquitto; and every template's body."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alert_receivers import (
    SMTP_PASSWORD,
    SMTP_USER,
    SmtpReceiver,
    WebhookReceiver,
    alert_message,
)
from central_helpers import Inbox, run

from central_sync.alert_rules import AlertMessage, RouteConfig
from central_sync.alerts import templates
from central_sync.alerts.channels import DeliveryError, publish_scada, send
from edge_agent.kernel.contract import Topics
from edge_agent.kernel.transport import BrokerConfig
from edge_agent.kernel.transport.mqtt import MqttTransport
from tests.conftest import Mosquitto, free_port
from tests.edge_agent.kernel.test_httpserver import self_signed_certificate
from tests.helpers import wait_until_async

TEMPLATES = ("json", "slack", "teams", "google_chat", "mattermost")


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    hook = WebhookReceiver().start()
    yield hook
    hook.stop()


def webhook(url: str, **options: Any) -> RouteConfig:
    return RouteConfig(name="ops", kind="webhook", url=url, **options)


# --- templates --------------------------------------------------------------------------


@pytest.mark.parametrize("template", TEMPLATES)
def test_every_template_is_json_with_summary_severity_devices_and_link(template: str) -> None:
    text = json.dumps(templates.webhook_body(template, alert_message()))
    assert json.loads(text)
    for part in ("cam-2 on gw-7 is down", "critical", "gw-7", "gw-8",
                 "https://central.plant.example/alerts/a18f0c2d3e4f5a6b7"):
        assert part in text or part.upper() in text, f"{template} body lacks {part!r}"


def test_template_shapes_are_what_each_chat_service_takes() -> None:
    message = alert_message()
    slack = templates.webhook_body("slack", message)
    assert slack["text"].startswith("[CRITICAL] ") and slack["blocks"]
    assert "&lt;since 14:02&gt; &amp;" in json.dumps(slack["blocks"])  # mrkdwn escaped
    teams = templates.webhook_body("teams", message)
    card = teams["attachments"][0]
    assert teams["type"] == "message"
    assert card["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert card["content"]["actions"][0]["url"] == message.url
    assert templates.webhook_body("mattermost", message)["username"] == "central-sync"
    assert set(templates.webhook_body("google_chat", message)) == {"text"}
    assert AlertMessage.model_validate(templates.webhook_body("json", message)) == message


def test_a_resolved_alert_says_so_first_and_a_message_without_link_has_none() -> None:
    resolved = alert_message("resolved", url="")
    assert templates.mail_subject(resolved).startswith("[RESOLVED] Camera cam-2")
    assert "Resolved: " in templates.mail_text(resolved)
    assert "Open in central" not in json.dumps(templates.webhook_body("slack", resolved))
    assert templates.mail_subject(alert_message(summary="two\nlines")) == "[CRITICAL] two lines"


# --- webhook ----------------------------------------------------------------------------


def test_a_webhook_posts_the_message_with_headers_from_the_environment(
        receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPS_TOKEN", "Bearer t0ken")
    route = webhook(receiver.url, headers_env={"Authorization": "OPS_TOKEN"})
    assert run(send(route, alert_message())) == "HTTP 200"
    [request] = receiver.received
    assert request.headers["Authorization"] == "Bearer t0ken"
    assert request.headers["Content-Type"] == "application/json"
    assert AlertMessage.model_validate(request.json()) == alert_message()


def test_a_missing_header_variable_is_named_and_nothing_is_sent(
        receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPS_TOKEN", raising=False)
    route = webhook(receiver.url, headers_env={"Authorization": "OPS_TOKEN"})
    with pytest.raises(DeliveryError, match="OPS_TOKEN"):
        run(send(route, alert_message()))
    assert receiver.received == []


def test_a_webhook_url_from_the_environment_stays_out_of_the_file_and_the_errors(
        receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch) -> None:
    route = RouteConfig(name="chat", kind="webhook", url_env="CHAT_HOOK")
    with pytest.raises(DeliveryError, match="CHAT_HOOK"):
        run(send(route, alert_message()))
    monkeypatch.setenv("CHAT_HOOK", f"{receiver.url}/T000/B000/s3cret")
    assert run(send(route, alert_message())) == "HTTP 200"
    assert receiver.received[0].path.endswith("/T000/B000/s3cret")
    receiver.stop()
    with pytest.raises(DeliveryError) as caught:
        run(send(route, alert_message()))
    assert "s3cret" not in str(caught.value)
    monkeypatch.setenv("CHAT_HOOK", "ftp://elsewhere")
    with pytest.raises(DeliveryError, match="no http"):
        run(send(route, alert_message()))


def test_a_refusing_webhook_reports_the_status_and_the_start_of_its_answer(
        receiver: WebhookReceiver) -> None:
    receiver.status, receiver.answer = 503, b"upstream busy, " + b"x" * 1000
    with pytest.raises(DeliveryError, match=r"^HTTP 503: upstream busy, x+$") as caught:
        run(send(webhook(receiver.url), alert_message()))
    assert len(str(caught.value)) <= len("HTTP 503: ") + 200


def test_a_redirect_is_reported_not_followed(receiver: WebhookReceiver) -> None:
    receiver.status = 302
    with pytest.raises(DeliveryError, match="HTTP 302"):
        run(send(webhook(receiver.url), alert_message()))
    assert [r.path for r in receiver.received] == ["/hook"]


def test_a_webhook_that_is_down_or_hangs_fails_within_its_timeout(
        receiver: WebhookReceiver) -> None:
    port = free_port()
    with pytest.raises(DeliveryError, match="cannot reach") as caught:
        run(send(webhook(f"http://127.0.0.1:{port}/services/T0/B0/s3cret"), alert_message()))
    # The path of a chat service's webhook is its secret: errors are shown and logged.
    assert f"http://127.0.0.1:{port}:" in str(caught.value)
    assert "s3cret" not in str(caught.value)
    receiver.hang = True
    started = time.monotonic()
    with pytest.raises(DeliveryError, match="timed out"):
        run(send(webhook(receiver.url, timeout_s=0.5), alert_message()))
    assert time.monotonic() - started < 5


# --- smtp -------------------------------------------------------------------------------


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    return self_signed_certificate(tmp_path / "tls")


@pytest.fixture
def smtp(certificate: tuple[Path, Path]) -> Iterator[SmtpReceiver]:
    server = SmtpReceiver(*certificate).start()
    yield server
    server.stop()


def mailer(port: int, ca_file: Path | None, **options: Any) -> RouteConfig:
    fields: dict[str, Any] = {
        "name": "mail", "kind": "smtp", "host": "127.0.0.1", "port": port,
        "ca_file": str(ca_file) if ca_file else None, "username": SMTP_USER,
        "password_env": "SMTP_PASSWORD", "from": "central@plant.example",
        "to": ["shift@plant.example", "maint@plant.example"], "timeout_s": 5}
    return RouteConfig.model_validate({**fields, **options})


def test_a_mail_goes_over_starttls_with_login(
        smtp: SmtpReceiver, certificate: tuple[Path, Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMTP_PASSWORD", SMTP_PASSWORD)
    detail = run(send(mailer(smtp.port, certificate[0]), alert_message()))
    assert detail == "accepted for shift@plant.example, maint@plant.example"
    [(sender, recipients, mail)] = smtp.mails
    assert (sender, recipients) == ("central@plant.example",
                                    ["shift@plant.example", "maint@plant.example"])
    assert mail["Subject"] == ("[CRITICAL] Camera cam-2 on gw-7 is down <since 14:02> & not "
                               "reconnecting")
    text = mail.get_content()  # type: ignore[attr-defined]
    assert "Devices: gw-7, gw-8" in text
    assert "https://central.plant.example/alerts/a18f0c2d3e4f5a6b7" in text


def test_a_wrong_password_is_refused_with_the_servers_answer(
        smtp: SmtpReceiver, certificate: tuple[Path, Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMTP_PASSWORD", "wrong")
    with pytest.raises(DeliveryError, match=f"refused the login of {SMTP_USER}: 535"):
        run(send(mailer(smtp.port, certificate[0]), alert_message()))
    assert smtp.mails == []


def test_a_server_not_signed_by_the_ca_file_is_refused(
        smtp: SmtpReceiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMTP_PASSWORD", SMTP_PASSWORD)
    other_ca, _ = self_signed_certificate(tmp_path / "other", "other")
    with pytest.raises(DeliveryError, match=r"TLS failed .*ca_file"):
        run(send(mailer(smtp.port, other_ca), alert_message()))
    assert smtp.mails == []


def test_a_server_without_starttls_is_refused_before_the_password_is_sent(
        certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMTP_PASSWORD", SMTP_PASSWORD)
    plain = SmtpReceiver(*certificate, tls=False).start()
    try:
        with pytest.raises(DeliveryError, match="server offers no STARTTLS; set starttls: "
                                                "false only on a trusted network"):
            run(send(mailer(plain.port, None), alert_message()))
        assert plain.mails == []
        # Where the operator decided so, plain SMTP (without login) works.
        route = mailer(plain.port, None, starttls=False, username=None, password_env=None)
        assert run(send(route, alert_message())).startswith("accepted for ")
        assert len(plain.mails) == 1
    finally:
        plain.stop()


# --- mqtt -------------------------------------------------------------------------------


async def _with_broker(mosquitto: Mosquitto, scenario: Any) -> Any:
    central = MqttTransport(BrokerConfig(port=mosquitto.port), "central-test")
    await central.start()
    assert await central.wait_connected(10)
    try:
        return await scenario(central)
    finally:
        await central.stop()


async def _listen(mosquitto: Mosquitto, topic_filter: str) -> tuple[MqttTransport, Inbox]:
    """A client subscribed to `topic_filter`, once the broker has the subscription (its own
    probe came back), so nothing published afterwards is missed; probes are not kept."""
    listener = MqttTransport(BrokerConfig(port=mosquitto.port), f"scada-{time.monotonic_ns()}",
                             persistent_session=False)
    inbox, subscribed = Inbox(), asyncio.Event()
    probe = f"{topic_filter.rstrip('#+/') or 'listener'}/subscribed"

    async def keep(topic: str, payload: bytes) -> None:
        if topic == probe:
            subscribed.set()
        else:
            await inbox(topic, payload)

    await listener.subscribe(topic_filter, keep)
    await listener.start()
    assert await listener.wait_connected(10)
    while not subscribed.is_set():
        await listener.publish(probe, b"", qos=1)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(subscribed.wait(), 1.0)
    return listener, inbox


def test_an_mqtt_route_publishes_the_message_on_its_events_topic(
        mosquitto: Mosquitto) -> None:
    topics = Topics("plant")

    async def scenario(central: MqttTransport) -> None:
        listener, inbox = await _listen(mosquitto, "#")
        try:
            route = RouteConfig(name="bus", kind="mqtt")
            detail = await send(route, alert_message(), publish=central.publish, topics=topics)
            assert detail == "published on plant/alerts/events"
            own = RouteConfig(name="own", kind="mqtt", topic="site/scada/")
            await send(own, alert_message(), publish=central.publish, topics=topics)
            await wait_until_async(lambda: len(inbox.messages) == 2, 10)
            assert [t for t, _ in inbox.messages] == ["plant/alerts/events",
                                                      "site/scada/events"]
            assert AlertMessage.model_validate_json(inbox.messages[0][1]) == alert_message()
        finally:
            await listener.stop()

    run(_with_broker(mosquitto, scenario))


def test_the_scada_topic_keeps_an_open_alert_retained_until_it_resolves(
        mosquitto: Mosquitto) -> None:
    topics = Topics("plant")
    open_topic = "plant/alerts/open/a18f0c2d3e4f5a6b7"

    async def scenario(central: MqttTransport) -> None:
        await publish_scada(alert_message(), central.publish, topics)
        # A SCADA client connecting later still finds the open alert.
        late, inbox = await _listen(mosquitto, "plant/alerts/open/+")
        try:
            await wait_until_async(lambda: inbox.messages, 10)
            [(topic, payload)] = inbox.messages
            assert topic == open_topic
            assert AlertMessage.model_validate_json(payload).state == "firing"
        finally:
            await late.stop()
        await publish_scada(alert_message("resolved"), central.publish, topics)
        after, inbox = await _listen(mosquitto, "plant/alerts/#")
        try:
            # Nothing retained any more: a probe published after arrives alone.
            await central.publish("plant/alerts/probe", b"probe")
            await wait_until_async(lambda: inbox.messages, 10)
            assert [t for t, _ in inbox.messages] == ["plant/alerts/probe"]
        finally:
            await after.stop()

    run(_with_broker(mosquitto, scenario))


def test_mqtt_without_a_broker_connection_says_so() -> None:
    route = RouteConfig(name="bus", kind="mqtt")
    with pytest.raises(DeliveryError, match="broker connection"):
        asyncio.run(send(route, alert_message()))

"""The device page in real Chromium, on a running central over Mosquitto with a gateway that
speaks the contract: the log tail follows new lines, Diagnose sends a signed request and the
gateway's reply shows, a viewer gets no buttons, and another site's form is refused."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser_helpers import logged_in_page
from central_helpers import free_port
from fake_gateway import FakeGateway, log_lines
from model_page_helpers import PASSWORD, add_users

from central_sync.config import CentralConfig
from central_sync.db import CentralDB
from central_sync.service import CentralService
from edge_agent.kernel.contract import DiagnoseRequest, LogBatch, LogRequest, RestartCommand
from edge_agent.kernel.transport.mqtt import MqttTransport
from tests.helpers import wait_until, write_test_keys

ATTACKER = "http://attacker.test/"


@pytest.fixture
def central(tmp_path: Path, mosquitto) -> Iterator[tuple[CentralService, CentralDB]]:
    """central-sync serving its pages on a free port, on its own thread; and a second
    connection to its database for the test."""
    config = CentralConfig(
        database_url=f"sqlite:///{tmp_path / 'central.db'}", artifact_dir=tmp_path / "art",
        broker={"port": mosquitto.port}, web={"port": free_port()},
        signing_key_path=write_test_keys(tmp_path / "keys")[0])
    db = CentralDB(config.database_url)
    add_users(db, erin="engineer", vera="viewer")
    service = CentralService(config, MqttTransport(config.broker, config.central_id))
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    asyncio.run_coroutine_threadsafe(service.start(), loop).result(20)
    yield service, db
    asyncio.run_coroutine_threadsafe(service.stop(), loop).result(20)
    loop.call_soon_threadsafe(loop.stop)
    db.close()


@pytest.fixture
def gateway(mosquitto, central) -> Iterator[FakeGateway]:
    fake = FakeGateway(mosquitto.port, "gw-1", tail=3)
    fake.status()
    wait_until(lambda: central[1].device_presence("gw-1"), what="the gateway's status stored")
    yield fake
    fake.stop()


def test_device_page_in_chromium(central, gateway: FakeGateway) -> None:
    service, db = central
    assert service.web_url is not None
    base = service.web_url.rstrip("/")
    with logged_in_page(db, "erin", PASSWORD, "/devices/gw-1", server_url=base) as (page, api):
        expect = api.expect
        # Diagnose: a signed request on the broker, and the gateway's reply on the page.
        page.click("#diagnose")
        page.wait_for_url("**/devices/gw-1?done=diagnose")
        wait_until(lambda: gateway.of_kind(DiagnoseRequest), what="the request on the broker")
        assert gateway.forged == []
        expect(page.locator("#effective-config")).to_contain_text("rtsp://***@cam1/",
                                                                  timeout=15_000)
        expect(page.locator("#agent-version")).to_have_text("1.4.2")
        expect(page.locator(".restart-pipeline")).to_have_text(["Restart pipeline surface"])

        # Fetch logs: the gateway's tail arrives in the table without reloading.
        page.select_option("form[action$='/logs'] select", "DEBUG")
        page.click("#fetch-logs")
        wait_until(lambda: gateway.of_kind(LogRequest), what="the log request")
        expect(page.locator("#log-tail")).to_contain_text("line 2", timeout=10_000)
        gateway.follow_lines(log_lines(1, "followed"))  # the follow goes on, over MQTT
        expect(page.locator("#log-tail")).to_contain_text("followed 0", timeout=10_000)

        # New lines stored while the page is open show by themselves, at the chosen level.
        request = gateway.of_kind(LogRequest)[0]
        db.store_log_batch(LogBatch(device_id="gw-1", request_id=request.command_id,
                                    lines=[*log_lines(1, "fresh warning", "WARNING"),
                                           *log_lines(1, "quiet detail", "DEBUG")]))
        expect(page.locator("#log-tail")).to_contain_text("fresh warning 0", timeout=10_000)
        page.select_option("#log-level", "WARNING")
        expect(page.locator("#log-tail")).not_to_contain_text("quiet detail", timeout=10_000)
        expect(page.locator("#log-tail tr.log-line")).to_have_count(1)

        # Another site's form makes the browser post without the session (SameSite=Strict)
        # and without the page's token: refused, nothing sent.
        page.route(ATTACKER, lambda route: route.fulfill(content_type="text/html", body=(
            f'<form id="f" method="post" action="{base}/devices/gw-1/restart">'
            '<input name="csrf" value="guessed"></form>'
            '<script>document.getElementById("f").submit()</script>')))
        with page.expect_navigation(url=f"{base}/devices/gw-1/restart") as sent:
            page.goto(ATTACKER)
        assert sent.value is not None and sent.value.status in (401, 403)
        assert gateway.of_kind(RestartCommand) == []

        # A viewer sees the page without any button.
        page.context.clear_cookies()
        page.goto(f"{base}/devices/gw-1")
        page.fill("input[name=username]", "vera")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(f"{base}/devices/gw-1")
        expect(page.locator("#agent-version")).to_have_text("1.4.2")
        assert page.locator("#diagnose, #fetch-logs, #restart-agent").count() == 0
    assert len(gateway.of_kind(DiagnoseRequest)) == 1

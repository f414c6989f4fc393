"""The line's open alerts on the gateway: central's retained message is kept (newest only, its
own device's only), shown in a band atop the operator page, and gone when central clears it."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge_agent.app import Agent
from edge_agent.fleet.alerts import LineAlerts
from edge_agent.kernel.contract import DeviceAlerts, OperatorAlert, Topics, encode
from edge_agent.kernel.transport.memory import MemoryBroker, MemoryTransport
from tests.conftest import Mosquitto, free_port
from tests.edge_agent.test_operator_page import CHROMIUM, agent_config, running
from tests.helpers import playwright_or_skip, wait_until

TOPICS = Topics()


def operator_alert(number: int, severity: str = "critical", acked: bool = False,
                   summary: str = "") -> OperatorAlert:
    return OperatorAlert(alert_id=f"a{number}", rule="source-down", severity=severity,  # type: ignore[arg-type]
                         summary=summary or f"camera cam-{number} down on gw-7",
                         fired_at=time.time() - 300 * number, acked=acked,
                         devices=["gw-7"])


def line_alerts() -> LineAlerts:
    return LineAlerts("gw-7", TOPICS, MemoryTransport(MemoryBroker()))


def receive(alerts: LineAlerts, message: DeviceAlerts | bytes) -> None:
    payload = message if isinstance(message, bytes) else encode(message)
    asyncio.run(alerts.on_message(TOPICS.alerts("gw-7"), payload))


def test_the_newest_alerts_are_kept_and_an_older_copy_is_ignored() -> None:
    alerts = line_alerts()
    newer = DeviceAlerts(device_id="gw-7", sent_at=2000.0, alerts=[operator_alert(1)])
    receive(alerts, newer)
    receive(alerts, DeviceAlerts(device_id="gw-7", sent_at=1000.0,
                                 alerts=[operator_alert(2, "warning")]))
    assert alerts.latest == newer and alerts.rejected_messages == 1
    assert [a["alert_id"] for a in alerts.document()] == ["a1"]
    receive(alerts, newer)  # the retained copy again after a reconnect: still shown
    assert alerts.latest == newer and alerts.rejected_messages == 1


def test_alerts_held_from_a_clock_far_ahead_do_not_block_the_next() -> None:
    alerts = line_alerts()
    receive(alerts, DeviceAlerts(device_id="gw-7", sent_at=time.time() + 86400,
                                 alerts=[operator_alert(1)]))
    receive(alerts, DeviceAlerts(device_id="gw-7"))  # central's clock was set right since
    assert alerts.document() == [] and alerts.rejected_messages == 0


def test_another_devices_alerts_and_garbage_are_refused() -> None:
    alerts = line_alerts()
    receive(alerts, DeviceAlerts(device_id="gw-8", alerts=[operator_alert(1)]))
    receive(alerts, b'{"kind": "device_alerts"}')
    assert alerts.latest is None and alerts.document() == []
    assert alerts.rejected_messages == 2


def test_an_empty_list_or_a_cleared_topic_removes_the_band() -> None:
    alerts = line_alerts()
    receive(alerts, DeviceAlerts(device_id="gw-7", sent_at=1.0, alerts=[operator_alert(1)]))
    receive(alerts, DeviceAlerts(device_id="gw-7", sent_at=2.0))
    assert alerts.document() == []
    receive(alerts, DeviceAlerts(device_id="gw-7", sent_at=3.0, alerts=[operator_alert(1)]))
    receive(alerts, b"")
    assert alerts.latest is None


def test_mangled_payloads_are_refused_without_an_exception() -> None:
    alerts = line_alerts()
    valid = encode(DeviceAlerts(device_id="gw-7", sent_at=5.0, alerts=[operator_alert(1)]))
    rng = random.Random(7)
    for _ in range(500):
        mangled = bytearray(valid)
        for _ in range(rng.randint(1, 4)):
            mangled[rng.randrange(len(mangled))] = rng.randrange(256)
        receive(alerts, bytes(mangled))  # raises nothing into the transport
        assert alerts.latest is None or alerts.latest.device_id == "gw-7"
    assert alerts.rejected_messages > 400


def test_page_without_alerts_has_no_band(tmp_path: Path) -> None:
    from edge_agent import web

    agent = Agent(agent_config(tmp_path), transport=MemoryTransport(MemoryBroker()))

    async def scenario() -> tuple[str, str, dict[str, Any]]:
        app = web.create_app(agent.status_document, agent=agent)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://localhost") as http:
            before = (await http.get("/")).text
            await agent.line_alerts.on_message("", encode(DeviceAlerts(
                device_id="gw-7", alerts=[operator_alert(1, acked=True),
                                          operator_alert(2, "warning")])))
            after = (await http.get("/live")).text
            api = (await http.get("/api/status")).json()
        await agent.buffer.close()
        return before, after, api

    before, after, api = asyncio.run(scenario())
    assert 'class="alerts"' not in before
    assert after.index("camera cam-1 down") < after.index("camera cam-2 down")  # critical first
    assert "Acknowledged" in after
    assert [(a["alert_id"], a["acked"]) for a in api["alerts"]] == [("a1", True), ("a2", False)]


def test_band_lists_four_and_counts_the_rest(tmp_path: Path) -> None:
    from edge_agent.web.view import operator_view

    agent = Agent(agent_config(tmp_path), transport=MemoryTransport(MemoryBroker()))
    receive(agent.line_alerts, DeviceAlerts(device_id="gw-7", alerts=[
        operator_alert(n, "warning" if n % 2 else "critical") for n in range(1, 7)]))
    document = asyncio.run(agent.status_document())
    asyncio.run(agent.buffer.close())
    view = operator_view(document, [], agent.config.ui, time.time())
    assert [a["severity"] for a in view["alerts"]] == ["critical"] * 3 + ["warning"] * 3
    assert view["alerts"][0]["id"] == "a2"  # the newest of the most severe
    assert view["alerts_shown"] == 4


# --- a real broker and a real browser ----------------------------------------------------------


@pytest.fixture
def publisher(mosquitto: Mosquitto) -> Iterator[Any]:
    """Central's side, played by a plain MQTT client: publishes retained on the alerts topic."""
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="central-stand-in")
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()

    def publish(payload: bytes, device_id: str = "gw-7") -> None:
        client.publish(TOPICS.alerts(device_id), payload, qos=1, retain=True).wait_for_publish(10)

    yield publish
    client.loop_stop()
    client.disconnect()


@pytest.mark.slow
def test_operator_sees_the_lines_alerts_in_chromium_then_they_clear(
        tmp_path: Path, mosquitto: Mosquitto, publisher: Any) -> None:
    sync_api = playwright_or_skip()
    # Published before the agent starts: the broker keeps it for the agent (retained).
    publisher(encode(DeviceAlerts(device_id="gw-7", alerts=[
        operator_alert(1, summary="Camera cam-1 down on gw-7 since 10:02"),
        operator_alert(2, "warning", acked=True, summary="Buffer of gw-8 84 % full")])))
    agent = Agent(agent_config(tmp_path, mosquitto.port, free_port(), refresh_s=1))
    url = f"http://127.0.0.1:{agent.config.ui.port}/"

    with running(agent), sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        page = browser.new_page(viewport={"width": 1366, "height": 768})
        page.goto(url)
        band = page.locator("section.alerts")
        sync_api.expect(band).to_be_visible(timeout=20_000)  # the live part polls every 1 s
        sync_api.expect(band.locator("li.critical")).to_contain_text("Camera cam-1 down")
        sync_api.expect(band.locator("li.warning.acked")).to_contain_text("Acknowledged")
        status = httpx.get(url + "api/status", timeout=10).json()
        assert [a["alert_id"] for a in status["alerts"]] == ["a1", "a2"]
        page.screenshot(path=str(tmp_path / "alerts.png"))

        # Another device's alerts on this topic (only central may publish there, but a
        # broker without an ACL lets anyone): refused, the band stays as it was.
        publisher(encode(DeviceAlerts(device_id="gw-8", alerts=[])))
        wait_until(lambda: agent.line_alerts.rejected_messages == 1, 10,
                   what="the forged message refused")
        assert page.locator("section.alerts li").count() == 2

        publisher(encode(DeviceAlerts(device_id="gw-7", alerts=[])))
        sync_api.expect(band).to_have_count(0, timeout=20_000)
        assert json.loads(httpx.get(url + "api/status", timeout=10).text)["alerts"] == []
        browser.close()

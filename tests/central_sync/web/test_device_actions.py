"""The device page's buttons and what it shows: only engineers and admins act, with the
session's CSRF token and within a rate; every request is signed, recorded and audited; the
clock, the configuration, the newest diagnosis, the log tail and suspect records are shown."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from model_page_helpers import PASSWORD, add_users, csrf_of
from review_helpers import defect_batch

from central_sync.db import CentralDB
from central_sync.web import create_app
from central_sync.web.devices import ACTIONS_PER_MINUTE, DeviceActions
from edge_agent.kernel.contract import (
    COMMAND_TYPES,
    ConfigRef,
    DeviceStatus,
    DiagnoseRequest,
    DiagnosticReply,
    LogBatch,
    LogLine,
    LogRequest,
    RestartCommand,
    Topics,
    decode,
)
from edge_agent.kernel.transport.memory import MemoryBroker, MemoryTransport
from tests.helpers import TEST_SIGNER

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
TOPICS = Topics()


class Commands:
    """What reaches gw-1's commands topic."""

    def __init__(self, broker: MemoryBroker) -> None:
        self.received: list = []
        device = MemoryTransport(broker)
        asyncio.run(device.start())
        asyncio.run(device.subscribe(TOPICS.commands("gw-1"), self._collect))

    async def _collect(self, _topic: str, payload: bytes) -> None:
        self.received.append(decode(payload, expect=COMMAND_TYPES, topic_device_id="gw-1"))


@pytest.fixture
def broker() -> MemoryBroker:
    return MemoryBroker()


@pytest.fixture
def commands(broker: MemoryBroker) -> Commands:
    return Commands(broker)


@pytest.fixture
def site(db: CentralDB, broker: MemoryBroker) -> Iterator[TestClient]:
    add_users(db, erin="engineer", ada="admin", vera="viewer")
    db.update_status(DeviceStatus(device_id="gw-1", state="online", config=ConfigRef(
        name="line-3-vision", version=4, sha256="c" * 64)))
    central = MemoryTransport(broker)
    asyncio.run(central.start())
    actions = DeviceActions(central, TOPICS, TEST_SIGNER, clock_warn_offset_s=2.0)
    with TestClient(create_app(db, 120, device_actions=actions),
                    follow_redirects=False) as client:
        yield client


def log_in(site: TestClient, user: str) -> str:
    site.cookies.clear()
    assert site.post("/login", data={"username": user, "password": PASSWORD}).status_code == 303
    return csrf_of(site.get("/devices/gw-1").text)


def test_an_engineer_diagnoses_fetches_logs_and_restarts_with_signed_requests(
        site: TestClient, db: CentralDB, commands: Commands) -> None:
    csrf = log_in(site, "erin")
    reply = site.post("/devices/gw-1/diagnose", data={"csrf": csrf})
    assert reply.status_code == 303, reply.text
    assert reply.headers["location"] == "/devices/gw-1?done=diagnose"
    assert site.post("/devices/gw-1/logs", data={"csrf": csrf, "level": "warning"}
                     ).status_code == 303
    assert site.post("/devices/gw-1/restart", data={"csrf": csrf, "pipeline": "surface"}
                     ).status_code == 303
    diagnose, logs, restart = commands.received
    assert isinstance(diagnose, DiagnoseRequest) and isinstance(restart, RestartCommand)
    assert isinstance(logs, LogRequest) and logs.level == "WARNING"
    assert (logs.lines, logs.follow_s) == (200, 120.0)  # the page's tail goes on live
    assert restart.pipeline == "surface"
    for command in commands.received:
        TEST_SIGNER.own_keys().verify(command, "command")
        assert command.issued_by == "erin"
    assert [r.action for r in db.diagnostic_requests("gw-1")] == ["restart", "logs", "diagnose"]
    assert "device.restart" in {e["action"] for e in db.list_audit(5)}
    page = site.get("/devices/gw-1?done=diagnose").text
    assert "Diagnosis requested" in page and "waiting" in page


def test_a_viewer_sees_no_buttons_and_may_not_post(site: TestClient,
                                                   commands: Commands) -> None:
    csrf = log_in(site, "vera")
    page = site.get("/devices/gw-1").text
    assert 'id="diagnose"' not in page and "Restart agent" not in page
    for action in ("diagnose", "logs", "restart"):
        reply = site.post(f"/devices/gw-1/{action}", data={"csrf": csrf})
        assert reply.status_code == 403 and "engineer or admin" in reply.text
    site.cookies.clear()
    assert site.post("/devices/gw-1/diagnose", data={"csrf": csrf}).status_code == 401
    assert commands.received == []


def test_a_post_without_the_pages_token_or_too_large_is_refused(
        site: TestClient, commands: Commands) -> None:
    csrf = log_in(site, "ada")
    assert site.post("/devices/gw-1/diagnose").status_code == 403
    assert site.post("/devices/gw-1/diagnose", data={"csrf": "forged"}).status_code == 403
    assert site.post("/devices/gw-1/restart", data={"csrf": csrf, "pad": "x" * 5000}
                     ).status_code == 413
    assert site.post("/devices/gw-1/restart", data={"csrf": csrf, "pipeline": "a b"}
                     ).status_code == 422
    assert site.post("/devices/gw-1/logs", data={"csrf": csrf, "level": "LOUD"}
                     ).status_code == 422
    assert commands.received == []


def test_unknown_offline_and_too_frequent_requests_say_why(
        site: TestClient, db: CentralDB, commands: Commands) -> None:
    csrf = log_in(site, "erin")
    assert site.post("/devices/gw-9/diagnose", data={"csrf": csrf}).status_code == 404
    db.update_status(DeviceStatus(device_id="gw-old", state="online"),
                     received_at=time.time() - 3 * 3600)
    refused = site.post("/devices/gw-old/diagnose", data={"csrf": csrf})
    assert refused.status_code == 409 and "offline (last seen 3 h ago)" in refused.text
    for _ in range(ACTIONS_PER_MINUTE):
        assert site.post("/devices/gw-1/diagnose", data={"csrf": csrf}).status_code == 303
    limited = site.post("/devices/gw-1/diagnose", data={"csrf": csrf})
    assert limited.status_code == 429 and "at most 10 requests a minute" in limited.text
    assert len(commands.received) == ACTIONS_PER_MINUTE
    log_in(site, "ada")  # another engineer has a rate of their own
    assert site.post("/devices/gw-1/diagnose",
                     data={"csrf": csrf_of(site.get("/devices/gw-1").text)}).status_code == 303


def test_the_page_shows_clock_configuration_diagnosis_and_the_log_tail(
        site: TestClient, db: CentralDB) -> None:
    db.record_clock("gw-1", 30.0, 4.0, time.time())
    db.record_diagnostic_request("diag-1", "gw-1", "diagnose", time.time(), "erin")
    db.store_diagnostic_reply(DiagnosticReply(
        device_id="gw-1", request_id="diag-1", action="diagnose", ok=True, report={
            "agent_version": "1.4.2", "pipelines": {"surface": {}, "oven": {}}, "uptime_s": 61.5,
            "effective_config": {"broker": {"password": "***"}}, "buffer": {"depth": 3}}))
    db.record_diagnostic_request("logs-1", "gw-1", "logs", time.time(), "erin")
    db.store_log_batch(LogBatch(device_id="gw-1", request_id="logs-1", lines=[
        LogLine(at=time.time(), level=level, logger="edge_agent.app", message=f"a {level}")
        for level in ("DEBUG", "INFO", "ERROR")]))
    log_in(site, "erin")
    page = site.get("/devices/gw-1").text
    assert 'id="clock" class="bad"' in page and "+30.000 s against central's" in page
    assert "line-3-vision@4" in page
    assert 'id="agent-version">1.4.2' in page and "password: &#39;***&#39;" in page
    assert "Restart pipeline surface" in page and "Restart pipeline oven" in page
    assert "<th>uptime s</th><td>61.5</td>" in page and "<h3>Buffer</h3>" in page
    live = site.get("/api/devices/gw-1/diagnostics?level=INFO").json()
    assert [line["message"] for line in live["logs"]] == ["a INFO", "a ERROR"]
    assert live["diagnosis"]["request_id"] == "diag-1"
    assert site.get("/api/devices/gw-1/diagnostics?level=LOUD").status_code == 422
    assert site.get("/api/devices").json()[0]["clock_offset_s"] == 30.0
    fleet = site.get("/fleet").text
    assert 'class="clock bad"' in fleet and "+30.0 s" in fleet


def test_the_live_view_needs_a_login(site: TestClient) -> None:
    site.cookies.clear()
    assert site.get("/api/devices/gw-1/diagnostics").status_code in (303, 401)


def test_a_record_with_a_suspect_time_carries_a_badge(site: TestClient, db: CentralDB) -> None:
    db.store_batch(defect_batch("gw-1", range(1, 2)))  # made in 2027 by its own clock
    log_in(site, "vera")
    page = site.get("/review/records/gw-1/1").text
    assert 'id="suspect-time"' in page and "in central&#39;s future" in page

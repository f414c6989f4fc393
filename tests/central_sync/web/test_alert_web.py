"""The alerts pages and API over HTTP: what they list and filter, who may acknowledge,
silence and retry (with the page's CSRF token and a reason), what each refusal says, and
that every action is audited."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from model_page_helpers import PASSWORD, add_users, csrf_of

from central_sync.accounts import token_digest
from central_sync.db import CentralDB
from central_sync.db.alerts import Alert
from central_sync.web import create_app

# The pages over SQLite (what they show is not the database's); the API's filters over both.
SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def fire(db: CentralDB, rule: str = "source-down", device: str = "gw-1",
         severity: str = "critical", summary: str = "camera cam1 down on gw-1",
         notify_routes: tuple[str, ...] = ()) -> Alert:
    alert = db.fire_alert(
        rule, f"device={device}/source=cam1", kind=rule.replace("-", "_"), severity=severity,
        summary=summary, devices=[device], labels={"source": "cam1"}, value=1.0,
        threshold=1.0, notify=lambda a: [(route, json.dumps({"alert_id": a.alert_id}), 0.0)
                                         for route in notify_routes])
    assert alert is not None
    return alert


def give_up(db: CentralDB, alert_id: str) -> str:
    """Its one notification tried twice and given up; its id."""
    (notification,) = db.notifications_for(alert_id)
    db.record_attempt(notification.notification_id, time.time(), False, 12.0,
                      "HTTP 503: receiver down", next_attempt_at=time.time())
    db.record_attempt(notification.notification_id, time.time(), False, 8.0,
                      "connection refused", dead=True)
    return notification.notification_id


POKES: list[float] = []  # when the app told the alert engine that an alert changed


@pytest.fixture
def site(db: CentralDB) -> Iterator[TestClient]:
    add_users(db, vera="viewer", quinn="quality", erin="engineer")
    POKES.clear()
    app = create_app(db, 120, alerts_changed=lambda: POKES.append(time.time()))
    with TestClient(app, follow_redirects=False) as client:
        yield client


def log_in(site: TestClient, user: str) -> str:
    site.cookies.clear()
    assert site.post("/login", data={"username": user, "password": PASSWORD}).status_code == 303
    return csrf_of(site.get("/alerts").text)


@SQLITE
def test_open_alerts_are_listed_and_resolved_ones_are_the_history(
        site: TestClient, db: CentralDB) -> None:
    down = fire(db)
    gone = fire(db, rule="gateway-offline", device="gw-2", summary="gw-2 offline")
    db.resolve_alert(gone.alert_id)
    log_in(site, "vera")
    page = site.get("/alerts").text
    assert "camera cam1 down on gw-1" in page and "gw-2 offline" not in page
    assert 'href="/devices/gw-1"' in page and f'href="/alerts/{down.alert_id}"' in page
    history = site.get("/alerts?state=resolved").text
    assert "gw-2 offline" in history and "camera cam1 down" not in history
    both = site.get("/alerts?state=all&since=1").text
    assert "gw-2 offline" in both and "camera cam1 down" in both
    assert "gw-2 offline" in site.get("/alerts?state=all&device=gw-2").text
    assert "camera cam1" not in site.get("/alerts?state=all&rule=gateway-offline").text
    assert "camera cam1" not in site.get("/alerts?severity=warning").text
    assert site.get("/alerts?state=closed").status_code == 422
    assert site.get("/alerts?since=-1").status_code == 422


@SQLITE
def test_an_alert_page_shows_its_timeline_and_every_delivery_attempt(
        site: TestClient, db: CentralDB) -> None:
    alert = fire(db, notify_routes=("plant-webhook",))
    give_up(db, alert.alert_id)
    log_in(site, "vera")
    page = site.get(f"/alerts/{alert.alert_id}").text
    assert "fired" in page and "plant-webhook" in page and "dead" in page
    assert "HTTP 503: receiver down" in page and "connection refused" in page
    assert "12 ms" in page
    assert 'class="retry"' not in page and 'class="ack"' not in page  # a viewer only reads
    missing = site.get("/alerts/a-none")
    assert missing.status_code == 404 and "state=all" in missing.json()["detail"]


@SQLITE
def test_a_quality_user_acknowledges_with_a_reason_and_it_is_audited(
        site: TestClient, db: CentralDB) -> None:
    alert = fire(db)
    csrf = log_in(site, "quinn")
    page = site.get("/alerts").text
    assert 'class="ack"' in page and 'class="silence"' not in page  # silencing: engineers
    no_reason = site.post(f"/alerts/{alert.alert_id}/ack", data={"csrf": csrf, "reason": " "})
    assert no_reason.status_code == 400 and "needs a reason" in no_reason.json()["detail"]
    reply = site.post(f"/alerts/{alert.alert_id}/ack",
                      data={"csrf": csrf, "reason": "maintenance called", "back": "/alerts"})
    assert reply.status_code == 303 and reply.headers["location"] == "/alerts?done=acked"
    assert len(POKES) == 1  # the engine publishes the acknowledgement to the gateways now
    acked = db.get_alert(alert.alert_id)
    assert acked is not None and (acked.acked_by, acked.ack_reason) == ("quinn",
                                                                        "maintenance called")
    assert ("alert.ack", alert.alert_id) in [(e["action"], e["subject"])
                                             for e in db.list_audit(5)]
    assert "quinn: maintenance called" in site.get("/alerts?done=acked").text
    db.resolve_alert(alert.alert_id)
    late = site.post(f"/alerts/{alert.alert_id}/ack", data={"csrf": csrf, "reason": "x"})
    assert late.status_code == 400 and "resolved already" in late.json()["detail"]


@SQLITE
def test_wrong_role_missing_token_or_session_is_refused(site: TestClient,
                                                        db: CentralDB) -> None:
    alert = fire(db)
    csrf = log_in(site, "vera")
    assert 'class="ack"' not in site.get("/alerts").text
    refused = site.post(f"/alerts/{alert.alert_id}/ack", data={"csrf": csrf, "reason": "x"})
    assert refused.status_code == 403 and "quality role" in refused.json()["detail"]
    csrf = log_in(site, "quinn")
    refused = site.post(f"/alerts/{alert.alert_id}/silence",
                        data={"csrf": csrf, "hours": "1", "reason": "x"})
    assert refused.status_code == 403 and "engineer or admin" in refused.json()["detail"]
    forged = site.post(f"/alerts/{alert.alert_id}/ack", data={"csrf": "guessed", "reason": "x"})
    assert forged.status_code == 403 and "CSRF" in forged.json()["detail"]
    assert site.post(f"/alerts/{alert.alert_id}/ack", data={"reason": "x"}).status_code == 403
    site.cookies.clear()
    assert site.post(f"/alerts/{alert.alert_id}/ack",
                     data={"csrf": csrf, "reason": "x"}).status_code == 401
    assert db.get_alert(alert.alert_id).acked_by is None  # type: ignore[union-attr]


@SQLITE
def test_an_engineer_silences_an_alert_and_lifts_the_silence(site: TestClient,
                                                             db: CentralDB) -> None:
    alert = fire(db)
    csrf = log_in(site, "erin")
    for hours in ("0.1", "200", "soon"):
        wrong = site.post(f"/alerts/{alert.alert_id}/silence",
                          data={"csrf": csrf, "hours": hours, "reason": "x"})
        assert wrong.status_code == 400 and "0.25 to 168 hours" in wrong.json()["detail"]
    reply = site.post(f"/alerts/{alert.alert_id}/silence",
                      data={"csrf": csrf, "hours": "4", "reason": "camera swapped",
                            "back": "https://attacker.test/"})
    assert reply.status_code == 303
    assert reply.headers["location"] == f"/alerts/{alert.alert_id}?done=silenced"
    silenced = db.get_alert(alert.alert_id)
    assert silenced is not None and silenced.silence_reason == "camera swapped"
    assert silenced.silenced_until == pytest.approx(time.time() + 4 * 3600, abs=60)
    page = site.get("/alerts").text
    assert "camera swapped" in page and 'class="lift"' in page
    lift = {"csrf": csrf, "rule": alert.rule, "group_key": alert.group_key}
    assert site.post("/alerts/silences/lift", data=lift).status_code == 303
    assert db.get_alert(alert.alert_id).silenced_until is None  # type: ignore[union-attr]
    again = site.post("/alerts/silences/lift", data=lift)
    assert again.status_code == 404 and "no silence in force" in again.json()["detail"]
    actions = [e["action"] for e in db.list_audit(10)]
    assert "alert.silence" in actions and "alert.unsilence" in actions


@SQLITE
def test_dead_letters_are_listed_and_an_engineer_retries_them(site: TestClient,
                                                               db: CentralDB) -> None:
    alert = fire(db, notify_routes=("plant-webhook",))
    notification_id = give_up(db, alert.alert_id)
    csrf = log_in(site, "quinn")
    page = site.get("/alerts").text
    assert f'id="notification-{notification_id}"' in page and "connection refused" in page
    assert 'class="retry"' not in page and "1 given up" in page
    assert site.post(f"/alerts/notifications/{notification_id}/retry",
                     data={"csrf": csrf}).status_code == 403
    csrf = log_in(site, "erin")
    assert 'class="retry"' in site.get("/alerts").text
    reply = site.post(f"/alerts/notifications/{notification_id}/retry", data={"csrf": csrf})
    assert reply.status_code == 303 and reply.headers["location"] == "/alerts?done=retried"
    assert db.delivery_summary() == {"pending": 1, "dead": 0}
    assert f'id="notification-{notification_id}"' not in site.get("/alerts").text
    twice = site.post(f"/alerts/notifications/{notification_id}/retry", data={"csrf": csrf})
    assert twice.status_code == 400 and "only a dead one" in twice.json()["detail"]
    unknown = site.post("/alerts/notifications/n-none/retry", data={"csrf": csrf})
    assert unknown.status_code == 404


def test_the_api_lists_alerts_and_sums_them_up_for_sessions_and_tokens(
        site: TestClient, db: CentralDB) -> None:
    assert site.get("/api/alerts/summary").status_code == 401
    empty = {"open": 0, "unacked": 0, "critical": 0, "silenced": 0, "newest": None}
    db.create_session("vera", token_digest("script-token"), "c", 3600, kind="api")
    bearer = {"Authorization": "Bearer script-token"}
    assert site.get("/api/alerts/summary", headers=bearer).json() == empty
    first = fire(db, severity="warning", summary="buffer filling on gw-1", rule="buffer-filling")
    newest = fire(db, device="gw-2", summary="camera cam1 down on gw-2")
    db.ack_alert(first.alert_id, "quinn", "emptying it")
    summary = site.get("/api/alerts/summary", headers=bearer).json()
    assert {k: summary[k] for k in ("open", "unacked", "critical", "silenced")} == {
        "open": 2, "unacked": 1, "critical": 1, "silenced": 0}
    assert summary["newest"]["alert_id"] == newest.alert_id
    assert summary["newest"]["url"] == f"/alerts/{newest.alert_id}"
    listed = site.get("/api/alerts?device=gw-1", headers=bearer).json()
    assert [a["alert_id"] for a in listed] == [first.alert_id]
    assert listed[0]["devices"] == ["gw-1"] and listed[0]["acked_by"] == "quinn"
    db.resolve_alert(newest.alert_id)
    assert site.get("/api/alerts", headers=bearer).json()[0]["alert_id"] == first.alert_id
    assert len(site.get("/api/alerts?state=all&limit=5", headers=bearer).json()) == 2
    assert site.get("/api/alerts?limit=0", headers=bearer).status_code == 422
    log_in(site, "vera")  # the banner's call: a browser session
    assert site.get("/api/alerts/summary").json()["open"] == 1

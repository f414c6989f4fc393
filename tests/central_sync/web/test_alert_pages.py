"""The alerts pages in real Chromium: the banner on every page appears while an alert is open
and goes when it resolves; a quality user acknowledges with a reason, an engineer silences;
a viewer gets no button and a refused post; another site's form is refused."""

from __future__ import annotations

import pytest
from browser_helpers import logged_in_page
from model_page_helpers import PASSWORD, add_users

from central_sync.db import CentralDB
from central_sync.db.alerts import Alert

pytestmark = [pytest.mark.slow,
              pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)]
ATTACKER = "http://attacker.test/"
BANNER_WAIT_MS = 15_000  # the banner asks every 10 s
REPORT_VIOLATIONS = """
window.__violations = [];
document.addEventListener("securitypolicyviolation",
    (e) => window.__violations.push(e.violatedDirective + " " + e.blockedURI));
"""


def fire(db: CentralDB, severity: str = "critical", device: str = "gw-1") -> Alert:
    alert = db.fire_alert(
        "source-down", f"device={device}/source=cam1", kind="source_down", severity=severity,
        summary=f"camera cam1 down on {device}", devices=[device], labels={"source": "cam1"},
        value=1.0, threshold=1.0)
    assert alert is not None
    return alert


def test_the_banner_follows_open_alerts_and_a_quality_user_acknowledges_one(
        db: CentralDB) -> None:
    add_users(db, quinn="quality")
    alert = fire(db)
    with logged_in_page(db, "quinn", PASSWORD, "/fleet") as (page, api):
        expect = api.expect
        page.context.add_init_script(REPORT_VIOLATIONS)
        base = page.url.rsplit("/fleet", 1)[0]
        banner = page.locator("#alert-banner")
        expect(banner).to_be_visible()
        expect(banner).to_have_class("critical")
        expect(banner).to_have_text("1 open alert (1 critical, unacknowledged) — newest: "
                                    "camera cam1 down on gw-1")
        page.goto(base + "/models")
        expect(banner).to_be_visible()
        expect(banner).to_contain_text("1 critical")

        # Acknowledged from the alerts page: no longer critical unacknowledged, so amber.
        page.click("#alert-banner a")
        page.wait_for_url(base + "/alerts")
        row = page.locator(f"#alert-{alert.alert_id}")
        row.locator("form.ack input[name=reason]").fill("maintenance is changing the cable")
        row.locator("form.ack button").click()
        page.wait_for_url("**/alerts?state=open&done=acked")
        expect(row.locator(".acked-by")).to_have_text("quinn: maintenance is changing the cable")
        assert row.locator("form.ack").count() == 0 and row.locator("form.silence").count() == 0
        expect(banner).to_have_class("warning")
        expect(banner).to_have_text("1 open alert — newest: camera cam1 down on gw-1")
        assert page.evaluate("window.__violations") == []

        # A second alert while the page stays open shows without reloading; both resolved,
        # the banner goes.
        second = fire(db, severity="warning", device="gw-2")
        expect(banner).to_contain_text("2 open alerts (1 unacknowledged)",
                                       timeout=BANNER_WAIT_MS)
        db.resolve_alert(alert.alert_id)
        db.resolve_alert(second.alert_id)
        expect(banner).to_be_hidden(timeout=BANNER_WAIT_MS)
        page.goto(base + "/fleet")
        page.wait_for_load_state("networkidle")
        expect(banner).to_be_hidden()
        page.goto(base + "/alerts?state=resolved")
        expect(page.locator(f"#alert-{alert.alert_id} .state")).to_have_text("resolved")
    assert db.alert_events(alert.alert_id)[1].event == "acked"


def test_an_engineer_silences_a_viewer_may_not_and_another_site_cannot(
        db: CentralDB) -> None:
    add_users(db, erin="engineer", vera="viewer")
    alert = fire(db)
    with logged_in_page(db, "erin", PASSWORD, f"/alerts/{alert.alert_id}") as (page, api):
        expect = api.expect
        base = page.url.rsplit("/alerts/", 1)[0]
        page.select_option("form.silence select[name=hours]", "8")
        page.fill("form.silence input[name=reason]", "camera replaced during the stop")
        page.click("form.silence button")
        page.wait_for_url(f"**/alerts/{alert.alert_id}?done=silenced")
        expect(page.locator("#alert-silence")).to_contain_text("camera replaced during the stop")
        expect(page.locator("#events")).to_contain_text("silenced")
        assert page.locator("form.silence").count() == 0
        expect(page.locator("#alert-banner")).to_contain_text("1 silenced")
        silenced = db.get_alert(alert.alert_id)
        assert silenced is not None and silenced.silenced_until is not None

        # Another site's form makes the browser post without the session (SameSite=Strict)
        # and without the page's token: refused, the alert stays as it was.
        page.route(ATTACKER, lambda route: route.fulfill(content_type="text/html", body=(
            f'<form id="f" method="post" action="{base}/alerts/{alert.alert_id}/ack">'
            '<input name="csrf" value="guessed"><input name="reason" value="x"></form>'
            '<script>document.getElementById("f").submit()</script>')))
        with page.expect_navigation(url=f"{base}/alerts/{alert.alert_id}/ack") as sent:
            page.goto(ATTACKER)
        assert sent.value is not None and sent.value.status in (401, 403)

        # A viewer sees the alert without any button, and a post with its own token is
        # refused for its role.
        page.context.clear_cookies()
        page.goto(f"{base}/alerts")
        page.fill("input[name=username]", "vera")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(f"{base}/alerts")
        expect(page.locator(f"#alert-{alert.alert_id}")).to_contain_text("camera cam1 down")
        assert page.locator("form.ack, form.silence, form.lift, form.retry").count() == 0
        csrf = page.locator("form.who input[name=csrf]").get_attribute("value")
        refused = page.request.post(f"{base}/alerts/{alert.alert_id}/ack",
                                    form={"csrf": csrf or "", "reason": "x"})
        assert refused.status == 403 and "quality role" in refused.text()
    acked = db.get_alert(alert.alert_id)
    assert acked is not None and acked.acked_by is None

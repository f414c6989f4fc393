"""Central's pages work in real Chromium under their Content-Security-Policy: every script and
style is the site's own file, so the browser reports no violation and the scripts still run."""

from __future__ import annotations

import pytest
from browser_helpers import logged_in_page
from review_helpers import defect_batch
from test_drift import intervals, scrap_manifest, stats_batch
from test_pages import a_rollout

from central_sync.accounts import hash_password
from central_sync.db import CentralDB

PASSWORD = "correct horse battery"
REPORT_VIOLATIONS = """
window.__violations = [];
document.addEventListener("securitypolicyviolation",
    (e) => window.__violations.push(e.violatedDirective + " " + e.blockedURI));
"""


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # headers: not the database's
def test_every_page_runs_under_the_csp_without_a_violation(db: CentralDB) -> None:
    manifest = scrap_manifest()
    db.add_model(manifest, "data-scientist")
    db.store_batch(stats_batch("line1-gw1", intervals(manifest, 2.0, seed=2)))
    db.store_batch(defect_batch("line1-gw1", range(1, 6)))
    rollout = a_rollout(db)
    alert = db.fire_alert("source-down", "device=line1-gw1/source=cam1", kind="source_down",
                          severity="critical", summary="source cam1 on line1-gw1 reconnecting",
                          devices=["line1-gw1"])
    assert alert is not None
    db.add_user("anna", hash_password(PASSWORD), "quality", by="admin")
    pages = ["/", "/fleet", "/devices/line1-gw1", "/models", "/models/extruder-scrap", "/rollouts",
             f"/rollouts/{rollout.rollout_id}", "/recommendations", "/audit", "/review",
             "/alerts", f"/alerts/{alert.alert_id}", "/alerts?state=all"]
    with logged_in_page(db, "anna", PASSWORD, "/review") as (page, sync_api):
        console = []
        page.on("console", lambda message: console.append(message.text))
        page.context.add_init_script(REPORT_VIOLATIONS)
        base = page.url.rsplit("/review", 1)[0]
        for path in pages:
            reply = page.goto(base + path)
            assert "frame-ancestors 'none'" in reply.headers["content-security-policy"], path
            sync_api.expect(page.locator("h1").first).to_be_visible()
            page.wait_for_load_state("networkidle")
            assert page.evaluate("window.__violations") == [], path
        page.goto(base + "/review")
        sync_api.expect(page.locator("#grid")).to_have_attribute("data-ready", "true")
        sync_api.expect(page.locator(".card").first).to_be_focused()  # review.js ran
        page.goto(base + "/login?error=wrong")
        sync_api.expect(page.locator(".error")).to_have_text("wrong user name or password")
        assert page.evaluate("window.__violations") == []
    assert not [text for text in console if "Content Security Policy" in text], console

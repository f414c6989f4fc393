"""Central's pages for engineers: models with history, lineage and drift charts, rollouts
followed live (in Chromium), the audit log; all behind a login."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from browser_helpers import logged_in_page
from fastapi.testclient import TestClient
from test_drift import intervals, scrap_manifest, stats_batch

from central_sync.accounts import hash_password
from central_sync.db import CentralDB, Rollout
from central_sync.web import create_app

PASSWORD = "correct horse battery"


def a_rollout(db: CentralDB) -> Rollout:
    now = time.time()
    rollout = Rollout("3f2a9c1d7e4b", "extruder-scrap", "1.0.0", "group line-3", 1, 2, 1.0,
                      900.0, "running", 0, now, "canary wave", now, "otto", now)
    db.create_rollout(rollout, [["line1-gw1"], ["line2-gw1"]])
    return rollout


@pytest.fixture
def site(db: CentralDB) -> TestClient:
    manifest = scrap_manifest()
    db.add_model(manifest, "data-scientist")
    db.store_batch(stats_batch("line1-gw1", intervals(manifest, 0.0)))
    db.store_batch(stats_batch("line2-gw1", intervals(manifest, 2.0, seed=2)))
    a_rollout(db)
    db.add_user("otto", hash_password(PASSWORD), "viewer", by="admin")
    return TestClient(create_app(db, offline_after_s=120))


def test_pages_need_a_login(site: TestClient) -> None:
    for url in ("/models", "/models/extruder-scrap", "/rollouts", "/audit"):
        reply = site.get(url, follow_redirects=False)
        assert reply.status_code == 303 and reply.headers["location"].startswith("/login")


def test_model_page_shows_versions_lineage_and_drift_per_device(site: TestClient) -> None:
    site.post("/login", data={"username": "otto", "password": PASSWORD})
    listing = site.get("/models").text
    assert 'href="/models/extruder-scrap"' in listing
    page = site.get("/models/extruder-scrap").text
    assert "GradientBoostingRegressor, 4608 rows" in page and "data-scientist" in page
    assert "line1-gw1 <span class=\"good\">no drift" in page
    assert "drift: zone2_temp_c, scrap_rate_pct" in page
    assert page.count('aria-label="PSI by value"') == 2 and "#dc2626" in page
    assert 'aria-label="predictions and p99 latency"' in page
    assert "rollout.start" in page  # lineage: the rollout of this model
    assert site.get("/models/nothing").status_code == 404


def test_rollouts_and_audit_pages(site: TestClient) -> None:
    site.post("/login", data={"username": "otto", "password": PASSWORD})
    assert "3f2a9c1d7e4b" in site.get("/rollouts").text
    detail = site.get("/rollouts/3f2a9c1d7e4b").text
    assert "line2-gw1" in detail and "canary wave" in detail
    assert site.get("/api/rollouts/3f2a9c1d7e4b").json()["devices"][1]["wave"] == 1
    audit = site.get("/audit").text
    assert "model.publish" in audit and "user.login" in audit


@pytest.mark.slow
# The page's polling in a browser; the rollout queries run on both databases above.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_rollout_page_follows_the_rollout_live_in_chromium(db: CentralDB,
                                                           tmp_path: Path) -> None:
    rollout = a_rollout(db)
    db.add_user("otto", hash_password(PASSWORD), "viewer", by="admin")
    with logged_in_page(db, "otto", PASSWORD, f"/rollouts/{rollout.rollout_id}") as (
            page, sync_api):
        sync_api.expect(page.locator("#rollout-state")).to_contain_text("wave 1 of 2")
        db.update_rollout_device(rollout.rollout_id, "line1-gw1", "succeeded")
        db.update_rollout(rollout.rollout_id, "engine", "running", "wave 2 under way",
                          current_wave=1)
        state = page.locator("#rollout-state")
        sync_api.expect(state).to_contain_text("wave 2 of 2", timeout=20_000)  # polls every 2 s
        sync_api.expect(page.locator("#rollout-devices")).to_contain_text("succeeded")
        db.update_rollout(rollout.rollout_id, "engine", "completed", "every wave passed")
        sync_api.expect(state).to_contain_text("completed", timeout=20_000)
        page.screenshot(path=str(tmp_path / "rollout.png"))
        shutil.copy(tmp_path / "rollout.png", "/tmp/central_rollout.png")


def test_recommendations_page_joins_answers_and_outcomes(db: CentralDB) -> None:
    from edge_agent.kernel.contract import UplinkBatch, UplinkRecord

    offer = {"id": "r-1", "pipeline": "scrap",
             "model": {"name": "extruder-scrap", "version": "1.0.0", "sha256": "5" * 64},
             "target": "scrap_rate_pct", "unit": "%", "objective": "minimise scrap_rate_pct",
             "changes": [{"tag": "zone2_temp_c", "current": 182.0, "proposed": 188.0}],
             "predicted_now": 4.1, "predicted_after": 1.7, "inputs": {}, "created_at": 100.0,
             "expires_at": 400.0}
    answer = {"id": "r-1", "pipeline": "scrap", "decision": "accepted", "by": "Anna", "at": 130}
    outcome = {"id": "r-1", "pipeline": "scrap", "decision": "accepted", "after_s": 600,
               "setpoints": {"zone2_temp_c": 188.0}, "applied": True, "predicted": 1.8,
               "measured": 1.9}
    db.store_batch(UplinkBatch(device_id="line1-gw1", records=[
        UplinkRecord(seq=i + 1, type=kind, created_at=100.0 + i, payload=payload)
        for i, (kind, payload) in enumerate([
            ("recommendation", offer), ("recommendation_answer", answer),
            ("recommendation_outcome", outcome)])]))
    db.add_user("otto", hash_password(PASSWORD), "viewer", by="admin")
    client = TestClient(create_app(db, offline_after_s=120))
    client.post("/login", data={"username": "otto", "password": PASSWORD})
    page = " ".join(client.get("/recommendations").text.split())
    assert "zone2_temp_c 182.0 → 188.0" in page and "scrap_rate_pct 4.1 → 1.7 %" in page
    assert "accepted</span> by Anna" in page
    assert "applied, measured 1.9 (10 min later)" in page


def test_device_page_shows_models_sources_buffer_deployments_and_defects(
        db: CentralDB) -> None:
    from review_helpers import defect_batch

    from edge_agent.kernel.contract import BufferHealth, DeviceStatus, ModelRef, SourceState

    db.update_status(DeviceStatus(
        device_id="line1-gw1", state="online", agent_version="0.1.0", labels=["line-1"],
        active_models=[ModelRef(name="surface-defects", version="1.0.0", sha256="a" * 64)],
        sources={"strip-camera": SourceState(state="reconnecting", detail="rtsp timeout")},
        buffer=BufferHealth(depth=12, bytes_used=2**20, quota_bytes=2**30)))
    db.store_batch(defect_batch("line1-gw1", range(1, 6)))
    db.add_user("otto", hash_password(PASSWORD), "viewer", by="admin")
    client = TestClient(create_app(db, offline_after_s=120))
    client.post("/login", data={"username": "otto", "password": PASSWORD})
    fleet = client.get("/fleet").text
    assert 'href="/devices/line1-gw1"' in fleet and '<meta http-equiv="refresh"' in fleet
    assert "strip-camera reconnecting" in fleet
    page = " ".join(client.get("/devices/line1-gw1").text.split())
    assert "online" in page and "surface-defects" in page and "rtsp timeout" in page
    assert "12 records waiting" in page and "5 defects, 0 reviewed" in page
    assert client.get("/devices/nobody").status_code == 404


def test_fleet_page_escapes_what_devices_send(db: CentralDB) -> None:
    from central_helpers import prediction_payload

    from edge_agent.kernel.contract import UplinkBatch, UplinkRecord

    payload = {**prediction_payload(), "pipeline": "<script>alert(1)</script>"}
    db.store_batch(UplinkBatch(device_id="gw-1", records=[
        UplinkRecord(seq=1, type="prediction", created_at=1.0, payload=payload)]))
    db.add_user("otto", hash_password(PASSWORD), "viewer", by="admin")
    client = TestClient(create_app(db, offline_after_s=120))
    client.post("/login", data={"username": "otto", "password": PASSWORD})
    page = client.get("/fleet").text
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)" in page
    assert "scrap_rate_pct=4.2" in page


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # layout: not the database's
def test_every_page_fits_a_1080p_screen_in_chromium(db: CentralDB, tmp_path: Path) -> None:
    from review_helpers import defect_batch

    from edge_agent.kernel.contract import DeviceStatus, ModelRef, SourceState

    manifest = scrap_manifest()
    db.add_model(manifest, "data-scientist")
    db.update_status(DeviceStatus(
        device_id="line1-gw1", state="online", agent_version="0.1.0",
        active_models=[ModelRef(name="extruder-scrap", version="1.0.0", sha256="c" * 64)],
        sources={"line1": SourceState(state="connected", detail="opc.tcp://plc:4840")}))
    db.store_batch(stats_batch("line1-gw1", intervals(manifest, 2.0, seed=2)))
    db.store_batch(defect_batch("line1-gw1", range(1000, 1030)))
    rollout = a_rollout(db)
    db.add_user("otto", hash_password(PASSWORD), "viewer", by="admin")
    pages = ["/", "/fleet", "/devices/line1-gw1", "/models", "/models/extruder-scrap",
             "/rollouts", f"/rollouts/{rollout.rollout_id}", "/recommendations", "/audit",
             "/review"]
    with logged_in_page(db, "otto", PASSWORD, "/", (1920, 1080)) as (page, sync_api):
        for path in pages:
            url = page.url.split("/", 3)[0] + "//" + page.url.split("/", 3)[2] + path
            page.goto(url)
            sync_api.expect(page).to_have_url(url)  # this page, not the login form
            sync_api.expect(page.locator("h1")).to_be_visible()
            width = page.evaluate("() => document.documentElement.scrollWidth")
            assert width <= 1920, f"{path} is {width} px wide"
            name = path.strip("/").replace("/", "_") or "overview"
            page.screenshot(path=str(tmp_path / f"{name}.png"))
            shutil.copy(tmp_path / f"{name}.png", f"/tmp/central_{name}.png")



def test_fleet_and_device_pages_show_provisioned_groups_and_mark_unprovisioned_reports(
        db: CentralDB) -> None:
    from edge_agent.kernel.contract import DeviceStatus

    db.add_broker_account("line1-gw1", "device", ["line-1"], "x", by="admin")
    db.update_status(DeviceStatus(device_id="line1-gw1", state="online",
                                  labels=["line-1", "line-3"]))
    db.add_user("otto", hash_password(PASSWORD), "viewer", by="admin")
    client = TestClient(create_app(db, offline_after_s=120))
    client.post("/login", data={"username": "otto", "password": PASSWORD})
    fleet = " ".join(client.get("/fleet").text.split())
    assert "<td>line-1</td>" in fleet and "line-3 (not provisioned)" in fleet
    page = " ".join(client.get("/devices/line1-gw1").text.split())
    assert "groups line-1 (from provisioning" in page
    assert "line-1, " in page and "line-3 (not provisioned)" in page

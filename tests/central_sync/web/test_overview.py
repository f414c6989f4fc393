"""The plant overview, central's home page: gateways per line with their health, open alerts,
defect rates against the baseline, recommendations and models; readable on a wall screen and a
laptop (real Chromium), refreshed by itself, read with bounded indexed queries."""

from __future__ import annotations

import re
import time

import pytest
from browser_helpers import logged_in_page
from fastapi.testclient import TestClient
from review_helpers import defect_payload
from test_drift import intervals, scrap_manifest, stats_batch

from central_sync.accounts import hash_password
from central_sync.db import CentralDB
from central_sync.web import create_app
from edge_agent.kernel.contract import (
    BufferHealth,
    DeviceStatus,
    ModelRef,
    SourceState,
    UplinkBatch,
    UplinkRecord,
)

PASSWORD = "correct horse battery"
HOUR = 3600.0
SCRAP = ModelRef(name="extruder-scrap", version="1.0.0", sha256="c" * 64)


def defects(device_id: str, label: str, times: list[float], first_seq: int) -> UplinkBatch:
    return UplinkBatch(device_id=device_id, records=[
        UplinkRecord(seq=first_seq + i, type="defect", created_at=at,
                     payload={**defect_payload(i), "label": label})
        for i, at in enumerate(times)])


def recommendation_records(now: float, first_seq: int) -> UplinkBatch:
    """One recommendation accepted and measured afterwards, one rejected."""
    offers = [{"id": rid, "pipeline": "scrap", "model": SCRAP.model_dump(),
               "target": "scrap_rate_pct", "unit": "%", "objective": "minimise scrap_rate_pct",
               "changes": [{"tag": "zone2_temp_c", "current": 182.0, "proposed": 188.0}],
               "predicted_now": 4.1, "predicted_after": 1.7, "inputs": {},
               "created_at": now - 1800, "expires_at": now} for rid in ("r-1", "r-2")]
    answers = [{"id": "r-1", "pipeline": "scrap", "decision": "accepted", "by": "Anna",
                "at": now - 1700},
               {"id": "r-2", "pipeline": "scrap", "decision": "rejected", "by": "Anna",
                "at": now - 1700}]
    outcome = {"id": "r-1", "pipeline": "scrap", "decision": "accepted", "after_s": 600,
               "setpoints": {"zone2_temp_c": 188.0}, "applied": True, "predicted": 1.8,
               "measured": 1.9}
    kinds = [("recommendation", p) for p in offers] + \
        [("recommendation_answer", p) for p in answers] + [("recommendation_outcome", outcome)]
    return UplinkBatch(device_id="line1-gw1", records=[
        UplinkRecord(seq=first_seq + i, type=kind, created_at=now - 1800 + i, payload=payload)
        for i, (kind, payload) in enumerate(kinds)])


def a_plant(db: CentralDB, now: float) -> None:
    """Line 1 (a gateway with a failed camera, a full buffer, a defect surge and an alert; one
    gone silent), line 2 (a gateway offline, its model drifted), and an unassigned gateway."""
    for device_id, labels in (("line1-gw1", ["line-1", "hall-a"]), ("line1-gw2", ["line-1"]),
                              ("line2-gw1", ["hall-a", "line-2"]), ("spare-gw", ["hall-a"])):
        db.add_broker_account(device_id, "device", labels, "x", by="admin")
    db.update_status(DeviceStatus(
        device_id="line1-gw1", state="online", active_models=[SCRAP],
        sources={"strip-camera": SourceState(state="failed", detail="rtsp timeout"),
                 "plc": SourceState(state="connected")},
        buffer=BufferHealth(depth=900, bytes_used=850, quota_bytes=1000)), received_at=now)
    db.update_status(DeviceStatus(device_id="line1-gw2", state="online"),
                     received_at=now - 1000)  # silent since: stale
    db.update_status(DeviceStatus(device_id="line2-gw1", state="online", active_models=[SCRAP]),
                     received_at=now)
    db.update_status(DeviceStatus(device_id="line2-gw1", state="offline"), received_at=now)
    db.update_status(DeviceStatus(device_id="spare-gw", state="online"), received_at=now)
    # line1-gw1: 12 scratches in the last hour against none before (floor 1/h: 12x, alert);
    # pits at their usual 2 an hour; one stain where the week saw 0.5 an hour.
    db.store_batch(defects("line1-gw1", "scratch", [now - 60 * i for i in range(1, 13)], 1))
    week = [now - HOUR - 900 - 1800 * i for i in range(336)]  # 2/h over the 7 days before
    db.store_batch(defects("line1-gw1", "pit", [now - 100, now - 200, *week], 100))
    db.store_batch(defects("line1-gw1", "stain", [now - 300, *week[::4]], 1000))
    # Older than the baseline: not read, not counted.
    db.store_batch(defects("line1-gw1", "pit", [now - 9 * 24 * HOUR + i for i in range(50)],
                           2000))
    db.store_batch(recommendation_records(now, 3000))
    manifest = scrap_manifest()
    db.add_model(manifest, "data-scientist")
    db.store_batch(stats_batch("line1-gw1", intervals(manifest, 0.0), first_seq=4000))
    db.store_batch(stats_batch("line2-gw1", intervals(manifest, 2.0, seed=2)))
    db.fire_alert("source-down", "device=line1-gw1/source=strip-camera", kind="source_down",
                  severity="critical", summary="strip-camera on line1-gw1 is failed",
                  devices=["line1-gw1"], labels={"device": "line1-gw1", "line": "line-1"})
    db.fire_alert("defect-rate", "device=line1-gw1/camera=strip-camera/class=scratch",
                  kind="defect_rate", severity="warning", summary="scratches on line1-gw1",
                  value=6.5,
                  devices=["line1-gw1"], labels={"device": "line1-gw1", "camera": "strip-camera",
                                                 "class": "scratch"})
    db.fire_alert("defect-rate", "line=line-2", kind="defect_rate", severity="warning",
                  summary="line-2 makes more stains than usual", devices=[],
                  labels={"line": "line-2"})


def cards(page: str) -> dict[str, tuple[str, str]]:
    """device -> (health, the card's text with tags and runs of spaces removed)."""
    return {device: (health, " ".join(re.sub(r"<[^>]+>", " ", body).split()))
            for health, device, body in re.findall(
                r'<article class="gateway health-(\w+)" data-device="([^"]+)">(.*?)</article>',
                page, re.S)}


def signed_in(db: CentralDB, **app_options: object) -> TestClient:
    db.add_user("otto", hash_password(PASSWORD), "viewer", by="admin")
    client = TestClient(create_app(db, offline_after_s=120, **app_options))  # type: ignore[arg-type]
    client.post("/login", data={"username": "otto", "password": PASSWORD})
    return client


def test_overview_is_the_home_page_behind_a_login(db: CentralDB) -> None:
    reply = TestClient(create_app(db, 120)).get("/", follow_redirects=False)
    assert reply.status_code == 303 and reply.headers["location"].startswith("/login")
    page = signed_in(db).get("/").text
    assert "<h1>Plant overview</h1>" in page and '<meta http-equiv="refresh" content="10">' in page
    assert "No gateway has reported yet" in page
    assert '<a href="/">Overview</a><a href="/fleet">Fleet</a>' in page


def test_overview_shows_each_line_its_gateways_alerts_defects_recommendations_and_models(
        db: CentralDB) -> None:
    now = time.time()
    a_plant(db, now)
    page = signed_in(db).get("/").text
    lines = re.findall(r'<section class="line(?: sev-(\w+))?" id="line-([^"]+)">', page)
    assert lines == [("critical", "line-1"), ("warning", "line-2"), ("", "unassigned")]
    found = cards(page)
    assert list(found) == ["line1-gw1", "line1-gw2", "line2-gw1", "spare-gw"]
    assert {d: h for d, (h, _) in found.items()} == {
        "line1-gw1": "online", "line1-gw2": "stale", "line2-gw1": "offline",
        "spare-gw": "online"}
    gw1 = found["line1-gw1"][1]
    assert "buffer 85 %" in gw1 and "down: strip-camera" in gw1 and "2 alerts · critical" in gw1
    # The alert's own figure (the rule compares with its window, baseline or fixed rate).
    assert "scratch 12 0.0 ▲ alert, 6.5× its rule's rate" in gw1
    assert "pit 2 2.0 " in gw1 and "pit 2 2.0 ▲" not in gw1  # its usual rate: 50 old not read
    assert "stain 1 0.5 ▲ above baseline" not in gw1  # 1 is at the 1/h floor, not above
    assert re.search(r'<tr class="alert"><td>scratch</td>', page)
    assert "recommendations 24 h: 2 offered · 1 accepted · 1 rejected" in gw1
    assert "scrap_rate_pct 4.10 → 1.90 % (measured, 1 accepted)" in gw1
    assert "extruder-scrap 1.0.0 no drift" in gw1
    assert "extruder-scrap 1.0.0 drift: zone2_temp_c, scrap_rate_pct" in found["line2-gw1"][1]
    assert "sources ok" in found["line1-gw2"][1] and "no alert" in found["line1-gw2"][1]
    assert "no model" in found["spare-gw"][1] and "no recommendation in 24 h" in found[
        "spare-gw"][1]
    text = " ".join(re.sub(r"<[^>]+>", " ", page).split())
    assert "line-1 2 gateways, 1 online 2 open alerts · critical" in text
    assert "strip-camera on line1-gw1 is failed" in text
    assert "line-2 1 gateway, 0 online 1 open alert · warning" in text  # the line's own alert
    assert "2 online 1 stale 1 offline 3 open alerts, 1 critical" in text


def test_a_rate_above_its_baseline_is_marked_apart_from_one_the_defect_rule_fired_for(
        db: CentralDB) -> None:
    now = time.time()
    db.update_status(DeviceStatus(device_id="gw-1", state="online"), received_at=now)
    week = [now - HOUR - 3600 * i for i in range(1, 168 * 2, 2)]  # 0.5/h: floored to 1/h
    db.store_batch(defects("gw-1", "dent", [now - 10, now - 20, *week], 1))  # 2x: above
    db.store_batch(defects("gw-1", "hole", [now - i for i in range(1, 5)], 1000))  # 4x
    db.store_batch(defects("gw-1", "spot", [now - 30], 2000))  # at the floor: not above
    client = signed_in(db)
    card = cards(client.get("/").text)["gw-1"][1]
    assert "hole 4 0.0 ▲ above baseline" in card and "dent 2 0.5 ▲ above baseline" in card
    assert "spot 1 0.0 ▲" not in card and "alert," not in card
    db.fire_alert("defect-rate", "device=gw-1/camera=cam/class=dent", kind="defect_rate",
                  severity="warning", summary="dents", devices=["gw-1"], value=3.2,
                  labels={"device": "gw-1", "camera": "cam", "class": "dent"})
    page = client.get("/").text
    card = cards(page)["gw-1"][1]
    assert "dent 2 0.5 ▲ alert, 3.2× its rule's rate" in card
    assert card.index("dent") < card.index("hole")  # an alerting class comes first
    assert re.search(r'<tr class="alert"><td>dent</td>', page)


def test_the_line_comes_from_the_configured_label_prefix(db: CentralDB) -> None:
    from central_sync.alert_rules import AlertsConfig

    db.add_broker_account("gw-1", "device", ["hall-a", "cell-7"], "x", by="admin")
    db.update_status(DeviceStatus(device_id="gw-1", state="online", labels=["line-9"]))
    page = signed_in(db, alerts_config=AlertsConfig(line_label_prefix="cell")).get("/").text
    assert 'id="line-cell-7"' in page
    assert 'id="line-line-9"' not in page  # what a gateway says of itself is not trusted


def test_the_baseline_is_counted_again_only_after_a_few_minutes(db: CentralDB) -> None:
    from central_sync.alert_rules import AlertsConfig
    from central_sync.web.overview import BASELINE_REFRESH_S, BaselineCache, plant_overview

    now = time.time()
    db.update_status(DeviceStatus(device_id="gw-1", state="online"), received_at=now)
    db.store_batch(defects("gw-1", "dent", [now - 10, *(now - 2 * HOUR - i for i in range(168))],
                           1))
    cache, config = BaselineCache(), AlertsConfig()

    def usual(at: float) -> float:
        [rate] = plant_overview(db, at, 120, config, cache).lines[0].gateways[0].rates
        return rate.baseline_per_hour

    assert usual(now) == 1.0
    db.store_batch(defects("gw-1", "dent", [now - 3 * HOUR - i for i in range(168)], 1000))
    assert usual(now + 10) == 1.0  # the week before did not move in ten seconds
    assert usual(now + BASELINE_REFRESH_S + 1) == 2.0


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # SQLite's query plans
def test_overview_reads_of_defects_and_records_are_served_by_indexes(db: CentralDB) -> None:
    now = time.time()
    db.store_batch(defects("gw-1", "dent", [now - 10], 1))
    db.store_batch(recommendation_records(now, 100))
    statements: list[str] = []
    raw = db._db._db.conn  # type: ignore[attr-defined]
    raw.set_trace_callback(statements.append)
    try:
        db.defect_counts_by_class(now - 8 * 24 * HOUR, now)
        db.record_payloads_since(["recommendation", "recommendation_outcome"], now - 24 * HOUR)
    finally:
        raw.set_trace_callback(None)
    reads = [sql for sql in statements if re.search(r"FROM (defects|records)\b", sql)]
    assert len(reads) == 3, statements
    for sql in reads:
        plan = " ".join(row[3] for row in raw.execute("EXPLAIN QUERY PLAN " + sql))
        assert "USING INDEX" in plan and "SCAN" not in plan.replace("SCAN CONSTANT", ""), (
            sql, plan)


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # layout: not the database's
@pytest.mark.parametrize("viewport", [(1920, 1080), (1366, 768)])
def test_overview_fits_a_wall_screen_and_a_laptop_and_refreshes_itself(
        db: CentralDB, viewport: tuple[int, int]) -> None:
    now = time.time()
    a_plant(db, now)
    for n in range(1, 7):  # a plant of some size, with long names
        device_id = f"line3-extrusion-gateway-{n:02d}"
        db.add_broker_account(device_id, "device", ["line-3-extrusion-and-winding"], "x",
                              by="admin")
        db.update_status(DeviceStatus(device_id=device_id, state="online", active_models=[
            SCRAP, ModelRef(name="surface-defects-wide-strip", version="1.12.0",
                            sha256="d" * 64)]), received_at=now)
    db.add_user("otto", hash_password(PASSWORD), "viewer", by="admin")
    with logged_in_page(db, "otto", PASSWORD, "/", viewport) as (page, sync_api):
        sync_api.expect(page.locator("h1")).to_have_text("Plant overview")
        width = page.evaluate("() => document.documentElement.scrollWidth")
        assert width <= viewport[0], f"the overview is {width} px wide at {viewport}"
        size = float(page.locator("article.gateway").first.evaluate(
            "e => getComputedStyle(e).fontSize").removesuffix("px"))
        assert size >= (20 if viewport[0] >= 1920 else 18), f"{size} px type at {viewport}"
        alert = page.locator("section#line-line-1 .line-alerts li").first
        sync_api.expect(alert).to_have_class("sev-critical")
        page.screenshot(path=f"/tmp/central_overview_{viewport[0]}.png", full_page=False)
        # Nothing reloads the page but the page itself: a new alert shows within a refresh.
        db.fire_alert("source-down", "device=spare-gw/source=cam", kind="source_down",
                      severity="warning", summary="cam on spare-gw is reconnecting",
                      devices=["spare-gw"])
        sync_api.expect(page.locator("section#line-unassigned")).to_contain_text(
            "cam on spare-gw is reconnecting", timeout=25_000)

"""The alert engine over a real database: rules fire once, hold through `for` durations and
hysteresis, resolve by themselves, group a line into one alert, and one process evaluates."""

from __future__ import annotations

import asyncio
import json

import pytest
from review_helpers import defect_payload

from central_sync.alert_rules import SCADA_ROUTE, AlertsConfig, RuleConfig
from central_sync.alerts.conditions import Observation
from central_sync.alerts.engine import AlertEngine, decide
from central_sync.db import CentralDB
from edge_agent.kernel.contract import (
    BufferHealth,
    DeviceStatus,
    SourceState,
    UplinkBatch,
    UplinkRecord,
)

T0 = 1_800_000_000.0
OFFLINE_AFTER_S = 120.0


def config(*rules: dict, **extra) -> AlertsConfig:
    """Only the rules named (the defaults turned off), and a webhook route for everything."""
    defaults = ["gateway-offline", "buffer-filling", "buffer-evicting", "source-down",
                "model-rolled-back", "drift", "defect-rate"]
    named = {r["name"] for r in rules}
    off = [{"name": n, "kind": k, "enabled": False} for n, k in zip(defaults, [
        "gateway_offline", "buffer_filling", "buffer_evicting", "source_down",
        "model_rolled_back", "drift", "defect_rate"], strict=True) if n not in named]
    return AlertsConfig.model_validate({
        "rules": [*rules, *off],
        "routes": [{"name": "hook", "kind": "webhook", "url": "http://127.0.0.1:9/x"}],
        **extra})


def status(device_id: str, state: str = "online", at: float = T0, **fields) -> DeviceStatus:
    return DeviceStatus(device_id=device_id, state=state, sent_at=at, **fields)


def evaluate(engine: AlertEngine, now: float):
    return asyncio.run(engine.evaluate(now))


def see(db: CentralDB, device_id: str, at: float, **fields) -> None:
    """The device's status as central stores it, heard at `at`."""
    db.update_status(status(device_id, at=at, **fields))
    db._db.execute("UPDATE devices SET last_seen = ? WHERE device_id = ?", (at, device_id))


def notifications(db: CentralDB) -> list[tuple[str, str, str]]:
    return [(row["route"], row["event"], json.loads(row["payload"])["summary"])
            for row in db._db.query("SELECT route, event, payload FROM alert_notifications "
                                    "ORDER BY created_at, route")]


def test_a_breach_fires_after_its_for_duration_and_a_value_between_thresholds_holds() -> None:
    rule = RuleConfig(name="fill", kind="buffer_filling", for_s=60, resolve_after_s=30)
    seen = Observation(0.9, "full", ("gw",), {})
    middle = Observation(0.75, "between", ("gw",), {})
    first = decide(rule, seen, (None, None), None, T0)
    assert first.action == "none" and first.held == (T0, None)
    assert decide(rule, seen, first.held, None, T0 + 59).action == "none"
    assert decide(rule, seen, first.held, None, T0 + 60).action == "fire"
    # Between the thresholds (0.7..0.8) a quiet rule forgets the breach: no fire later.
    assert decide(rule, middle, first.held, None, T0 + 70) == decide(rule, middle, (None, None),
                                                                      None, T0 + 70)
    assert decide(rule, middle, first.held, None, T0 + 70).held is None


def test_a_firing_alert_resolves_only_after_staying_clear_and_not_between_thresholds(
) -> None:
    rule = RuleConfig(name="fill", kind="buffer_filling", resolve_after_s=30)
    firing = object()  # any open alert
    middle = Observation(0.75, "between", ("gw",), {})
    clear = Observation(0.5, "clear", ("gw",), {})
    assert decide(rule, middle, (None, None), firing, T0).action == "update"  # type: ignore[arg-type]
    held = decide(rule, clear, (None, None), firing, T0)  # type: ignore[arg-type]
    assert held.action == "none" and held.held == (None, T0)
    assert decide(rule, clear, held.held, firing, T0 + 29).action == "none"  # type: ignore[arg-type]
    # Back into the band before the resolve time: the clear period starts again.
    assert decide(rule, middle, held.held, firing, T0 + 29).held is None  # type: ignore[arg-type]
    assert decide(rule, clear, held.held, firing, T0 + 30).action == "resolve"  # type: ignore[arg-type]


def test_a_gateway_offline_fires_once_notifies_every_route_and_resolves_when_back(
        db: CentralDB) -> None:
    engine = AlertEngine(db, config({"name": "gateway-offline", "kind": "gateway_offline",
                                     "severity": "critical", "for_s": 30,
                                     "resolve_after_s": 0}), OFFLINE_AFTER_S, holder="c1")
    see(db, "gw-1", T0)
    assert evaluate(engine, T0 + 10) == []
    db.update_status(status("gw-1", "offline", at=T0 + 20))  # the broker's last will
    assert evaluate(engine, T0 + 21) == []  # held, not yet 30 s
    fired = evaluate(engine, T0 + 51)
    assert [a.rule for a in fired] == ["gateway-offline"]
    assert evaluate(engine, T0 + 80) == [] and len(db.open_alerts()) == 1  # fires once
    alert = db.open_alerts()[0]
    assert alert.devices == ("gw-1",) and alert.started_at == T0 + 21
    assert "gw-1 offline" in alert.summary
    see(db, "gw-1", T0 + 90)
    resolved = evaluate(engine, T0 + 91)
    assert [a.state for a in resolved] == ["resolved"] and db.open_alerts() == []
    sent = notifications(db)
    assert sorted((route, event) for route, event, _ in sent) == sorted([
        (SCADA_ROUTE, "fired"), (SCADA_ROUTE, "resolved"), ("hook", "fired"),
        ("hook", "resolved")])
    assert [e.event for e in db.alert_events(alert.alert_id)] == ["fired", "resolved"]


def test_held_conditions_survive_a_restart_of_central(db: CentralDB) -> None:
    rules = {"name": "source-down", "kind": "source_down", "for_s": 60}
    first = AlertEngine(db, config(rules), OFFLINE_AFTER_S)
    down = {"cam": SourceState(state="reconnecting", detail="no frames for 10 s")}
    see(db, "gw-1", T0, sources=down)
    evaluate(first, T0)
    # A new process (same holder id after a restart) goes on with the held breach.
    second = AlertEngine(db, config(rules), OFFLINE_AFTER_S)
    see(db, "gw-1", T0 + 59, sources=down)
    assert evaluate(second, T0 + 59) == []
    fired = evaluate(second, T0 + 61)
    assert [a.group_key for a in fired] == ["device=gw-1/source=cam"]
    assert fired[0].started_at == T0 and "no frames for 10 s" in fired[0].summary


def test_of_two_central_processes_one_evaluates_and_the_other_takes_over(db: CentralDB) -> None:
    rules = {"name": "gateway-offline", "kind": "gateway_offline", "resolve_after_s": 0}
    one = AlertEngine(db, config(rules), OFFLINE_AFTER_S, holder="c1")
    two = AlertEngine(db, config(rules), OFFLINE_AFTER_S, holder="c2")
    db.update_status(status("gw-1", "offline", at=T0))
    assert len(evaluate(one, T0)) == 1
    assert evaluate(two, T0 + 1) == [] and not two.leading  # c1 holds the lease
    assert len(db.list_alerts()) == 1 and len(notifications(db)) == 2
    see(db, "gw-1", T0 + 2)
    # c1 stopped: once its lease has run out, c2 resolves what c1 fired.
    resolved = evaluate(two, T0 + 1 + one.lease_s + 1)
    assert two.leading and [a.state for a in resolved] == ["resolved"]


def test_a_line_gets_one_alert_listing_its_gateways(db: CentralDB) -> None:
    engine = AlertEngine(db, config({"name": "gateway-offline", "kind": "gateway_offline",
                                     "group_by": "line"}), OFFLINE_AFTER_S)
    for device, labels in (("gw-1", ["line-3"]), ("gw-2", ["line-3"]), ("gw-9", ["line-4"])):
        db.add_broker_account(device, "device", labels, "x", "test")
        db.update_status(status(device, "offline", at=T0))
    fired = {a.group_key: a for a in evaluate(engine, T0)}
    assert set(fired) == {"line=line-3", "line=line-4"}
    assert fired["line=line-3"].devices == ("gw-1", "gw-2")
    assert "2 gateways" in fired["line=line-3"].summary


def test_a_removed_gateway_is_not_watched(db: CentralDB) -> None:
    engine = AlertEngine(db, config({"name": "gateway-offline", "kind": "gateway_offline"}),
                         OFFLINE_AFTER_S)
    db.add_broker_account("gw-1", "device", [], "x", "test")
    db.update_status(status("gw-1", "offline", at=T0))
    db.revoke_broker_account("gw-1", "test")
    assert evaluate(engine, T0) == []


def test_buffer_filling_and_evicting(db: CentralDB) -> None:
    engine = AlertEngine(db, config(
        {"name": "buffer-filling", "kind": "buffer_filling", "resolve_after_s": 0},
        {"name": "buffer-evicting", "kind": "buffer_evicting", "window_s": 600,
         "resolve_after_s": 0}), OFFLINE_AFTER_S)

    def buffer(used: int, evicted: int) -> BufferHealth:
        return BufferHealth(depth=10, bytes_used=used, quota_bytes=1000, evicted=evicted)

    see(db, "gw-1", T0, buffer=buffer(500, 7))  # 7 evicted long ago: history, no alert
    assert evaluate(engine, T0) == []
    see(db, "gw-1", T0 + 10, buffer=buffer(850, 7))
    assert [a.rule for a in evaluate(engine, T0 + 10)] == ["buffer-filling"]
    see(db, "gw-1", T0 + 20, buffer=buffer(990, 9))
    assert [a.rule for a in evaluate(engine, T0 + 20)] == ["buffer-evicting"]
    see(db, "gw-1", T0 + 30, buffer=buffer(750, 9))  # between 70 % and 80 %: still open
    assert evaluate(engine, T0 + 30) == []
    see(db, "gw-1", T0 + 40, buffer=buffer(100, 9))
    assert [a.rule for a in evaluate(engine, T0 + 40)] == ["buffer-filling"]
    see(db, "gw-1", T0 + 700, buffer=buffer(100, 9))  # no eviction for the window
    assert [a.rule for a in evaluate(engine, T0 + 700)] == ["buffer-evicting"]


def defects(device_id: str, camera: str, label: str, times: list[float],
            first_seq: int) -> UplinkBatch:
    records = []
    for i, at in enumerate(times):
        payload = {**defect_payload(first_seq + i, camera), "label": label}
        records.append(UplinkRecord(seq=first_seq + i, type="defect", created_at=at,
                                    payload=payload))
    return UplinkBatch(device_id=device_id, records=records)


def test_defect_rate_needs_the_minimum_count_and_compares_with_the_baseline(
        db: CentralDB) -> None:
    engine = AlertEngine(db, config({
        "name": "defect-rate", "kind": "defect_rate", "window_s": 3600, "min_count": 5,
        "threshold": 3.0, "baseline_days": 7, "resolve_after_s": 0}), OFFLINE_AFTER_S)
    # The baseline: 2 scratches an hour on cam-a for the week before.
    week = [T0 - 3600 - h * 1800.0 for h in range(1, 7 * 48)]
    db.store_batch(defects("gw-1", "cam-a", "scratch", week, 1))
    # Now: 4 pits on cam-b (under the minimum, never fires) and 7 scratches (3.5x baseline).
    db.store_batch(defects("gw-1", "cam-b", "pit", [T0 - 60 * i for i in range(4)], 10_000))
    db.store_batch(defects("gw-1", "cam-a", "scratch", [T0 - 60 * i for i in range(7)],
                           20_000))
    fired = evaluate(engine, T0)
    assert [a.group_key for a in fired] == ["device=gw-1/camera=cam-a/class=scratch"]
    assert "7 in the last 60 min" in fired[0].summary and fired[0].value == pytest.approx(
        3.5, rel=0.01)
    # An hour later the burst is outside the window: resolved.
    assert [a.state for a in evaluate(engine, T0 + 3601)] == ["resolved"]


def test_a_model_rolled_back_fires_for_the_window(db: CentralDB) -> None:
    engine = AlertEngine(db, config({"name": "model-rolled-back", "kind": "model_rolled_back",
                                     "window_s": 600, "resolve_after_s": 0}), OFFLINE_AFTER_S)
    see(db, "gw-1", T0)
    db._db.execute(
        "INSERT INTO deployments (command_id, device_id, model_name, version, issued_at, state,"
        " detail, updated_at, kind) VALUES ('c1', 'gw-1', 'surface', '2.0.0', ?, 'rolled_back',"
        " 'health check failed: errors 40%', ?, 'model')", (T0, T0))
    fired = evaluate(engine, T0 + 1)
    assert [a.group_key for a in fired] == ["device=gw-1/model=surface"]
    assert "health check failed" in fired[0].summary
    assert [a.state for a in evaluate(engine, T0 + 602)] == ["resolved"]


def test_a_silenced_alert_shows_but_notifies_no_route(db: CentralDB) -> None:
    engine = AlertEngine(db, config({"name": "gateway-offline", "kind": "gateway_offline"}),
                         OFFLINE_AFTER_S)
    db.silence_rule("gateway-offline", "", T0 + 10**9, "line 3 in maintenance", "ann")
    db.update_status(status("gw-1", "offline", at=T0))
    assert len(evaluate(engine, T0)) == 1
    assert notifications(db) == []


def test_a_new_camera_is_not_judged_until_it_has_a_day_of_history_but_a_rare_class_is(
        db: CentralDB) -> None:
    engine = AlertEngine(db, config({
        "name": "defect-rate", "kind": "defect_rate", "window_s": 3600, "min_count": 5}),
        OFFLINE_AFTER_S)
    # cam-new started 2 hours ago with 30 scratches an hour: no baseline yet, no alert.
    db.store_batch(defects("gw-1", "cam-new", "scratch",
                           [T0 - 60 * i for i in range(120)], 1))
    # cam-old has two days of scratches; a burst of a class it never had (pit) is judged
    # against the floor of 1 an hour.
    db.store_batch(defects("gw-1", "cam-old", "scratch",
                           [T0 - 3600 - 3600 * h for h in range(48)], 1000))
    db.store_batch(defects("gw-1", "cam-old", "pit", [T0 - 30 * i for i in range(6)], 2000))
    fired = evaluate(engine, T0)
    assert [a.group_key for a in fired] == ["device=gw-1/camera=cam-old/class=pit"]
    assert "against 1.0/h" in fired[0].summary


def test_a_started_engine_evaluates_at_once_not_after_its_first_interval(
        db: CentralDB) -> None:
    engine = AlertEngine(db, config({"name": "gateway-offline", "kind": "gateway_offline"},
                                    evaluate_interval_s=3600), OFFLINE_AFTER_S)
    db.update_status(status("gw-1", "offline"))

    async def started() -> None:
        task = asyncio.create_task(engine.run())
        try:
            async with asyncio.timeout(10):
                while not db.open_alerts():
                    await asyncio.sleep(0.02)
        finally:
            task.cancel()

    asyncio.run(started())
    assert engine.evaluations == 1 and engine.leading


def test_a_device_known_only_from_its_records_is_not_called_offline(db: CentralDB) -> None:
    engine = AlertEngine(db, config({"name": "gateway-offline", "kind": "gateway_offline"}),
                         OFFLINE_AFTER_S)
    db.store_batch(defects("imported-gw", "cam", "scratch", [T0], 1))  # no status ever
    assert evaluate(engine, T0 + 10 * OFFLINE_AFTER_S) == []
    db.update_status(status("imported-gw", "offline", at=T0))
    assert len(evaluate(engine, T0 + 10 * OFFLINE_AFTER_S)) == 1

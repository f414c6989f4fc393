"""Central's `/metrics` counts open alerts by rule, severity and acknowledgement, and the
alert notifications waiting or given up (SQLite and PostgreSQL)."""

from __future__ import annotations

import time

from prometheus_client import generate_latest

from central_sync.db import CentralDB
from central_sync.metrics import central_registry
from tests.helpers import Scrape


def _scrape(db: CentralDB) -> Scrape:
    return Scrape(generate_latest(central_registry(db, offline_after_s=120)).decode())


def _notify(alert: object) -> list[tuple[str, str, float]]:
    return [("ops-webhook", "{}", 0.0)]


def test_open_alerts_by_rule_severity_and_acknowledgement(db: CentralDB) -> None:
    assert not any(name == "central_sync_alerts_open" for name in _scrape(db).names())
    alerts = [db.fire_alert("source-down", f"device=gw-{i}", kind="source_down",
                            severity="critical", summary="down", devices=[f"gw-{i}"],
                            notify=_notify) for i in range(3)]
    drift = db.fire_alert("drift", "device=gw-1/model=m", kind="drift", severity="warning",
                          summary="drift", devices=["gw-1"])
    assert all(alerts) and drift is not None
    db.ack_alert(alerts[0].alert_id, "anna", "on it")  # type: ignore[union-attr]
    db.resolve_alert(alerts[2].alert_id, notify=_notify)  # type: ignore[union-attr]

    metrics = _scrape(db)
    assert metrics.value("central_sync_alerts_open", rule="source-down", severity="critical",
                         acked="true") == 1
    assert metrics.value("central_sync_alerts_open", rule="source-down", severity="critical",
                         acked="false") == 1
    assert metrics.value("central_sync_alerts_open", rule="drift", severity="warning",
                         acked="false") == 1
    assert sum(v for (name, _), v in metrics.samples.items()
               if name == "central_sync_alerts_open") == 3


def test_notifications_pending_and_dead(db: CentralDB) -> None:
    metrics = _scrape(db)
    assert metrics.value("central_sync_alert_notifications", state="pending") == 0
    assert metrics.value("central_sync_alert_notifications", state="dead") == 0
    for i in range(2):
        db.fire_alert("source-down", f"device=gw-{i}", kind="source_down", severity="critical",
                      summary="down", devices=[f"gw-{i}"], notify=_notify)
    [first, _] = db.due_notifications(time.time() + 1)
    db.record_attempt(first.notification_id, time.time(), False, 3.0, "HTTP 503", dead=True)

    metrics = _scrape(db)
    assert metrics.value("central_sync_alert_notifications", state="pending") == 1
    assert metrics.value("central_sync_alert_notifications", state="dead") == 1

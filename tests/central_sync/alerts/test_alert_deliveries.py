"""The notification queue in central's database: due, attempts, dead letters, retry (SQLite
and PostgreSQL)."""

from __future__ import annotations

import time

import pytest

from central_sync.db import CentralDB
from central_sync.db.alert_deliveries import NotificationNotFound


def enqueue(db: CentralDB, route: str = "ops", not_before: float = 0.0) -> str:
    return db.enqueue_notification("a1", "fired", route, '{"summary": "x"}', not_before)


def test_due_notifications_are_the_pending_ones_whose_time_came_oldest_first(
        db: CentralDB) -> None:
    first = enqueue(db, "one")
    second = enqueue(db, "two")
    later = enqueue(db, "later", not_before=time.time() + 3600)
    due = db.due_notifications(time.time() + 1)
    assert [n.notification_id for n in due] == [first, second]
    assert later not in {n.notification_id for n in due}
    assert db.next_notification_due() == pytest.approx(due[0].next_attempt_at)


def test_a_claimed_notification_is_not_due_again_until_its_hold_ends(db: CentralDB) -> None:
    notification_id = enqueue(db)
    now = time.time() + 1
    assert [n.notification_id for n in db.due_notifications(now, hold_s=30)] == [
        notification_id]
    assert db.due_notifications(now + 29) == []
    assert [n.notification_id for n in db.due_notifications(now + 31)] == [notification_id]


def test_attempts_are_recorded_and_settle_the_notification(db: CentralDB) -> None:
    notification_id = enqueue(db)
    now = time.time()
    db.record_attempt(notification_id, now, False, 12.5, "HTTP 503: busy",
                      next_attempt_at=now + 5)
    failed = db.get_notification(notification_id)
    assert failed is not None
    assert (failed.state, failed.attempts, failed.last_error) == ("pending", 1, "HTTP 503: busy")
    assert failed.next_attempt_at == pytest.approx(now + 5)
    db.record_attempt(notification_id, now + 5, True, 3.0, "HTTP 200")
    delivered = db.get_notification(notification_id)
    assert delivered is not None
    assert (delivered.state, delivered.attempts) == ("delivered", 2)
    assert delivered.delivered_at == pytest.approx(now + 5)
    assert [(a.ok, a.detail) for a in db.notification_attempts(notification_id)] == [
        (False, "HTTP 503: busy"), (True, "HTTP 200")]
    assert db.delivery_summary() == {"pending": 0, "dead": 0}


def test_a_dead_letter_is_retried_with_fresh_attempts_and_audited(db: CentralDB) -> None:
    notification_id = enqueue(db)
    db.record_attempt(notification_id, time.time(), False, 1.0, "connection refused",
                      dead=True)
    assert [n.notification_id for n in db.dead_letters()] == [notification_id]
    assert db.delivery_summary() == {"pending": 0, "dead": 1}
    assert db.due_notifications(time.time() + 3600) == []

    retried = db.retry_notification(notification_id, by="erin")
    assert (retried.state, retried.attempts) == ("pending", 0)
    assert [n.notification_id for n in db.due_notifications(time.time() + 1)] == [
        notification_id]
    audit = next(e for e in db.list_audit() if e["action"] == "alert.notification.retry")
    assert (audit["actor"], audit["subject"]) == ("erin", notification_id)
    with pytest.raises(ValueError, match="only a dead one"):
        db.retry_notification(notification_id, by="erin")
    with pytest.raises(NotificationNotFound, match="alerts page"):
        db.retry_notification("n-none", by="erin")


def test_notifications_of_an_alert_in_the_order_enqueued(db: CentralDB) -> None:
    ids = [enqueue(db, route) for route in ("a", "b")]
    db.enqueue_notification("a2", "fired", "a", "{}", 0.0)
    assert [n.notification_id for n in db.notifications_for("a1")] == ids


def test_a_resolved_notification_waits_for_the_fired_one_of_its_alert_and_route(
        db: CentralDB) -> None:
    fired = enqueue(db, "scada")
    other_route = enqueue(db, "ops")
    resolved = db.enqueue_notification("a1", "resolved", "scada", "{}", 0.0)
    now = time.time() + 1
    assert {n.notification_id for n in db.due_notifications(now)} == {fired, other_route}
    db.record_attempt(fired, now, False, 1.0, "broker down", next_attempt_at=now + 60)
    assert {n.notification_id for n in db.due_notifications(now)} == {other_route}
    db.record_attempt(fired, now, False, 1.0, "broker down", dead=True)
    assert {n.notification_id for n in db.due_notifications(now)} == {other_route, resolved}

"""Delivery of alert notifications as central stores it: what is due, every attempt, the dead
letters and their retry (part of CentralDB).

The engine enqueues notifications (db/alerts.py); the delivery worker reads and settles them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from central_sync.db.connection import Connection, serialised

NOTIFICATION_STATES = ("pending", "delivered", "dead")
MAX_DETAIL_CHARS = 500  # an attempt's detail (a receiver's error body is cut to this)
_COLUMNS = ("notification_id, alert_id, event, route, state, attempts, next_attempt_at, "
            "created_at, delivered_at, last_error, payload")

# One at a time per alert and route, in order: a "resolved" never overtakes the "fired" still
# being retried (the SCADA topic's retained alert would stay).
_NOTHING_BEFORE = ("NOT EXISTS (SELECT 1 FROM alert_notifications o WHERE o.alert_id = "
                   "n.alert_id AND o.route = n.route AND o.state = 'pending' AND "
                   "o.created_at < n.created_at)")


class NotificationNotFound(LookupError):
    """No notification with that id; the message says where to find them."""


@dataclass(frozen=True)
class Notification:
    """One message about one alert change for one route, until delivered or given up."""

    notification_id: str
    alert_id: str
    event: str  # fired | resolved | test
    route: str
    state: str  # pending | delivered | dead
    attempts: int
    next_attempt_at: float
    created_at: float
    delivered_at: float | None
    last_error: str
    payload: str  # JSON of central_sync.alert_rules.AlertMessage


@dataclass(frozen=True)
class Attempt:
    notification_id: str
    at: float
    ok: bool
    duration_ms: float | None
    detail: str


def _notification(row: dict[str, Any]) -> Notification:
    return Notification(**{**row, "attempts": int(row["attempts"])})


class AlertDeliveryQueries:
    """Due notifications, attempts, dead letters; mixed into CentralDB, whose connection,
    lock and audit it uses."""

    _db: Connection
    _audit: Callable[[str, str, str, str], None]

    @serialised
    def due_notifications(self, now: float, limit: int = 50,
                          hold_s: float | None = None) -> list[Notification]:
        """Pending notifications whose time has come, oldest first, each only once those
        enqueued before it for its alert and route are settled. With `hold_s` they are
        claimed: not due again for `hold_s`, so a send that never reports back (the process
        died) is retried then rather than lost, and no second sender takes them meanwhile."""
        with self._db.atomic():
            due = [_notification(row) for row in self._db.query(
                f"SELECT {_COLUMNS} FROM alert_notifications n WHERE state = 'pending' AND "
                f"next_attempt_at <= ? AND {_NOTHING_BEFORE} "
                "ORDER BY next_attempt_at, created_at LIMIT ?", (now, limit))]
            if hold_s is not None and due:
                self._db.executemany(
                    "UPDATE alert_notifications SET next_attempt_at = ? "
                    "WHERE notification_id = ? AND state = 'pending'",
                    [(now + hold_s, n.notification_id) for n in due])
        return due

    @serialised
    def next_notification_due(self) -> float | None:
        """When the next pending notification is due (epoch seconds); None when none is."""
        row = next(self._db.query(
            "SELECT MIN(next_attempt_at) AS at FROM alert_notifications n WHERE "
            f"state = 'pending' AND {_NOTHING_BEFORE}"))
        return row["at"]

    @serialised
    def record_attempt(self, notification_id: str, at: float, ok: bool, duration_ms: float,
                       detail: str, next_attempt_at: float | None = None,
                       dead: bool = False) -> None:
        """Record one delivery attempt and settle the notification in one transaction:
        delivered when `ok`, else dead when `dead`, else pending until `next_attempt_at`."""
        detail = detail[:MAX_DETAIL_CHARS]
        state = "delivered" if ok else "dead" if dead else "pending"
        with self._db.atomic():
            self._db.execute(
                "INSERT INTO alert_attempts (notification_id, at, ok, duration_ms, detail) "
                "VALUES (?, ?, ?, ?, ?)", (notification_id, at, int(ok), duration_ms, detail))
            self._db.execute(
                "UPDATE alert_notifications SET attempts = attempts + 1, state = ?, "
                "last_error = CASE WHEN ? = 1 THEN last_error ELSE ? END, "
                "delivered_at = CASE WHEN ? = 1 THEN ? ELSE delivered_at END, "
                "next_attempt_at = COALESCE(?, next_attempt_at) "
                "WHERE notification_id = ? AND state = 'pending'",
                (state, int(ok), detail, int(ok), at, next_attempt_at, notification_id))

    @serialised
    def get_notification(self, notification_id: str) -> Notification | None:
        row = next(self._db.query(f"SELECT {_COLUMNS} FROM alert_notifications WHERE "
                                  "notification_id = ?", (notification_id,)), None)
        return None if row is None else _notification(row)

    @serialised
    def dead_letters(self, limit: int = 100) -> list[Notification]:
        """Notifications given up after their last attempt, newest first."""
        return [_notification(row) for row in self._db.query(
            f"SELECT {_COLUMNS} FROM alert_notifications WHERE state = 'dead' "
            "ORDER BY created_at DESC LIMIT ?", (limit,))]

    @serialised
    def retry_notification(self, notification_id: str, by: str,
                           now: float | None = None) -> Notification:
        """Send a dead notification again, now, with a fresh set of attempts. Audited."""
        now = time.time() if now is None else now
        with self._db.atomic():
            row = next(self._db.query(f"SELECT {_COLUMNS} FROM alert_notifications WHERE "
                                      "notification_id = ?", (notification_id,)), None)
            if row is None:
                raise NotificationNotFound(
                    f"no notification {notification_id}; the dead ones are listed on the "
                    "alerts page")
            notification = _notification(row)
            if notification.state != "dead":
                raise ValueError(f"notification {notification_id} is {notification.state}; "
                                 "only a dead one (given up) is retried")
            self._db.execute(
                "UPDATE alert_notifications SET state = 'pending', attempts = 0, "
                "next_attempt_at = ? WHERE notification_id = ? AND state = 'dead'",
                (now, notification_id))
            self._audit(by, "alert.notification.retry", notification_id,
                        f"route {notification.route}, {notification.event} of alert "
                        f"{notification.alert_id}; last error: {notification.last_error}")
        return Notification(**{**notification.__dict__, "state": "pending", "attempts": 0,
                               "next_attempt_at": now})

    @serialised
    def notifications_for(self, alert_id: str) -> list[Notification]:
        """Every notification of one alert, in the order enqueued."""
        return [_notification(row) for row in self._db.query(
            f"SELECT {_COLUMNS} FROM alert_notifications WHERE alert_id = ? "
            "ORDER BY created_at, route", (alert_id,))]

    @serialised
    def notification_attempts(self, notification_id: str) -> list[Attempt]:
        return [Attempt(row["notification_id"], row["at"], bool(row["ok"]),
                        row["duration_ms"], row["detail"]) for row in self._db.query(
            "SELECT notification_id, at, ok, duration_ms, detail FROM alert_attempts "
            "WHERE notification_id = ? ORDER BY at", (notification_id,))]

    @serialised
    def delivery_summary(self) -> dict[str, int]:
        """{"pending": n, "dead": n}: what waits to be sent, what was given up."""
        counts = {row["state"]: int(row["n"]) for row in self._db.query(
            "SELECT state, COUNT(*) AS n FROM alert_notifications WHERE state IN "
            "('pending', 'dead') GROUP BY state")}
        return {"pending": counts.get("pending", 0), "dead": counts.get("dead", 0)}

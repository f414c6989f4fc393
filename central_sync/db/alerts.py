"""Alerts as central stores them: open and past alerts, the conditions held towards them,
acknowledgements, silences, and the notifications each change enqueues (part of CentralDB).

One open alert per rule and group (a unique index), whichever central process fires it.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from central_sync.db.connection import Connection, serialised

MAX_REASON_CHARS = 500
ALERT_STATES = ("firing", "resolved")

# What the engine hands fire/resolve to enqueue in the same transaction: per route, its name,
# the message (JSON) and when it may be sent first (quiet hours).
Notify = Callable[["Alert"], Sequence[tuple[str, str, float]]]


class AlertNotFound(LookupError):
    """No alert with that id; the message says how to list them."""


@dataclass(frozen=True)
class Alert:
    alert_id: str
    rule: str
    kind: str
    group_key: str
    severity: str
    state: str  # firing | resolved
    summary: str
    devices: tuple[str, ...]
    labels: dict[str, str]
    operator: bool
    value: float | None
    threshold: float | None
    started_at: float  # when the condition first held
    fired_at: float
    resolved_at: float | None
    updated_at: float
    acked_by: str | None
    acked_at: float | None
    ack_reason: str | None
    silenced_until: float | None = None  # filled by reads from the silences in force
    silence_reason: str | None = None

    @property
    def open(self) -> bool:
        return self.state == "firing"

    def duration_s(self, now: float) -> float:
        return (self.resolved_at or now) - self.fired_at


@dataclass(frozen=True)
class AlertEvent:
    alert_id: str
    at: float
    event: str  # fired | resolved | acked | silenced | unsilenced
    actor: str
    detail: str


@dataclass(frozen=True)
class Silence:
    rule: str
    group_key: str  # "" silences every alert of the rule
    until: float
    reason: str
    created_by: str
    created_at: float

    def covers(self, rule: str, group_key: str) -> bool:
        return self.rule == rule and self.group_key in ("", group_key)


@dataclass(frozen=True)
class AlertSummary:
    """What the banner on every page says."""

    open: int
    unacked: int
    critical: int  # open, critical and not acknowledged
    silenced: int
    newest: Alert | None


def _alert(row: dict[str, Any]) -> Alert:
    return Alert(
        alert_id=row["alert_id"], rule=row["rule"], kind=row["kind"],
        group_key=row["group_key"], severity=row["severity"], state=row["state"],
        summary=row["summary"], devices=tuple(json.loads(row["devices"])),
        labels=json.loads(row["labels"]), operator=bool(row["operator"]), value=row["value"],
        threshold=row["threshold"], started_at=row["started_at"], fired_at=row["fired_at"],
        resolved_at=row["resolved_at"], updated_at=row["updated_at"],
        acked_by=row["acked_by"], acked_at=row["acked_at"], ack_reason=row["ack_reason"])


def _reason(reason: str, doing: str) -> str:
    reason = reason.strip()
    if not reason:
        raise ValueError(f"{doing} needs a reason (what is being done about it), for the "
                         "people on the next shift")
    if len(reason) > MAX_REASON_CHARS:
        raise ValueError(f"the reason has {len(reason)} characters; at most "
                         f"{MAX_REASON_CHARS}")
    return reason


def new_alert_id(now: float) -> str:
    """Sortable by time, unique across central processes."""
    return f"a{int(now * 1000):x}{secrets.token_hex(3)}"


class AlertQueries:
    """Alerts, their events, silences and enqueued notifications; mixed into CentralDB, whose
    connection, lock and audit it uses."""

    _db: Connection
    _audit: Callable[[str, str, str, str], None]

    # --- reads ----------------------------------------------------------------------------

    def _with_silences(self, alerts: list[Alert], now: float) -> list[Alert]:
        silences = self._silences_in_force(now)
        if not silences:
            return alerts
        out = []
        for alert in alerts:
            found = next((s for s in silences if s.covers(alert.rule, alert.group_key)), None)
            out.append(alert if found is None else replace(
                alert, silenced_until=found.until, silence_reason=found.reason))
        return out

    def _silences_in_force(self, now: float) -> list[Silence]:
        return [Silence(**row) for row in self._db.query(
            "SELECT rule, group_key, until, reason, created_by, created_at FROM alert_silences "
            "WHERE until > ? ORDER BY until", (now,))]

    @serialised
    def open_alerts(self, device_id: str | None = None,
                    operator_only: bool = False) -> list[Alert]:
        """Firing alerts, newest first; of one device, or only those for operators."""
        sql, params = "SELECT * FROM alerts WHERE state = 'firing'", []
        if operator_only:
            sql += " AND operator = 1"
        alerts = [_alert(row) for row in self._db.query(sql + " ORDER BY fired_at DESC",
                                                        params)]
        if device_id is not None:
            alerts = [a for a in alerts if device_id in a.devices]
        return self._with_silences(alerts, time.time())

    @serialised
    def list_alerts(self, state: str | None = None, rule: str | None = None,
                    device_id: str | None = None, severity: str | None = None,
                    since: float | None = None, limit: int = 200) -> list[Alert]:
        """Alerts newest first, filtered; `since` keeps those fired or still open since then."""
        where, params = [], []
        if state is not None:
            if state not in ALERT_STATES:
                raise ValueError(f"state {state!r} is not one of {', '.join(ALERT_STATES)}")
            where.append("state = ?")
            params.append(state)
        if rule:
            where.append("rule = ?")
            params.append(rule)
        if severity:
            where.append("severity = ?")
            params.append(severity)
        if since is not None:
            where.append("(fired_at >= ? OR resolved_at IS NULL OR resolved_at >= ?)")
            params += [since, since]
        if device_id:  # ids are letters, digits and . _ -: no LIKE wildcard in them but _
            where.append("devices LIKE ?")
            params.append(f'%"{device_id}"%')
        sql = "SELECT * FROM alerts" + (" WHERE " + " AND ".join(where) if where else "")
        rows = self._db.query(sql + " ORDER BY fired_at DESC LIMIT ?", (*params, limit))
        alerts = [_alert(row) for row in rows]
        if device_id:
            alerts = [a for a in alerts if device_id in a.devices]
        return self._with_silences(alerts, time.time())

    @serialised
    def get_alert(self, alert_id: str) -> Alert | None:
        row = next(self._db.query("SELECT * FROM alerts WHERE alert_id = ?", (alert_id,)), None)
        return None if row is None else self._with_silences([_alert(row)], time.time())[0]

    @serialised
    def alert_events(self, alert_id: str) -> list[AlertEvent]:
        return [AlertEvent(**row) for row in self._db.query(
            "SELECT alert_id, at, event, actor, detail FROM alert_events WHERE alert_id = ? "
            "ORDER BY at", (alert_id,))]

    @serialised
    def alert_summary(self, now: float | None = None) -> AlertSummary:
        now = time.time() if now is None else now
        alerts = self._with_silences([_alert(row) for row in self._db.query(
            "SELECT * FROM alerts WHERE state = 'firing' ORDER BY fired_at DESC")], now)
        return AlertSummary(
            open=len(alerts), unacked=sum(a.acked_at is None for a in alerts),
            critical=sum(a.severity == "critical" and a.acked_at is None for a in alerts),
            silenced=sum(a.silenced_until is not None for a in alerts),
            newest=alerts[0] if alerts else None)

    @serialised
    def active_silences(self, now: float | None = None) -> list[Silence]:
        return self._silences_in_force(time.time() if now is None else now)

    # --- people ---------------------------------------------------------------------------

    def _must_get(self, alert_id: str) -> Alert:
        row = next(self._db.query("SELECT * FROM alerts WHERE alert_id = ?", (alert_id,)), None)
        if row is None:
            raise AlertNotFound(f"no alert {alert_id}; list them with `central-sync alerts "
                                "list --all` or on the alerts page")
        return _alert(row)

    @serialised
    def ack_alert(self, alert_id: str, by: str, reason: str,
                  now: float | None = None) -> Alert:
        """Acknowledge an open alert: someone is on it. Audited."""
        reason = _reason(reason, "acknowledging an alert")
        now = time.time() if now is None else now
        with self._db.atomic():
            alert = self._must_get(alert_id)
            if not alert.open:
                raise ValueError(f"alert {alert_id} resolved already; only open alerts are "
                                 "acknowledged")
            self._db.execute("UPDATE alerts SET acked_by = ?, acked_at = ?, ack_reason = ?, "
                             "updated_at = ? WHERE alert_id = ?",
                             (by, now, reason, now, alert_id))
            self._event(alert_id, now, "acked", by, reason)
            self._audit(by, "alert.ack", alert_id, f"{alert.rule} {alert.group_key}: {reason}")
        return replace(alert, acked_by=by, acked_at=now, ack_reason=reason, updated_at=now)

    @serialised
    def silence_alert(self, alert_id: str, until: float, reason: str, by: str) -> Silence:
        """Send nothing more about this alert's rule and group until `until`. Audited."""
        with self._db.atomic():
            alert = self._must_get(alert_id)
            return self.silence_rule(alert.rule, alert.group_key, until, reason, by)

    @serialised
    def silence_rule(self, rule: str, group_key: str, until: float, reason: str,
                     by: str) -> Silence:
        """Silence a rule for one group, or (group_key "") for all: maintenance. Audited."""
        reason = _reason(reason, "silencing an alert")
        now = time.time()
        if until <= now:
            raise ValueError("a silence must end in the future")
        silence = Silence(rule, group_key, until, reason, by, now)
        with self._db.atomic():
            self._db.execute("DELETE FROM alert_silences WHERE rule = ? AND group_key = ?",
                             (rule, group_key))
            self._db.execute(
                "INSERT INTO alert_silences (rule, group_key, until, reason, created_by, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (rule, group_key, until, reason, by, now))
            for row in self._db.query("SELECT alert_id, group_key FROM alerts WHERE rule = ? "
                                      "AND state = 'firing'", (rule,)):
                if silence.covers(rule, row["group_key"]):
                    self._event(row["alert_id"], now, "silenced", by,
                                f"until {time.strftime('%Y-%m-%d %H:%M', time.localtime(until))}"
                                f": {reason}")
            self._audit(by, "alert.silence", f"{rule} {group_key or '(all)'}",
                        f"until={until:.0f} {reason}")
        return silence

    @serialised
    def lift_silence(self, rule: str, group_key: str, by: str) -> bool:
        now = time.time()
        with self._db.atomic():
            lifted = self._db.execute(
                "DELETE FROM alert_silences WHERE rule = ? AND group_key = ? AND until > ?",
                (rule, group_key, now)) > 0
            if lifted:
                for row in self._db.query("SELECT alert_id, group_key FROM alerts WHERE "
                                          "rule = ? AND state = 'firing'", (rule,)):
                    if group_key in ("", row["group_key"]):
                        self._event(row["alert_id"], now, "unsilenced", by, "")
                self._audit(by, "alert.unsilence", f"{rule} {group_key or '(all)'}", "")
        return lifted

    # --- the engine -----------------------------------------------------------------------

    def _event(self, alert_id: str, at: float, event: str, actor: str, detail: str) -> None:
        self._db.execute("INSERT INTO alert_events (alert_id, at, event, actor, detail) "
                         "VALUES (?, ?, ?, ?, ?)", (alert_id, at, event, actor, detail))

    def _enqueue(self, alert: Alert, notify: Notify | None, event: str, now: float) -> None:
        for route, payload, not_before in (notify(alert) if notify else ()):
            self._insert_notification(alert.alert_id, event, route, payload,
                                      max(now, not_before), now)

    def _insert_notification(self, alert_id: str, event: str, route: str, payload: str,
                             not_before: float, now: float) -> str:
        notification_id = f"n{secrets.token_hex(8)}"
        self._db.execute(
            "INSERT INTO alert_notifications (notification_id, alert_id, event, route, state, "
            "next_attempt_at, created_at, payload) VALUES (?, ?, ?, ?, 'pending', ?, ?, ?)",
            (notification_id, alert_id, event, route, not_before, now, payload))
        return notification_id

    @serialised
    def enqueue_notification(self, alert_id: str, event: str, route: str, payload: str,
                             not_before: float) -> str:
        now = time.time()
        with self._db.atomic():
            return self._insert_notification(alert_id, event, route, payload,
                                             max(now, not_before), now)

    @serialised
    def fire_alert(self, rule: str, group_key: str, *, kind: str, severity: str,
                   summary: str, devices: Sequence[str] = (),
                   labels: dict[str, str] | None = None, operator: bool = False,
                   value: float | None = None, threshold: float | None = None,
                   started_at: float | None = None, now: float | None = None,
                   notify: Notify | None = None, actor: str = "central") -> Alert | None:
        """Open an alert and enqueue its notifications in one transaction; None when one is
        open for this rule and group already (another process fired it)."""
        now = time.time() if now is None else now
        alert = Alert(
            alert_id=new_alert_id(now), rule=rule, kind=kind, group_key=group_key,
            severity=severity, state="firing", summary=summary, devices=tuple(devices),
            labels=dict(labels or {}), operator=operator, value=value, threshold=threshold,
            started_at=now if started_at is None else started_at, fired_at=now,
            resolved_at=None, updated_at=now, acked_by=None, acked_at=None, ack_reason=None)
        with self._db.atomic():
            if next(self._db.query("SELECT 1 FROM alerts WHERE rule = ? AND group_key = ? AND "
                                   "state = 'firing'", (rule, group_key)), None):
                return None
            self._db.execute(
                "INSERT INTO alerts (alert_id, rule, kind, group_key, severity, state, summary,"
                " devices, labels, operator, value, threshold, started_at, fired_at, "
                "updated_at) VALUES (?, ?, ?, ?, ?, 'firing', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (alert.alert_id, rule, kind, group_key, severity, summary,
                 json.dumps(list(alert.devices)), json.dumps(alert.labels), int(operator),
                 value, threshold, alert.started_at, now, now))
            self._event(alert.alert_id, now, "fired", actor, summary)
            self._enqueue(alert, notify, "fired", now)
        return alert

    @serialised
    def update_open_alert(self, alert_id: str, value: float | None, summary: str,
                          devices: Sequence[str], now: float | None = None) -> None:
        """The latest value of a firing alert (and the devices of its line still concerned)."""
        now = time.time() if now is None else now
        self._db.execute("UPDATE alerts SET value = ?, summary = ?, devices = ?, updated_at = ? "
                         "WHERE alert_id = ? AND state = 'firing'",
                         (value, summary, json.dumps(list(devices)), now, alert_id))

    @serialised
    def resolve_alert(self, alert_id: str, now: float | None = None,
                      notify: Notify | None = None, actor: str = "central",
                      detail: str = "") -> Alert | None:
        """Close a firing alert and enqueue its notifications; None if it was not open."""
        now = time.time() if now is None else now
        with self._db.atomic():
            alert = self._must_get(alert_id)
            if not alert.open:
                return None
            self._db.execute("UPDATE alerts SET state = 'resolved', resolved_at = ?, "
                             "updated_at = ? WHERE alert_id = ? AND state = 'firing'",
                             (now, now, alert_id))
            resolved = replace(alert, state="resolved", resolved_at=now, updated_at=now)
            self._event(alert_id, now, "resolved", actor, detail)
            self._enqueue(resolved, notify, "resolved", now)
        return resolved

    @serialised
    def alert_conditions(self) -> dict[tuple[str, str], tuple[float | None, float | None]]:
        """(rule, group_key) -> (breach_since, clear_since): what is held towards a change."""
        return {(row["rule"], row["group_key"]): (row["breach_since"], row["clear_since"])
                for row in self._db.query("SELECT * FROM alert_conditions")}

    @serialised
    def save_alert_conditions(
            self, held: dict[tuple[str, str], tuple[float | None, float | None]]) -> None:
        """Replace the held conditions with `held` (one transaction)."""
        with self._db.atomic():
            self._db.execute("DELETE FROM alert_conditions")
            self._db.executemany(
                "INSERT INTO alert_conditions (rule, group_key, breach_since, clear_since) "
                "VALUES (?, ?, ?, ?)",
                [(rule, key, breach, clear) for (rule, key), (breach, clear) in held.items()])

    @serialised
    def observations(self, prefix: str) -> dict[str, tuple[float, float]]:
        """key -> (value, changed_at) of the counters the engine watches for change."""
        return {row["key"]: (row["value"], row["changed_at"]) for row in self._db.query(
            "SELECT key, value, changed_at FROM alert_observations WHERE key LIKE ?",
            (prefix + "%",))}

    @serialised
    def save_observations(self, values: dict[str, tuple[float, float]]) -> None:
        with self._db.atomic():
            for key, (value, changed_at) in values.items():
                self._db.execute("DELETE FROM alert_observations WHERE key = ?", (key,))
                self._db.execute("INSERT INTO alert_observations (key, value, changed_at) "
                                 "VALUES (?, ?, ?)", (key, value, changed_at))

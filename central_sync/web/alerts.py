"""The alerts pages: open alerts and their history, one alert with its timeline and every
delivery attempt of its notifications, the dead letters; acknowledging, silencing and
retrying from them; the JSON API and the summary the banner on every page reads.

Acknowledging takes the quality role, silencing and retrying the engineer role; each form
carries the session's CSRF token and is audited by the database call it makes.
"""

import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from central_sync.alert_rules import SEVERITY_RANK, AlertsConfig
from central_sync.db import CentralDB
from central_sync.db.accounts import Session
from central_sync.db.alert_deliveries import NotificationNotFound
from central_sync.db.alerts import Alert, AlertNotFound
from central_sync.web.auth import (
    api_reader,
    checked_form,
    engineer_dependency,
    session_dependencies,
)
from central_sync.web.rendering import templates

FORM_MAX_BYTES = 8192  # a reason of 500 characters, percent-encoded, fits
STATES = {"open": "firing", "resolved": "resolved", "all": None}
MIN_SILENCE_H, MAX_SILENCE_H = 0.25, 168.0
PAGE_LIMIT, API_MAX_LIMIT = 200, 1000
# What ?done= may say on the alerts pages: a code from this list, never text from the link.
DONE = {"acked": "Acknowledged.", "silenced": "Silenced: no notification is sent until the "
        "silence ends; the alert still shows.", "lifted": "Silence lifted.",
        "retried": "The notification is sent again now; its attempts show on its alert's page."}


def alerts_router(db: CentralDB, alerts_config: AlertsConfig | None = None,
                  changed: Callable[[], None] | None = None) -> APIRouter:
    """The pages and API of alerts; `alerts_config` names the rules the filter offers;
    `changed` is called after an acknowledgement (the alert engine's poke)."""
    router = APIRouter()
    session_of, viewer, quality = session_dependencies(db)
    page = Annotated[Session, Depends(viewer)]
    acker = Annotated[Session, Depends(quality)]
    engineer = Annotated[Session, Depends(engineer_dependency(
        session_of, "silencing alerts and retrying notifications"))]
    rule_names = [r.name for r in (alerts_config or AlertsConfig()).effective_rules()]

    @router.get("/alerts", response_class=HTMLResponse)
    def alerts_page(session: page, filters: Annotated[AlertFilter, Depends()],
                    done: str = "") -> str:
        now = time.time()
        alerts = filters.alerts(db, PAGE_LIMIT)
        dead = db.dead_letters()
        dead_alerts = {i: a for i in {n.alert_id for n in dead} if (a := db.get_alert(i))}
        return templates.get_template("alerts.html").render(
            session=session, alerts=[_row(a, now) for a in alerts], filters=filters,
            rules=sorted({*rule_names, *(a.rule for a in alerts)}),
            severities=list(SEVERITY_RANK), silences=db.active_silences(now),
            dead=dead, dead_alerts=dead_alerts, delivery=db.delivery_summary(), limit=PAGE_LIMIT,
            done=DONE.get(done, ""), may_ack=session.user.may("quality"),
            may_engineer=session.user.may("engineer"), back=_back_of(filters))

    @router.get("/alerts/{alert_id}", response_class=HTMLResponse)
    def alert_page(alert_id: str, session: page, done: str = "") -> str:
        alert = _must_find(db, alert_id)
        notifications = [(n, db.notification_attempts(n.notification_id))
                         for n in db.notifications_for(alert_id)]
        return templates.get_template("alert.html").render(
            session=session, alert=_row(alert, time.time()), events=db.alert_events(alert_id),
            notifications=notifications, done=DONE.get(done, ""),
            may_ack=session.user.may("quality"), may_engineer=session.user.may("engineer"),
            back=f"/alerts/{quote(alert_id)}")

    @router.post("/alerts/{alert_id}/ack")
    async def ack(alert_id: str, request: Request, session: acker) -> Response:
        form = await _form(request, session)
        _act(db.ack_alert, alert_id, session.user.username, form.get("reason", ""))
        if changed is not None:  # the gateways' bands show the acknowledgement soon
            changed()
        return _done(form, f"/alerts/{quote(alert_id)}", "acked")

    @router.post("/alerts/{alert_id}/silence")
    async def silence(alert_id: str, request: Request, session: engineer) -> Response:
        form = await _form(request, session)
        until = time.time() + _hours(form.get("hours", "")) * 3600
        _act(db.silence_alert, alert_id, until, form.get("reason", ""), session.user.username)
        return _done(form, f"/alerts/{quote(alert_id)}", "silenced")

    @router.post("/alerts/silences/lift")
    async def lift(request: Request, session: engineer) -> Response:
        form = await _form(request, session)
        rule = form.get("rule", "")
        if not rule:
            raise HTTPException(400, "say which rule's silence to lift (field rule)")
        if not db.lift_silence(rule, form.get("group_key", ""), session.user.username):
            raise HTTPException(404, f"no silence in force for rule {rule} group "
                                f"{form.get('group_key') or '(all)'}; the alerts page lists "
                                "them")
        return _done(form, "/alerts", "lifted")

    @router.post("/alerts/notifications/{notification_id}/retry")
    async def retry(notification_id: str, request: Request, session: engineer) -> Response:
        form = await _form(request, session)
        _act(db.retry_notification, notification_id, session.user.username)
        return _done(form, "/alerts", "retried")

    router.include_router(_alerts_api(db), dependencies=[Depends(api_reader(db))])
    return router


def _alerts_api(db: CentralDB) -> APIRouter:
    """The alerts as JSON (the page's filters) and the banner's summary."""
    router = APIRouter()

    @router.get("/api/alerts")
    def alerts_json(filters: Annotated[AlertFilter, Depends()],
                    limit: int = Query(PAGE_LIMIT, ge=1, le=API_MAX_LIMIT)
                    ) -> list[dict[str, Any]]:
        return [alert_json(a) for a in filters.alerts(db, limit)]

    @router.get("/api/alerts/summary")
    def summary_json() -> dict[str, Any]:
        summary = db.alert_summary()
        return {"open": summary.open, "unacked": summary.unacked,
                "critical": summary.critical, "silenced": summary.silenced,
                "newest": alert_json(summary.newest) if summary.newest else None}

    return router


class AlertFilter:
    """The filters of the alerts page and API, checked: state (open, resolved, all), rule,
    device, severity, and `since` hours back."""

    def __init__(self, state: str = Query("open", pattern="^(open|resolved|all)$"),
                 rule: str = Query("", max_length=200), device: str = Query("", max_length=200),
                 severity: str = Query("", pattern="^(|info|warning|critical)$"),
                 since: float | None = Query(None, gt=0, le=24 * 366,
                                             description="hours back")) -> None:
        self.state, self.rule, self.device = state, rule.strip(), device.strip()
        self.severity, self.since = severity, since

    def alerts(self, db: CentralDB, limit: int) -> list[Alert]:
        since = None if self.since is None else time.time() - self.since * 3600
        return db.list_alerts(state=STATES[self.state], rule=self.rule or None,
                              device_id=self.device or None, severity=self.severity or None,
                              since=since, limit=limit)

    def query(self) -> dict[str, str]:
        """The filters as set, for links that keep them."""
        return {k: str(v) for k, v in (("state", self.state), ("rule", self.rule),
                                       ("device", self.device), ("severity", self.severity),
                                       ("since", self.since)) if v not in ("", None)}


def alert_json(alert: Alert) -> dict[str, Any]:
    """An alert as the API shows it, with the path of its page."""
    return {**asdict(alert), "devices": list(alert.devices), "url": f"/alerts/{alert.alert_id}"}


def duration_text(seconds: float) -> str:
    """3 s, 12 min, 2 h 5 min, 3 d 4 h: how long an alert has been (or was) open."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def _row(alert: Alert, now: float) -> dict[str, Any]:
    return {**asdict(alert), "open": alert.open,
            "duration": duration_text(alert.duration_s(now))}


def _back_of(filters: AlertFilter) -> str:
    query = "&".join(f"{k}={quote(v)}" for k, v in filters.query().items())
    return "/alerts" + (f"?{query}" if query else "")


def _must_find(db: CentralDB, alert_id: str) -> Alert:
    alert = db.get_alert(alert_id)
    if alert is None:
        raise HTTPException(404, f"no alert {alert_id}; the alerts page lists them "
                            "(/alerts?state=all)")
    return alert


def _act(call: Any, *args: Any) -> None:
    """A database action, its refusals turned into the HTTP answer that says why."""
    try:
        call(*args)
    except (AlertNotFound, NotificationNotFound) as exc:
        raise HTTPException(404, str(exc)) from None
    except ValueError as exc:  # no reason or too long, resolved already, not dead
        raise HTTPException(400, str(exc)) from None


def _hours(text: str) -> float:
    try:
        hours = float(text)
    except ValueError:
        hours = -1.0
    if not MIN_SILENCE_H <= hours <= MAX_SILENCE_H:
        raise HTTPException(400, f"silence for {MIN_SILENCE_H:g} to {MAX_SILENCE_H:g} hours "
                            f"(field hours); got {text!r}")
    return hours


def _done(form: dict[str, str], default: str, done: str) -> RedirectResponse:
    """Back to the page the form was on (an alerts page only), saying what was done."""
    back = form.get("back", "")
    if not (back == "/alerts" or back.startswith(("/alerts?", "/alerts/"))):
        back = default
    return RedirectResponse(back + ("&" if "?" in back else "?") + f"done={done}", 303)


async def _form(request: Request, session: Session) -> dict[str, str]:
    return await checked_form(request, session, FORM_MAX_BYTES)

"""A gateway's page, and acting on it: its clock, the configuration it reports, the newest
diagnosis and the live log tail; the Diagnose, Fetch logs and Restart buttons.

The buttons need the engineer role (or admin), the session's CSRF token and, per user and
gateway, at most ACTIONS_PER_MINUTE requests a minute; each sends a signed request over MQTT
(central_sync.diagnostics), recorded and audited. The service stores the answers; the page's
script reads them from /api/devices/ID/diagnostics every few seconds.
"""


import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import quote

import yaml
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from central_sync import diagnostics
from central_sync.db import CentralDB, DeviceSummary
from central_sync.db.accounts import Session
from central_sync.db.diagnostics import DEFAULT_CLOCK_WARN_OFFSET_S, Diagnosis
from central_sync.db.review import DefectFilter
from central_sync.ratelimit import TokenBuckets
from central_sync.web.auth import checked_form, engineer_dependency, session_dependencies
from central_sync.web.rendering import templates
from edge_agent.kernel.contract import (
    ID_PATTERN,
    LOG_LEVELS,
    DiagnoseRequest,
    RestartCommand,
    Topics,
)
from edge_agent.kernel.signing import Signer
from edge_agent.kernel.transport import NotConnected, Transport

log = logging.getLogger(__name__)

ACTIONS_PER_MINUTE = 10
FORM_MAX_BYTES = 1024
TAIL_LINES = 200
PAGE_LOG_REQUEST_LINES = 200
PAGE_FOLLOW_S = 120.0  # Fetch logs also follows the log this long: the tail below goes on live
# What ?done= may say on a device page: a code from this list, never text from the link.
DONE = {"diagnose": "Diagnosis requested; it shows below when the gateway answers.",
        "logs": f"Log lines requested; they show below as they arrive, and new ones for "
                f"{PAGE_FOLLOW_S / 60:g} minutes.",
        "restart": "Restart requested; the gateway's reply shows below."}


@dataclass(frozen=True)
class DeviceActions:
    """What the device page's buttons need: central's MQTT session, its topics and signing
    key; central_sync.service builds it (the web app itself holds no broker session)."""

    transport: Transport
    topics: Topics
    signer: Signer
    clock_warn_offset_s: float = DEFAULT_CLOCK_WARN_OFFSET_S


def device_page(db: CentralDB, session: Session, device_id: str, offline_after_s: float,
                actions: DeviceActions | None, error: str = "", done: str = "",
                status: int = 200) -> HTMLResponse:
    """The device page: 404 when central has not heard from the gateway."""
    found = next((d for d in db.list_devices() if d.device_id == device_id), None)
    if found is None:
        raise HTTPException(404, f"central has not heard from {device_id}")
    diagnosis = db.device_diagnosis(device_id)
    warn_s = actions.clock_warn_offset_s if actions else DEFAULT_CLOCK_WARN_OFFSET_S
    return HTMLResponse(templates.get_template("device.html").render(
        session=session, device=found, presence=found.presence(time.time(), offline_after_s),
        deployments=db.list_deployments(device_id, limit=20), gaps=db.gaps(device_id),
        accounting=db.seq_accounting(device_id),
        defects=db.defect_summary(DefectFilter(device_id=device_id)),
        clock=clock_view(found, warn_s), suspect=db.count_suspect_records(device_id),
        diagnosis=diagnosis, report=report_view(diagnosis), levels=LOG_LEVELS,
        may_act=actions is not None and session.user.may("engineer"),
        requests=db.diagnostic_requests(device_id), error=error, done=DONE.get(done, "")),
        status)


def clock_view(device: DeviceSummary, warn_offset_s: float) -> dict[str, Any]:
    """The clock as the fleet and device pages show it; `warn` past the threshold."""
    offset = device.clock_offset_s
    return {"offset_s": offset, "rtt_ms": device.clock_rtt_ms,
            "measured_at": device.clock_measured_at, "warn_offset_s": warn_offset_s,
            "warn": offset is not None and abs(offset) > warn_offset_s}


def report_view(diagnosis: Diagnosis | None) -> dict[str, Any]:
    """A diagnosis report split for the page: versions, the configuration it names, its
    pipelines' names, the effective configuration and the other sections, as YAML."""
    report = dict(diagnosis.report) if diagnosis else {}
    versions = {key: report.pop(key) for key in ("agent_version", "python", "platform")
                if key in report}
    pipelines = report.get("pipelines")
    names = list(pipelines) if isinstance(pipelines, dict) else [
        p["name"] for p in pipelines or [] if isinstance(p, dict) and "name" in p] \
        if isinstance(pipelines, list) else []
    effective = report.pop("effective_config", None)
    config = report.pop("config", None)
    return {"versions": versions, "config": config,
            "pipelines": [str(name) for name in names],
            "effective": None if effective is None else _yaml(effective),
            "facts": {key: value for key, value in report.items()
                      if not isinstance(value, dict | list)},
            "sections": {key: _yaml(value) for key, value in report.items()
                         if isinstance(value, dict | list)}}


def _yaml(value: Any) -> str:
    return yaml.safe_dump(value, sort_keys=False, default_flow_style=False, allow_unicode=True)


def devices_router(db: CentralDB, offline_after_s: float,
                   actions: DeviceActions | None) -> APIRouter:
    """The device page's JSON (the live part) and its buttons. Without `actions` (a bare app
    in tests) the buttons answer 503."""
    router = APIRouter()
    session_of, viewer, _ = session_dependencies(db)
    page = Annotated[Session, Depends(viewer)]
    engineer = Annotated[Session, Depends(engineer_dependency(session_of, "acting on gateways"))]
    buckets = TokenBuckets(ACTIONS_PER_MINUTE / 60, ACTIONS_PER_MINUTE, max_keys=10_000)

    @router.get("/api/devices/{device_id}/diagnostics")
    def live(device_id: str, session: page, level: str = Query("INFO", pattern=(
            "^(" + "|".join(LOG_LEVELS) + ")$")),
             lines: int = Query(TAIL_LINES, ge=1, le=2000)) -> dict[str, Any]:
        diagnosis = db.device_diagnosis(device_id)
        return {"logs": db.device_logs(device_id, level, lines),
                "diagnosis": {"request_id": diagnosis.request_id, "at": diagnosis.at}
                if diagnosis else None,
                "requests": [r.__dict__ for r in db.diagnostic_requests(device_id)]}

    async def act(request: Request, session: Session, device_id: str, action: str,
                  make: Callable[[dict[str, str], str], Any]) -> Response:
        form = await _small_form(request, session)
        if actions is None:
            raise HTTPException(503, "acting on gateways is not set up on this central")
        refusal = await _refusal(db, device_id, offline_after_s)
        if refusal is None and buckets.take(f"{session.user.username}/{device_id}", 1) < 1:
            refusal = (429, f"at most {ACTIONS_PER_MINUTE} requests a minute per gateway; "
                            "try again in a minute")
        if refusal is None:
            try:
                await diagnostics.send(db, actions.transport, actions.signer, actions.topics,
                                       make(form, session.user.username))
            except NotConnected as exc:
                refusal = (503, f"central is not connected to the broker ({exc}); try again")
        if refusal is not None:
            return await run_in_threadpool(device_page, db, session, device_id, offline_after_s,
                                           actions, refusal[1], "", refusal[0])
        return RedirectResponse(f"/devices/{quote(device_id)}?done={action}", 303)

    @router.post("/devices/{device_id}/diagnose")
    async def diagnose(device_id: str, request: Request, session: engineer) -> Response:
        return await act(request, session, device_id, "diagnose", lambda _form, by:
                         DiagnoseRequest(device_id=device_id, issued_by=by))

    @router.post("/devices/{device_id}/logs")
    async def logs(device_id: str, request: Request, session: engineer) -> Response:
        return await act(request, session, device_id, "logs", lambda form, by:
                         diagnostics.log_request(device_id, by, _level(form),
                                                 PAGE_LOG_REQUEST_LINES, PAGE_FOLLOW_S))

    @router.post("/devices/{device_id}/restart")
    async def restart(device_id: str, request: Request, session: engineer) -> Response:
        return await act(request, session, device_id, "restart", lambda form, by:
                         RestartCommand(device_id=device_id, issued_by=by,
                                        pipeline=_pipeline(form)))

    return router


async def _refusal(db: CentralDB, device_id: str,
                   offline_after_s: float) -> tuple[int, str] | None:
    """(status, why) when the gateway cannot be asked now; 404 when it is unknown."""
    try:
        await run_in_threadpool(diagnostics.require_online, db, device_id, offline_after_s)
    except diagnostics.UnknownDevice as exc:
        raise HTTPException(404, str(exc)) from None
    except diagnostics.DeviceOffline as exc:
        return 409, str(exc)
    return None


def _level(form: dict[str, str]) -> str:
    level = form.get("level", "INFO").upper()
    if level not in LOG_LEVELS:
        raise HTTPException(422, f"level is one of {', '.join(LOG_LEVELS)}")
    return level


def _pipeline(form: dict[str, str]) -> str | None:
    name = form.get("pipeline") or None
    if name is not None and not re.fullmatch(ID_PATTERN, name):
        raise HTTPException(422, "a pipeline name is letters, digits, . _ -")
    return name


async def _small_form(request: Request, session: Session) -> dict[str, str]:
    return await checked_form(request, session, FORM_MAX_BYTES)

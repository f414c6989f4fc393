"""Central's pages for engineers: the fleet table, devices, rollouts (live) and
recommendations (the plant overview: web/overview.py; the audit log: web/audit.py; the models:
web/models.py, with model_health from here, which the drift API and the overview share).
Server-rendered; charts are inline SVG made here."""

import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ValidationError

from central_sync.db import CentralDB
from central_sync.db.accounts import Session
from central_sync.db.diagnostics import DEFAULT_CLOCK_WARN_OFFSET_S
from central_sync.drift import drift_report, latency_percentiles
from central_sync.web.auth import session_dependencies
from central_sync.web.devices import DeviceActions, clock_view, device_page
from central_sync.web.rendering import templates
from edge_agent.kernel.contract import (
    RECORD_RECOMMENDATION,
    RECORD_RECOMMENDATION_ANSWER,
    RECORD_RECOMMENDATION_OUTCOME,
    RecommendationAnswerPayload,
    RecommendationOutcomePayload,
    RecommendationPayload,
)

log = logging.getLogger(__name__)
P = TypeVar("P", bound=BaseModel)

FLEET_REFRESH_S = 5


def pages_router(db: CentralDB, offline_after_s: float,
                 device_actions: DeviceActions | None = None) -> APIRouter:
    router = APIRouter()
    warn_offset_s = device_actions.clock_warn_offset_s if device_actions else \
        DEFAULT_CLOCK_WARN_OFFSET_S
    _, viewer, _ = session_dependencies(db)
    page = Annotated[Session, Depends(viewer)]

    @router.get("/fleet", response_class=HTMLResponse)
    def fleet(session: page) -> str:
        now = time.time()
        devices = [(d, d.presence(now, offline_after_s), clock_view(d, warn_offset_s))
                   for d in db.list_devices()]
        return templates.get_template("fleet.html").render(
            session=session, devices=devices, predictions=db.recent_predictions(20),
            refresh_s=FLEET_REFRESH_S)

    @router.get("/rollouts", response_class=HTMLResponse)
    def rollouts(session: page) -> str:
        return templates.get_template("rollouts.html").render(
            session=session, rollouts=db.list_rollouts(limit=100))

    @router.get("/rollouts/{rollout_id}", response_class=HTMLResponse)
    def rollout(rollout_id: str, session: page) -> str:
        found = db.get_rollout(rollout_id)
        if found is None:
            raise HTTPException(404, f"no rollout {rollout_id}")
        return templates.get_template("rollout.html").render(
            session=session, rollout=found, devices=db.rollout_devices(rollout_id),
            config=db.get_config(found.model_name, int(found.version))
            if found.kind == "config" and found.version.isdigit() else None)

    @router.get("/api/rollouts/{rollout_id}")
    def rollout_json(rollout_id: str, session: page) -> dict[str, Any]:
        found = db.get_rollout(rollout_id)
        if found is None:
            raise HTTPException(404, f"no rollout {rollout_id}")
        return {**found.__dict__,
                "devices": [d.__dict__ for d in db.rollout_devices(rollout_id)]}

    @router.get("/devices/{device_id}", response_class=HTMLResponse)
    def device(device_id: str, session: page, done: str = "") -> HTMLResponse:
        return device_page(db, session, device_id, offline_after_s, device_actions, done=done)

    @router.get("/recommendations", response_class=HTMLResponse)
    def recommendations(session: page) -> str:
        return templates.get_template("recommendations.html").render(
            session=session, rows=recommendation_rows(db))

    return router


@dataclass(frozen=True)
class RecommendationRow:
    """One recommendation offered on a line, the operator's answer and what followed."""

    device_id: str
    offer: RecommendationPayload
    answer: RecommendationAnswerPayload | None
    outcome: RecommendationOutcomePayload | None


def recommendation_rows(db: CentralDB, limit: int = 200) -> list[RecommendationRow]:
    """The newest recommendations with the operator's answer and what the line did after."""
    answers = {a.id: a for _, a in _payloads(db, RECORD_RECOMMENDATION_ANSWER,
                                             RecommendationAnswerPayload, limit * 2)}
    outcomes = {o.id: o for _, o in _payloads(db, RECORD_RECOMMENDATION_OUTCOME,
                                              RecommendationOutcomePayload, limit * 2)}
    return [RecommendationRow(device_id, offer, answers.get(offer.id), outcomes.get(offer.id))
            for device_id, offer in _payloads(db, RECORD_RECOMMENDATION,
                                              RecommendationPayload, limit)]


def _payloads(db: CentralDB, kind: str, model: type[P], limit: int) -> list[tuple[str, P]]:
    """The newest stored payloads of one record kind, typed; one that does not fit its model
    (kept as it came) is left out and logged."""
    payloads = []
    for row in db.recent_records(kind, limit):
        try:
            payloads.append((row["device_id"], model.model_validate(row["payload"])))
        except ValidationError as exc:
            log.warning("%s record not shown device=%s seq=%s: %s", kind, row["device_id"],
                        row["seq"], exc.errors()[0]["msg"])
    return payloads


def model_health(db: CentralDB, name: str, version: str | None,
                 since: float) -> tuple[dict[str, Any], list[Any]] | None:
    """Per device since `since`: predictions, errors, latency, classes and the drift of every
    referenced value (the newest version reported when `version` is None); with the
    intervals it was computed from. None when no device reported this model."""
    stats = db.model_stats(name, version, since)
    if not stats:
        return None
    version = version or stats[-1][1].model.version
    stats = [(device, s) for device, s in stats if s.model.version == version]
    manifest = db.get_model(name, version)
    reference = manifest.meta.reference if manifest else None
    devices = []
    for device_id in sorted({device for device, _ in stats}):
        windows = [s for device, s in stats if device == device_id]
        report = drift_report(reference, windows) if reference is not None else []
        devices.append({
            "device_id": device_id, "intervals": len(windows),
            "predictions": sum(w.predictions for w in windows),
            "errors": sum(w.errors for w in windows),
            "latency_ms": latency_percentiles(windows),
            "labels": dict(sum((Counter(w.labels) for w in windows), Counter())),
            "drift": [d.as_dict() for d in report],
            "drifted": [d.name for d in report if d.drifted]})
    return ({"model": name, "version": version, "since": since,
             "reference": reference is not None, "devices": devices},
            [s for _, s in stats])

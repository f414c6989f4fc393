"""Central's web app: the JSON API, and the pages (fleet, review, models, rollouts, audit).

Served by uvicorn inside the service's asyncio loop; handlers are sync, so FastAPI runs them
(and their database calls) in its thread pool.
"""

from __future__ import annotations

import base64
import ipaddress
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from central_sync import __version__
from central_sync.alert_rules import AlertsConfig
from central_sync.db import CentralDB, DeviceSummary
from central_sync.metrics import central_registry
from central_sync.web.alerts import alerts_router
from central_sync.web.audit import audit_router
from central_sync.web.auth import PASSWORD_CHECKS_AT_ONCE, api_reader, login_router
from central_sync.web.devices import DeviceActions, devices_router
from central_sync.web.headers import SecurityHeaders
from central_sync.web.lineage import lineage_router
from central_sync.web.models import ModelActions, models_router
from central_sync.web.overview import overview_router
from central_sync.web.pages import model_health, pages_router
from central_sync.web.params import RecordSeq
from central_sync.web.review import review_router
from central_sync.web.samples import samples_router

log = logging.getLogger(__name__)

REFRESH_S = 5


class OpenToTheNetwork(Exception):
    """The web API would listen on a network address before central has any account."""


def refuse_open_to_the_network(db: CentralDB, host: str) -> None:
    """Before the first account the API needs no login (so a new central can be set up), so it
    may then listen only on loopback; raises OpenToTheNetwork saying what to do otherwise."""
    if _is_loopback(host) or db.has_users():
        return
    raise OpenToTheNetwork(
        f"web.host {host} would open central's API to the network, and central has no "
        "account yet, so nothing would ask for a login. Create the first account, then start "
        "again: central-sync users add NAME --role admin (or keep web.host: 127.0.0.1)")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def create_app(
    db: CentralDB,
    offline_after_s: float,
    health: Callable[[], dict[str, Any]] | None = None,
    password_checks_at_once: int = PASSWORD_CHECKS_AT_ONCE,
    model_actions: ModelActions | None = None,
    device_actions: DeviceActions | None = None,
    alerts_config: AlertsConfig | None = None,
    alerts_changed: Callable[[], None] | None = None,
) -> FastAPI:
    """The FastAPI app over a CentralDB; `health` adds live service state to /healthz and
    /metrics; `model_actions` and `device_actions` let engineers act from the model and device
    pages (without them the pages only show); `alerts_config` tells the plant overview how
    to find a gateway's line and mark defect rates (the defaults without it); `alerts_changed`
    is called after an acknowledgement (the alert engine's poke). No /docs (it
    loads a CDN's scripts): see README."""
    app = FastAPI(title="central-sync", version=__version__, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.add_middleware(SecurityHeaders)
    registry = central_registry(db, offline_after_s, health)
    signed_in = [Depends(api_reader(db))]

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        live = health() if health else {}
        return {"status": "ok", "schema_version": db.schema_version(), **live}

    @app.get("/metrics", dependencies=signed_in)
    def prometheus_metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app.include_router(data_api_router(db, offline_after_s), dependencies=signed_in)
    app.include_router(login_router(db, password_checks_at_once))
    app.include_router(review_router(db))
    app.include_router(samples_router(db))
    app.include_router(audit_router(db))
    app.include_router(models_router(db, model_actions))
    app.include_router(lineage_router(db))
    app.include_router(overview_router(db, offline_after_s, alerts_config))
    app.include_router(alerts_router(db, alerts_config, alerts_changed))
    app.include_router(pages_router(db, offline_after_s, device_actions))
    app.include_router(devices_router(db, offline_after_s, device_actions))
    app.mount("/static", StaticFiles(directory=Path(__file__).parent / "static"), name="static")
    return app


def data_api_router(db: CentralDB, offline_after_s: float) -> APIRouter:
    """The JSON API of what central stores: devices, predictions, records and their evidence
    images, models and their drift (the app puts it behind a login or API token)."""
    router = APIRouter()

    @router.get("/api/devices")
    def devices() -> list[dict[str, Any]]:
        now = time.time()
        return [_device_json(d, now, offline_after_s) for d in db.list_devices()]

    @router.get("/api/predictions")
    def predictions(
        limit: int = Query(50, ge=1, le=1000), device_id: str | None = None
    ) -> list[dict[str, Any]]:
        return db.recent_predictions(limit, device_id=device_id or None)

    @router.get("/api/records")
    def records(
        type: str = Query(..., pattern=r"^[a-z][a-z0-9_]{0,31}$", description="e.g. defect"),
        limit: int = Query(50, ge=1, le=1000), device_id: str | None = None,
    ) -> list[dict[str, Any]]:
        """Newest records of a type; evidence images are listed by name, served below."""
        return db.recent_records(type, limit, device_id=device_id or None)

    @router.get("/api/records/{device_id}/{seq}/images/{name}")
    def record_image(device_id: str, seq: RecordSeq, name: str) -> Response:
        if not re.fullmatch(r"^[a-z][a-z0-9_]{0,31}$", name):
            raise HTTPException(404, "no such image")
        encoded = db.record_image(device_id, seq, name)
        if encoded is None:
            raise HTTPException(404, f"record {device_id}/{seq} has no image {name!r}")
        return Response(base64.b64decode(encoded), media_type="image/jpeg")

    @router.get("/api/models")
    def models() -> list[dict[str, Any]]:
        return [{**m.manifest.model_dump(), "published_by": m.published_by}
                for m in db.list_models()]

    @router.get("/api/models/{name}/drift")
    def model_drift(name: str, version: str | None = None,
                    hours: float = Query(24.0, gt=0, le=24 * 365)) -> dict[str, Any]:
        """Per device: predictions, errors, latency and drift of each value against the
        manifest's reference, over the last `hours` (the newest version reported if none)."""
        found = model_health(db, name, version, time.time() - hours * 3600)
        if found is None:
            raise HTTPException(404, f"no model_stats from any device for {name}"
                                + (f" {version}" if version else "") + " in this period")
        return found[0]

    return router


def _device_json(device: DeviceSummary, now: float, offline_after_s: float) -> dict[str, Any]:
    return {
        "device_id": device.device_id,
        "state": device.presence(now, offline_after_s),
        "reported_state": device.state,
        "last_seen": device.last_seen,
        "agent_version": device.agent_version,
        "active_models": [m.model_dump() for m in device.active_models],
        "last_seq": device.last_seq,
        "records": device.records,
        "buffer_depth": device.buffer_depth,
        "clock_offset_s": device.clock_offset_s,  # its clock minus central's
        "clock_rtt_ms": device.clock_rtt_ms,
        "status": device.status.model_dump() if device.status else None,
    }

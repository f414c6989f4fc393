"""Central's pages for engineers: models with their version history, lineage and drift charts,
rollouts (live), and the audit log. Server-rendered; charts are inline SVG made here."""

import time
from html import escape
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

from central_sync.db import CentralDB
from central_sync.db.accounts import Session
from central_sync.db.review import DefectFilter
from central_sync.drift import PSI_DRIFT, latency_percentiles
from central_sync.web_auth import session_dependencies

_templates = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"),
                         autoescape=select_autoescape(["html"]))
DRIFT_WINDOW_H = 24 * 7


def pages_router(db: CentralDB, drift_report: Any, offline_after_s: float) -> APIRouter:
    """`drift_report(db, name, version, since)` is the web app's drift view (raises 404)."""
    router = APIRouter()
    _, viewer, _ = session_dependencies(db)
    page = Annotated[Session, Depends(viewer)]

    @router.get("/models", response_class=HTMLResponse)
    def models(session: page) -> str:
        by_name: dict[str, list[Any]] = {}
        for published in db.list_models():
            by_name.setdefault(published.manifest.name, []).append(published)
        return _templates.get_template("models.html").render(session=session, models=by_name)

    @router.get("/models/{name}", response_class=HTMLResponse)
    def model(name: str, session: page) -> str:
        versions = [m for m in db.list_models() if m.manifest.name == name]
        if not versions:
            raise HTTPException(404, f"no model {name}; `central-sync model list` shows them")
        try:
            drift = drift_report(db, name, None, time.time() - DRIFT_WINDOW_H * 3600)
        except HTTPException:
            drift = None
        charts = {}
        if drift:
            for device in drift["devices"]:
                charts[device["device_id"]] = psi_chart(device["drift"])
        latency = latency_chart(db.model_stats(name, drift["version"] if drift else None,
                                               time.time() - DRIFT_WINDOW_H * 3600))
        audit = [e for e in db.list_audit(500) if e["subject"].startswith(f"{name}@")]
        return _templates.get_template("model.html").render(
            session=session, name=name, versions=list(reversed(versions)), drift=drift,
            charts=charts, latency=latency, audit=audit, window_h=DRIFT_WINDOW_H)

    @router.get("/rollouts", response_class=HTMLResponse)
    def rollouts(session: page) -> str:
        return _templates.get_template("rollouts.html").render(
            session=session, rollouts=db.list_rollouts(limit=100))

    @router.get("/rollouts/{rollout_id}", response_class=HTMLResponse)
    def rollout(rollout_id: str, session: page) -> str:
        found = db.get_rollout(rollout_id)
        if found is None:
            raise HTTPException(404, f"no rollout {rollout_id}")
        return _templates.get_template("rollout.html").render(
            session=session, rollout=found, devices=db.rollout_devices(rollout_id))

    @router.get("/api/rollouts/{rollout_id}")
    def rollout_json(rollout_id: str, session: page) -> dict[str, Any]:
        found = db.get_rollout(rollout_id)
        if found is None:
            raise HTTPException(404, f"no rollout {rollout_id}")
        return {**found.__dict__,
                "devices": [d.__dict__ for d in db.rollout_devices(rollout_id)]}

    @router.get("/devices/{device_id}", response_class=HTMLResponse)
    def device(device_id: str, session: page) -> str:
        found = next((d for d in db.list_devices() if d.device_id == device_id), None)
        if found is None:
            raise HTTPException(404, f"central has not heard from {device_id}")
        now = time.time()
        return _templates.get_template("device.html").render(
            session=session, device=found, presence=found.presence(now, offline_after_s),
            deployments=db.list_deployments(device_id, limit=20), gaps=db.gaps(device_id),
            accounting=db.seq_accounting(device_id),
            defects=db.defect_summary(DefectFilter(device_id=device_id)))

    @router.get("/recommendations", response_class=HTMLResponse)
    def recommendations(session: page) -> str:
        return _templates.get_template("recommendations.html").render(
            session=session, rows=recommendation_rows(db))

    @router.get("/audit", response_class=HTMLResponse)
    def audit(session: page) -> str:
        return _templates.get_template("audit.html").render(session=session,
                                                            entries=db.list_audit(500))

    return router


def recommendation_rows(db: CentralDB, limit: int = 200) -> list[dict[str, Any]]:
    """The newest recommendations with the operator's answer and what the line did after."""
    answers = {r["payload"]["id"]: r["payload"]
               for r in db.recent_records("recommendation_answer", limit * 2)}
    outcomes = {r["payload"]["id"]: r["payload"]
                for r in db.recent_records("recommendation_outcome", limit * 2)}
    return [{"device_id": r["device_id"], "offer": r["payload"],
             "answer": answers.get(r["payload"].get("id")),
             "outcome": outcomes.get(r["payload"].get("id"))}
            for r in db.recent_records("recommendation", limit)]


def psi_chart(drift: list[dict[str, Any]], width: int = 520) -> Markup:
    """Horizontal bars of each value's PSI, the drift threshold as a line; red when drifted."""
    rows = [d for d in drift if d["psi"] is not None]
    if not rows:
        return Markup("<p>No referenced values reported.</p>")
    label_w, bar_h, top = 170, 22, 18
    scale_max = max(PSI_DRIFT * 2, *(d["psi"] for d in rows))
    plot_w = width - label_w - 60
    height = top + bar_h * len(rows) + 10
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" '
             f'height="{height}" role="img" aria-label="PSI by value">']
    for i, d in enumerate(rows):
        y = top + i * bar_h
        w = max(1.0, plot_w * d["psi"] / scale_max)
        colour = "#dc2626" if d["drifted"] else "#2563eb"
        parts.append(f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end">'
                     f'{escape(d["name"])}</text>'
                     f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{bar_h - 7}" '
                     f'fill="{colour}"/><text x="{label_w + w + 4:.1f}" y="{y + 15}">'
                     f'{d["psi"]:.2f}</text>')
    x = label_w + plot_w * PSI_DRIFT / scale_max
    parts.append(f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{height - 6}" '
                 f'stroke="#111" stroke-dasharray="4 3"/><text x="{x + 3:.1f}" y="12">'
                 f'drift {PSI_DRIFT}</text></svg>')
    return Markup("".join(parts))


def latency_chart(stats: list[tuple[str, Any]], width: int = 640, height: int = 180) -> Markup:
    """Predictions per interval (bars) and the interval's p99 latency bound (line), over time."""
    if not stats:
        return Markup("<p>No model_stats reported in this period.</p>")
    points = sorted((s.ended_at, s.predictions, latency_percentiles([s])["p99"] or 0.0)
                    for _, s in stats)
    left, bottom, top = 50, 24, 10
    span = max(1.0, points[-1][0] - points[0][0])
    most = max(p[1] for p in points) or 1
    slowest = max(p[2] for p in points) or 1.0
    plot_w, plot_h = width - left - 50, height - bottom - top

    def x_of(t: float) -> float:
        return left + plot_w * (t - points[0][0]) / span

    bar_w = max(2.0, plot_w / max(1, len(points)) * 0.6)
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" '
             f'height="{height}" role="img" aria-label="predictions and p99 latency">']
    for t, count, _ in points:
        h = plot_h * count / most
        parts.append(f'<rect x="{x_of(t) - bar_w / 2:.1f}" y="{top + plot_h - h:.1f}" '
                     f'width="{bar_w:.1f}" height="{h:.1f}" fill="#93c5fd"/>')
    line = " ".join(f"{x_of(t):.1f},{top + plot_h - plot_h * p99 / slowest:.1f}"
                    for t, _, p99 in points)
    first, last = (time.strftime("%m-%d %H:%M", time.localtime(points[i][0])) for i in (0, -1))
    parts.append(f'<polyline points="{line}" fill="none" stroke="#dc2626" stroke-width="2"/>'
                 f'<text x="4" y="{top + 10}">{most} pred.</text>'
                 f'<text x="{width - 46}" y="{top + 10}" fill="#dc2626">{slowest:g} ms</text>'
                 f'<text x="{left}" y="{height - 6}">{first}</text>'
                 f'<text x="{width - 150}" y="{height - 6}">{last}</text></svg>')
    return Markup("".join(parts))

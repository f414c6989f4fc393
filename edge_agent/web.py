"""The gateway's own status page and JSON API (operator screens grow from here)."""

from __future__ import annotations

import html
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Response
from fastapi.responses import HTMLResponse
from prometheus_client import CONTENT_TYPE_LATEST

StatusProvider = Callable[[], Awaitable[dict[str, Any]]]
MetricsProvider = Callable[[], Awaitable[bytes]]


def create_app(status: StatusProvider, metrics: MetricsProvider | None = None) -> FastAPI:
    """The page and JSON API over `status`; `metrics` adds Prometheus' `/metrics`."""
    app = FastAPI(title="edge-agent", docs_url=None, redoc_url=None)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/api/status")
    async def api_status() -> dict[str, Any]:
        return await status()

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        return render_status_page(await status())

    if metrics is not None:
        @app.get("/metrics")
        async def prometheus_metrics() -> Response:
            return Response(await metrics(), media_type=CONTENT_TYPE_LATEST)

    return app


def render_status_page(status: dict[str, Any]) -> str:
    e = html.escape
    device = status["device"]
    rows = []
    for pipeline in status["pipelines"]:
        if pipeline.get("type") == "vision":
            last = pipeline.get("last_result") or {}
            outputs = (f"{last['label']} {last['confidence']:.2f} ({last['roi']})"
                       if last else "")
            model = {"name": pipeline["model"]}
            count = (f"{pipeline['frames']} frames, {pipeline['defects']} defects, "
                     f"{pipeline['samples']} samples")
        else:
            last = pipeline.get("last_prediction") or {}
            outputs = ", ".join(f"{k} = {v:.2f}" for k, v in (last.get("outputs") or {}).items()
                                if isinstance(v, float))
            model = last.get("model") or {}
            count = str(pipeline["predictions"])
        rows.append(
            f"<tr><td>{e(pipeline['name'])}</td><td>{e(pipeline['state'])}</td>"
            f"<td>{e(pipeline['detail'])}</td><td>{e(outputs)}</td>"
            f"<td>{e(model.get('name', ''))} {e(model.get('version', ''))}</td>"
            f"<td>{e(count)}</td></tr>"
        )
    sources = "".join(
        f"<tr><td>{e(name)}</td><td>{e(s['state'])}</td><td>{e(s['detail'])}</td></tr>"
        for name, s in device["sources"].items()
    )
    models = "".join(
        f"<li>{e(m['name'])} {e(m['version'])} <small>{e(m['sha256'][:12])}</small></li>"
        for m in device["active_models"]
    ) or "<li>none yet</li>"
    buffer = device.get("buffer") or {}
    uplink = device.get("uplink") or {}
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="5">
<title>{e(device['device_id'])} · edge-agent</title>
<style>body{{font-family:sans-serif;margin:2rem;font-size:1.2rem}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.3rem .6rem}}</style>
</head><body>
<h1>Gateway {e(device['device_id'])}</h1>
<p>Uplink: {"connected" if uplink.get("connected") else "not connected"} ·
buffered records: {buffer.get("depth", 0)} · acked: {uplink.get("acked_records", 0)}</p>
<h2>Models</h2><ul>{models}</ul>
<h2>Pipelines</h2>
<table><tr><th>Pipeline</th><th>State</th><th>Detail</th><th>Last prediction</th><th>Model</th>
<th>Count</th></tr>{"".join(rows)}</table>
<h2>Sources</h2>
<table><tr><th>Source</th><th>State</th><th>Detail</th></tr>{sources}</table>
</body></html>"""

"""The gateway's operator page (recommendations, trends, defects, health) and its JSON API.

Server-rendered with Jinja2; one small script replaces the live part every few seconds. With
`ui.token` or `ui.password` set, every request but /healthz needs a login (cookie) or
`Authorization: Bearer`. Posts are checked against cross-site forgery by their Origin (and
Sec-Fetch-Site) header, and the session cookie is SameSite=Strict.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import parse_qs, urlsplit

import jinja2
from fastapi import FastAPI, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field

from edge_agent.config import UiConfig
from edge_agent.kernel.contract import RecommendationAnswerPayload, RecommendationPayload
from edge_agent.pipelines.base import Pipeline
from edge_agent.pipelines.snapshot import RECENT_DEFECTS, PipelineSnapshot, ProcessDetails
from edge_agent.recommendations import AnswerError

StatusProvider = Callable[[], Awaitable[dict[str, Any]]]
MetricsProvider = Callable[[], Awaitable[bytes]]

HERE = Path(__file__).parent
SESSION_COOKIE = "edge_agent_session"
OPERATOR_COOKIE = "edge_agent_operator"
DEFAULT_OPERATOR = "operator"
DAY_S = 86400
SESSION_MAX_AGE_S = 30 * DAY_S  # a shop-floor screen stays logged in for a month
OPERATOR_MAX_AGE_S = 365 * DAY_S  # the name typed once on a screen is kept
THUMBNAIL_MAX_AGE_S = DAY_S  # a defect's picture never changes under its URL
OPERATOR_NAME_MAX_CHARS = 40  # goes into answer records and onto the page
_PUBLIC = ("/healthz", "/login", "/static/")
_templates = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                                autoescape=True, trim_blocks=True, lstrip_blocks=True)


class OperatorAgent(Protocol):
    """What the page needs of the agent beyond its status document."""

    @property
    def pipelines(self) -> Sequence[Pipeline]: ...

    async def answer_recommendation(
        self, recommendation_id: str, decision: Literal["accepted", "rejected"], by: str,
        comment: str = "") -> RecommendationAnswerPayload: ...


class AnswerRequest(BaseModel):
    decision: Literal["accepted", "rejected"]
    by: str = Field(min_length=1, max_length=64)
    comment: str = Field("", max_length=500)


Page = Callable[..., Awaitable[HTMLResponse]]  # (request, template, error, status_code)


def create_app(status: StatusProvider, metrics: MetricsProvider | None = None,
               agent: OperatorAgent | None = None, ui: UiConfig | None = None) -> FastAPI:
    """The page and JSON API over `status`; `agent` adds recommendations, trends and defects;
    `metrics` adds Prometheus' `/metrics`; `ui` brings the login and the page's settings."""
    ui = ui or UiConfig()
    guard = Guard(ui)
    app = FastAPI(title="edge-agent", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    @app.middleware("http")
    async def check_access(request: Request, call_next: Any) -> Response:
        if request.method not in ("GET", "HEAD") and not same_origin(request):
            return JSONResponse({"detail": "cross-site request refused"}, status_code=403)
        path = request.url.path
        if path.startswith(_PUBLIC) or guard.allows(request):
            return await call_next(request)
        if request.method == "GET" and path in ("/", ""):
            return RedirectResponse("/login", status_code=303)
        return JSONResponse({"detail": "log in first: send 'Authorization: Bearer <ui.token>' "
                                       "or log in on the page"},
                            status_code=401, headers={"WWW-Authenticate": "Bearer"})

    async def page(request: Request, template: str, error: str = "",
                   status_code: int = 200) -> HTMLResponse:
        snapshots = [p.snapshot() for p in agent.pipelines] if agent is not None else []
        view = operator_view(await status(), snapshots, ui, time.time())
        return HTMLResponse(_templates.get_template(template).render(
            **view, error=error, operator=operator_name(request), login=guard.required,
            refresh_s=ui.refresh_s), status_code=status_code)

    _add_page_routes(app, status, page)
    _add_login_routes(app, guard)
    _add_operator_routes(app, agent, page)
    if metrics is not None:
        @app.get("/metrics")
        async def prometheus_metrics() -> Response:
            return Response(await metrics(), media_type=CONTENT_TYPE_LATEST)

    return app


def _add_page_routes(app: FastAPI, status: StatusProvider, page: Page) -> None:
    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/api/status")
    async def api_status() -> dict[str, Any]:
        return await status()

    @app.get("/", response_class=HTMLResponse)
    async def index(request: Request) -> HTMLResponse:
        return await page(request, "page.html")

    @app.get("/live", response_class=HTMLResponse)
    async def live(request: Request) -> HTMLResponse:
        return await page(request, "live.html")


def _add_login_routes(app: FastAPI, guard: Guard) -> None:
    @app.get("/login", response_class=HTMLResponse)
    async def login_form() -> HTMLResponse:
        return HTMLResponse(_templates.get_template("login.html").render(error=""))

    @app.post("/login")
    async def login(request: Request) -> Response:
        given = (await form_fields(request)).get("secret", "")
        if not guard.required:
            return RedirectResponse("/", status_code=303)
        if not guard.check_secret(given):
            return HTMLResponse(_templates.get_template("login.html").render(
                error="That is not the token or password set in ui.token / ui.password."),
                status_code=401)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(SESSION_COOKIE, guard.new_session(), max_age=SESSION_MAX_AGE_S,
                            httponly=True, samesite="strict")
        return response

    @app.post("/logout")
    async def logout() -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, httponly=True, samesite="strict")
        return response


def _add_operator_routes(app: FastAPI, agent: OperatorAgent | None, page: Page) -> None:
    """Who answers, the answers (form and JSON), and the defects' pictures."""

    @app.post("/operator")
    async def set_operator(request: Request) -> Response:
        name = clean_name((await form_fields(request)).get("name", ""))
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(OPERATOR_COOKIE, name, max_age=OPERATOR_MAX_AGE_S,
                            samesite="strict")
        return response

    @app.post("/recommendations/{recommendation_id}/answer")
    async def answer_form(request: Request, recommendation_id: str) -> Response:
        decision = (await form_fields(request)).get("decision", "")
        if agent is None or decision not in ("accepted", "rejected"):
            return await page(request, "page.html", "Answer with Accept or Reject.", 400)
        try:
            await agent.answer_recommendation(recommendation_id, decision,  # type: ignore[arg-type]
                                              operator_name(request))
        except AnswerError as exc:
            return await page(request, "page.html", str(exc), 409)
        return RedirectResponse("/", status_code=303)

    @app.post("/api/recommendations/{recommendation_id}/answer")
    async def answer_json(recommendation_id: str, body: AnswerRequest) -> Response:
        if agent is None:
            return JSONResponse({"detail": "this agent makes no recommendations"}, 404)
        try:
            answer = await agent.answer_recommendation(recommendation_id, body.decision,
                                                       body.by, body.comment)
        except AnswerError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=409)
        return JSONResponse(answer.model_dump(mode="json"))

    @app.get("/defects/{pipeline}/{number}.jpg")
    async def defect_thumbnail(pipeline: str, number: int) -> Response:
        for p in agent.pipelines if agent is not None else []:
            vision = p.snapshot().vision if p.name == pipeline else None
            defect = vision.defect(number) if vision is not None else None
            if defect is not None:
                return Response(defect.thumbnail_jpeg, media_type="image/jpeg", headers={
                    "Cache-Control": f"private, max-age={THUMBNAIL_MAX_AGE_S}"})
        return Response("no such defect picture (only the latest are kept)", 404)


# --- access ----------------------------------------------------------------------------------


class Guard:
    """Who may in: nobody needs to without a token or password; with one, a valid session
    cookie (signed with a key made from the secrets) or the secret as Bearer."""

    def __init__(self, ui: UiConfig) -> None:
        self._secrets = [s.get_secret_value() for s in (ui.token, ui.password) if s]
        self.required = bool(self._secrets)
        self._key = hashlib.sha256("\0".join(["edge-agent-session", *self._secrets]).encode()
                                   ).digest()

    def check_secret(self, given: str) -> bool:
        # Digests have equal lengths, so compare_digest's time says nothing about the secret.
        given_digest = hashlib.sha256(given.encode()).digest()
        return any([hmac.compare_digest(given_digest, hashlib.sha256(s.encode()).digest())
                    for s in self._secrets])

    def new_session(self) -> str:
        nonce = secrets.token_urlsafe(18)
        return f"{nonce}.{self._sign(nonce)}"

    def allows(self, request: Request) -> bool:
        if not self.required:
            return True
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self.check_secret(credentials.strip()):
            return True
        nonce, _, signature = request.cookies.get(SESSION_COOKIE, "").partition(".")
        return bool(nonce) and hmac.compare_digest(signature, self._sign(nonce))

    def _sign(self, nonce: str) -> str:
        return hmac.new(self._key, nonce.encode(), hashlib.sha256).hexdigest()


def same_origin(request: Request) -> bool:
    """False for a browser's request sent from another site's page (forged form posts)."""
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin or origin == "null":
        return origin is None  # no header: not a browser; "null": an opaque, foreign origin
    return urlsplit(origin).netloc == request.headers.get("host", "")


async def form_fields(request: Request) -> dict[str, str]:
    """An urlencoded form's fields (the page posts nothing else), last value of each."""
    body = (await request.body()).decode("utf-8", errors="replace")
    return {key: values[-1] for key, values in parse_qs(body).items()}


def clean_name(name: str) -> str:
    name = re.sub(r"[^\w .@-]", "", name, flags=re.UNICODE).strip()[:OPERATOR_NAME_MAX_CHARS]
    return name or DEFAULT_OPERATOR


def operator_name(request: Request) -> str:
    return clean_name(request.cookies.get(OPERATOR_COOKIE, ""))


# --- what the page shows ---------------------------------------------------------------------

_UNITS = {"c": "°C", "pct": "%", "rpm": "rpm", "bar": "bar", "s": "s", "mm": "mm", "kg": "kg",
          "kgh": "kg/h", "ms": "ms", "a": "A", "v": "V", "kw": "kW", "hz": "Hz"}
_GOOD = {"connected", "running", "online"}
_BAD = {"failed", "error", "stopped", "offline"}
CHART_WIDTH, CHART_HEIGHT, CHART_POINTS = 600, 150, 240


def tag_words(tag: str, names: dict[str, str]) -> tuple[str, str]:
    """(words, unit) for a tag: `zone2_temp_c` -> ('Zone 2 temperature', '°C')."""
    parts = tag.split("_")
    unit = _UNITS.get(parts[-1].lower(), "") if len(parts) > 1 else ""
    if tag in names:
        return names[tag], unit
    words = parts[:-1] if unit else parts
    text = " ".join(re.sub(r"([a-z])(\d)", r"\1 \2", w) for w in words)
    text = re.sub(r"\btemp\b", "temperature", text)
    return text[:1].upper() + text[1:], unit


def number(value: float | None) -> str:
    """A value as people read it off a screen: 182, 61.5, 4.1, 0.25."""
    if value is None:
        return "–"
    digits = 1 if abs(value) >= 1 else 2  # setpoints move in half steps: 186.5 stays 186.5
    text = f"{value:.{digits}f}"
    return text[:-2] if text.endswith(".0") else text


def duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def with_unit(value: float | None, unit: str) -> str:
    return f"{number(value)} {unit}".strip()


def recommendation_card(rec: RecommendationPayload, names: dict[str, str],
                        now: float) -> dict[str, Any]:
    """The words of one recommendation: each change, the predicted effect, model and times."""
    changes = []
    for change in rec.changes:
        words, unit = tag_words(change.tag, names)
        unit = change.unit or unit
        changes.append({"what": words, "now": with_unit(change.current, unit),
                        "proposed": with_unit(change.proposed, unit)})
    target, unit = tag_words(rec.target, names)
    unit = rec.unit or unit
    left = rec.expires_at - now
    return {
        "id": rec.id, "pipeline": rec.pipeline, "changes": changes,
        "effect": {"what": f"Predicted {target[:1].lower()}{target[1:]}",
                   "now": with_unit(rec.predicted_now, unit),
                   "after": with_unit(rec.predicted_after, unit),
                   "better": _better(rec)},
        "model": f"{rec.model.name} {rec.model.version}",
        "age": f"offered {duration(now - rec.created_at)} ago",
        "expiry": f"expires in {duration(left)}" if left > 0 else "expired",
        "expired": left <= 0,
    }


def _better(rec: RecommendationPayload) -> bool:
    if rec.objective.lower().startswith("max"):
        return rec.predicted_after > rec.predicted_now
    return rec.predicted_after < rec.predicted_now


def chart(title: str, unit: str, points: list[tuple[float, float]]) -> dict[str, Any]:
    """An inline SVG polyline of (time, value) points, scaled to the box."""
    if len(points) > CHART_POINTS:
        step = len(points) / CHART_POINTS
        points = [points[int(i * step)] for i in range(CHART_POINTS)] + [points[-1]]
    values = [v for _, v in points]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    span_v = (high - low) or max(abs(high), 1.0) * 0.01
    first, last = (points[0][0], points[-1][0]) if points else (0.0, 1.0)
    span_t = (last - first) or 1.0
    pad = 8
    line = " ".join(
        f"{pad + (t - first) / span_t * (CHART_WIDTH - 2 * pad):.1f},"
        f"{CHART_HEIGHT - pad - (v - low) / span_v * (CHART_HEIGHT - 2 * pad):.1f}"
        for t, v in points)
    return {"title": title, "latest": with_unit(values[-1] if values else None, unit),
            "low": with_unit(low if values else None, unit),
            "high": with_unit(high if values else None, unit),
            "minutes": round(span_t / 60) if len(points) > 1 else 0,
            "line": line, "width": CHART_WIDTH, "height": CHART_HEIGHT}


def process_view(name: str, process: ProcessDetails, ui: UiConfig,
                 now: float) -> dict[str, Any]:
    """A process pipeline's part of the page: its open recommendation and its trend charts."""
    trend = process.trend
    charts = []
    if trend:
        output = next(iter(trend[-1].outputs), None)
        if output is not None:
            words, unit = tag_words(output, ui.tag_names)
            charts.append(chart(f"Predicted {words[:1].lower()}{words[1:]}", unit, [
                (p.at, v) for p in trend if (v := p.outputs.get(output)) is not None]))
        for tag in _trend_tags(process, ui):
            words, unit = tag_words(tag, ui.tag_names)
            points = [(p.at, p.inputs[tag]) for p in trend if tag in p.inputs]
            if points:
                charts.append(chart(words, unit, points))
    last = process.answered[0] if process.answered else None
    return {
        "name": name,
        "card": (recommendation_card(process.open_recommendation, ui.tag_names, now)
                 if process.open_recommendation is not None else None),
        "recommends": process.recommends,
        "last_answer": None if last is None else {
            "decision": last.answer.decision, "by": last.answer.by,
            "ago": duration(now - last.answer.at)},
        "charts": charts,
    }


TREND_TAGS_BY_DEFAULT = 4  # inputs charted when no recommendation names the tags that matter


def _trend_tags(process: ProcessDetails, ui: UiConfig) -> list[str]:
    if ui.trend_tags is not None:
        return ui.trend_tags
    if process.open_recommendation is not None:
        return [c.tag for c in process.open_recommendation.changes]
    if process.answered:
        return [c.tag for c in process.answered[0].recommendation.changes]
    return list(process.trend[-1].inputs)[:TREND_TAGS_BY_DEFAULT]


def health_item(what: str, name: str, state: str, detail: str) -> dict[str, str]:
    level = "good" if state in _GOOD else "bad" if state in _BAD else "warn"
    return {"what": what, "name": name, "state": state.replace("_", " ").capitalize(),
            "detail": detail, "level": level}


BUFFER_WARN_PCT, BUFFER_BAD_PCT = 50, 90  # share of the quota used: eviction draws near


def operator_view(status: dict[str, Any], pipelines: Sequence[PipelineSnapshot], ui: UiConfig,
                  now: float) -> dict[str, Any]:
    """Everything the templates show, as words and numbers ready to print."""
    device = status["device"]
    buffer = device.get("buffer") or {}
    uplink = device.get("uplink") or {}
    connected = bool(uplink.get("connected"))
    quota = buffer.get("quota_bytes") or 0
    used_pct = 100 * buffer.get("bytes_used", 0) / quota if quota else 0.0
    oldest = buffer.get("oldest_age_s")
    health = [health_item("Source", name, s["state"], s["detail"])
              for name, s in device["sources"].items()]
    health += [health_item("Pipeline", p["name"], p["state"], p["detail"])
               for p in status["pipelines"]]
    process = [process_view(p.name, p.process, ui, now) for p in pipelines
               if p.process is not None]
    defects = [{"pipeline": p.name, "number": d.number, "label": d.label, "roi": d.roi,
                "confidence": round(100 * d.confidence), "ago": duration(now - d.at), "at": d.at}
               for p in pipelines if p.vision is not None
               for d in p.vision.recent_defects[:RECENT_DEFECTS]]
    defects.sort(key=lambda d: -d["at"])
    return {
        "device_id": device["device_id"],
        "clock": time.strftime("%H:%M:%S", time.localtime(now)),
        "uplink": {"connected": connected,
                   "words": "Connected to central" if connected else "Not connected to central",
                   "round_trip": (f"{uplink['round_trip_ms']:.0f} ms round trip"
                                  if uplink.get("round_trip_ms") is not None else "")},
        "buffer": {"depth": buffer.get("depth", 0),
                   "oldest": duration(oldest) if oldest is not None else "",
                   "used_pct": round(used_pct), "evicted": buffer.get("evicted", 0),
                   "level": "bad" if used_pct > BUFFER_BAD_PCT else
                   "warn" if used_pct > BUFFER_WARN_PCT or buffer.get("evicted") else "good"},
        "models": [f"{m['name']} {m['version']}" for m in device["active_models"]],
        "health": health,
        "process": process,
        "has_vision": any(p["type"] == "vision" for p in status["pipelines"]),
        "defects": defects[:RECENT_DEFECTS],
    }

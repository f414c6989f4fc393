"""The operator page's FastAPI app: its routes, the checks every request passes (name, origin,
login) and the security headers every response carries; `operator_server` serves it."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import parse_qs

import jinja2
from fastapi import FastAPI, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field

from edge_agent.config import UiConfig
from edge_agent.kernel.contract import RecommendationAnswerPayload
from edge_agent.kernel.httpserver import WebServer
from edge_agent.pipelines.base import Pipeline
from edge_agent.recommendations import AnswerError
from edge_agent.web.access import (
    SESSION_COOKIE,
    SESSION_MAX_AGE_S,
    Guard,
    TrustedHosts,
    client_address,
    same_origin,
)
from edge_agent.web.view import operator_view

StatusProvider = Callable[[], Awaitable[dict[str, Any]]]
MetricsProvider = Callable[[], Awaitable[bytes]]

HERE = Path(__file__).parent.parent
OPERATOR_COOKIE = "edge_agent_operator"
DEFAULT_OPERATOR = "operator"
OPERATOR_MAX_AGE_S = 365 * 86400  # the name typed once on a screen is kept
THUMBNAIL_MAX_AGE_S = 86400  # a defect's picture never changes under its URL
OPERATOR_NAME_MAX_CHARS = 40  # goes into answer records and onto the page
PAGE_MAX_BODY_BYTES = 64 * 1024  # the page posts small forms and answers, nothing more
HSTS_MAX_AGE_S = 365 * 86400
_PUBLIC = ("/healthz", "/login", "/static/")
_SAFE_METHODS = ("GET", "HEAD")
# The page loads its script, style and pictures from itself only, and no other site may frame
# it (clickjacking). JSON answers carry the same headers: they are never a document to render.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
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


def operator_server(status: StatusProvider, metrics: MetricsProvider | None,
                    agent: OperatorAgent | None, ui: UiConfig) -> WebServer:
    """The page served as `ui` says: its address, body limit and TLS certificate."""
    return WebServer(create_app(status, metrics, agent=agent, ui=ui), ui.host, ui.port,
                     setting="ui.port", max_body_bytes=PAGE_MAX_BODY_BYTES,
                     tls_cert_file=ui.tls_cert_file, tls_key_file=ui.tls_key_file)


def create_app(status: StatusProvider, metrics: MetricsProvider | None = None,
               agent: OperatorAgent | None = None, ui: UiConfig | None = None) -> FastAPI:
    """The page and JSON API over `status`; `agent` adds recommendations, trends and defects;
    `metrics` adds Prometheus' `/metrics`; `ui` brings the login and the page's settings."""
    ui = ui or UiConfig()
    guard = Guard(ui)
    hosts = TrustedHosts(ui)
    app = FastAPI(title="edge-agent", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    @app.middleware("http")
    async def check_access(request: Request, call_next: Any) -> Response:
        response = await _admit(request, call_next, guard, hosts)
        response.headers.update(SECURITY_HEADERS)
        if request.url.scheme == "https":
            response.headers["Strict-Transport-Security"] = f"max-age={HSTS_MAX_AGE_S}"
        return response

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


async def _admit(request: Request, call_next: Any, guard: Guard,
                 hosts: TrustedHosts) -> Response:
    """The request's response if it may pass; else the refusal saying why."""
    if not hosts.allows(request):
        return JSONResponse({"detail": hosts.refusal(request)}, status_code=400)
    if request.method not in _SAFE_METHODS and not same_origin(request):
        return JSONResponse({"detail": "cross-site request refused"}, status_code=403)
    path = request.url.path
    if path.startswith(_PUBLIC) or not guard.required or guard.has_session(request):
        return await call_next(request)
    bearer = guard.bearer(request)
    if bearer is not None:
        client = client_address(request)
        wait_s = guard.throttle.wait_s(client)
        if wait_s:
            return JSONResponse({"detail": _wait_words(wait_s)}, status_code=429,
                                headers={"Retry-After": str(math.ceil(wait_s))})
        if guard.try_secret(client, bearer):
            return await call_next(request)
    if request.method == "GET" and path in ("/", ""):
        return RedirectResponse("/login", status_code=303)
    return JSONResponse({"detail": "log in first: send 'Authorization: Bearer <ui.token>' "
                                   "or log in on the page"},
                        status_code=401, headers={"WWW-Authenticate": "Bearer"})


def _wait_words(wait_s: float) -> str:
    return (f"Too many wrong tokens or passwords: wait {math.ceil(wait_s)} s, then try again "
            "with the one set in ui.token / ui.password.")


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


def _login_page(error: str, status_code: int = 200, headers: dict[str, str] | None = None
                ) -> HTMLResponse:
    return HTMLResponse(_templates.get_template("login.html").render(error=error),
                        status_code=status_code, headers=headers)


def _add_login_routes(app: FastAPI, guard: Guard) -> None:
    @app.get("/login", response_class=HTMLResponse)
    async def login_form() -> HTMLResponse:
        return _login_page("")

    @app.post("/login")
    async def login(request: Request) -> Response:
        if not guard.required:
            return RedirectResponse("/", status_code=303)
        client = client_address(request)
        wait_s = guard.throttle.wait_s(client)
        if wait_s:  # refused before the secret is even read
            return _login_page(_wait_words(wait_s), 429,
                               {"Retry-After": str(math.ceil(wait_s))})
        given = (await form_fields(request)).get("secret", "")
        if not guard.try_secret(client, given):
            return _login_page(
                "That is not the token or password set in ui.token / ui.password.", 401)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(SESSION_COOKIE, guard.sessions.start(), max_age=SESSION_MAX_AGE_S,
                            httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")
        return response

    @app.post("/logout")
    async def logout(request: Request) -> Response:
        guard.sessions.end(request.cookies.get(SESSION_COOKIE, ""))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, httponly=True, samesite="strict",
                               secure=request.url.scheme == "https")
        return response


def _add_operator_routes(app: FastAPI, agent: OperatorAgent | None, page: Page) -> None:
    """Who answers, the answers (form and JSON), and the defects' pictures."""

    @app.post("/operator")
    async def set_operator(request: Request) -> Response:
        name = clean_name((await form_fields(request)).get("name", ""))
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(OPERATOR_COOKIE, name, max_age=OPERATOR_MAX_AGE_S,
                            samesite="strict", secure=request.url.scheme == "https")
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


async def form_fields(request: Request) -> dict[str, str]:
    """An urlencoded form's fields (the page posts nothing else), last value of each."""
    body = (await request.body()).decode("utf-8", errors="replace")
    return {key: values[-1] for key, values in parse_qs(body).items()}


def clean_name(name: str) -> str:
    name = re.sub(r"[^\w .@-]", "", name, flags=re.UNICODE).strip()[:OPERATOR_NAME_MAX_CHARS]
    return name or DEFAULT_OPERATOR


def operator_name(request: Request) -> str:
    return clean_name(request.cookies.get(OPERATOR_COOKIE, ""))

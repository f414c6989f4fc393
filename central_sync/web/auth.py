"""Logging in to central's pages, and who is asking: the session behind the request's cookie
(or an API token), as FastAPI dependencies.

Sessions are an HttpOnly, SameSite=Strict cookie; logging out also needs the session's CSRF
token, so another site cannot end a session. Each password check costs 64 MiB (Argon2id), so only
a few run at once, in worker threads; further attempts are refused at once, and wrong passwords
lock the account and the client's address out for a while (central_sync.accounts).
"""

import logging
import threading
import time
from collections.abc import Callable
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from central_sync.accounts import LoginThrottled, csrf_ok, log_in, token_digest
from central_sync.db import CentralDB
from central_sync.db.accounts import Session, SessionKind
from central_sync.web.rendering import templates

log = logging.getLogger(__name__)

COOKIE = "central_session"
PASSWORD_CHECKS_AT_ONCE = 2  # x 64 MiB; a person logs in once a shift
BUSY_RETRY_AFTER_S = 1
# What /login?error= may show: a code from this list, never text from the link.
LOGIN_ERRORS = {"wrong": "wrong user name or password"}


def session_dependencies(db: CentralDB) -> tuple[Callable[[Request], Session | None],
                                                 Callable[[Request], Session],
                                                 Callable[[Request], Session]]:
    """(session_of, viewer, quality): the session if any; a page that sends strangers to the
    login; an action that needs the quality role."""

    def session_of(request: Request) -> Session | None:
        token = request.cookies.get(COOKIE)
        return db.session(token_digest(token), kind="browser") if token else None

    def viewer(request: Request) -> Session:
        session = session_of(request)
        if session is None:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            raise HTTPException(303, headers={"Location": "/login?" + urlencode(
                {"next": target})})
        return session

    def quality(request: Request) -> Session:
        session = session_of(request)
        if session is None:
            raise HTTPException(401, "log in first (/login)")
        if not session.user.may("quality"):
            raise HTTPException(403, f"user {session.user.username} is a {session.user.role}; "
                                "this needs the quality role (central-sync users role)")
        return session

    return session_of, viewer, quality


def engineer_dependency(session_of: Callable[[Request], Session | None],
                        doing: str = "this") -> Callable[[Request], Session]:
    """An action that needs the engineer (or admin) role; 401 without a session, 403 with
    another role, saying that `doing` needs it."""

    def engineer(request: Request) -> Session:
        session = session_of(request)
        if session is None:
            raise HTTPException(401, "log in first (/login)")
        if not session.user.may("engineer"):
            raise HTTPException(403, f"user {session.user.username} is a {session.user.role}; "
                                f"{doing} needs the engineer or admin role (central-sync users "
                                "role)")
        return session

    return engineer


def api_reader(db: CentralDB) -> Callable[[Request], Session | None]:
    """Who may read the JSON API and /metrics: once central has accounts, a logged-in browser
    (the session cookie) or a script with `Authorization: Bearer TOKEN` (`central-sync users
    token NAME`). Before the first account everything is open, as the CLI is, so a new central
    can be set up; it listens on 127.0.0.1 by default."""

    def reader(request: Request) -> Session | None:
        kind: SessionKind
        token, kind = request.cookies.get(COOKIE), "browser"
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and credentials:
            token, kind = credentials.strip(), "api"
        session = db.session(token_digest(token), kind=kind) if token else None
        if session is None and db.has_users():
            raise HTTPException(
                401, "log in at /login, or send Authorization: Bearer TOKEN (an admin makes "
                "one with `central-sync users token NAME`)",
                headers={"WWW-Authenticate": 'Bearer realm="central-sync"'})
        return session

    return reader


def login_router(db: CentralDB,
                 password_checks_at_once: int = PASSWORD_CHECKS_AT_ONCE) -> APIRouter:
    """The login page, logging in (the session cookie) and logging out."""
    router = APIRouter()
    session_of, _, _ = session_dependencies(db)
    checks = threading.BoundedSemaphore(password_checks_at_once)

    @router.get("/login", response_class=HTMLResponse)
    def login_page(next: str = "/review", error: str = "") -> str:
        return _login_form(next, LOGIN_ERRORS.get(error, ""))

    @router.post("/login")
    async def login(request: Request, username: str = Form(...), password: str = Form(...),
                    next: str = Form("/review")) -> Response:
        client = request.client.host if request.client else ""
        if not checks.acquire(blocking=False):  # refused at once: a flood queues nothing
            log.warning("login refused, busy checking others user=%s from=%s", username, client)
            return HTMLResponse(_login_form(next, "central is busy checking other logins; try "
                                            f"again in {BUSY_RETRY_AFTER_S} s"), 503,
                                headers={"Retry-After": str(BUSY_RETRY_AFTER_S)})
        try:
            # Argon2 blocks for tens of milliseconds: in a worker thread, off the event loop.
            opened = await run_in_threadpool(log_in, db, username, password, client)
        except LoginThrottled as exc:
            log.warning("login refused, locked out user=%s from=%s for=%ds", username, client,
                        exc.wait_s)
            return HTMLResponse(_login_form(next, str(exc)), 429,
                                headers={"Retry-After": str(exc.wait_s)})
        finally:
            checks.release()
        if opened is None:
            log.warning("login refused user=%s from=%s", username, client)
            return RedirectResponse("/login?" + urlencode(
                {"next": _local(next), "error": "wrong"}), 303)
        token, session = opened
        reply = RedirectResponse(_local(next), 303)
        reply.set_cookie(COOKIE, token, max_age=int(session.expires_at - time.time()),
                         httponly=True, samesite="strict",
                         secure=request.url.scheme == "https")
        return reply

    @router.post("/logout")
    def logout(request: Request, csrf: str = Form("")) -> Response:
        session = session_of(request)
        if session is not None and csrf_ok(session, csrf):
            db.end_session(token_digest(request.cookies[COOKIE]))
        reply = RedirectResponse("/login", 303)
        reply.delete_cookie(COOKIE)
        return reply

    return router


def _login_form(next: str, message: str) -> str:
    return templates.get_template("login.html").render(next=_local(next), error=message)


def _local(target: str) -> str:
    """Only a path on this site: a login never sends anyone elsewhere."""
    return target if target.startswith("/") and not target.startswith("//") else "/review"


async def checked_form(request: Request, session: Session, max_bytes: int) -> dict[str, str]:
    """A URL-encoded form of at most `max_bytes` (413 beyond, while it streams in), read after
    the role check; refused (403) without the session's CSRF token (form field or header)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise HTTPException(413, f"the form is larger than {max_bytes} bytes")
    parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    form = {key: values[-1].strip() for key, values in parsed.items()}
    if not csrf_ok(session, request.headers.get("X-CSRF-Token") or form.get("csrf")):
        raise HTTPException(403, "missing or wrong CSRF token; reload the page and try again")
    return form

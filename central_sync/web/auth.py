"""Who is asking: the session behind the request's cookie, as FastAPI dependencies."""

from collections.abc import Callable
from urllib.parse import urlencode

from fastapi import HTTPException, Request

from central_sync.accounts import token_digest
from central_sync.db import CentralDB
from central_sync.db.accounts import Session

COOKIE = "central_session"


def session_dependencies(db: CentralDB) -> tuple[Callable[[Request], Session | None],
                                                 Callable[[Request], Session],
                                                 Callable[[Request], Session]]:
    """(session_of, viewer, quality): the session if any; a page that sends strangers to the
    login; an action that needs the quality role."""

    def session_of(request: Request) -> Session | None:
        token = request.cookies.get(COOKIE)
        return db.session(token_digest(token)) if token else None

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


def api_reader(db: CentralDB) -> Callable[[Request], Session | None]:
    """Who may read the JSON API and /metrics: once central has accounts, a logged-in browser
    (the session cookie) or a script with `Authorization: Bearer TOKEN` (`central-sync users
    token NAME`). Before the first account everything is open, as the CLI is, so a new central
    can be set up; it listens on 127.0.0.1 by default."""

    def reader(request: Request) -> Session | None:
        token = request.cookies.get(COOKIE)
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and credentials:
            token = credentials.strip()
        session = db.session(token_digest(token)) if token else None
        if session is None and db.has_users():
            raise HTTPException(
                401, "log in at /login, or send Authorization: Bearer TOKEN (an admin makes "
                "one with `central-sync users token NAME`)",
                headers={"WWW-Authenticate": 'Bearer realm="central-sync"'})
        return session

    return reader

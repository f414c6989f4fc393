"""Run an ASGI app with uvicorn inside an asyncio program that handles signals itself: over TLS
when given a certificate, and refusing a request body over a limit before reading it."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 1024 * 1024  # forms, labels and JSON answers; nothing is uploaded
# Stopping waits this long for requests under way (a client that never finishes sending
# its body, a page left open), then closes them: a stop is never held up by a client.
GRACEFUL_SHUTDOWN_S = 5.0

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class _BodyTooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: a request whose Content-Length is over `max_bytes` gets 413 before any
    of its body is read; a body streamed without one (chunked) is cut off at the limit.

    `path_limits` names exact paths whose app refuses an oversize body itself, with its own
    answer (an upload streamed to disk): their Content-Length is left to the app, and their
    body is cut off at that path's limit should the app read on."""

    def __init__(self, app: Any, max_bytes: int,
                 path_limits: Mapping[str, int] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.path_limits = dict(path_limits or {})

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.path_limits.get(scope.get("path", ""))
        declared = dict(scope["headers"]).get(b"content-length")
        if limit is None and declared is not None and (
                not declared.isdigit() or int(declared) > self.max_bytes):
            await self._refuse(send, scope, self.max_bytes)
            return
        limit = self.max_bytes if limit is None else limit
        received = 0
        state = {"started": False, "refused": False}

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit and not state["refused"]:
                state["refused"] = True
                if not state["started"]:
                    await self._refuse(send, scope, limit)
                raise _BodyTooLarge
            return message

        async def tracked_send(message: Message) -> None:
            if state["refused"]:
                return  # the 413 went out; what the app sends as it unwinds is dropped
            state["started"] = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracked_send)
        except Exception:
            if not state["refused"]:
                raise
            # The app failed because its body was cut off at the limit: answered already.

    async def _refuse(self, send: Send, scope: Message, limit: int) -> None:
        log.info("request body refused path=%s limit_bytes=%d", scope.get("path"), limit)
        body = (f"request body too large: this server accepts at most {limit} bytes "
                "per request\n").encode()
        await send({"type": "http.response.start", "status": 413, "headers": [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
            (b"x-content-type-options", b"nosniff"),
            (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handling: the service's owner decides when to stop."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class WebServer:
    """Runs an ASGI app with uvicorn as a task of the current asyncio loop; with a certificate
    and key it serves HTTPS. Request bodies are bounded by `max_body_bytes`, or for the exact
    paths in `body_limits` by the app itself (BodyLimit's path_limits); stopping waits at most
    `graceful_shutdown_s` for requests under way."""

    def __init__(self, app: Any, host: str, port: int, setting: str = "web.port", *,
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                 body_limits: Mapping[str, int] | None = None,
                 tls_cert_file: Path | None = None, tls_key_file: Path | None = None,
                 graceful_shutdown_s: float = GRACEFUL_SHUTDOWN_S) -> None:
        self.host = host
        self.port = port
        self._setting = setting
        self._tls = (tls_cert_file, tls_key_file) if tls_cert_file and tls_key_file else None
        self._server = _EmbeddedServer(uvicorn.Config(
            BodyLimit(app, max_body_bytes, body_limits), host=host, port=port, log_level="warning",
            lifespan="off", ssl_certfile=tls_cert_file, ssl_keyfile=tls_key_file,
            timeout_graceful_shutdown=graceful_shutdown_s))
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self._tls else 'http'}://{self.host}:{self.port}/"

    def _check_certificate(self) -> None:
        if self._tls is None:
            return
        section = self._setting.rpartition(".")[0] or "web"
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(*self._tls)
        except (OSError, ssl.SSLError) as exc:
            raise OSError(f"web server cannot use the certificate {self._tls[0]} with the key "
                          f"{self._tls[1]}: {exc}; set {section}.tls_cert_file and "
                          f"{section}.tls_key_file to a PEM certificate and its key") from None

    async def start(self) -> None:
        """Bind the port (raising OSError with a clear message if taken or if the TLS
        certificate is unusable) and serve."""
        self._check_certificate()
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise OSError(f"web server cannot listen on {self.host}:{self.port}: "
                          f"{exc.strerror}; set {self._setting} to a free port, or 0 to turn it off"
                          ) from None
        sock.set_inheritable(True)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="web")
        while not self._server.started and not self._task.done():
            await asyncio.sleep(0.02)
        if self._task.done():
            self._task.result()
        log.info("web serving url=%s", self.url)

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        await asyncio.gather(self._task, return_exceptions=True)
        self._task = None

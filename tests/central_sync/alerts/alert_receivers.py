"""Real receivers for alert notifications in tests: an HTTP server that answers, fails, hangs
or is down, and an SMTP server with STARTTLS and AUTH (aiosmtpd)."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from central_sync.alert_rules import AlertMessage
from tests.conftest import free_port

HANG_S = 30.0  # a hanging receiver answers after this (or when the test ends)
SMTP_USER, SMTP_PASSWORD = "central", "s3cret-mail"


def alert_message(event: str = "fired", **changes: Any) -> AlertMessage:
    fields: dict[str, Any] = {
        "event": event, "alert_id": "a18f0c2d3e4f5a6b7", "rule": "source-down",
        "kind": "source_down", "severity": "critical",
        "state": "resolved" if event == "resolved" else "firing",
        "summary": "Camera cam-2 on gw-7 is down <since 14:02> & not reconnecting",
        "devices": ["gw-7", "gw-8"], "labels": {"line": "line-3", "source": "cam-2"},
        "value": 1.0, "threshold": 1.0, "fired_at": 1_796_000_000.0,
        "resolved_at": 1_796_000_600.0 if event == "resolved" else None,
        "url": "https://central.plant.example/alerts/a18f0c2d3e4f5a6b7",
        "central_id": "central-a", "sent_at": 1_796_000_700.0}
    return AlertMessage(**{**fields, **changes})


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class WebhookReceiver:
    """An HTTP server on 127.0.0.1:`port`; `status` is what it answers, `hang` makes it wait
    HANG_S first; `stop()` and `start()` take it down and up on the same port."""

    port: int = field(default_factory=free_port)
    status: int = 200
    answer: bytes = b"ok"
    hang: bool = False
    received: list[Received] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _release: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> WebhookReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if receiver.hang:
                    receiver._release.wait(HANG_S)
                receiver.received.append(Received(self.path, dict(self.headers), body))
                self.send_response(receiver.status)
                if receiver.status in (301, 302, 307):
                    self.send_header("Location", f"http://127.0.0.1:{receiver.port}/moved")
                self.send_header("Content-Length", str(len(receiver.answer)))
                self.end_headers()
                self.wfile.write(receiver.answer)

            def log_message(self, *args: object) -> None:
                pass

        self._release.clear()
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._release.set()  # a hanging request ends now
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class _Mailbox:
    def __init__(self) -> None:
        self.mails: list[tuple[str, list[str], Message]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.mails.append((envelope.mail_from, list(envelope.rcpt_tos),
                           message_from_bytes(envelope.original_content,
                                              policy=policy.default)))
        return "250 OK queued"


def _authenticate(server: Any, session: Any, envelope: Any, mechanism: str,
                  auth_data: Any) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (
        auth_data.login.decode(), auth_data.password.decode()) == (SMTP_USER, SMTP_PASSWORD)
    return AuthResult(success=ok, handled=False)


class SmtpReceiver:
    """aiosmtpd on a free port: STARTTLS with `cert_file` (unless `tls` is False), AUTH
    LOGIN/PLAIN accepted only over TLS, the mails it took in `mails`."""

    def __init__(self, cert_file: Path, key_file: Path, tls: bool = True) -> None:
        import ssl

        self.port = free_port()
        self.mailbox = _Mailbox()
        options: dict[str, Any] = {"authenticator": _authenticate, "auth_require_tls": tls}
        if tls:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(cert_file, key_file)
            options.update(tls_context=context, require_starttls=True)
        self.controller = Controller(self.mailbox, hostname="127.0.0.1", port=self.port,
                                     **options)

    @property
    def mails(self) -> list[tuple[str, list[str], Message]]:
        return self.mailbox.mails

    def start(self) -> SmtpReceiver:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

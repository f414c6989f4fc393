"""Sending one notification through one route: a webhook POST, a mail over SMTP, an MQTT
message, or the built-in SCADA topic. Each raises DeliveryError saying what went wrong."""

from __future__ import annotations

import asyncio
import json
import os
import smtplib
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable
from email import policy
from email.message import EmailMessage

from central_sync.alert_rules import AlertMessage, RouteConfig
from central_sync.alerts import templates
from edge_agent.kernel.contract import Topics
from edge_agent.kernel.transport import NotConnected

# async def publish(topic, payload, qos, retain): central's broker connection.
Publish = Callable[[str, bytes, int, bool], Awaitable[None]]
ERROR_BODY_CHARS = 200  # of a refusing receiver's answer, kept in the attempt's detail
USER_AGENT = "central-sync-alerts"
# Headers unfolded up to RFC 5322's limit: folding a subject with "<...>" in it puts it on a
# line of its own, and some mail clients then show it with a leading blank.
_MAIL_POLICY = policy.SMTP.clone(max_line_length=998)


class DeliveryError(Exception):
    """A notification did not get through; the message says why (it is the attempt's detail)."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # A redirected POST would arrive as a GET without its body and look delivered: a
    # redirect is an answer to report ("HTTP 302"), with the URL to fix.
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def _secret(variable: str, what: str) -> str:
    value = os.environ.get(variable)
    if value is None:
        raise DeliveryError(f"environment variable {variable} ({what}) is not set in "
                            "central-sync's environment")
    return value


def _site(url: str) -> str:
    """scheme://host[:port] of a URL: a chat service's webhook path is its secret, and the
    error is shown on the alerts page and logged."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


def webhook_url(route: RouteConfig) -> str:
    """The route's URL, from the file or from the environment variable it names."""
    if route.url_env is not None:
        url = _secret(route.url_env, "the webhook's URL")
        if not url.startswith(("http://", "https://")):
            raise DeliveryError(f"{route.url_env} holds no http:// or https:// URL")
        return url
    assert route.url is not None  # RouteConfig requires one of the two for webhooks
    return route.url


def _post(route: RouteConfig, message: AlertMessage) -> str:
    url = webhook_url(route)
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
    headers.update({name: _secret(variable, f"header {name}")
                    for name, variable in route.headers_env.items()})
    body = json.dumps(templates.webhook_body(route.template, message)).encode()
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with _OPENER.open(request, timeout=route.timeout_s) as response:
            return f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        answer = exc.read(ERROR_BODY_CHARS * 4).decode("utf-8", "replace")
        raise DeliveryError(f"HTTP {exc.code}: {' '.join(answer.split())[:ERROR_BODY_CHARS]}"
                            ) from None
    except urllib.error.URLError as exc:
        raise DeliveryError(f"cannot reach {_site(url)}: {exc.reason}") from None
    except (TimeoutError, OSError) as exc:
        raise DeliveryError(f"{_site(url)}: {exc or 'timed out'} after "
                            f"{route.timeout_s:g} s") from None


def mail(route: RouteConfig, message: AlertMessage) -> EmailMessage:
    """The mail a route of kind smtp sends about `message`."""
    email = EmailMessage(policy=_MAIL_POLICY)
    email["Subject"] = templates.mail_subject(message)
    email["From"] = route.sender or ""
    email["To"] = ", ".join(route.to)
    email["X-Central-Alert"] = message.alert_id
    email.set_content(templates.mail_text(message))
    return email


def _mail(route: RouteConfig, message: AlertMessage) -> str:
    assert route.host is not None  # RouteConfig requires host, from and to for smtp
    password = _secret(route.password_env, "the SMTP password") \
        if route.username and route.password_env else None
    try:
        with smtplib.SMTP(route.host, route.port, timeout=route.timeout_s) as smtp:
            smtp.ehlo()
            if route.starttls:
                if not smtp.has_extn("starttls"):
                    raise DeliveryError(f"{route.host}:{route.port}: server offers no STARTTLS; "
                                        "set starttls: false only on a trusted network")
                smtp.starttls(context=ssl.create_default_context(cafile=route.ca_file))
                smtp.ehlo()
            if route.username:
                if password is None:
                    raise DeliveryError(f"route {route.name} has a username but no "
                                        "password_env naming the password's variable")
                smtp.login(route.username, password)
            refused = smtp.send_message(mail(route, message))
    except smtplib.SMTPAuthenticationError as exc:
        raise DeliveryError(f"{route.host}:{route.port} refused the login of "
                            f"{route.username}: {exc.smtp_code} {_text(exc.smtp_error)}") from None
    except smtplib.SMTPResponseException as exc:
        raise DeliveryError(f"{route.host}:{route.port}: {exc.smtp_code} "
                            f"{_text(exc.smtp_error)}") from None
    except smtplib.SMTPRecipientsRefused as exc:
        raise DeliveryError(f"{route.host}:{route.port} refused every recipient: "
                            + ", ".join(exc.recipients)) from None
    except ssl.SSLError as exc:
        raise DeliveryError(f"{route.host}:{route.port}: TLS failed ({exc.reason or exc}); "
                            "ca_file names the CA that signed the server's "
                            "certificate") from None
    except (smtplib.SMTPException, OSError) as exc:
        raise DeliveryError(f"{route.host}:{route.port}: {exc or type(exc).__name__}") from None
    accepted = [r for r in route.to if r not in refused]
    return f"accepted for {', '.join(accepted)}" + (
        f"; refused {', '.join(refused)}" if refused else "")


def _text(reply: bytes | str) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)


async def _publish(publish: Publish | None, topic: str, payload: bytes, retain: bool) -> None:
    if publish is None:
        raise DeliveryError("MQTT needs central's broker connection, which this command has "
                            "not got; run it where central-sync runs, or test a webhook or "
                            "smtp route")
    try:
        await publish(topic, payload, 1, retain)
    except NotConnected as exc:
        raise DeliveryError(f"broker not reachable: {exc}") from None


async def send(route: RouteConfig, message: AlertMessage, *, publish: Publish | None = None,
               topics: Topics | None = None) -> str:
    """Send `message` through `route` once; a short detail of what the receiver said
    ("HTTP 200"), else DeliveryError. Blocking sends run in a thread, off the event loop."""
    if route.kind == "webhook":
        return await asyncio.to_thread(_post, route, message)
    if route.kind == "smtp":
        return await asyncio.to_thread(_mail, route, message)
    if route.topic is not None and any(c in route.topic for c in "+#"):
        raise DeliveryError(f"route {route.name}: topic {route.topic!r} has a wildcard; name "
                            "a plain topic")
    topic = (topics or Topics()).alerts_events(route.topic)
    await _publish(publish, topic, message.model_dump_json().encode(), retain=False)
    return f"published on {topic}"


async def publish_scada(message: AlertMessage, publish: Publish | None, topics: Topics) -> str:
    """The built-in SCADA topic: a fired alert retained on alerts/open/ID until it resolves
    (then an empty retained message clears it), every change on alerts/events."""
    payload = message.model_dump_json().encode()
    open_topic = topics.alerts_open(message.alert_id)
    await _publish(publish, open_topic, payload if message.state == "firing" else b"",
                   retain=True)
    await _publish(publish, topics.alerts_events(), payload, retain=False)
    return f"published on {open_topic} and {topics.alerts_events()}"

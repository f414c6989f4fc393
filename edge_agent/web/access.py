"""Who may use the operator page: the names it answers to (against DNS rebinding), same-origin
posts (against forged forms), login sessions kept on the gateway, and a back-off on wrong
secrets per client address and overall."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from fastapi import Request

from edge_agent.config import UiConfig

SESSION_COOKIE = "edge_agent_session"
DAY_S = 86400
SESSION_MAX_AGE_S = 30 * DAY_S  # a shop-floor screen stays logged in for a month
MAX_SESSIONS = 1000  # logged-in browsers kept; the oldest login ends first beyond this
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})

FREE_FAILURES_PER_CLIENT = 5  # wrong secrets from one address before it must wait
FREE_FAILURES_OVERALL = 50  # wrong secrets from all addresses together before all must wait
BACKOFF_FIRST_S = 2.0  # the first wait; it doubles with each further wrong secret
BACKOFF_MAX_S = 300.0  # the longest wait between two tries of one address
BACKOFF_MAX_OVERALL_S = 60.0  # shorter: everyone waits while someone guesses
FORGET_FAILURES_AFTER_S = 3600.0  # an address quiet this long starts afresh
MAX_TRACKED_CLIENTS = 10_000  # addresses remembered; the least recent is forgotten first

Clock = Callable[[], float]


# --- names and origins -----------------------------------------------------------------------


def host_name(value: str) -> str:
    """The name in a Host header or URL authority: 'gw:8080' -> 'gw', '[::1]:80' -> '::1'."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    if value.count(":") > 1:
        return value
    return value.partition(":")[0].rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class TrustedHosts:
    """The names a browser may use for the page. A page on another site that has its name
    resolve to the gateway (DNS rebinding) sends that name as Host, and is refused."""

    def __init__(self, ui: UiConfig) -> None:
        names = {*LOOPBACK_NAMES, *(host_name(h) for h in ui.allowed_hosts)}
        if not _is_ip(ui.host) or not ipaddress.ip_address(ui.host).is_unspecified:
            names.add(host_name(ui.host))
        self.names = frozenset(names)

    def allows(self, request: Request) -> bool:
        name = host_name(request.headers.get("host", ""))
        if name in self.names or (_is_ip(name) and ipaddress.ip_address(name).is_loopback):
            return True
        # The address the request arrived on (a page on 0.0.0.0 opened by its IP address).
        server = request.scope.get("server")
        return bool(server) and _is_ip(name) and name == host_name(str(server[0]))

    def refusal(self, request: Request) -> str:
        name = host_name(request.headers.get("host", ""))[:100]
        return (f"the operator page does not answer to the name {name!r}; if this gateway is "
                "reached by that name, add it to ui.allowed_hosts")


def same_origin(request: Request) -> bool:
    """False for a browser's request sent from another site's page (forged form posts)."""
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin or origin == "null":
        return origin is None  # no header: not a browser; "null": an opaque, foreign origin
    return urlsplit(origin).netloc == request.headers.get("host", "")


# --- secrets and sessions ----------------------------------------------------------------------


class Sessions:
    """Logins kept on the gateway: a cookie names one; logging out or expiry ends it, so a copy
    of the cookie is worth nothing afterwards. A restart of the agent logs everyone out."""

    def __init__(self, max_age_s: float = SESSION_MAX_AGE_S, limit: int = MAX_SESSIONS,
                 clock: Clock = time.monotonic) -> None:
        self._expiry: dict[str, float] = {}
        self._max_age_s, self._limit, self._clock = max_age_s, limit, clock

    def start(self) -> str:
        session = secrets.token_urlsafe(32)
        self._expiry[session] = self._clock() + self._max_age_s
        while len(self._expiry) > self._limit:
            del self._expiry[next(iter(self._expiry))]
        return session

    def valid(self, session: str) -> bool:
        expiry = self._expiry.get(session)
        if expiry is not None and expiry < self._clock():
            del self._expiry[session]
            return False
        return expiry is not None

    def end(self, session: str) -> None:
        self._expiry.pop(session, None)

    def __len__(self) -> int:
        return len(self._expiry)


@dataclass
class _Failures:
    count: int = 0
    last: float = 0.0


class LoginThrottle:
    """After a few wrong secrets from one address, that address waits before its next try,
    twice as long each time; many wrong secrets from everywhere make every address wait."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clients: dict[str, _Failures] = {}
        self._overall = _Failures()
        self._clock = clock

    def wait_s(self, client: str) -> float:
        """Seconds until `client` may try a secret again (0: now)."""
        now = self._clock()
        return max(_wait_s(self._clients.get(client), FREE_FAILURES_PER_CLIENT,
                           BACKOFF_MAX_S, now),
                   _wait_s(self._overall, FREE_FAILURES_OVERALL, BACKOFF_MAX_OVERALL_S, now))

    def failed(self, client: str) -> None:
        now = self._clock()
        failures = self._clients.pop(client, None) or _Failures()
        self._clients[client] = failures  # last in the dict: the most recent
        for counted in (failures, self._overall):
            if now - counted.last > FORGET_FAILURES_AFTER_S:
                counted.count = 0
            counted.count += 1
            counted.last = now
        while len(self._clients) > MAX_TRACKED_CLIENTS:
            del self._clients[next(iter(self._clients))]

    def succeeded(self, client: str) -> None:
        self._clients.pop(client, None)


def _wait_s(failures: _Failures | None, free: int, longest_s: float, now: float) -> float:
    if failures is None or failures.count < free or now - failures.last > FORGET_FAILURES_AFTER_S:
        return 0.0
    delay = min(BACKOFF_FIRST_S * 2 ** (failures.count - free), longest_s)
    return max(0.0, failures.last + delay - now)


class Guard:
    """Who may in: anybody without a token or password set; with one, a browser holding a live
    session or a client sending the secret as Bearer. Wrong secrets are throttled."""

    def __init__(self, ui: UiConfig, clock: Clock = time.monotonic) -> None:
        self._secret_digests = [hashlib.sha256(s.get_secret_value().encode()).digest()
                                for s in (ui.token, ui.password) if s]
        self.required = bool(self._secret_digests)
        self.sessions = Sessions(clock=clock)
        self.throttle = LoginThrottle(clock)

    def check_secret(self, given: str) -> bool:
        # Digests have equal lengths, so compare_digest's time says nothing about the secret.
        given_digest = hashlib.sha256(given.encode()).digest()
        return any([hmac.compare_digest(given_digest, d) for d in self._secret_digests])

    def try_secret(self, client: str, given: str) -> bool:
        """Check a secret typed or sent by `client`, counting a wrong one against it."""
        if self.check_secret(given):
            self.throttle.succeeded(client)
            return True
        self.throttle.failed(client)
        return False

    def bearer(self, request: Request) -> str | None:
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        return credentials.strip() if scheme.lower() == "bearer" else None

    def has_session(self, request: Request) -> bool:
        return self.sessions.valid(request.cookies.get(SESSION_COOKIE, ""))


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"

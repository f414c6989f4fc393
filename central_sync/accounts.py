"""Logging in to central: password hashes (Argon2id via argon2-cffi), session tokens, CSRF,
and the back-off after wrong passwords.

The database keeps only a token's SHA-256, so a copy of the database opens no session. Failed
logins are counted in the database too, so every central process of a scale-out sees them.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import time
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from central_sync.db import CentralDB
from central_sync.db.accounts import Session

MIN_PASSWORD_CHARS = 10
SESSION_TTL_S = 12 * 3600  # one shift and a bit: a reviewer logs in once a day
_hasher = PasswordHasher()  # Argon2id, 64 MiB of memory per check
_NO_SUCH_USER = _hasher.hash("no such user: the same work as a wrong password")


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_CHARS:
        raise ValueError(f"a password needs at least {MIN_PASSWORD_CHARS} characters")
    return _hasher.hash(password)


def password_matches(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Backoff:
    """How long logins are refused after `failures` wrong ones in a row: nothing for the first
    `free_failures - 1`, then `first_lockout_s`, doubling with each further one up to
    `max_lockout_s`."""

    free_failures: int
    first_lockout_s: float
    max_lockout_s: float

    def lockout_s(self, failures: int) -> float:
        if failures < self.free_failures:
            return 0.0
        doublings = min(failures - self.free_failures, 32)
        return min(self.max_lockout_s, self.first_lockout_s * 2 ** doublings)


# Per account: a user who mistypes a few times is not held up; a guesser gets about four tries
# an hour once the lockout reaches its maximum. Per client address: more free failures, since
# a shift's reviewers may share one address (a proxy or NAT).
ACCOUNT_BACKOFF = Backoff(free_failures=5, first_lockout_s=30.0, max_lockout_s=900.0)
ADDRESS_BACKOFF = Backoff(free_failures=20, first_lockout_s=30.0, max_lockout_s=900.0)
FORGET_FAILURES_AFTER_S = 3600.0  # an hour without a wrong password starts the count afresh
_MAX_SUBJECT_CHARS = 100  # a typed user name longer than any real one is cut to this


class LoginThrottled(Exception):
    """Too many wrong passwords for this account or from this address: no password is checked
    until the lockout ends."""

    def __init__(self, retry_after_s: float) -> None:
        self.retry_after_s = retry_after_s
        self.wait_s = max(1, math.ceil(retry_after_s))  # whole seconds, for people
        super().__init__(f"too many attempts, try again in {self.wait_s} s")


def log_in(db: CentralDB, username: str, password: str, client: str = "",
           now: float | None = None) -> tuple[str, Session] | None:
    """A new session's token and the session, or None for a wrong name or password (which
    take the same time, so names cannot be guessed by timing). Raises LoginThrottled while the
    account or the client's address is locked out, whatever the password."""
    now = time.time() if now is None else now
    account = f"account:{username[:_MAX_SUBJECT_CHARS]}"
    address = f"address:{client[:_MAX_SUBJECT_CHARS]}"
    wait_s = db.login_lockout_s((account, address), now)
    if wait_s > 0:
        raise LoginThrottled(wait_s)
    found = db.user_with_hash(username)
    if found is None:
        password_matches(_NO_SUCH_USER, password)
    if found is None or not password_matches(found[1], password) or found[0].disabled:
        db.record_login_failure(
            {account: ACCOUNT_BACKOFF.lockout_s, address: ADDRESS_BACKOFF.lockout_s},
            now, forget_before=now - FORGET_FAILURES_AFTER_S)
        return None
    user = found[0]
    db.clear_login_failures(account)
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(24)
    db.create_session(user.username, token_digest(token), csrf, SESSION_TTL_S)
    session = db.session(token_digest(token))
    assert session is not None
    return token, session


def csrf_ok(session: Session, presented: str | None) -> bool:
    return presented is not None and hmac.compare_digest(session.csrf, presented)

"""Logging in to central: password hashes (Argon2id via argon2-cffi), session tokens, CSRF.

The database keeps only a token's SHA-256, so a copy of the database opens no session.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from central_sync.db import CentralDB
from central_sync.db.accounts import Session

MIN_PASSWORD_CHARS = 10
SESSION_TTL_S = 12 * 3600  # one shift and a bit: a reviewer logs in once a day
_hasher = PasswordHasher()
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


def log_in(db: CentralDB, username: str, password: str) -> tuple[str, Session] | None:
    """A new session's token and the session, or None for a wrong name or password (which
    take the same time, so names cannot be guessed by timing)."""
    found = db.user_with_hash(username)
    if found is None:
        password_matches(_NO_SUCH_USER, password)
        return None
    user, password_hash = found
    if not password_matches(password_hash, password) or user.disabled:
        return None
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(24)
    db.create_session(user.username, token_digest(token), csrf, SESSION_TTL_S)
    session = db.session(token_digest(token))
    assert session is not None
    return token, session


def csrf_ok(session: Session, presented: str | None) -> bool:
    return presented is not None and hmac.compare_digest(session.csrf, presented)

"""Central's accounts: local users with a role, their web sessions and API tokens, and failed
logins (part of CentralDB)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from central_sync.db.connection import Connection, serialised

ROLES = ("viewer", "quality", "engineer", "admin")  # each may do what the ones before it may
# A browser's session (the cookie) and a script's API token (Authorization: Bearer) are
# looked up only as what they are, so one never stands in for the other.
SessionKind = Literal["browser", "api"]


class UserExists(Exception):
    """A user of that name exists already."""


class UnknownUser(Exception):
    """No user of that name."""


@dataclass(frozen=True)
class User:
    username: str
    role: str
    created_at: float
    disabled: bool

    def may(self, role: str) -> bool:
        """Whether this user has `role` or a higher one."""
        return not self.disabled and ROLES.index(self.role) >= ROLES.index(role)


@dataclass(frozen=True)
class Session:
    user: User
    csrf: str  # echoed by every form and script that changes something
    expires_at: float


class AccountQueries:
    """Users and sessions; mixed into CentralDB, whose connection and lock it uses."""

    _db: Connection
    _audit: Callable[[str, str, str, str], None]  # CentralDB's: actor, action, subject, detail

    @serialised
    def add_user(self, username: str, password_hash: str, role: str, by: str) -> User:
        if role not in ROLES:
            raise ValueError(f"role {role!r} is not one of {', '.join(ROLES)}")
        with self._db.atomic():
            if self._user_row(username) is not None:
                raise UserExists(f"user {username} exists; change it with `central-sync users "
                                 "passwd` or `users role`")
            now = time.time()
            self._db.execute("INSERT INTO users (username, password_hash, role, created_at) "
                             "VALUES (?, ?, ?, ?)", (username, password_hash, role, now))
            self._audit(by, "user.add", username, f"role={role}")
        return User(username, role, now, False)

    @serialised
    def has_users(self) -> bool:
        return next(self._db.query("SELECT 1 AS one FROM users LIMIT 1"), None) is not None

    @serialised
    def user_with_hash(self, username: str) -> tuple[User, str] | None:
        """A user and their password hash, for logging in."""
        row = self._user_row(username)
        return (_user(row), row["password_hash"]) if row else None

    @serialised
    def list_users(self) -> list[User]:
        return [_user(r) for r in self._db.query("SELECT * FROM users ORDER BY username")]

    @serialised
    def update_user(self, username: str, by: str, *, password_hash: str | None = None,
                    role: str | None = None, disabled: bool | None = None) -> None:
        """Change a user's password, role or access; every change is audited, and sessions
        end when the password changes or the user is disabled."""
        if role is not None and role not in ROLES:
            raise ValueError(f"role {role!r} is not one of {', '.join(ROLES)}")
        with self._db.atomic():
            if self._user_row(username) is None:
                raise UnknownUser(f"no user {username}; `central-sync users list` shows them")
            if password_hash is not None:
                self._db.execute("UPDATE users SET password_hash = ? WHERE username = ?",
                                 (password_hash, username))
                self._audit(by, "user.password", username, "")
            if role is not None:
                self._db.execute("UPDATE users SET role = ? WHERE username = ?",
                                 (role, username))
                self._audit(by, "user.role", username, f"role={role}")
            if disabled is not None:
                self._db.execute("UPDATE users SET disabled = ? WHERE username = ?",
                                 (int(disabled), username))
                self._audit(by, "user.disable" if disabled else "user.enable", username, "")
            if password_hash is not None or disabled:
                self._db.execute("DELETE FROM sessions WHERE username = ?", (username,))

    @serialised
    def create_session(self, username: str, token_sha256: str, csrf: str, ttl_s: float,
                       action: str = "user.login", by: str | None = None,
                       kind: SessionKind = "browser") -> None:
        now = time.time()
        with self._db.atomic():
            self._db.execute("DELETE FROM sessions WHERE expires_at < ?", (now,))
            self._db.execute("INSERT INTO sessions (token_sha256, username, csrf, created_at, "
                             "expires_at, kind) VALUES (?, ?, ?, ?, ?, ?)",
                             (token_sha256, username, csrf, now, now + ttl_s, kind))
            self._audit(by or username, action, username, "")

    @serialised
    def session(self, token_sha256: str, now: float | None = None,
                kind: SessionKind = "browser") -> Session | None:
        """The live session of a token of this kind: not expired, its user not disabled."""
        now = time.time() if now is None else now
        row = next(self._db.query(
            "SELECT u.*, s.csrf, s.expires_at FROM sessions s JOIN users u "
            "ON u.username = s.username WHERE s.token_sha256 = ? AND s.expires_at >= ? "
            "AND s.kind = ? AND u.disabled = 0", (token_sha256, now, kind)), None)
        return Session(_user(row), row["csrf"], row["expires_at"]) if row else None

    @serialised
    def end_session(self, token_sha256: str) -> None:
        self._db.execute("DELETE FROM sessions WHERE token_sha256 = ?", (token_sha256,))

    @serialised
    def login_lockout_s(self, subjects: Sequence[str], now: float) -> float:
        """How long logins stay refused for any of these subjects (an account, an address)."""
        marks = ", ".join("?" * len(subjects))
        row = next(self._db.query(
            f"SELECT MAX(locked_until) AS until FROM login_failures WHERE subject IN ({marks})",
            tuple(subjects)), None)
        return max(0.0, (row["until"] or 0.0) - now) if row else 0.0

    @serialised
    def record_login_failure(self, lockouts: dict[str, Callable[[int], float]], now: float,
                             forget_before: float) -> None:
        """Count a wrong password against each subject and lock it out for as long as its
        back-off says for that count. Failures older than `forget_before` are forgotten."""
        with self._db.atomic():
            self._db.execute("DELETE FROM login_failures WHERE last_failed_at < ? "
                             "AND locked_until < ?", (forget_before, now))
            for subject, lockout_s in lockouts.items():
                # The increment is one statement, so central processes sharing the database
                # never lose a count.
                self._db.execute(
                    "INSERT INTO login_failures (subject, failures, last_failed_at, "
                    "locked_until) VALUES (?, 1, ?, 0) ON CONFLICT (subject) DO UPDATE SET "
                    "failures = login_failures.failures + 1, last_failed_at = ?",
                    (subject, now, now))
                failures = next(self._db.query(
                    "SELECT failures FROM login_failures WHERE subject = ?", (subject,)))
                wait_s = lockout_s(failures["failures"])
                if wait_s > 0:
                    self._db.execute("UPDATE login_failures SET locked_until = ? "
                                     "WHERE subject = ?", (now + wait_s, subject))

    @serialised
    def clear_login_failures(self, subject: str) -> None:
        self._db.execute("DELETE FROM login_failures WHERE subject = ?", (subject,))

    def _user_row(self, username: str) -> dict[str, Any] | None:
        return next(self._db.query("SELECT * FROM users WHERE username = ?", (username,)), None)



def _user(row: dict[str, Any]) -> User:
    return User(row["username"], row["role"], row["created_at"], bool(row["disabled"]))

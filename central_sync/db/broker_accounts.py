"""Broker accounts: central's and each provisioned device's Mosquitto login (part of CentralDB).

The database is the source of truth; `central_sync.provisioning` renders Mosquitto's password
file and ACL from it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from central_sync.db.connection import Connection, serialised

KINDS = ("central", "device")


class AccountExists(Exception):
    """An active broker account of that name exists already."""


class UnknownAccount(Exception):
    """No active broker account of that name."""


@dataclass(frozen=True)
class BrokerAccount:
    username: str
    kind: str  # central: the whole topic tree; device: its own topics only
    labels: tuple[str, ...]
    password_hash: str  # Mosquitto's $7$ PBKDF2-SHA512 form
    created_at: float
    rotated_at: float
    revoked_at: float | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


class BrokerAccountQueries:
    """Broker accounts; mixed into CentralDB, whose connection and lock it uses."""

    _db: Connection
    _audit: Callable[[str, str, str, str], None]

    @serialised
    def broker_accounts(self, include_revoked: bool = False) -> list[BrokerAccount]:
        sql = "SELECT * FROM broker_accounts"
        if not include_revoked:
            sql += " WHERE revoked_at IS NULL"
        return [_account(row) for row in self._db.query(sql + " ORDER BY kind, username")]

    @serialised
    def broker_account(self, username: str) -> BrokerAccount | None:
        row = self._row(username)
        return None if row is None else _account(row)

    @serialised
    def add_broker_account(self, username: str, kind: str, labels: list[str],
                           password_hash: str, by: str) -> BrokerAccount:
        """A new account, or a revoked one given back with new credentials."""
        if kind not in KINDS:
            raise ValueError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
        now = time.time()
        with self._db.atomic():
            row = self._row(username)
            if row is not None and row["revoked_at"] is None:
                raise AccountExists(
                    f"{username} is provisioned already; new credentials: "
                    f"`central-sync device rotate {username}`")
            if row is not None:
                self._db.execute("DELETE FROM broker_accounts WHERE username = ?", (username,))
            self._db.execute(
                "INSERT INTO broker_accounts (username, kind, labels, password_hash, created_at, "
                "rotated_at) VALUES (?, ?, ?, ?, ?, ?)",
                (username, kind, json.dumps(labels), password_hash, now, now))
            self._audit(by, f"{kind}.provision", username, f"labels={','.join(labels)}")
        return BrokerAccount(username, kind, tuple(labels), password_hash, now, now, None)

    @serialised
    def rotate_broker_account(self, username: str, password_hash: str, by: str) -> None:
        with self._db.atomic():
            self._active_row(username)
            self._db.execute("UPDATE broker_accounts SET password_hash = ?, rotated_at = ? "
                             "WHERE username = ?", (password_hash, time.time(), username))
            self._audit(by, "broker.rotate", username, "")

    @serialised
    def revoke_broker_account(self, username: str, by: str) -> None:
        with self._db.atomic():
            self._active_row(username)
            self._db.execute("UPDATE broker_accounts SET revoked_at = ? WHERE username = ?",
                             (time.time(), username))
            self._audit(by, "broker.revoke", username, "")

    def _row(self, username: str) -> dict[str, Any] | None:
        rows = list(self._db.query("SELECT * FROM broker_accounts WHERE username = ?",
                                   (username,)))
        return rows[0] if rows else None

    def _active_row(self, username: str) -> dict[str, Any]:
        row = self._row(username)
        if row is None or row["revoked_at"] is not None:
            raise UnknownAccount(f"{username} is not a provisioned device; see "
                                 "`central-sync device list`")
        return row


def _account(row: dict[str, Any]) -> BrokerAccount:
    return BrokerAccount(row["username"], row["kind"], tuple(json.loads(row["labels"])),
                         row["password_hash"], row["created_at"], row["rotated_at"],
                         row["revoked_at"])

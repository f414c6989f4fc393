"""Broker accounts: the Mosquitto logins of central, each provisioned device and each SCADA
reader of the alert topics (part of CentralDB).

The database is the source of truth; `central_sync.provisioning` renders Mosquitto's password
file and ACL from it. A device account's labels are its trusted groups, the only ones rollouts
select devices by.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from central_sync.db.connection import Connection, serialised

# central: the whole topic tree; device: its own topics only; scada: reads the alert topics.
KINDS = ("central", "device", "scada")
# Whether an account's JSON labels hold the given label, per dialect.
_HAS_LABEL = {
    "sqlite": "EXISTS (SELECT 1 FROM json_each(b.labels) l WHERE l.value = ?)",
    "postgresql": "CAST(b.labels AS jsonb) @> jsonb_build_array(CAST(? AS text))",
}


class AccountExists(Exception):
    """An active broker account of that name exists already."""


class UnknownAccount(Exception):
    """No active broker account of that name."""


@dataclass(frozen=True)
class BrokerAccount:
    username: str
    kind: str  # one of KINDS
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
    dialect: str

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
    def set_device_labels(self, username: str, labels: list[str], by: str) -> tuple[str, ...]:
        """Give a provisioned device these groups (what rollouts select it by); audited.
        Returns the labels it had before."""
        with self._db.atomic():
            row = self._active_row(username)
            if row["kind"] != "device":
                raise UnknownAccount(f"{username} is a {row['kind']} broker account, not a "
                                     "device; only devices have labels")
            before = tuple(json.loads(row["labels"]))
            self._db.execute("UPDATE broker_accounts SET labels = ? WHERE username = ?",
                             (json.dumps(labels), username))
            self._audit(by, "device.labels", username,
                        f"labels={','.join(labels)} before={','.join(before)}")
        return before

    @serialised
    def devices_labelled(self, label: str) -> list[str]:
        """Provisioned, not revoked devices given `label` by `device add` or `device label`:
        a rollout's group. What a device reports of itself plays no part."""
        return [row["username"] for row in self._db.query(
            "SELECT b.username FROM broker_accounts b WHERE b.kind = 'device' AND "
            f"b.revoked_at IS NULL AND {_HAS_LABEL[self.dialect]} ORDER BY b.username",
            (label,))]

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
            raise UnknownAccount(f"{username} is not a provisioned device or SCADA reader; "
                                 "see `central-sync device list`")
        return row


def _account(row: dict[str, Any]) -> BrokerAccount:
    return BrokerAccount(row["username"], row["kind"], tuple(json.loads(row["labels"])),
                         row["password_hash"], row["created_at"], row["rotated_at"],
                         row["revoked_at"])

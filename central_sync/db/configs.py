"""Configuration versions as central stores them, and their deployments to gateways (part of
CentralDB): published versions are immutable, numbered 1, 2, 3... per name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from central_sync.db.connection import Connection, serialised
from central_sync.db.rows import DEPLOYMENT_ISSUED, ROLLBACK_TO_PREVIOUS
from edge_agent.kernel.contract import (
    ConfigDeployCommand,
    ConfigDocument,
    ConfigRollbackCommand,
    canonical_json,
)

CONFIG_KIND = "config"


class ConfigUnchanged(Exception):
    """The body to publish is the newest version's: nothing new to publish."""

    def __init__(self, existing: ConfigDocument) -> None:
        super().__init__(
            f"configuration {existing.name} is unchanged: version {existing.version} already "
            f"has this body (sha256 {existing.sha256[:12]}...); deploy or push "
            f"{existing.label}, or change the file")
        self.existing = existing


class ConfigVersionTaken(Exception):
    """Another publish of the same name took the version number first (two at once)."""


@dataclass(frozen=True)
class ConfigDeployment:
    """A device's newest configuration deployment, for `config where` and the pages."""

    device_id: str
    command_id: str
    name: str
    version: str  # the version deployed, or "previous" for a rollback to the one before
    state: str
    detail: str
    updated_at: float
    issued_by: str


class ConfigQueries:
    """Configuration versions and their deployments; mixed into CentralDB, whose connection
    and lock it uses."""

    _db: Connection
    _audit: Callable[[str, str, str, str], None]  # CentralDB's: actor, action, subject, detail
    dialect: str

    @serialised
    def publish_config(self, name: str, build: Callable[[int], ConfigDocument]) -> ConfigDocument:
        """Store `build(next version)` as the next version of `name`, with its audit entry,
        in one transaction. ConfigUnchanged (nothing stored) when its body is the newest
        version's; ConfigVersionTaken when another publish took the number meanwhile."""
        with self._db.atomic():
            newest = self._newest_config(name)
            document = build(newest.version + 1 if newest else 1)
            if newest is not None and newest.sha256 == document.sha256:
                raise ConfigUnchanged(newest)
            inserted = self._db.execute(
                "INSERT OR IGNORE INTO configs (name, version, sha256, body, document, "
                "probation_s, notes, published_at, published_by) VALUES (?, ?, ?, ?, ?, ?, ?, "
                "?, ?)",
                (document.name, document.version, document.sha256,
                 canonical_json(document.body).decode("ascii"), document.model_dump_json(),
                 document.probation_s, document.notes, document.published_at,
                 document.published_by))
            if not inserted:
                raise ConfigVersionTaken(
                    f"version {document.version} of {name} was published by someone else just "
                    "now; see `central-sync config list` and publish again if still needed")
            self._audit(document.published_by, "config.publish", document.label,
                        f"sha256={document.sha256} probation_s={document.probation_s:g}")
        return document

    @serialised
    def get_config(self, name: str, version: int) -> ConfigDocument | None:
        row = next(self._db.query(
            "SELECT document FROM configs WHERE name = ? AND version = ?", (name, version)), None)
        return ConfigDocument.model_validate_json(row["document"]) if row else None

    @serialised
    def newest_config(self, name: str) -> ConfigDocument | None:
        return self._newest_config(name)

    def _newest_config(self, name: str) -> ConfigDocument | None:
        row = next(self._db.query(
            "SELECT document FROM configs WHERE name = ? ORDER BY version DESC LIMIT 1",
            (name,)), None)
        return ConfigDocument.model_validate_json(row["document"]) if row else None

    @serialised
    def list_configs(self, name: str | None = None, limit: int = 500) -> list[ConfigDocument]:
        """Versions by name, newest version first within a name."""
        where, params = (" WHERE name = ?", (name,)) if name else ("", ())
        return [ConfigDocument.model_validate_json(row["document"]) for row in self._db.query(
            f"SELECT document FROM configs{where} ORDER BY name, version DESC LIMIT ?",
            (*params, limit))]

    @serialised
    def create_config_deployment(self, command: ConfigDeployCommand) -> None:
        """Record a configuration sent to a device, with its audit entry: only then are its
        steps accepted from that device."""
        document = command.document
        self._record_config_command(command, document.name, str(document.version),
                                    "config.deploy", document.label)

    @serialised
    def record_config_rollback(self, command: ConfigRollbackCommand) -> None:
        """Record a configuration rollback sent to a device, so that its steps count."""
        version = str(command.to_version) if command.to_version else ROLLBACK_TO_PREVIOUS
        self._record_config_command(command, command.name, version, "config.rollback",
                                    command.name)

    def _record_config_command(self, command: ConfigDeployCommand | ConfigRollbackCommand,
                               name: str, version: str, action: str, subject: str) -> None:
        with self._db.atomic():
            self._db.execute(
                "INSERT INTO deployments (command_id, device_id, kind, model_name, version, "
                "issued_at, issued_by, state, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (command.command_id, command.device_id, CONFIG_KIND, name, version,
                 command.issued_at, command.issued_by, DEPLOYMENT_ISSUED, command.issued_at))
            self._audit(command.issued_by, action, subject,
                        f"device={command.device_id} command={command.command_id} "
                        f"version={version}")

    @serialised
    def last_config_deployments(self, name: str | None = None) -> dict[str, ConfigDeployment]:
        """Each device's newest configuration deployment (of `name` only, when given)."""
        where, params = ("AND model_name = ? ", (name,)) if name else ("", ())
        rows = self._db.query(
            "SELECT * FROM (SELECT device_id, command_id, model_name, version, state, detail, "
            "updated_at, issued_by, ROW_NUMBER() OVER (PARTITION BY device_id ORDER BY "
            "issued_at DESC, updated_at DESC) AS newest FROM deployments WHERE kind = ? "
            f"{where}) ranked WHERE newest = 1 ORDER BY device_id", (CONFIG_KIND, *params))
        return {row["device_id"]: _config_deployment(row) for row in rows}


def _config_deployment(row: dict[str, Any]) -> ConfigDeployment:
    return ConfigDeployment(
        device_id=row["device_id"], command_id=row["command_id"], name=row["model_name"],
        version=row["version"], state=row["state"], detail=row["detail"],
        updated_at=row["updated_at"], issued_by=row["issued_by"])

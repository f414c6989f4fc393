"""Agent releases as central stores them, and their deployments to gateways (part of CentralDB):
a published release (the signed AgentPackage of one wheel) is immutable; a deployment of kind
'agent' lets its gateway fetch the wheel's chunks while it is open."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from central_sync.db.connection import Connection, serialised
from central_sync.db.rows import DEPLOYMENT_ISSUED, ROLLBACK_TO_PREVIOUS
from edge_agent.kernel.contract import (
    AGENT_PACKAGE_NAME,
    AgentPackage,
    AgentRollbackCommand,
    AgentUpdateCommand,
    version_key,
)

AGENT_KIND = "agent"
# A deployment in one of these states no longer fetches its wheel (the gateway switched).
_CLOSED = ("activated", "confirmed", "failed", "rolled_back")


class AgentReleaseExists(Exception):
    """The version is published already, from another wheel: versions are immutable."""


@dataclass(frozen=True)
class PublishedAgent:
    package: AgentPackage
    published_by: str


class AgentReleaseQueries:
    """Agent releases and their deployments; mixed into CentralDB, whose connection, lock and
    audit it uses."""

    _db: Connection
    _audit: Callable[[str, str, str, str], None]  # CentralDB's: actor, action, subject, detail

    @serialised
    def store_agent_package(self, package: AgentPackage) -> tuple[AgentPackage, bool]:
        """Store a signed release with its audit entry; (stored, True), or (the same release
        already stored, False). AgentReleaseExists when the version holds another wheel."""
        with self._db.atomic():
            existing = self._agent_package("version", package.version)
            if existing is not None:
                if existing.sha256 != package.sha256:
                    raise AgentReleaseExists(
                        f"{AGENT_PACKAGE_NAME} {package.version} is published already from "
                        f"another wheel (sha256 {existing.sha256[:12]}...); releases are "
                        "immutable: build the new one with a higher version")
                return existing, False
            self._db.execute(
                "INSERT INTO agent_packages (version, sha256, size_bytes, filename, package, "
                "published_at, published_by) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (package.version, package.sha256, package.size_bytes, package.filename,
                 package.model_dump_json(), package.published_at, package.published_by))
            self._audit(package.published_by, "agent.publish",
                        f"{AGENT_PACKAGE_NAME}@{package.version}",
                        f"sha256={package.sha256} size_bytes={package.size_bytes} "
                        f"file={package.filename}")
        return package, True

    @serialised
    def get_agent_package(self, version: str) -> AgentPackage | None:
        return self._agent_package("version", version)

    @serialised
    def get_agent_package_by_sha256(self, sha256: str) -> AgentPackage | None:
        return self._agent_package("sha256", sha256)

    def _agent_package(self, column: str, value: str) -> AgentPackage | None:
        assert column in ("version", "sha256")
        row = next(self._db.query(
            f"SELECT package FROM agent_packages WHERE {column} = ? ORDER BY published_at "
            "LIMIT 1", (value,)), None)
        return AgentPackage.model_validate_json(row["package"]) if row else None

    @serialised
    def list_agent_packages(self) -> list[PublishedAgent]:
        """Every release, newest version first."""
        found = [PublishedAgent(AgentPackage.model_validate_json(row["package"]),
                                row["published_by"])
                 for row in self._db.query("SELECT package, published_by FROM agent_packages")]
        return sorted(found, key=lambda p: version_key(p.package.version), reverse=True)

    @serialised
    def agent_deployment_open_for(self, device_id: str, sha256: str) -> bool:
        """Whether an agent deployment of the wheel `sha256` to `device_id` is under way: only
        then may the gateway fetch its chunks."""
        marks = ", ".join("?" * len(_CLOSED))
        return next(self._db.query(
            "SELECT 1 AS found FROM deployments d JOIN agent_packages p "
            "ON p.version = d.version WHERE d.kind = ? AND d.device_id = ? AND p.sha256 = ? "
            f"AND d.state NOT IN ({marks}) LIMIT 1",
            (AGENT_KIND, device_id, sha256, *_CLOSED)), None) is not None

    @serialised
    def create_agent_deployment(self, command: AgentUpdateCommand) -> None:
        """Record an agent update sent to a device (its steps are accepted only then)."""
        package = command.package
        with self._db.atomic():
            self._insert_agent_deployment(command.command_id, command.device_id,
                                          package.version, command.issued_at,
                                          command.issued_by)
            self._audit(command.issued_by, "agent.deploy",
                        f"{AGENT_PACKAGE_NAME}@{package.version}",
                        f"device={command.device_id} command={command.command_id}")

    @serialised
    def record_agent_rollback(self, command: AgentRollbackCommand) -> None:
        """Record an agent rollback sent to a device, so that its steps are accepted."""
        with self._db.atomic():
            self._insert_agent_deployment(command.command_id, command.device_id,
                                          ROLLBACK_TO_PREVIOUS, command.issued_at,
                                          command.issued_by)
            self._audit(command.issued_by, "agent.rollback", AGENT_PACKAGE_NAME,
                        f"device={command.device_id} command={command.command_id}")

    def _insert_agent_deployment(self, command_id: str, device_id: str, version: str,
                                 issued_at: float, issued_by: str) -> None:
        self._db.execute(
            "INSERT INTO deployments (command_id, device_id, model_name, version, issued_at, "
            "issued_by, state, updated_at, kind) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (command_id, device_id, AGENT_PACKAGE_NAME, version, issued_at, issued_by,
             DEPLOYMENT_ISSUED, issued_at, AGENT_KIND))

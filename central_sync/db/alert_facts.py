"""What the alert rules look at, read in one go per evaluation (part of CentralDB): the
devices still provisioned with their labels, recent deployments, models with statistics, and
defect counts by camera and class."""

from __future__ import annotations

from typing import Any

from central_sync.db.connection import Connection, serialised


class AlertFactQueries:
    """The engine's reads; mixed into CentralDB, whose connection and lock it uses."""

    _db: Connection

    @serialised
    def alert_devices(self) -> list[dict[str, Any]]:
        """Every device's row with its provisioning labels, without counting its records;
        a device whose account was revoked (`device remove`) is not watched any more."""
        return list(self._db.query(
            "SELECT d.*, 0 AS records, b.labels AS labels FROM devices d LEFT JOIN "
            "broker_accounts b ON b.username = d.device_id AND b.kind = 'device' AND "
            "b.revoked_at IS NULL WHERE NOT EXISTS (SELECT 1 FROM broker_accounts r WHERE "
            "r.username = d.device_id AND r.kind = 'device' AND r.revoked_at IS NOT NULL) "
            "ORDER BY d.device_id"))

    @serialised
    def deployments_changed_since(self, since: float) -> list[dict[str, Any]]:
        """Deployments (models, configurations, agent) updated since `since`, oldest first."""
        return list(self._db.query(
            "SELECT command_id, device_id, kind, model_name, version, state, detail, "
            "updated_at FROM deployments WHERE updated_at >= ? ORDER BY updated_at", (since,)))

    @serialised
    def model_names_with_stats_since(self, since: float) -> list[str]:
        return [row["model_name"] for row in self._db.query(
            "SELECT DISTINCT model_name FROM model_stats WHERE ended_at >= ?", (since,))]

    @serialised
    def defect_history(self, since: float, until: float
                       ) -> dict[tuple[str, str, str], tuple[int, float]]:
        """(device, camera, class) -> (defects made in [since, until), the first one's time)."""
        return {(row["device_id"], row["camera"], row["label"]): (row["n"], row["first_at"])
                for row in self._db.query(
                    "SELECT device_id, camera, label, COUNT(*) AS n, MIN(created_at) AS "
                    "first_at FROM defects WHERE created_at >= ? AND created_at < ? "
                    "GROUP BY device_id, camera, label", (since, until))}

    @serialised
    def defect_counts(self, since: float, until: float
                      ) -> dict[tuple[str, str, str], int]:
        """(device, camera, class) -> defects made in [since, until)."""
        return {(row["device_id"], row["camera"], row["label"]): row["n"]
                for row in self._db.query(
                    "SELECT device_id, camera, label, COUNT(*) AS n FROM defects WHERE "
                    "created_at >= ? AND created_at < ? GROUP BY device_id, camera, label",
                    (since, until))}

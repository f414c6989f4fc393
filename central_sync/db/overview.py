"""What the plant overview reads: every gateway without counting its records, defects per class
in a period, and the recommendation records of the last day (part of CentralDB). Each read is
bounded in time and served by an index."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from central_sync.db.connection import Connection, serialised
from central_sync.db.rows import DeviceSummary, device_summary

# A wall screen refreshes every few seconds: a day of recommendations is far below this, and
# a runaway gateway must not make the page read without end.
MAX_RECOMMENDATION_RECORDS = 5000


class OverviewQueries:
    """The plant overview's reads; mixed into CentralDB, whose connection and lock it uses."""

    _db: Connection

    @serialised
    def overview_devices(self) -> list[DeviceSummary]:
        """Every gateway with its provisioning labels (records not counted: `records` is 0);
        one whose account was revoked (`device remove`) is no longer on the plant."""
        rows = self._db.query(
            "SELECT d.*, 0 AS records, b.labels AS labels FROM devices d LEFT JOIN "
            "broker_accounts b ON b.username = d.device_id AND b.kind = 'device' AND "
            "b.revoked_at IS NULL WHERE NOT EXISTS (SELECT 1 FROM broker_accounts r WHERE "
            "r.username = d.device_id AND r.kind = 'device' AND r.revoked_at IS NOT NULL) "
            "ORDER BY d.device_id")
        return [device_summary(row) for row in rows]

    @serialised
    def defect_counts_by_class(self, since: float, until: float) -> dict[tuple[str, str], int]:
        """(device, class) -> defects made in [since, until), by their time of making (index
        defects_newest)."""
        return {(row["device_id"], row["label"]): row["n"] for row in self._db.query(
            "SELECT device_id, label, COUNT(*) AS n FROM defects WHERE created_at >= ? AND "
            "created_at < ? GROUP BY device_id, label", (since, until))}

    @serialised
    def record_payloads_since(self, types: Sequence[str], since: float,
                              limit: int = MAX_RECOMMENDATION_RECORDS
                              ) -> list[tuple[str, str, dict[str, Any]]]:
        """(device_id, type, payload) of the records of these types made since `since`,
        oldest first; at most `limit` of each type, the newest (index records_type_time)."""
        out: list[tuple[str, str, dict[str, Any]]] = []
        for record_type in types:
            rows = list(self._db.query(
                "SELECT device_id, type, created_at, seq, payload FROM records WHERE type = ? "
                "AND created_at >= ? ORDER BY created_at DESC, seq DESC LIMIT ?",
                (record_type, since, limit)))
            out += [(row["device_id"], row["type"], json.loads(row["payload"]))
                    for row in reversed(rows)]
        return out

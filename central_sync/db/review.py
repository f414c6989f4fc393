"""Defect review: the defects projection filtered and paged, labels, counts, precision, export
(part of CentralDB). Paging is by key (time, device, seq), so page 2,000 costs what page 1 does."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from central_sync.db.connection import Connection, serialised

VERDICTS = ("confirmed", "false_alarm", "relabelled")
UNREVIEWED = "unreviewed"


class UnknownDefect(Exception):
    """No defect record with that device and seq."""


@dataclass(frozen=True)
class DefectFilter:
    """What the review grid shows; every field optional."""

    device_id: str | None = None
    camera: str | None = None
    label: str | None = None
    model_version: str | None = None
    min_confidence: float | None = None
    max_confidence: float | None = None
    since: float | None = None
    until: float | None = None
    verdict: str | None = None  # one of VERDICTS, or "unreviewed"

    def where(self) -> tuple[str, list[Any]]:
        clauses, params = [], []
        for column in ("device_id", "camera", "label", "model_version"):
            if getattr(self, column):
                clauses.append(f"{column} = ?")
                params.append(getattr(self, column))
        for bound, clause in (("min_confidence", "confidence >= ?"),
                              ("max_confidence", "confidence <= ?"),
                              ("since", "created_at >= ?"), ("until", "created_at < ?")):
            if getattr(self, bound) is not None:
                clauses.append(clause)
                params.append(getattr(self, bound))
        if self.verdict == UNREVIEWED:
            clauses.append("verdict IS NULL")
        elif self.verdict:
            clauses.append("verdict = ?")
            params.append(self.verdict)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


@dataclass(frozen=True)
class Defect:
    device_id: str
    seq: int
    created_at: float
    pipeline: str
    camera: str
    roi: str
    label: str
    confidence: float
    model_name: str
    model_version: str
    verdict: str | None
    true_label: str | None
    labelled_by: str | None
    labelled_at: float | None

    @property
    def key(self) -> str:
        """The paging cursor just past this defect."""
        return f"{self.created_at!r}:{self.device_id}:{self.seq}"

    @property
    def final_label(self) -> str:
        """The class to train on: the reviewer's when relabelled, else the model's."""
        return self.true_label if self.verdict == "relabelled" and self.true_label \
            else self.label


_COLUMNS = ", ".join(f.name for f in fields(Defect))
# The model a record's payload names (`model`: name, version, sha256), per dialect.
_RECORD_MODEL = {
    "sqlite": ", ".join(f"json_extract(payload, '$.model.{key}') AS model_{key}"
                        for key in ("name", "version", "sha256")),
    "postgresql": ", ".join(f"CAST(payload AS jsonb) -> 'model' ->> '{key}' AS model_{key}"
                            for key in ("name", "version", "sha256")),
}


def parse_cursor(cursor: str) -> tuple[float, str, int]:
    """A cursor from `Defect.key`; ValueError when it is not one."""
    created_at, rest = cursor.split(":", 1)
    device_id, seq = rest.rsplit(":", 1)
    return float(created_at), device_id, int(seq)


class ReviewQueries:
    """Mixed into CentralDB, whose connection, lock and audit log it uses."""

    _db: Connection
    _audit: Callable[[str, str, str, str], None]

    @serialised
    def list_defects(self, filters: DefectFilter, limit: int = 48,
                     after: tuple[float, str, int] | None = None) -> list[Defect]:
        """Newest first; `after` is the cursor of the last defect of the previous page."""
        where, params = filters.where()
        if after is not None:
            where += (" AND " if where else " WHERE ") + \
                "(created_at < ? OR (created_at = ? AND (device_id < ? OR " \
                "(device_id = ? AND seq < ?))))"
            params += [after[0], after[0], after[1], after[1], after[2]]
        return [Defect(**row) for row in self._db.query(
            f"SELECT {_COLUMNS} FROM defects{where} "
            "ORDER BY created_at DESC, device_id DESC, seq DESC LIMIT ?", (*params, limit))]

    @serialised
    def get_defect(self, device_id: str, seq: int) -> Defect | None:
        row = next(self._db.query(f"SELECT {_COLUMNS} FROM defects WHERE device_id = ? AND "
                                  "seq = ?", (device_id, seq)), None)
        return Defect(**row) if row else None

    @serialised
    def record_model(self, device_id: str, seq: int) -> dict[str, Any] | None:
        """What a stored record says of itself for its lineage: its type, time and the model
        it names (name, version, sha256; None where the payload names none)."""
        model = _RECORD_MODEL[self._db.dialect]
        return next(self._db.query(
            f"SELECT type, created_at, {model} FROM records WHERE device_id = ? AND seq = ?",
            (device_id, seq)), None)

    @serialised
    def label_defect(self, device_id: str, seq: int, verdict: str, by: str,
                     true_label: str | None = None) -> Defect:
        """A reviewer's verdict (confirmed, false_alarm, or relabelled with the true class);
        the latest counts, each one is in the audit log with who and when."""
        if verdict not in VERDICTS:
            raise ValueError(f"verdict {verdict!r} is not one of {', '.join(VERDICTS)}")
        if verdict == "relabelled" and not true_label:
            raise ValueError("relabelled needs the true class")
        with self._db.atomic():
            changed = self._db.execute(
                "UPDATE defects SET verdict = ?, true_label = ?, labelled_by = ?, "
                "labelled_at = ? WHERE device_id = ? AND seq = ?",
                (verdict, true_label if verdict == "relabelled" else None, by, time.time(),
                 device_id, seq))
            if not changed:
                raise UnknownDefect(f"no defect {device_id}/{seq}")
            self._audit(by, "defect.label", f"{device_id}/{seq}",
                        verdict + (f" as {true_label}" if verdict == "relabelled" else ""))
        defect = self.get_defect(device_id, seq)
        assert defect is not None
        return defect

    @serialised
    def defect_summary(self, filters: DefectFilter) -> dict[str, Any]:
        """Counts by class and by device, reviewed so far, and per class the model's precision
        from the labels (confirmed / (confirmed + false alarms + relabelled))."""
        where, params = filters.where()
        by_label: dict[str, dict[str, int]] = {}
        for row in self._db.query(
                f"SELECT label, COALESCE(verdict, '{UNREVIEWED}') AS verdict, COUNT(*) AS n "
                f"FROM defects{where} GROUP BY label, verdict", params):
            by_label.setdefault(row["label"], {})[row["verdict"]] = int(row["n"])
        by_device = {row["device_id"]: int(row["n"]) for row in self._db.query(
            f"SELECT device_id, COUNT(*) AS n FROM defects{where} GROUP BY device_id "
            "ORDER BY device_id", params)}
        precision = {}
        for label, counts in by_label.items():
            judged = sum(counts.get(v, 0) for v in VERDICTS)
            if judged:
                precision[label] = counts.get("confirmed", 0) / judged
        total = sum(sum(c.values()) for c in by_label.values())
        unreviewed = sum(c.get(UNREVIEWED, 0) for c in by_label.values())
        return {"total": total, "reviewed": total - unreviewed, "by_label": by_label,
                "by_device": by_device, "precision": precision}

    @serialised
    def defect_rate(self, filters: DefectFilter, bucket_s: float,
                    buckets: int) -> tuple[float, list[dict[str, Any]]]:
        """Defects per class in the `buckets` intervals of `bucket_s` up to the newest one
        matching: (the first interval's start, rows of bucket, label, n)."""
        where, params = filters.where()
        newest = next(self._db.query(f"SELECT MAX(created_at) AS t FROM defects{where}",
                                     params))["t"]
        if newest is None:
            return 0.0, []
        since = (newest // bucket_s + 1) * bucket_s - buckets * bucket_s
        where += (" AND " if where else " WHERE ") + "created_at >= ?"
        # Whole intervals since `since` (never negative here, so truncation is the floor).
        bucket = "FLOOR((created_at - ?) / ?)" if self._db.dialect == "postgresql" \
            else "CAST((created_at - ?) / ? AS INTEGER)"
        rows = [{**row, "bucket": int(row["bucket"])} for row in self._db.query(
            f"SELECT {bucket} AS bucket, label, COUNT(*) AS n FROM defects{where} "
            "GROUP BY 1, 2", (since, bucket_s, *params, since))]
        return since, rows

    @serialised
    def defect_choices(self) -> dict[str, list[str]]:
        """The values each filter can take, for the review page's menus."""
        return {column: [row[column] for row in self._db.query(
            f"SELECT DISTINCT {column} FROM defects ORDER BY {column}")]
            for column in ("device_id", "camera", "label", "model_version")}

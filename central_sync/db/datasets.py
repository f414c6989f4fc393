"""Dataset versions (part of CentralDB): the labelled defects and samples a selection takes,
paged by key without their images; frozen images by content; versions numbered per name."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

from central_sync.db.connection import Connection, serialised
from central_sync.db.dataset_manifest import (
    DatasetError,
    DatasetManifest,
    DatasetSummary,
    DatasetVersion,
    parse_dataset_ref,
)

ORIGINS = ("defect", "sample")


class NothingNewToFreeze(DatasetError):
    """The selection gives exactly the newest version of that name."""


@dataclass(frozen=True)
class DatasetSelection:
    """Which labelled records a dataset takes; every field optional (None: any)."""

    device_id: str | None = None
    camera: str | None = None
    pipeline: str | None = None
    model_name: str | None = None
    model_version: str | None = None
    labelled_since: float | None = None  # labelled at or after (epoch seconds)
    labelled_until: float | None = None  # labelled before (epoch seconds)
    origin: str | None = None  # "defect" or "sample"; None: both

    def __post_init__(self) -> None:
        if self.origin is not None and self.origin not in ORIGINS:
            raise ValueError(f"origin {self.origin!r} is not one of {', '.join(ORIGINS)}")

    def to_json(self) -> dict[str, Any]:
        """The filters that are set: what a manifest records as its selection."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if getattr(self, f.name) is not None}

    def origins(self) -> tuple[str, ...]:
        return (self.origin,) if self.origin else ORIGINS

    def where(self, origin: str) -> tuple[str, list[Any]]:
        """The WHERE clause over the origin's table (aliased x), labelled rows only."""
        clauses = ["x.verdict IS NOT NULL" if origin == "defect" else "x.true_label IS NOT NULL"]
        params: list[Any] = []
        for column in ("device_id", "camera", "pipeline", "model_name", "model_version"):
            if getattr(self, column) is not None:
                clauses.append(f"x.{column} = ?")
                params.append(getattr(self, column))
        for bound, clause in (("labelled_since", "x.labelled_at >= ?"),
                              ("labelled_until", "x.labelled_at < ?")):
            if getattr(self, bound) is not None:
                clauses.append(clause)
                params.append(getattr(self, bound))
        return " WHERE " + " AND ".join(clauses), params


@dataclass(frozen=True)
class LabelledRecord:
    """A labelled defect or sample, with what its record says of the picture (no image)."""

    device_id: str
    seq: int
    origin: str
    pipeline: str
    predicted: str  # the model's class
    label: str  # the reviewed class: "ok" for a false alarm or a normal sample
    present: bool  # the record (with its evidence) is still stored
    result_kind: str | None
    roi_box: list[int] | None  # camera pixels
    boxes: list[dict[str, Any]]  # DetectedBox as JSON, camera pixels
    frame_size: list[int] | None  # camera frame (width, height); None in older records
    image_size: tuple[int, int] | None  # the stored 'frame' evidence (width, height)

    @property
    def source(self) -> str:
        return f"{self.device_id}/{self.seq}"


_TABLES = {"defect": "defects", "sample": "samples"}
_LABEL = {"defect": "CASE x.verdict WHEN 'false_alarm' THEN 'ok' WHEN 'relabelled' THEN "
                    "x.true_label ELSE x.label END", "sample": "x.true_label"}
# What a selection reads of each record's payload, in one parse, images left aside.
_PAYLOAD_FIELDS = {
    "sqlite": "json_extract(r.payload, '$.roi_box', '$.boxes', '$.frame_size', "
              "'$.result.kind', '$.images.frame.width', '$.images.frame.height')",
    "postgresql": "jsonb_build_array(p.j -> 'roi_box', p.j -> 'boxes', p.j -> 'frame_size', "
                  "p.j -> 'result' -> 'kind', p.j -> 'images' -> 'frame' -> 'width', "
                  "p.j -> 'images' -> 'frame' -> 'height')::text",
}
_PAYLOAD_JOIN = {
    "sqlite": "",
    "postgresql": " LEFT JOIN LATERAL (SELECT CAST(r.payload AS jsonb) AS j) p ON true",
}


def _integrity_errors() -> tuple[type[Exception], ...]:
    try:
        import psycopg
    except ImportError:
        return (sqlite3.IntegrityError,)
    return (sqlite3.IntegrityError, psycopg.IntegrityError)


class DatasetQueries:
    """Mixed into CentralDB, whose connection, lock and audit log it uses."""

    _db: Connection
    _audit: Callable[[str, str, str, str], None]

    @serialised
    def count_labelled(self, selection: DatasetSelection) -> int:
        """How many labelled defects and samples the selection takes."""
        total = 0
        for origin in selection.origins():
            where, params = selection.where(origin)
            total += int(next(self._db.query(
                f"SELECT COUNT(*) AS n FROM {_TABLES[origin]} x{where}", params))["n"])
        return total

    @serialised
    def labelled_page(self, selection: DatasetSelection, origin: str,
                      after: tuple[str, int] | None, limit: int) -> list[LabelledRecord]:
        """The next `limit` labelled records of one origin in (device, seq) order, after the
        key `after`; their payloads are read without the images."""
        where, params = selection.where(origin)
        if after is not None:
            where += " AND (x.device_id > ? OR (x.device_id = ? AND x.seq > ?))"
            params += [after[0], after[0], after[1]]
        rows = self._db.query(
            f"SELECT x.device_id, x.seq, x.pipeline, x.label AS predicted, "
            f"{_LABEL[origin]} AS final_label, CASE WHEN r.seq IS NULL THEN 0 ELSE 1 END "
            f"AS present, {_PAYLOAD_FIELDS[self._db.dialect]} AS fields "
            f"FROM {_TABLES[origin]} x LEFT JOIN records r ON r.device_id = x.device_id "
            f"AND r.seq = x.seq{_PAYLOAD_JOIN[self._db.dialect]}{where} "
            "ORDER BY x.device_id, x.seq LIMIT ?", (*params, limit))
        return [_labelled_record(origin, row) for row in rows]

    @serialised
    def store_dataset_images(self, images: Sequence[tuple[str, bytes, int, int]]) -> None:
        """Keep copies of images, each (sha256, JPEG bytes, width, height), in one
        transaction; an image already kept (by another dataset) is kept once."""
        now = time.time()
        with self._db.atomic():
            self._db.executemany(
                "INSERT OR IGNORE INTO dataset_images (sha256, data, width, height, "
                "created_at) VALUES (?, ?, ?, ?, ?)",
                [(sha256, data, width, height, now) for sha256, data, width, height in images])

    @serialised
    def dataset_image(self, sha256: str) -> bytes | None:
        """A frozen image's JPEG bytes."""
        row = next(self._db.query("SELECT data FROM dataset_images WHERE sha256 = ?",
                                  (sha256,)), None)
        return bytes(row["data"]) if row else None

    @serialised
    def add_dataset_version(self, name: str, manifest: DatasetManifest,
                            by: str) -> DatasetVersion:
        """Store the manifest as the next version of `name`, audited. Raises
        NothingNewToFreeze when it is the newest version already."""
        dataset_id = manifest.dataset_id
        text = manifest.canonical_json()
        now = time.time()
        try:
            with self._db.atomic():
                newest = next(self._db.query(
                    "SELECT version, dataset_id FROM datasets WHERE name = ? "
                    "ORDER BY version DESC LIMIT 1", (name,)), None)
                if newest is not None and newest["dataset_id"] == dataset_id:
                    raise NothingNewToFreeze(
                        f"nothing new to freeze: the selection gives exactly "
                        f"{name}@{newest['version']} (id {dataset_id[:12]}); label more "
                        "defects or samples, or change the filters")
                version = newest["version"] + 1 if newest is not None else 1
                self._db.execute(
                    "INSERT INTO datasets (name, version, dataset_id, kind, manifest, items, "
                    "created_at, created_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (name, version, dataset_id, manifest.kind, text, len(manifest.items),
                     now, by))
                self._audit(by, "dataset.create", f"{name}@{version}",
                            f"id={dataset_id} kind={manifest.kind} "
                            f"items={len(manifest.items)}")
        except _integrity_errors():
            raise DatasetError(f"another version of {name} was created at the same moment; "
                               "run the command again") from None
        return DatasetVersion(name, version, dataset_id, manifest, now, by)

    @serialised
    def get_dataset(self, name: str, version: int) -> DatasetVersion | None:
        row = next(self._db.query(
            "SELECT name, version, dataset_id, manifest, created_at, created_by FROM datasets "
            "WHERE name = ? AND version = ?", (name, version)), None)
        if row is None:
            return None
        return DatasetVersion(row["name"], int(row["version"]), row["dataset_id"],
                              DatasetManifest.from_text(row["manifest"]), row["created_at"],
                              row["created_by"])

    def find_dataset(self, ref: str) -> DatasetVersion | None:
        """The version "NAME@N" names; ValueError when `ref` is not of that form."""
        return self.get_dataset(*parse_dataset_ref(ref))

    def require_dataset(self, ref: str) -> DatasetVersion:
        """The version "NAME@N" names; DatasetError, saying where to look, when `ref` is not
        of that form or names no version."""
        try:
            dataset = self.find_dataset(ref)
        except ValueError as exc:
            raise DatasetError(str(exc)) from None
        if dataset is None:
            raise DatasetError(f"no dataset version {ref}; see `central-sync dataset list`")
        return dataset

    @serialised
    def list_datasets(self, name: str | None = None) -> list[DatasetSummary]:
        """Every version (of one name), by name then number, without their items."""
        where, params = (" WHERE name = ?", (name,)) if name else ("", ())
        labels = ("json_extract(manifest, '$.labels')" if self._db.dialect == "sqlite"
                  else "(CAST(manifest AS jsonb) -> 'labels')::text")
        return [DatasetSummary(row["name"], int(row["version"]), row["dataset_id"],
                               row["kind"], int(row["items"]), tuple(json.loads(row["labels"])),
                               row["created_at"], row["created_by"])
                for row in self._db.query(
                    f"SELECT name, version, dataset_id, kind, items, {labels} AS labels, "
                    f"created_at, created_by FROM datasets{where} ORDER BY name, version",
                    params)]


def _labelled_record(origin: str, row: dict[str, Any]) -> LabelledRecord:
    roi_box, boxes, frame_size, kind, width, height = (
        json.loads(row["fields"]) if row["fields"] else [None] * 6)
    return LabelledRecord(
        device_id=row["device_id"], seq=int(row["seq"]), origin=origin,
        pipeline=row["pipeline"], predicted=row["predicted"], label=row["final_label"],
        present=bool(row["present"]), result_kind=kind, roi_box=roi_box,
        boxes=boxes or [], frame_size=frame_size,
        image_size=(int(width), int(height)) if width and height else None)

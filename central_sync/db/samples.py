"""Sample review: frames the gateways kept for labelling (unsure ones, and normal ones at
random), queued for a reviewer's class and paged by key (part of CentralDB).

Queue order: unlabelled first, then the least confident, then the rarest predicted class
(fewest samples of it), then the oldest. The count per class is computed once per page, in the
page's query, never per row.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, NamedTuple

from central_sync.db.connection import Connection, serialised
from edge_agent.kernel.contract import ModelManifest

OK_LABEL = "ok"  # the reviewer's class for a frame with nothing wrong in it
REASONS = ("uncertain", "random")
CHOICES_SHOWN = 200  # values per filter menu: a gateway's free text must not bloat the page


class UnknownSample(Exception):
    """No sample record with that device and seq."""


class LabelRefused(ValueError):
    """A class that is not one of the sample's model's classes, nor "ok"."""


@dataclass(frozen=True)
class SampleFilter:
    """What the queue shows; every field optional. `labelled`: True only labelled samples,
    False only those awaiting review, None both (those awaiting first)."""

    device_id: str | None = None
    camera: str | None = None
    label: str | None = None
    model_version: str | None = None
    reason: str | None = None
    labelled: bool | None = None

    def clauses(self) -> tuple[list[str], list[Any]]:
        """SQL conditions on the samples table `s` (labelled or not is the caller's)."""
        clauses, params = [], []
        for column in ("device_id", "camera", "label", "model_version", "reason"):
            if getattr(self, column):
                clauses.append(f"s.{column} = ?")
                params.append(getattr(self, column))
        return clauses, params


class SampleCursor(NamedTuple):
    """A place in the queue: the sort key of the last sample of a page."""

    labelled: bool
    confidence: float
    rarity: int
    created_at: float
    device_id: str
    seq: int

    def text(self) -> str:
        return (f"{int(self.labelled)}:{self.confidence!r}:{self.rarity}:"
                f"{self.created_at!r}:{self.device_id}:{self.seq}")

    @classmethod
    def parse(cls, text: str) -> SampleCursor:
        """The cursor `text()` wrote; ValueError when it is not one."""
        labelled, confidence, rarity, created_at, rest = text.split(":", 4)
        device_id, seq = rest.rsplit(":", 1)
        if labelled not in ("0", "1"):
            raise ValueError(f"not a sample cursor: {text!r}")
        return cls(labelled == "1", float(confidence), int(rarity), float(created_at),
                   device_id, int(seq))


@dataclass(frozen=True)
class Sample:
    device_id: str
    seq: int
    created_at: float
    pipeline: str
    camera: str
    roi: str
    label: str  # the model's predicted class
    confidence: float
    reason: str  # uncertain or random
    model_name: str
    model_version: str
    true_label: str | None  # the reviewer's class, "ok" included; None: awaiting review
    labelled_by: str | None
    labelled_at: float | None
    rarity: int = 0  # samples of its predicted class when its page was read

    @property
    def cursor(self) -> SampleCursor:
        """The paging cursor just past this sample."""
        return SampleCursor(self.true_label is not None, self.confidence, self.rarity,
                            self.created_at, self.device_id, self.seq)


_COLUMNS = ", ".join(f"s.{f.name}" for f in fields(Sample) if f.name != "rarity")
_QUEUE_KEY = "s.confidence, c.rarity, s.created_at, s.device_id, s.seq"


class SampleQueries:
    """Mixed into CentralDB, whose connection, lock, models and audit log it uses."""

    _db: Connection
    _audit: Callable[[str, str, str, str], None]
    _model: Callable[[str, str], ModelManifest | None]

    @serialised
    def list_samples(self, filters: SampleFilter, limit: int = 48,
                     after: SampleCursor | None = None) -> list[Sample]:
        """A page of the queue; `after` is the cursor of the last sample of the previous one.

        Those awaiting review and the labelled ones are read apart, each walking an index by
        confidence; the labelled are read only when the page goes past the last awaiting one.
        """
        samples: list[Sample] = []
        for labelled in (False, True):
            if filters.labelled not in (None, labelled) or (after and after.labelled > labelled):
                continue
            key = after if after is not None and after.labelled == labelled else None
            samples += self._queue_part(filters, labelled, limit - len(samples), key)
            if len(samples) >= limit:
                break
        return samples

    def _queue_part(self, filters: SampleFilter, labelled: bool, limit: int,
                    after: SampleCursor | None) -> list[Sample]:
        clauses, params = filters.clauses()
        clauses.append("s.true_label IS NOT NULL" if labelled else "s.true_label IS NULL")
        if after is not None:
            # The first term lets the database start its index walk at the cursor.
            clauses.append(f"s.confidence >= ? AND ({_QUEUE_KEY}) > (?, ?, ?, ?, ?)")
            params += [after.confidence, after.confidence, after.rarity, after.created_at,
                       after.device_id, after.seq]
        return [Sample(**row) for row in self._db.query(
            "WITH c AS (SELECT label, COUNT(*) AS rarity FROM samples GROUP BY label) "
            # CROSS JOIN: SQLite then walks the samples in order, looking each class up.
            f"SELECT {_COLUMNS}, c.rarity FROM samples s CROSS JOIN c WHERE c.label = s.label "
            f"AND {' AND '.join(clauses)} ORDER BY {_QUEUE_KEY} LIMIT ?", (*params, limit))]

    @serialised
    def get_sample(self, device_id: str, seq: int) -> Sample | None:
        return self._sample(device_id, seq)

    def _sample(self, device_id: str, seq: int) -> Sample | None:
        row = next(self._db.query(f"SELECT {_COLUMNS} FROM samples s WHERE s.device_id = ? "
                                  "AND s.seq = ?", (device_id, seq)), None)
        return Sample(**row) if row else None

    @serialised
    def model_classes(self, model_name: str, version: str) -> list[str] | None:
        """The classes a published model version predicts (its manifest's labels), or None
        when central does not know that version or its labels."""
        manifest = self._model(model_name, version)
        return list(manifest.meta.labels) if manifest and manifest.meta.labels else None

    @serialised
    def label_sample(self, device_id: str, seq: int, true_label: str, by: str) -> Sample:
        """A reviewer's class for a sample: one of its model's classes, or "ok" for a frame
        with nothing wrong. The latest counts; each one is in the audit log."""
        with self._db.atomic():
            sample = self._sample(device_id, seq)
            if sample is None:
                raise UnknownSample(f"no sample {device_id}/{seq}")
            if true_label != OK_LABEL:
                self._check_class(sample, true_label)
            self._db.execute(
                "UPDATE samples SET true_label = ?, labelled_by = ?, labelled_at = ? "
                "WHERE device_id = ? AND seq = ?", (true_label, by, time.time(), device_id, seq))
            self._audit(by, "sample.label", f"{device_id}/{seq}",
                        f"{true_label} (model said {sample.label} {sample.confidence:.2f})")
            labelled = self._sample(device_id, seq)
        assert labelled is not None
        return labelled

    def _check_class(self, sample: Sample, true_label: str) -> None:
        model = f"{sample.model_name} {sample.model_version}"
        manifest = self._model(sample.model_name, sample.model_version)
        if manifest is None:
            raise LabelRefused(f"model {model} is not published on central, so its classes are "
                               f"unknown: publish it, or label the frame {OK_LABEL!r}")
        classes = manifest.meta.labels or []
        if true_label not in classes:
            raise LabelRefused(
                f"{true_label!r} is not a class of model {model}; choose one of "
                f"{', '.join([*classes, OK_LABEL])}")

    @serialised
    def samples_awaiting(self) -> int:
        """Samples no one has labelled yet."""
        return next(self._db.query(
            "SELECT COUNT(*) AS n FROM samples WHERE true_label IS NULL"))["n"]

    @serialised
    def sample_choices(self) -> dict[str, list[str]]:
        """The values each filter can take, for the queue's menus (at most CHOICES_SHOWN)."""
        return {column: [row["v"] for row in self._db.query(_DISTINCT[column], (CHOICES_SHOWN,))]
                for column in _DISTINCT}


# One distinct value after another, each found in the column's index (a loose index scan):
# the menus cost a few index look-ups per value, however many samples there are.
_DISTINCT = {column: (
    f"WITH RECURSIVE d(v, n) AS (SELECT MIN({column}), 1 FROM samples UNION ALL "
    f"SELECT (SELECT MIN({column}) FROM samples WHERE {column} > d.v), d.n + 1 FROM d "
    "WHERE d.v IS NOT NULL AND d.n < ?) SELECT v FROM d WHERE v IS NOT NULL")
    for column in ("device_id", "camera", "label", "model_version")}

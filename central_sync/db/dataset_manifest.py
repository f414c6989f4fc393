"""What a dataset version is: its items, manifest and content id, the split rule, references
such as "surface-labels@3", and the difference between two versions. Pure: no database
(here so that the repository can return these types; `central_sync.datasets` exports them)."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from edge_agent.kernel.contract import ID_PATTERN

MANIFEST_FORMAT = 1  # the manifest's layout; part of the id, so a new layout gives new ids
SPLITS = ("train", "val", "test")
OK_LABEL = "ok"  # the class of a normal frame: a false alarm, or a sample labelled normal
SPLIT_RULE = ("int(image_sha256[:8], 16) % 100: below 20 test, below 30 val, else train "
              "(the same image is in the same split in every version)")
TEST_PERCENT, VAL_PERCENT = 20, 10

Origin = Literal["defect", "sample"]
Kind = Literal["classification", "detection"]
Box = tuple[str, int, int, int, int]  # label, x1, y1, x2, y2 in the stored image's pixels
Region = tuple[int, int, int, int]  # x, y, width, height in the stored image's pixels


class DatasetError(Exception):
    """A dataset cannot be made, found or written; the message says what to do instead."""


def split_of(image_sha256: str) -> str:
    """The split of an image, from its hash alone: stable across versions and machines."""
    bucket = int(image_sha256[:8], 16) % 100
    if bucket < TEST_PERCENT:
        return "test"
    return "val" if bucket < TEST_PERCENT + VAL_PERCENT else "train"


def parse_dataset_ref(text: str) -> tuple[str, int]:
    """'surface-labels@3' -> ('surface-labels', 3); ValueError saying the form otherwise."""
    name, _, version = text.rpartition("@")
    if not name or not re.fullmatch(ID_PATTERN, name) or not re.fullmatch(r"[1-9]\d{0,8}",
                                                                          version):
        raise ValueError(f"{text!r} is not NAME@VERSION with a whole version number, e.g. "
                         "surface-labels@3; see `central-sync dataset list`")
    return name, int(version)


@dataclass(frozen=True)
class DatasetItem:
    """One labelled picture of a dataset: where it came from, its frozen image, its class."""

    source: str  # "DEVICE/SEQ" of the defect or sample record
    origin: Origin
    image_sha256: str  # of the JPEG bytes in dataset_images
    label: str  # the reviewed class; "ok" for a normal frame
    split: str  # train, val or test: split_of(image_sha256)
    roi_box: Region | None = None  # the region the model saw; None: the whole image
    boxes: tuple[Box, ...] = ()  # detection datasets: objects with their reviewed class

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "origin": self.origin,
                "image_sha256": self.image_sha256, "label": self.label, "split": self.split,
                "roi_box": list(self.roi_box) if self.roi_box is not None else None,
                "boxes": [list(box) for box in self.boxes]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DatasetItem:
        roi = data.get("roi_box")
        return cls(source=data["source"], origin=data["origin"],
                   image_sha256=data["image_sha256"], label=data["label"],
                   split=data["split"],
                   roi_box=(int(roi[0]), int(roi[1]), int(roi[2]), int(roi[3]))
                   if roi is not None else None,
                   boxes=tuple((str(b[0]), int(b[1]), int(b[2]), int(b[3]), int(b[4]))
                               for b in data.get("boxes") or ()))

    @property
    def sort_key(self) -> tuple[str, str, str, str]:
        return (self.source, self.origin, self.image_sha256, self.label)


def count_by_split(items: list[DatasetItem] | tuple[DatasetItem, ...]) -> dict[str, dict[str,
                                                                                     int]]:
    """{split: {label: n}} for every split, labels sorted (empty splits included)."""
    counts: dict[str, Counter[str]] = {split: Counter() for split in SPLITS}
    for item in items:
        counts[item.split][item.label] += 1
    return {split: dict(sorted(counts[split].items())) for split in SPLITS}


@dataclass(frozen=True)
class DatasetManifest:
    """Everything a dataset version is, apart from its name, number, author and time: its id
    is the sha256 of this manifest's canonical JSON, so the same inputs give the same id."""

    kind: Kind
    labels: tuple[str, ...]
    items: tuple[DatasetItem, ...]
    counts: dict[str, dict[str, int]]
    selection: dict[str, Any]
    split_rule: str = SPLIT_RULE
    format: int = MANIFEST_FORMAT

    @classmethod
    def build(cls, kind: Kind, items: list[DatasetItem],
              selection: dict[str, Any]) -> DatasetManifest:
        """The manifest of these items: sorted, labelled, counted."""
        ordered = tuple(sorted(items, key=lambda item: item.sort_key))
        return cls(kind=kind, labels=tuple(sorted({item.label for item in ordered})),
                   items=ordered, counts=count_by_split(ordered), selection=dict(selection))

    def to_json(self) -> dict[str, Any]:
        return {"format": self.format, "kind": self.kind, "labels": list(self.labels),
                "items": [item.to_json() for item in self.items], "counts": self.counts,
                "selection": self.selection, "split_rule": self.split_rule}

    def canonical_json(self) -> str:
        """Sorted keys, no whitespace: the bytes the id is the hash of."""
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"),
                          ensure_ascii=True, allow_nan=False)

    @property
    def dataset_id(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DatasetManifest:
        return cls(kind=data["kind"], labels=tuple(data["labels"]),
                   items=tuple(DatasetItem.from_json(item) for item in data["items"]),
                   counts={split: dict(labels) for split, labels in data["counts"].items()},
                   selection=dict(data["selection"]), split_rule=data["split_rule"],
                   format=int(data["format"]))

    @classmethod
    def from_text(cls, text: str) -> DatasetManifest:
        return cls.from_json(json.loads(text))


@dataclass
class DatasetVersion:
    """A frozen dataset version as stored: immutable once created."""

    name: str
    version: int
    dataset_id: str
    manifest: DatasetManifest
    created_at: float
    created_by: str

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def lineage(self) -> dict[str, str]:
        """What a model version trained on it records in metadata.lineage."""
        return {"dataset": self.ref, "dataset_id": self.dataset_id}


@dataclass(frozen=True)
class DatasetSummary:
    """A dataset version without its items, for lists: `db.list_datasets()`."""

    name: str
    version: int
    dataset_id: str
    kind: str
    items: int
    labels: tuple[str, ...]
    created_at: float
    created_by: str

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass(frozen=True)
class DatasetDiff:
    """What changed from one version to another, item by item (matched by source)."""

    added: tuple[DatasetItem, ...]
    removed: tuple[DatasetItem, ...]
    relabelled: tuple[tuple[DatasetItem, DatasetItem], ...]  # (old, new), another label
    changed: tuple[tuple[DatasetItem, DatasetItem], ...]  # same label, other image or boxes
    counts: dict[str, dict[str, tuple[int, int]]] = field(default_factory=dict)
    # {split: {label: (old n, new n)}} for the counts that differ

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.relabelled or self.changed)


def diff_manifests(old: DatasetManifest, new: DatasetManifest) -> DatasetDiff:
    """Items added, removed, relabelled or otherwise changed, and the counts that moved."""
    before = {item.source: item for item in old.items}
    after = {item.source: item for item in new.items}
    added = tuple(after[s] for s in sorted(after.keys() - before.keys()))
    removed = tuple(before[s] for s in sorted(before.keys() - after.keys()))
    both = sorted(before.keys() & after.keys())
    relabelled = tuple((before[s], after[s]) for s in both if before[s].label != after[s].label)
    changed = tuple((before[s], after[s]) for s in both
                    if before[s].label == after[s].label and before[s] != after[s])
    counts: dict[str, dict[str, tuple[int, int]]] = {}
    for split in SPLITS:
        was, now = old.counts.get(split, {}), new.counts.get(split, {})
        moved = {label: (was.get(label, 0), now.get(label, 0))
                 for label in sorted(was.keys() | now.keys())
                 if was.get(label, 0) != now.get(label, 0)}
        if moved:
            counts[split] = moved
    return DatasetDiff(added, removed, relabelled, changed, counts)

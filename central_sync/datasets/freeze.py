"""Freezing reviewed defects and samples as an immutable, content-addressed dataset version,
with copies of their images so that it outlives their records; the crop a model saw of an
item."""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import cv2
import numpy as np
import simplejpeg

from central_sync.db.dataset_manifest import (
    OK_LABEL,
    Box,
    DatasetError,
    DatasetItem,
    DatasetManifest,
    DatasetVersion,
    Kind,
    Region,
    split_of,
)
from central_sync.db.datasets import DatasetSelection, LabelledRecord
from edge_agent.kernel.contract import ID_PATTERN

if TYPE_CHECKING:
    from central_sync.db import CentralDB

log = logging.getLogger(__name__)

MAX_ITEMS = 200_000  # a dataset's manifest (about 200 bytes an item) stays a few tens of MB
PAGE = 500  # labelled records read per query; their images are read one at a time
IMAGES_PER_WRITE, BYTES_PER_WRITE = 64, 8 << 20  # images kept per transaction, at most
EVIDENCE = "frame"  # the evidence image a dataset freezes: the camera frame as the model saw it

Progress = Callable[[int, int], None]  # (records done, records in all)


class EmptySelection(DatasetError):
    """No labelled defect or sample matches the selection."""


class DatasetTooLarge(DatasetError):
    """The selection holds more labelled records than a dataset may."""


def create_dataset(db: CentralDB, name: str, selection: DatasetSelection, by: str, *,
                   max_items: int = MAX_ITEMS,
                   progress: Progress | None = None) -> DatasetVersion:
    """Freeze the labelled defects (confirmed: the model's class; relabelled: the reviewer's;
    false alarm: "ok") and labelled samples the selection takes as the next version of
    `name`. Each item's evidence image is copied into the database once, by its sha256.

    Raises EmptySelection, DatasetTooLarge, NothingNewToFreeze (the newest version of `name`
    has this very id) or DatasetError, each saying what to do.
    """
    if not re.fullmatch(ID_PATTERN, name):
        raise DatasetError(f"dataset name {name!r} must be 1-64 letters, digits, '.', '_' or "
                           "'-', starting with a letter or digit, e.g. surface-labels")
    total = db.count_labelled(selection)
    if total == 0:
        raise EmptySelection(
            f"no labelled defects or samples match {_described(selection)}; label some on "
            "central's /review pages (defects and samples), or widen the filters")
    if total > max_items:
        raise DatasetTooLarge(
            f"{total:,} labelled records match {_described(selection)}, more than the "
            f"{max_items:,} a dataset may hold; narrow the selection (--since/--until, "
            "--device, --pipeline, --model) or raise --max-items")
    items: list[DatasetItem] = []
    left_out: Counter[str] = Counter()
    kind: Kind | None = None
    images = _ImageWriter(db)
    for done, record in enumerate(_labelled_records(db, selection), start=1):
        if progress is not None:
            progress(done, total)
        _check_label(record)
        item = _freeze(db, record, images, left_out)
        if item is None:
            continue
        record_kind: Kind = "detection" if record.result_kind == "detection" \
            else "classification"
        if kind is not None and record_kind != kind:
            raise DatasetError(
                f"the selection mixes {kind} and {record_kind} records ({record.source} of "
                f"pipeline {record.pipeline} is {record_kind}); a dataset holds one kind: "
                "choose with --pipeline or --model")
        kind = record_kind
        items.append(item)
    images.flush()
    for reason, n in sorted(left_out.items()):
        log.warning("dataset %s: %d labelled record%s left out: %s", name, n,
                    "" if n == 1 else "s", reason)
    if not items:
        raise EmptySelection(
            f"none of the {total:,} labelled records matching {_described(selection)} has a "
            f"usable evidence image ({'; '.join(sorted(left_out))}); nothing to freeze")
    assert kind is not None
    manifest = DatasetManifest.build(kind, items, selection.to_json())
    version = db.add_dataset_version(name, manifest, by)
    log.info("dataset created dataset=%s id=%s items=%d kind=%s by=%s", version.ref,
             version.dataset_id, len(items), kind, by)
    return version


def load_crop(db: CentralDB, item: DatasetItem) -> np.ndarray:
    """The region of the item's frozen image that the model saw, as a BGR array."""
    data = db.dataset_image(item.image_sha256)
    if data is None:
        raise DatasetError(f"the image {item.image_sha256[:12]} of {item.source} is not in "
                           "dataset_images; the database is missing part of the dataset")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise DatasetError(f"the image {item.image_sha256[:12]} of {item.source} is not a "
                           "readable JPEG")
    return crop(image, item.roi_box)


def crop(image: np.ndarray, region: Region | None) -> np.ndarray:
    """The region (x, y, width, height) of an image; the whole image when None."""
    if region is None:
        return image
    x, y, width, height = region
    return image[y:y + height, x:x + width]


def _labelled_records(db: CentralDB, selection: DatasetSelection) -> Iterator[LabelledRecord]:
    for origin in selection.origins():
        after: tuple[str, int] | None = None
        while page := db.labelled_page(selection, origin, after, PAGE):
            yield from page
            after = (page[-1].device_id, page[-1].seq)


def _check_label(record: LabelledRecord) -> None:
    """Classes become folder and file names on export: they must be plain names."""
    if not re.fullmatch(ID_PATTERN, record.label or ""):
        raise DatasetError(
            f"{record.origin} {record.source} is labelled {record.label!r}, which is not a "
            "class name (1-64 letters, digits, '.', '_' or '-'); relabel it on central's "
            "review page, or leave it out with the filters")


class _ImageWriter:
    """Images to keep, written a few at a time in one transaction each (one commit per image
    would cost PostgreSQL a disk flush each), never holding more than a few MB."""

    def __init__(self, db: CentralDB) -> None:
        self._db = db
        self._pending: list[tuple[str, bytes, int, int]] = []
        self._bytes = 0

    def add(self, sha256: str, data: bytes, width: int, height: int) -> None:
        self._pending.append((sha256, data, width, height))
        self._bytes += len(data)
        if len(self._pending) >= IMAGES_PER_WRITE or self._bytes >= BYTES_PER_WRITE:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            self._db.store_dataset_images(self._pending)
        self._pending, self._bytes = [], 0


def _freeze(db: CentralDB, record: LabelledRecord, images: _ImageWriter,
            left_out: Counter[str]) -> DatasetItem | None:
    """The record's item, its evidence image stored; None (counted in `left_out`) without a
    usable image."""
    if not record.present:
        left_out["the record is no longer stored"] += 1
        return None
    encoded = db.record_image(record.device_id, record.seq, EVIDENCE)
    if not encoded:
        left_out[f"no '{EVIDENCE}' evidence image"] += 1
        return None
    try:
        data = base64.b64decode(encoded, validate=True)
        height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    except (binascii.Error, ValueError):
        left_out[f"the '{EVIDENCE}' evidence is not a JPEG"] += 1
        return None
    sha256 = hashlib.sha256(data).hexdigest()
    sx, sy = _scale(record, width, height)
    roi = _scaled_region(record.roi_box, sx, sy, width, height)
    if record.roi_box is not None and roi is None:
        left_out["its region lies outside its image"] += 1
        return None
    images.add(sha256, data, width, height)
    boxes = _reviewed_boxes(record, sx, sy, width, height) \
        if record.result_kind == "detection" else ()
    return DatasetItem(source=record.source, origin=record.origin,  # type: ignore[arg-type]
                       image_sha256=sha256, label=record.label, split=split_of(sha256),
                       roi_box=roi, boxes=boxes)


def _scale(record: LabelledRecord, width: int, height: int) -> tuple[float, float]:
    """From camera pixels (roi_box, boxes) to the stored image's: the evidence may have been
    made smaller than the frame. Records from before they said their frame size: 1."""
    size = record.frame_size
    if not size or len(size) != 2 or min(size) <= 0:
        return 1.0, 1.0
    return width / size[0], height / size[1]


def _scaled_region(region: list[int] | None, sx: float, sy: float, width: int,
                   height: int) -> Region | None:
    """The region in the stored image, clipped to it; None when nothing of it is left."""
    if region is None or len(region) != 4:
        return None
    x1, y1 = max(0, round(region[0] * sx)), max(0, round(region[1] * sy))
    x2 = min(width, round((region[0] + region[2]) * sx))
    y2 = min(height, round((region[1] + region[3]) * sy))
    if x2 <= x1 or y2 <= y1:
        return None
    return (x1, y1, x2 - x1, y2 - y1)


def _reviewed_boxes(record: LabelledRecord, sx: float, sy: float, width: int,
                    height: int) -> tuple[Box, ...]:
    """The boxes of the class the record was about, with the class the reviewer gave, in the
    stored image's pixels; none when the reviewer said the frame is normal. Boxes of other
    classes were not reviewed, so they are not taken."""
    if record.label == OK_LABEL:
        return ()
    found: set[Box] = set()
    for box in record.boxes:
        if not isinstance(box, dict) or box.get("label") != record.predicted:
            continue
        coords = box.get("box")
        if not isinstance(coords, list) or len(coords) != 4:
            continue
        x1, y1 = max(0, round(coords[0] * sx)), max(0, round(coords[1] * sy))
        x2, y2 = min(width, round(coords[2] * sx)), min(height, round(coords[3] * sy))
        if x2 > x1 and y2 > y1:
            found.add((record.label, x1, y1, x2, y2))
    return tuple(sorted(found))


def _described(selection: DatasetSelection) -> str:
    chosen = selection.to_json()
    if not chosen:
        return "the selection (everything labelled)"
    return "the selection " + ", ".join(f"{key}={value}" for key, value in chosen.items())

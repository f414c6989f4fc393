"""A dataset version written out for training tools: ImageFolder (a folder per split and class,
each item's crop of what the model saw) or YOLO (images, normalised box labels, data.yaml).

Exports are idempotent: files are named by content, each is written whole (temporary file,
then rename), and a second run into the same folder writes only what is missing, so an
interrupted export is finished by running it again.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import simplejpeg
import yaml

from central_sync.datasets.freeze import load_crop
from central_sync.db.dataset_manifest import (
    OK_LABEL,
    SPLITS,
    Box,
    DatasetError,
    DatasetItem,
    DatasetVersion,
    Region,
)
from edge_agent.kernel.contract import ID_PATTERN, SHA256_PATTERN

if TYPE_CHECKING:
    from central_sync.db import CentralDB

LAYOUTS = ("imagefolder", "yolo")
MANIFEST_FILE = "manifest.json"  # what the folder holds: the dataset, its id and manifest
JPEG_QUALITY = 95  # crops are cut from JPEG evidence: re-encoding should lose little more

Progress = Callable[[int, int], None]  # (done, in all)


@dataclass
class ExportResult:
    out: Path
    layout: str
    written: int = 0  # image files written by this run
    present: int = 0  # image files an earlier run had written
    left_out: Counter[str] = field(default_factory=Counter)  # items not exported, by reason


def export_dataset(db: CentralDB, dataset: DatasetVersion, layout: str, out: Path,
                   progress: Progress | None = None) -> ExportResult:
    """Write `dataset` into the folder `out` in `layout` ("imagefolder" or "yolo", the
    latter for detection datasets only), with manifest.json. `out` must be new, empty, or an
    earlier export of the same dataset in the same layout."""
    if layout not in LAYOUTS:
        raise DatasetError(f"layout {layout!r} is not one of {', '.join(LAYOUTS)}")
    if layout == "yolo" and dataset.manifest.kind != "detection":
        raise DatasetError(f"{dataset.ref} is a {dataset.manifest.kind} dataset: YOLO needs "
                           "boxes; export it with --layout imagefolder")
    _check_names(dataset)
    _claim(out, dataset, layout)
    result = ExportResult(out, layout)
    if layout == "imagefolder":
        _export_imagefolder(db, dataset, out, result, progress)
    else:
        _export_yolo(db, dataset, out, result, progress)
    return result


def image_name(item: DatasetItem) -> str:
    """An exported picture's file name: its image's hash, and the region when it is a crop."""
    if item.roi_box is None:
        return f"{item.image_sha256}.jpg"
    return f"{item.image_sha256}-{'-'.join(str(v) for v in item.roi_box)}.jpg"


def yolo_lines(boxes: list[Box] | tuple[Box, ...], region: Region, names: list[str]) -> str:
    """YOLO label lines (`class cx cy w h`, normalised to the region) of the boxes that fall
    inside `region` (x, y, width, height), clipped to it."""
    x0, y0, width, height = region
    lines = []
    for label, x1, y1, x2, y2 in boxes:
        left, top = max(x1 - x0, 0), max(y1 - y0, 0)
        right, bottom = min(x2 - x0, width), min(y2 - y0, height)
        if right <= left or bottom <= top:
            continue
        lines.append(f"{names.index(label)} {(left + right) / 2 / width:.6f} "
                     f"{(top + bottom) / 2 / height:.6f} {(right - left) / width:.6f} "
                     f"{(bottom - top) / height:.6f}")
    return "".join(f"{line}\n" for line in sorted(set(lines)))


def _claim(out: Path, dataset: DatasetVersion, layout: str) -> None:
    """Make `out` this export's folder, or refuse one that holds something else."""
    marker = out / MANIFEST_FILE
    if out.exists() and not out.is_dir():
        raise DatasetError(f"{out} is a file; give --out a folder (new or empty)")
    if marker.exists():
        try:
            found = json.loads(marker.read_text())
        except (OSError, ValueError):
            found = None
        if not isinstance(found, dict) or "dataset_id" not in found:
            raise DatasetError(f"{out} holds a {MANIFEST_FILE} that is not a dataset export; "
                               "choose another folder for --out")
        if found.get("dataset_id") != dataset.dataset_id or found.get("layout") != layout:
            raise DatasetError(f"{out} holds the {found.get('layout')} export of "
                               f"{found.get('dataset')}; choose another folder for --out, "
                               "or remove that one first")
        return
    if out.exists() and any(out.iterdir()):
        raise DatasetError(f"{out} is not empty and holds no dataset export; choose a new or "
                           "empty folder for --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatasetError(f"cannot make the folder {out}: {exc.strerror}") from None
    header = {"dataset": dataset.ref, "dataset_id": dataset.dataset_id, "layout": layout,
              "created_at": dataset.created_at, "created_by": dataset.created_by,
              "manifest": dataset.manifest.to_json()}
    _write(marker, json.dumps(header, indent=1, sort_keys=True).encode())


def _check_names(dataset: DatasetVersion) -> None:
    """Classes and splits become folder names: checked again here, whatever the database
    holds (creating a dataset already refuses other labels)."""
    for item in dataset.manifest.items:
        if item.split not in SPLITS or not re.fullmatch(ID_PATTERN, item.label) or \
                not re.fullmatch(SHA256_PATTERN, item.image_sha256):
            raise DatasetError(f"{dataset.ref} holds an item ({item.source}) whose class, "
                               "split or image hash cannot be a file name; it was not made by "
                               "`dataset create`")


def _export_imagefolder(db: CentralDB, dataset: DatasetVersion, out: Path,
                        result: ExportResult, progress: Progress | None) -> None:
    items = dataset.manifest.items
    for done, item in enumerate(items, start=1):
        _write_picture(db, item, out / item.split / item.label / image_name(item), result)
        if progress is not None:
            progress(done, len(items))


def _export_yolo(db: CentralDB, dataset: DatasetVersion, out: Path, result: ExportResult,
                 progress: Progress | None) -> None:
    names = [label for label in dataset.manifest.labels if label != OK_LABEL]
    pictures: dict[str, list[DatasetItem]] = {}  # one picture per image and region
    for item in dataset.manifest.items:
        pictures.setdefault(image_name(item), []).append(item)
    for done, (name, items) in enumerate(sorted(pictures.items()), start=1):
        unboxed = [i for i in items if i.label != OK_LABEL and not _boxes_inside(i)]
        if unboxed:
            # The picture shows a labelled object whose place nobody gave: as a YOLO image
            # without that box it would teach the model that the object is background.
            result.left_out["labelled with a class but no box inside its region"] += \
                len(items)
        else:
            first = items[0]
            boxes = [box for item in items for box in item.boxes]
            stem = name.removesuffix(".jpg")
            labels = out / "labels" / first.split / f"{stem}.txt"
            if not labels.exists():
                region = first.roi_box or _whole(db, first)
                _write(labels, yolo_lines(boxes, region, names).encode())
            _write_picture(db, first, out / "images" / first.split / name, result)
        if progress is not None:
            progress(done, len(pictures))
    data = {"path": str(out.resolve()), **{split: f"images/{split}" for split in SPLITS},
            "names": dict(enumerate(names))}
    _write(out / "data.yaml", yaml.safe_dump(data, sort_keys=False).encode())


def _boxes_inside(item: DatasetItem) -> bool:
    if item.roi_box is None:
        return bool(item.boxes)
    x0, y0, width, height = item.roi_box
    return any(min(x2, x0 + width) > max(x1, x0) and min(y2, y0 + height) > max(y1, y0)
               for _, x1, y1, x2, y2 in item.boxes)


def _whole(db: CentralDB, item: DatasetItem) -> Region:
    """The whole image as a region."""
    height, width = simplejpeg.decode_jpeg_header(_image(db, item))[:2]
    return (0, 0, width, height)


def _image(db: CentralDB, item: DatasetItem) -> bytes:
    data = db.dataset_image(item.image_sha256)
    if data is None:
        raise DatasetError(f"the image {item.image_sha256[:12]} of {item.source} is not in "
                           "dataset_images; the database is missing part of the dataset")
    return data


def _write_picture(db: CentralDB, item: DatasetItem, path: Path, result: ExportResult) -> None:
    if path.exists():
        result.present += 1
        return
    if item.roi_box is None:
        data = _image(db, item)  # the frozen JPEG as it is: no second compression
    else:
        ok, encoded = cv2.imencode(".jpg", load_crop(db, item),
                                   [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise DatasetError(f"cannot encode the crop of {item.source} as JPEG")
        data = encoded.tobytes()
    _write(path, data)
    result.written += 1


def _write(path: Path, data: bytes) -> None:
    """`path` whole or not at all (no fsync: an export lost in a power cut is run again)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_bytes(data)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise

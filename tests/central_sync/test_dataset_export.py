"""Dataset exports: ImageFolder crops and YOLO labels from the frozen images, manifest.json,
idempotent reruns, and folders that are not the export's own. On SQLite: the export reads
only the frozen images, which the dataset tests read on both databases."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import cv2
import pytest
import yaml
from dataset_helpers import labelled_line, payload, sample_image, store

from central_sync.datasets import (
    DatasetError,
    DatasetManifest,
    DatasetSelection,
    DatasetVersion,
    create_dataset,
    export_dataset,
    yolo_lines,
)
from central_sync.db import CentralDB

DEVICE = "line1-gw1"


@pytest.fixture
def db(tmp_path: Path) -> Iterator[CentralDB]:
    database = CentralDB(tmp_path / "central.db")
    yield database
    database.close()


def detection_dataset(db: CentralDB, device: str = DEVICE) -> DatasetVersion:
    """Frames of 640x480 kept at 320x240: a whole-frame scratch, a scratch in a region, a
    false alarm, and a pit nobody drew a box for."""
    store(db, device, {
        1: payload("scratch", sample_image("scratch_0", (320, 240)), kind="detection",
                   frame_size=(640, 480), boxes=[("scratch", 10, 10, 50, 30)]),
        2: payload("scratch", sample_image("scratch_1", (320, 240)), kind="detection",
                   frame_size=(640, 480), roi_box=(100, 250, 256, 256),
                   boxes=[("scratch", 148, 298, 180, 330)]),
        3: payload("pit", sample_image("ok_0", (320, 240)), kind="detection",
                   frame_size=(640, 480), boxes=[("pit", 0, 0, 100, 100)]),
        4: payload("none", sample_image("pit_0", (320, 240)), kind="detection",
                   frame_size=(640, 480), origin="sample"),
    })
    db.label_defect(device, 1, "confirmed", "a")
    db.label_defect(device, 2, "confirmed", "a")
    db.label_defect(device, 3, "false_alarm", "a")
    db._db.execute("UPDATE samples SET true_label = 'pit', labelled_by = 'a', labelled_at = 1 "
                   "WHERE device_id = ? AND seq = 4", (device,))
    return create_dataset(db, "parts", DatasetSelection(device_id=device), "a")


def test_imagefolder_holds_each_crop_under_its_split_and_class(db: CentralDB,
                                                               tmp_path: Path) -> None:
    labelled_line(db)
    dataset = create_dataset(db, "surface-labels", DatasetSelection(), "a")
    out = tmp_path / "export"
    seen: list[tuple[int, int]] = []
    result = export_dataset(db, dataset, "imagefolder", out,
                            lambda done, total: seen.append((done, total)))
    assert (result.written, result.present, seen[-1]) == (6, 0, (6, 6))
    for item in dataset.manifest.items:
        picture = out / item.split / item.label / f"{item.image_sha256}.jpg"
        assert cv2.imread(str(picture)).shape == (64, 64, 3)
        assert hashlib.sha256(picture.read_bytes()).hexdigest() == item.image_sha256
    written = json.loads((out / "manifest.json").read_text())
    assert (written["dataset"], written["layout"]) == ("surface-labels@1", "imagefolder")
    manifest = DatasetManifest.from_json(written["manifest"])
    assert manifest.dataset_id == written["dataset_id"] == dataset.dataset_id
    files = {p: p.stat().st_mtime_ns for p in out.rglob("*.jpg")}
    again = export_dataset(db, dataset, "imagefolder", out)
    assert (again.written, again.present) == (0, 6)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.jpg")} == files


def test_imagefolder_crops_the_region_the_model_saw(db: CentralDB, tmp_path: Path) -> None:
    dataset = detection_dataset(db)
    export_dataset(db, dataset, "imagefolder", tmp_path / "out")
    item = next(i for i in dataset.manifest.items if i.roi_box is not None)
    crop = tmp_path / "out" / item.split / "scratch" / f"{item.image_sha256}-50-125-128-115.jpg"
    assert cv2.imread(str(crop)).shape == (115, 128, 3)


def test_yolo_labels_hold_the_reviewed_boxes_normalised(db: CentralDB, tmp_path: Path) -> None:
    dataset = detection_dataset(db)
    out = tmp_path / "yolo"
    result = export_dataset(db, dataset, "yolo", out)
    assert result.left_out == {"labelled with a class but no box inside its region": 1}
    assert result.written == 3
    items = {i.source: i for i in dataset.manifest.items}
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert data["names"] == {0: "pit", 1: "scratch"} and data["val"] == "images/val"
    whole, region, normal = items["line1-gw1/1"], items["line1-gw1/2"], items["line1-gw1/3"]
    # (10, 10, 50, 30) in the frame is (5, 5, 25, 15) in the 320x240 image.
    assert (out / "labels" / whole.split / f"{whole.image_sha256}.txt").read_text() == \
        "1 0.046875 0.041667 0.062500 0.041667\n"
    # In the region (50, 125, 128, 115) of the image, the box is (24, 24, 40, 40).
    stem = f"{region.image_sha256}-50-125-128-115"
    assert (out / "labels" / region.split / f"{stem}.txt").read_text() == \
        "1 0.250000 0.278261 0.125000 0.139130\n"
    assert cv2.imread(str(out / "images" / region.split / f"{stem}.jpg")).shape == (115, 128, 3)
    assert (out / "labels" / normal.split / f"{normal.image_sha256}.txt").read_text() == ""
    assert not list(out.glob(f"images/*/{items['line1-gw1/4'].image_sha256}*"))
    assert export_dataset(db, dataset, "yolo", out).written == 0


def test_yolo_lines_clip_boxes_to_the_region() -> None:
    boxes = [("b", 0, 0, 20, 20), ("a", 90, 90, 200, 200), ("a", 500, 500, 510, 510)]
    assert yolo_lines(boxes, (10, 10, 100, 100), ["a", "b"]) == (
        "0 0.900000 0.900000 0.200000 0.200000\n1 0.050000 0.050000 0.100000 0.100000\n")


def test_exports_refuse_what_they_cannot_write(db: CentralDB, tmp_path: Path) -> None:
    labelled_line(db)
    dataset = create_dataset(db, "surface-labels", DatasetSelection(), "a")
    with pytest.raises(DatasetError, match="surface-labels@1 is a classification dataset: "
                                           "YOLO needs boxes; export it with --layout "
                                           "imagefolder"):
        export_dataset(db, dataset, "yolo", tmp_path / "y")
    with pytest.raises(DatasetError, match="layout 'coco' is not one of imagefolder, yolo"):
        export_dataset(db, dataset, "coco", tmp_path / "c")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError, match="is not empty and holds no dataset export"):
        export_dataset(db, dataset, "imagefolder", busy)
    export_dataset(db, dataset, "imagefolder", tmp_path / "v1")
    other = detection_dataset(db, "line2-gw1")
    assert other.manifest.kind == "detection"
    with pytest.raises(DatasetError, match="holds the imagefolder export of surface-labels@1; "
                                           "choose another folder"):
        export_dataset(db, other, "imagefolder", tmp_path / "v1")
    (tmp_path / "file").write_text("x")
    with pytest.raises(DatasetError, match="is a file"):
        export_dataset(db, dataset, "imagefolder", tmp_path / "file")


def test_an_export_never_writes_outside_its_folder(db: CentralDB, tmp_path: Path) -> None:
    """A manifest put into the database by other means than `dataset create` (which refuses
    such labels) cannot make the export write above its folder."""
    labelled_line(db)
    good = create_dataset(db, "surface-labels", DatasetSelection(), "a")
    hostile = good.manifest.to_json()
    hostile["items"][0]["label"] = "../../evil"
    db._db.execute(
        "INSERT INTO datasets (name, version, dataset_id, kind, manifest, items, created_at, "
        "created_by) VALUES ('forged', 1, ?, 'classification', ?, 6, 0, 'mallory')",
        ("f" * 64, json.dumps(hostile)))
    forged = db.find_dataset("forged@1")
    assert forged is not None
    with pytest.raises(DatasetError, match=r"forged@1 holds an item \(line1-gw1/1\) whose "
                                           r"class, split or image hash cannot be a file name"):
        export_dataset(db, forged, "imagefolder", tmp_path / "a" / "b")
    assert not (tmp_path / "evil").exists() and not (tmp_path / "a").exists()

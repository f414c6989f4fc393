"""Labelled defect and sample records with real JPEGs of the sample surface images, for the
dataset tests."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import cv2
import numpy as np

from central_sync.db import CentralDB
from edge_agent.kernel.contract import DefectPayload, SamplePayload, UplinkBatch, UplinkRecord

VISION_SAMPLES = Path(__file__).resolve().parents[2] / "sample_data" / "vision_samples"
T0 = 1_800_000_000.0


def sample_image(name: str, size: tuple[int, int] | None = None) -> np.ndarray:
    """One of the sample surface images (64x64 BGR), e.g. "scratch_0", at (width, height)."""
    image = cv2.imread(str(VISION_SAMPLES / f"{name}.png"), cv2.IMREAD_COLOR)
    assert image is not None, name
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA) if size else image


def jpeg(image: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def payload(label: str, image: np.ndarray, *, origin: str = "defect", roi_box=None,
            boxes=(), kind: str = "classification", frame_size=None, pipeline: str = "surface",
            camera: str = "cam1", model: str = "surface-defects", version: str = "1.0.0",
            seq: int = 0) -> dict:
    """A defect or sample payload as a gateway sends it, with `image` as its 'frame' JPEG."""
    height, width = image.shape[:2]
    encoded = base64.b64encode(jpeg(image)).decode()
    detections = [{"label": b[0], "confidence": 0.9, "box": list(b[1:])} for b in boxes]
    data = {
        "pipeline": pipeline, "camera": camera, "roi": "belt" if roi_box else "frame",
        "roi_box": list(roi_box) if roi_box else None, "label": label, "confidence": 0.9,
        "boxes": detections,
        "result": {"kind": kind, "label": label, "confidence": 0.9, "top": [[label, 0.9]],
                   "detections": detections, "anomaly_score": None},
        "model": {"name": model, "version": version, "sha256": "a" * 64},
        "frame_index": seq, "captured_at": T0 + seq,
        "images": {"frame": {"jpeg_b64": encoded, "width": width, "height": height}}}
    if frame_size is not None:
        data["frame_size"] = list(frame_size)
    checked = (SamplePayload.model_validate({**data, "reason": "uncertain"})
               if origin == "sample" else DefectPayload.model_validate(data))
    dumped = checked.model_dump(mode="json")
    if frame_size is None:
        del dumped["frame_size"]  # as agents from before frame_size send it
    return dumped


def store(db: CentralDB, device_id: str, records: dict[int, dict]) -> None:
    """Store payloads by seq as the device's defect or sample records."""
    db.store_batch(UplinkBatch(device_id=device_id, records=[
        UplinkRecord(seq=seq, type="sample" if "reason" in data else "defect",
                     created_at=T0 + seq, payload=data)
        for seq, data in sorted(records.items())]))


def label_sample(db: CentralDB, device_id: str, seq: int, true_label: str,
                 by: str = "quality-eng") -> None:
    """A reviewer's class for a sample (as the sample review page stores it)."""
    assert db._db.execute(
        "UPDATE samples SET true_label = ?, labelled_by = ?, labelled_at = ? "
        "WHERE device_id = ? AND seq = ?", (true_label, by, time.time(), device_id, seq)) == 1


def labelled_line(db: CentralDB, device_id: str = "line1-gw1") -> None:
    """Eight labelled records of one classification pipeline: five defects (two confirmed,
    one relabelled, one false alarm, one unreviewed) and three samples (two labelled)."""
    images = ["scratch_0", "pit_0", "stain_0", "ok_0", "scratch_1", "ok_1", "pit_1", "stain_1"]
    predicted = ["scratch", "pit", "scratch", "stain", "pit", "scratch", "pit", "stain"]
    records = {}
    for seq, (name, label) in enumerate(zip(images, predicted, strict=True), start=1):
        origin = "sample" if seq > 5 else "defect"
        records[seq] = payload(label, sample_image(name), origin=origin, seq=seq)
    store(db, device_id, records)
    db.label_defect(device_id, 1, "confirmed", "quality-eng")
    db.label_defect(device_id, 2, "confirmed", "quality-eng")
    db.label_defect(device_id, 3, "relabelled", "quality-eng", "stain")
    db.label_defect(device_id, 4, "false_alarm", "quality-eng")
    label_sample(db, device_id, 6, "ok")
    label_sample(db, device_id, 7, "pit")

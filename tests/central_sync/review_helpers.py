"""Defect records with real JPEG evidence, for central's review tests."""

from __future__ import annotations

import base64

import cv2
import numpy as np

from edge_agent.kernel.contract import UplinkBatch, UplinkRecord

LABELS = ("scratch", "pit", "stain")


def jpeg_b64(shade: int) -> str:
    image = np.full((60, 80, 3), shade % 256, np.uint8)
    cv2.putText(image, str(shade), (5, 40), cv2.FONT_HERSHEY_SIMPLEX, 1, (0, 0, 255), 2)
    return base64.b64encode(cv2.imencode(".jpg", image)[1].tobytes()).decode()


def defect_payload(i: int, camera: str = "strip-camera") -> dict:
    """A complete defect payload (DefectPayload), as a gateway's vision pipeline sends it."""
    label, confidence = LABELS[i % 3], round(0.5 + (i % 50) / 100, 2)
    return {"pipeline": "surface", "camera": camera, "roi": "inspection",
            "roi_box": [0, 0, 80, 60], "label": label, "confidence": confidence, "boxes": [],
            "result": {"kind": "classification", "label": label, "confidence": confidence,
                       "top": [[label, confidence]], "detections": [], "anomaly_score": None},
            "model": {"name": "surface-defects", "version": "1.0.0" if i % 2 else "1.1.0",
                      "sha256": "a" * 64},
            "frame_index": i, "captured_at": 1_800_000_000.0 + i,
            "images": {"frame": {"jpeg_b64": jpeg_b64(i), "width": 80, "height": 60},
                       "annotated": {"jpeg_b64": jpeg_b64(i + 1), "width": 80, "height": 60}}}


def defect_batch(device_id: str, seqs: range, camera: str = "strip-camera") -> UplinkBatch:
    return UplinkBatch(device_id=device_id, records=[
        UplinkRecord(seq=s, type="defect", created_at=1_800_000_000.0 + s,
                     payload=defect_payload(s, camera)) for s in seqs])

"""Labelled frames of a second, slightly out-of-focus camera: the sample model's own generator
(make_vision_data.py) blurred, where the shipped model is right about four times in five,
stored in central as a gateway's sample records and labelled with their true class, as a
quality engineer labels them on /review/samples. Used by the demo, tests and the retraining
report."""

from __future__ import annotations

import base64
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from central_sync.db import CentralDB
from central_sync.db.samples import SampleFilter
from edge_agent.kernel.contract import (
    EvidenceImage,
    ModelRef,
    SamplePayload,
    UplinkBatch,
    UplinkRecord,
    VisionSummary,
)
from sample_data import make_vision_data as vision

SHIPPED_MODEL = Path(__file__).resolve().parent / "surface_defects.onnx"
SHIPPED_METADATA = SHIPPED_MODEL.with_suffix(".json")
LABELS = vision.LABELS  # ok, scratch, pit, stain
FOCUS_BLUR_SIGMA = 1.6
T0 = 1_800_000_000.0


def blurred_patch(rng: np.random.Generator, label: str) -> np.ndarray:
    """A 64x64 BGR patch of `label`, as the out-of-focus camera sees it."""
    surface = vision.texture(rng, vision.SIZE, vision.SIZE)
    if label != "ok":
        cx, cy = rng.uniform(vision.SIZE * 0.3, vision.SIZE * 0.7, 2)
        vision.DEFECTS[label](rng, surface, cx, cy)
    return vision.finish(rng, cv2.GaussianBlur(surface, (0, 0), FOCUS_BLUR_SIGMA))


def labelled_patches(per_class: int, seed: int, labels: list[str] = LABELS
                     ) -> list[tuple[str, np.ndarray]]:
    """(label, image) pairs, classes interleaved, the same for the same seed."""
    rng = np.random.default_rng(seed)
    return [(label, blurred_patch(rng, label)) for _ in range(per_class) for label in labels]


def jpeg(image: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def store_labelled_samples(db: CentralDB, patches: list[tuple[str, np.ndarray]],
                           device_id: str, by: str, t0: float = T0) -> int:
    """The patches as `device_id`'s sample records (seq 1, 2, ...: the shipped model's
    prediction and the JPEG evidence, as its gateway would send them), each labelled with its
    true class by `by`. Records already stored are kept (ingest is idempotent on device and
    seq) and samples already labelled are not labelled again. Returns how many were labelled
    now. The shipped model must be published (labels are checked against its classes)."""
    session = ort.InferenceSession(str(SHIPPED_MODEL), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"images": vision.to_tensor(np.stack([i for _, i in patches]))})[0]
    records = []
    for seq, ((_, image), scores) in enumerate(zip(patches, logits, strict=True), start=1):
        best = int(np.argmax(scores))
        confidence = round(float(np.exp(scores[best]) / np.exp(scores).sum()), 4)
        label = LABELS[best]
        payload = SamplePayload(
            pipeline="surface", camera="strip-camera", roi="frame", roi_box=None, label=label,
            confidence=confidence,
            result=VisionSummary(kind="classification", label=label, confidence=confidence),
            model=ModelRef(name="surface-defects", version="1.0.0", sha256="0" * 64),
            frame_index=seq, captured_at=t0 + seq, reason="uncertain",
            images={"frame": EvidenceImage(jpeg_b64=base64.b64encode(jpeg(image)).decode(),
                                           width=image.shape[1], height=image.shape[0])})
        records.append(UplinkRecord(seq=seq, type="sample", created_at=t0 + seq,
                                    payload=payload.model_dump(mode="json")))
    db.store_batch(UplinkBatch(device_id=device_id, records=records))
    labelled = {s.seq for s in db.list_samples(SampleFilter(device_id=device_id, labelled=True),
                                               limit=len(patches))}
    done = 0
    for seq, (truth, _) in enumerate(patches, start=1):
        if seq not in labelled:
            db.label_sample(device_id, seq, truth, by)
            done += 1
    return done

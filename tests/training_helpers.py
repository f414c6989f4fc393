"""Labelled surface patches for retraining tests: the sample model's own generator
(sample_data/make_vision_data.py), seen through a second camera that is slightly out of focus,
where the shipped model is right about four times in five."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from central_sync.training import BaseModel, LabelledImage
from edge_agent.kernel.contract import (
    EvidenceImage,
    ModelRef,
    SamplePayload,
    UplinkBatch,
    UplinkRecord,
    VisionSummary,
)
from sample_data import make_vision_data as vision
from tests.helpers import REPO

SHIPPED_MODEL = REPO / "sample_data" / "surface_defects.onnx"
SHIPPED_METADATA = REPO / "sample_data" / "surface_defects.json"
LABELS = vision.LABELS  # ok, scratch, pit, stain
FOCUS_BLUR_SIGMA = 1.6
T0 = 1_800_000_000.0


def shipped_base() -> BaseModel:
    return BaseModel("surface-defects", "1.0.0", SHIPPED_MODEL,
                     json.loads(SHIPPED_METADATA.read_text()))


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


def split_items(patches: list[tuple[str, np.ndarray]]) -> list[LabelledImage]:
    """As a dataset splits them: a stable share of about 20 % held out as the test split."""
    items = []
    for index, (label, image) in enumerate(patches):
        split = "test" if index % 5 == 4 else ("val" if index % 10 == 3 else "train")
        items.append(LabelledImage(label, split, lambda image=image: image))
    return items


def write_folder(folder: Path, patches: list[tuple[str, np.ndarray]]) -> dict[str, str]:
    """The patches as PNG files in name order (a camera's image folder); name -> label."""
    folder.mkdir(parents=True, exist_ok=True)
    truth = {}
    for index, (label, image) in enumerate(patches):
        name = f"{index:04d}.png"
        cv2.imwrite(str(folder / name), image)
        truth[name] = label
    return truth



def freeze_patches(db, name: str, patches: list[tuple[str, np.ndarray]], device_id: str,
                   by: str = "quality-eng"):
    """The patches as a gateway's sample records (the shipped model's prediction, the JPEG
    evidence), each labelled with its true class by a reviewer, frozen as dataset `name`
    from this device's records. The shipped model must be published (labels are checked
    against its classes)."""
    from central_sync.datasets import DatasetSelection, create_dataset

    session = ort.InferenceSession(str(SHIPPED_MODEL), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"images": vision.to_tensor(np.stack([i for _, i in patches]))})[0]
    records = []
    for seq, ((_, image), scores) in enumerate(zip(patches, logits, strict=True), start=1):
        best = int(np.argmax(scores))
        confidence = float(np.exp(scores[best]) / np.exp(scores).sum())
        label = LABELS[best]
        payload = SamplePayload(
            pipeline="surface", camera="strip-camera", roi="frame", roi_box=None, label=label,
            confidence=round(confidence, 4),
            result=VisionSummary(kind="classification", label=label,
                                 confidence=round(confidence, 4)),
            model=ModelRef(name="surface-defects", version="1.0.0", sha256="0" * 64),
            frame_index=seq, captured_at=T0 + seq, reason="uncertain",
            images={"frame": EvidenceImage(jpeg_b64=base64.b64encode(jpeg(image)).decode(),
                                           width=image.shape[1], height=image.shape[0])})
        records.append(UplinkRecord(seq=seq, type="sample", created_at=T0 + seq,
                                    payload=payload.model_dump(mode="json")))
    db.store_batch(UplinkBatch(device_id=device_id, records=records))
    for seq, (truth, _) in enumerate(patches, start=1):
        db.label_sample(device_id, seq, truth, by)
    return create_dataset(db, name, DatasetSelection(device_id=device_id), by)


def jpeg(image: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()

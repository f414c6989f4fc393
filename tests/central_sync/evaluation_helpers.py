"""Helpers for the evaluation tests: the sample vision model and its real images, a tiny real
YOLOv8-layout detection model, and dataset versions frozen from real JPEGs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from central_sync.datasets import DatasetItem, DatasetManifest, DatasetVersion, split_of
from central_sync.db import CentralDB
from central_sync.registry import publish_model
from edge_agent.kernel.contract import ModelManifest
from tests.helpers import TEST_SIGNER

REPO = Path(__file__).resolve().parents[2]
VISION_MODEL = REPO / "sample_data" / "surface_defects.onnx"
VISION_METADATA = REPO / "sample_data" / "surface_defects.json"
SAMPLES = REPO / "sample_data" / "vision_samples"
VISION = "surface-defects"


def vision_metadata(**preprocessing: Any) -> dict[str, Any]:
    """The sample model's metadata without its golden check, its preprocessing changed."""
    metadata = json.loads(VISION_METADATA.read_text())
    metadata.pop("golden")
    metadata["preprocessing"].update(preprocessing)
    return metadata


# A plausible bad version: the same weights exported with the wrong pixel scaling.
WRONG_SCALE = {"scale": 0.4 / 255}


def publish_vision(db: CentralDB, artifacts: Path, version: str, by: str = "alice",
                   **preprocessing: Any) -> ModelManifest:
    return publish_model(db, artifacts, VISION_MODEL, VISION, version, "vision",
                         metadata=vision_metadata(**preprocessing), signer=TEST_SIGNER,
                         published_by=by)


def jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return data.tobytes()


def sample_images() -> list[tuple[str, np.ndarray]]:
    """(true class, BGR image) of each sample picture after a JPEG round trip, as central
    stores evidence."""
    pictures = []
    for path in sorted(SAMPLES.glob("*.png")):
        decoded = cv2.imdecode(np.frombuffer(jpeg(cv2.imread(str(path))), np.uint8),
                               cv2.IMREAD_COLOR)
        pictures.append((path.stem.rsplit("_", 1)[0], decoded))
    return pictures


def freeze_samples(db: CentralDB, name: str = "surface-labels",
                   qualities: range = range(70, 100, 3)) -> DatasetVersion:
    """A classification dataset version of the sample pictures, each as JPEGs of several
    qualities on a larger canvas with the picture as its region; splits by the rule."""
    items = []
    for index, path in enumerate(sorted(SAMPLES.glob("*.png"))):
        picture = cv2.imread(str(path))
        canvas = np.full((96, 128, 3), 90, np.uint8)
        canvas[16:80, 32:96] = picture
        for quality in qualities:
            data = jpeg(canvas, quality)
            sha = hashlib.sha256(data).hexdigest()
            db.store_dataset_images([(sha, data, 128, 96)])
            items.append(DatasetItem(source=f"gw-1/{index * 100 + quality}", origin="defect",
                                     image_sha256=sha, label=path.stem.rsplit("_", 1)[0],
                                     split=split_of(sha), roi_box=(32, 16, 64, 64)))
    return db.add_dataset_version(name, DatasetManifest.build("classification", items, {}),
                                  "quality-engineer")


# --- a real detection model with known answers ------------------------------------------------

DETECTION_LABELS = ["scratch", "pit"]
# What the model finds in any 32x32 image: (label, x1, y1, x2, y2, confidence).
DETECTED = [("scratch", 4, 4, 12, 12, 0.9), ("pit", 20, 20, 28, 28, 0.8),
            ("scratch", 20, 2, 30, 10, 0.7)]


def make_detection_model(path: Path) -> Path:
    """A YOLOv8-layout model ([1, 4 + classes, boxes]) that finds DETECTED in any image: its
    output is a constant plus 0 x the image's mean, so it really reads its input."""
    rows = np.zeros((1, 4 + len(DETECTION_LABELS), len(DETECTED)), np.float32)
    for i, (label, x1, y1, x2, y2, confidence) in enumerate(DETECTED):
        rows[0, :4, i] = [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]
        rows[0, 4:, i] = 0.05
        rows[0, 4 + DETECTION_LABELS.index(label), i] = confidence
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["images"], ["mean"], axes=[1, 2, 3], keepdims=0),
         helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
         helper.make_node("Add", ["boxes", "nothing"], ["output0"])],
        "fixed-boxes",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(rows.shape))],
        initializer=[numpy_helper.from_array(rows, "boxes"),
                     numpy_helper.from_array(np.zeros(1, np.float32), "zero")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


DETECTION_METADATA = {
    "labels": DETECTION_LABELS,
    "preprocessing": {"size": [32, 32], "layout": "NCHW", "color": "RGB",
                      "scale": 1 / 255, "mean": [0, 0, 0], "std": [1, 1, 1]},
    "decoder": {"type": "detection", "format": "yolov8", "confidence": 0.25, "iou": 0.45},
}

"""Labelled surface patches for retraining tests: the sample model's own generator
(sample_data/make_vision_data.py), seen through a second camera that is slightly out of focus,
where the shipped model is right about four times in five."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from central_sync.training import BaseModel, LabelledImage
from sample_data import make_vision_data as vision
from tests.helpers import REPO

SHIPPED_MODEL = REPO / "sample_data" / "surface_defects.onnx"
SHIPPED_METADATA = REPO / "sample_data" / "surface_defects.json"
LABELS = vision.LABELS  # ok, scratch, pit, stain
FOCUS_BLUR_SIGMA = 1.6


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


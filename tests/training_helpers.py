"""Labelled surface patches for retraining tests: the sample model's own generator
(sample_data/make_vision_data.py), seen through a second camera that is slightly out of focus,
where the shipped model is right about four times in five."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from central_sync.training import BaseModel, LabelledImage
from sample_data.labelled_frames import (  # noqa: F401  (LABELS, labelled_patches: re-exported)
    LABELS,
    SHIPPED_METADATA,
    SHIPPED_MODEL,
    labelled_patches,
    store_labelled_samples,
)


def shipped_base() -> BaseModel:
    return BaseModel("surface-defects", "1.0.0", SHIPPED_MODEL,
                     json.loads(SHIPPED_METADATA.read_text()))


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

    store_labelled_samples(db, patches, device_id, by)
    return create_dataset(db, name, DatasetSelection(device_id=device_id), by)

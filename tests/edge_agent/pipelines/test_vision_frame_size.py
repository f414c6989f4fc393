"""A defect record says the camera frame's size, so that its region and boxes (in frame pixels)
can be placed on evidence made smaller than the frame: as central does when it freezes a
dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from central_sync.datasets import DatasetSelection, create_dataset, load_crop
from central_sync.db import CentralDB
from edge_agent.kernel.contract import UplinkBatch, UplinkRecord
from tests.edge_agent.inference.test_vision import yolo_model
from tests.edge_agent.pipelines.test_vision_pipeline import GREY, frames, run_frames, setup


def test_a_detection_lands_on_the_same_place_of_the_smaller_frozen_image(
        tmp_path: Path) -> None:
    rows = np.array([[32.0], [32.0], [16.0], [16.0], [0.9], [0.0]], dtype=np.float32)
    meta = {"preprocessing": {"size": [64, 64]},
            "decoder": {"type": "detection", "confidence": 0.3},
            "labels": ["scratch", "ok"]}
    rois = [{"name": "belt", "x": 100, "y": 50, "width": 128, "height": 128}]
    pipeline, buffer = setup(tmp_path, rois, model=yolo_model(tmp_path / "y.onnx", rows),
                             meta=meta, evidence={"max_side_px": 160})
    [record] = run_frames(pipeline, frames(GREY, GREY))[1]
    buffer.close_sync()
    assert record.frame_size == (320, 240)
    assert (record.images["frame"].width, record.images["frame"].height) == (160, 120)
    assert record.boxes[0].box == (148, 98, 180, 130)  # frame pixels

    db = CentralDB(tmp_path / "central.db")
    db.store_batch(UplinkBatch(device_id="gw1", records=[UplinkRecord(
        seq=1, type="defect", created_at=1.0, payload=record.model_dump(mode="json"))]))
    db.label_defect("gw1", 1, "confirmed", "quality-eng")
    [item] = create_dataset(db, "belt", DatasetSelection(), "quality-eng").manifest.items
    assert item.roi_box == (50, 25, 64, 64)
    assert item.boxes == (("scratch", 74, 49, 90, 65),)
    assert load_crop(db, item).shape == (64, 64, 3)
    db.close()

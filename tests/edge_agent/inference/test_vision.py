"""Vision models driven by their manifest, on real ONNX files built here with the onnx API."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge_agent.inference.runtime import ModelLoadError, RuntimeOptions
from edge_agent.inference.vision import VisionModel
from tests.helpers import manifest_of

LABELS = ["ok", "scratch", "pit", "stain"]


def save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def colour_classifier(path: Path, size: int = 32, classes: int = 4) -> Path:
    """Mean of each RGB channel -> logits: red 'scratch', green 'pit', blue 'stain', grey 'ok'."""
    weights = np.zeros((3, classes), dtype=np.float32)
    weights[0, 1] = weights[1, 2] = weights[2, 3] = 10.0
    bias = np.zeros(classes, dtype=np.float32)
    bias[0] = 4.0
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["images"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["flat"]),
         helper.make_node("MatMul", ["flat", "w"], ["mm"]),
         helper.make_node("Add", ["mm", "b"], ["logits"])],
        "colour",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, classes])],
        initializer=[numpy_helper.from_array(weights, "w"), numpy_helper.from_array(bias, "b")])
    return save(graph, path)


CLASSIFIER_META = {
    "preprocessing": {"size": [32, 32], "layout": "NCHW", "color": "RGB", "scale": 1 / 255},
    "decoder": {"type": "classification", "activation": "softmax", "top_k": 2},
    "labels": LABELS,
}


def frame(bgr: tuple[int, int, int], width: int = 320, height: int = 240) -> np.ndarray:
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[:] = bgr
    return image


def test_classifier_sees_colours_in_rgb_order_with_labels_from_the_manifest(
        tmp_path: Path) -> None:
    path = colour_classifier(tmp_path / "c.onnx")
    model = VisionModel(path, manifest_of(path, CLASSIFIER_META))
    assert model.infer(frame((0, 0, 255))).label == "scratch"  # BGR red
    assert model.infer(frame((255, 0, 0))).label == "stain"  # BGR blue
    grey = model.infer(frame((40, 40, 40)))
    assert grey.label == "ok" and len(grey.top) == 2
    assert 0.5 < grey.confidence <= 1.0 and grey.top[0][1] >= grey.top[1][1]


def test_imagenet_style_classifier_runs_from_its_manifest_alone(tmp_path: Path) -> None:
    """1x3x224x224 float input, 1000 logits, ImageNet mean/std: like ResNet or MobileNet."""
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(3, 1000)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["data"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["flat"]),
         helper.make_node("MatMul", ["flat", "w"], ["scores"])],
        "imagenet-like",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 224, 224])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 1000])],
        initializer=[numpy_helper.from_array(weights, "w")])
    path = save(graph, tmp_path / "imagenet.onnx")
    meta = {"preprocessing": {"size": [224, 224], "mean": [0.485, 0.456, 0.406],
                              "std": [0.229, 0.224, 0.225]},
            "decoder": {"type": "classification", "top_k": 5}}
    model = VisionModel(path, manifest_of(path, meta),
                        RuntimeOptions(intra_op_threads=1, graph_optimization="all"))
    result = model.infer(frame((10, 120, 250), 1920, 1080))
    assert result.label.startswith("class_") and len(result.top) == 5
    assert abs(sum(p for _, p in model.infer(frame((0, 0, 0))).top)) <= 1.0


def yolo_model(path: Path, rows: np.ndarray, size: int = 64) -> Path:
    """A detector in the YOLOv8 export layout whose answer is `rows` ([4+classes, N])."""
    constant = numpy_helper.from_array(rows[None].astype(np.float32), "answer")
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["images"], ["mean"], keepdims=0),
         helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
         helper.make_node("Add", ["answer", "nothing"], ["output0"])],
        "yolo-layout",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, rows.shape[0],
                                                                      rows.shape[1]])],
        initializer=[constant, numpy_helper.from_array(np.zeros(1, np.float32), "zero")])
    return save(graph, path)


def test_yolo_detections_are_thresholded_suppressed_and_mapped_back_through_letterbox(
        tmp_path: Path) -> None:
    # Three candidates in the 64x64 input: two overlapping 'scratch', one weak 'pit'.
    rows = np.array([
        # cx,  cy,   w,    h,  scratch, pit
        [32.0, 33.0, 20.0],
        [32.0, 32.0, 10.0],
        [16.0, 15.0, 4.0],
        [16.0, 16.0, 4.0],
        [0.90, 0.80, 0.05],
        [0.05, 0.10, 0.20],
    ], dtype=np.float32)
    path = yolo_model(tmp_path / "y.onnx", rows)
    meta = {"preprocessing": {"size": [64, 64], "resize": "letterbox"},
            "decoder": {"type": "detection", "confidence": 0.25, "iou": 0.5},
            "labels": ["scratch", "pit"]}
    model = VisionModel(path, manifest_of(path, meta))
    result = model.infer(frame((90, 90, 90), width=128, height=64))
    # A 128x64 frame fits as 64x32 with 16 px of padding above: x and y scale by 2.
    assert [(d.label, round(d.confidence, 2)) for d in result.detections] == [("scratch", 0.9)]
    assert result.detections[0].box == (48, 16, 80, 48)
    assert result.label == "scratch"


def test_anomaly_map_scores_the_worst_spot_and_gives_a_heat_map(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["images"], ["amap"], axes=[1], keepdims=1)],
        "brightness-map",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("amap", TensorProto.FLOAT, [1, 1, 16, 16])])
    path = save(graph, tmp_path / "a.onnx")
    meta = {"preprocessing": {"size": [16, 16]},
            "decoder": {"type": "anomaly", "output": "map", "threshold": 0.6}}
    model = VisionModel(path, manifest_of(path, meta))
    image = frame((20, 20, 20), 160, 160)
    assert model.infer(image).label == "normal"
    cv2.circle(image, (120, 40), 15, (255, 255, 255), -1)
    result = model.infer(image)
    assert result.label == "anomaly" and result.anomaly_score > 0.6
    assert result.heatmap is not None and result.heatmap.shape == (160, 160)
    y, x = np.unravel_index(result.heatmap.argmax(), result.heatmap.shape)
    assert abs(x - 120) < 15 and abs(y - 40) < 15


def test_uint8_nhwc_input_is_fed_as_bytes(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Cast", ["images"], ["f"], to=TensorProto.FLOAT),
         helper.make_node("ReduceMean", ["f"], ["score"], axes=[1, 2, 3], keepdims=0)],
        "bytes",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, [1, 8, 8, 3])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, [1])])
    path = save(graph, tmp_path / "u8.onnx")
    meta = {"preprocessing": {"size": [8, 8], "layout": "NHWC"},
            "decoder": {"type": "anomaly", "output": "score", "threshold": 100}}
    model = VisionModel(path, manifest_of(path, meta))
    assert model.infer(frame((200, 200, 200))).anomaly_score == pytest.approx(200, abs=1)


@pytest.mark.parametrize(("change", "message"), [
    ({"preprocessing": {"size": [224, 224]}}, "gives height 224"),
    ({"preprocessing": {"size": [32, 32], "color": "GRAY", "mean": [0], "std": [1]}},
     "gives channels 1"),
    ({"labels": ["ok", "bad"]}, "has 4 classes, the manifest lists 2 labels"),
    ({"decoder": {"type": "detection"}}, "is not the YOLOv8 layout"),
    ({"preprocessing": None}, "vision metadata is invalid: preprocessing missing"),
])
def test_manifest_that_does_not_fit_the_model_is_refused_saying_what_differs(
        tmp_path: Path, change: dict, message: str) -> None:
    path = colour_classifier(tmp_path / "c.onnx")
    meta = {**CLASSIFIER_META, **change}
    with pytest.raises(ModelLoadError, match=message):
        VisionModel(path, manifest_of(path, meta))


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("color", ["RGB", "BGR"])
def test_fast_preprocessing_matches_the_step_by_step_reference(layout: str, color: str) -> None:
    from edge_agent.inference.vision import Preprocessor
    from edge_agent.kernel.contract import Preprocessing

    spec = Preprocessing(size=(48, 32), layout=layout, color=color, scale=1 / 255,
                         mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    preprocess = Preprocessor(spec, "float32")
    image = np.random.default_rng(3).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    fast, _ = preprocess(image)
    reference = preprocess._reference(image)
    assert fast.shape == reference.shape == ((1, 3, 32, 48) if layout == "NCHW"
                                             else (1, 32, 48, 3))
    assert np.abs(fast - reference).max() < 1e-4

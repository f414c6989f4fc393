"""Vision models driven by their manifest: preprocessing, ONNX Runtime, and output decoders.

A data scientist describes a model in its manifest's metadata, without writing code:

    "preprocessing": {"size": [224, 224], "layout": "NCHW", "color": "RGB",
                      "scale": 0.00392156862745098, "mean": [0.485, 0.456, 0.406],
                      "std": [0.229, 0.224, 0.225], "resize": "resize"},
    "decoder": {"type": "classification", "activation": "softmax", "top_k": 3},
    "labels": ["ok", "scratch", "pit", "stain"]

`resize` is "resize" (stretch) or "letterbox" (keep the aspect, pad with `pad_value`). The input
dtype (float32 or uint8) is the model's. Decoders: "classification" (`activation` "softmax" for
logits, "none" for probabilities), "detection" (`format` "yolov8": output [1, 4+classes, N] of
centre-x, centre-y, width, height and class scores; `confidence`, `iou`, `max_detections`; boxes
mapped back to the frame), and "anomaly" (`output` "score" or "map", `threshold`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from edge_agent.imaging import resize
from edge_agent.inference.runtime import ModelLoadError, OnnxRunner, RuntimeOptions
from edge_agent.kernel.contract import (
    AnomalyDecoder,
    ClassificationDecoder,
    Decoder,
    DetectedBox,
    DetectionDecoder,
    ModelManifest,
    Preprocessing,
    VisionSummary,
)


@dataclass(frozen=True)
class VisionSpec:
    """The vision part of a manifest's metadata: what a frame goes through, before and after."""

    preprocessing: Preprocessing
    decoder: Decoder
    labels: list[str]


@dataclass(frozen=True)
class Letterbox:
    """How a frame was fitted into the model input, to map boxes back."""

    ratio_x: float
    ratio_y: float
    pad_x: float
    pad_y: float

    def to_frame(self, x: float, y: float) -> tuple[float, float]:
        return (x - self.pad_x) / self.ratio_x, (y - self.pad_y) / self.ratio_y


@dataclass(frozen=True)
class Detection:
    label: str
    confidence: float
    box: tuple[int, int, int, int]  # x1, y1, x2, y2 in frame pixels


@dataclass
class VisionResult:
    """What one frame (or region) gave: the best label and confidence, whatever the decoder."""

    kind: Literal["classification", "detection", "anomaly"]
    label: str
    confidence: float
    top: list[tuple[str, float]] = field(default_factory=list)
    detections: list[Detection] = field(default_factory=list)
    anomaly_score: float | None = None
    heatmap: np.ndarray | None = None  # anomaly map resized to the frame, 0..1

    def summary(self) -> VisionSummary:
        """The result as records and the operator page carry it (numbers rounded)."""
        return VisionSummary(
            kind=self.kind, label=self.label, confidence=round(self.confidence, 4),
            top=[(label, round(p, 4)) for label, p in self.top],
            detections=[DetectedBox(label=d.label, confidence=round(d.confidence, 4), box=d.box)
                        for d in self.detections],
            anomaly_score=None if self.anomaly_score is None else round(self.anomaly_score, 4))


def vision_spec(manifest: ModelManifest) -> VisionSpec:
    """The manifest's vision settings; ModelLoadError says what is missing."""
    meta = manifest.meta
    preprocessing, decoder = meta.preprocessing, meta.decoder
    if preprocessing is None or decoder is None:
        missing = " and ".join(key for key, value in (("preprocessing", preprocessing),
                                                      ("decoder", decoder)) if value is None)
        raise ModelLoadError(f"model {manifest.name} {manifest.version}: vision metadata is "
                             f"invalid: {missing} missing; describe them in the metadata (see "
                             "the preprocessing and decoder keys in the README)")
    return VisionSpec(preprocessing, decoder, meta.labels or [])


def class_count(shape: list[int | str | None]) -> int | str | None:
    """The number of classes a classifier's output shape holds: its last dimension once the
    batch and trailing singleton dimensions are dropped ([1, N] and [1, N, 1, 1] give N)."""
    dims = list(shape[1:])
    while len(dims) > 1 and dims[-1] == 1:
        dims.pop()
    return dims[-1] if dims else None


_HAS_BLOB_PARAMS = hasattr(cv2.dnn, "blobFromImageWithParams")  # OpenCV 4.9 and later


def _layout(name: str) -> int:
    """OpenCV's data-layout constant (under cv2.dnn in 4.x, under cv2 in 5.x)."""
    constant = f"DNN_LAYOUT_{name}"
    home = cv2.dnn if hasattr(cv2.dnn, constant) else cv2
    return int(getattr(home, constant))


class Preprocessor:
    """Frame (BGR, any size) -> model input tensor, with the fit used."""

    def __init__(self, spec: Preprocessing, dtype: str) -> None:
        self.spec = spec
        self.dtype = np.dtype(dtype)
        channels = spec.channels
        scale = np.full(channels, spec.scale, dtype=np.float32)
        std = np.resize(np.asarray(spec.std, dtype=np.float32), channels)
        mean = np.resize(np.asarray(spec.mean, dtype=np.float32), channels)
        # (x * scale - mean) / std as one multiply-add per pixel.
        self._gain = scale / std
        self._offset = -mean / std
        self._blob: Any = None
        # NCHW float32 from colour, the usual case: one multiply-add per channel plane, written
        # straight into the tensor (about 10x less CPU than OpenCV's blob functions).
        self._planar = self.dtype == np.float32 and channels == 3 and spec.layout == "NCHW"
        self._planes = (2, 1, 0) if spec.color == "RGB" else (0, 1, 2)  # from BGR
        if self.dtype == np.float32 and channels == 3 and _HAS_BLOB_PARAMS and not self._planar:
            # OpenCV does colour order, scaling, mean/std and layout in one native pass:
            # (x - mean / scale) * (scale / std), per channel.
            params = cv2.dnn.Image2BlobParams()
            params.scalefactor = tuple(float(g) for g in self._gain)
            params.mean = tuple(float(m / spec.scale) for m in mean)
            params.size = tuple(spec.size)
            params.swapRB = spec.color == "RGB"
            params.ddepth = cv2.CV_32F
            params.datalayout = _layout(spec.layout)
            self._blob = params

    def __call__(self, frame: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        spec = self.spec
        width, height = spec.size
        fitted, fit = self._fit(frame, width, height)
        if self._planar:
            return self._planar_tensor(fitted), fit
        if self._blob is not None:
            return cv2.dnn.blobFromImageWithParams(fitted, self._blob), fit
        return self._reference(fitted), fit

    def _planar_tensor(self, fitted: np.ndarray) -> np.ndarray:
        height, width = fitted.shape[:2]
        tensor = np.empty((1, 3, height, width), dtype=np.float32)
        planes = cv2.split(fitted)
        for channel, plane in enumerate(self._planes):
            np.multiply(planes[plane], self._gain[channel], out=tensor[0, channel],
                        casting="unsafe")
            tensor[0, channel] += self._offset[channel]
        return tensor

    def _reference(self, fitted: np.ndarray) -> np.ndarray:
        """The same steps in NumPy: grey, uint8 and other dtypes."""
        spec = self.spec
        if spec.color == "RGB":
            fitted = cv2.cvtColor(fitted, cv2.COLOR_BGR2RGB)
        elif spec.color == "GRAY":
            fitted = cv2.cvtColor(fitted, cv2.COLOR_BGR2GRAY)[:, :, None]
        if self.dtype == np.uint8:
            tensor = np.ascontiguousarray(fitted)
        else:
            tensor = fitted.astype(np.float32)
            tensor *= self._gain
            tensor += self._offset
            tensor = tensor.astype(self.dtype, copy=False)
        if spec.layout == "NCHW":
            tensor = np.ascontiguousarray(tensor.transpose(2, 0, 1))
        return tensor[None]

    def _fit(self, frame: np.ndarray, width: int, height: int) -> tuple[np.ndarray, Letterbox]:
        rows, cols = frame.shape[:2]
        if frame.ndim == 2:
            frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
        if self.spec.resize == "resize":
            return resize(frame, width, height), Letterbox(width / cols, height / rows, 0.0, 0.0)
        ratio = min(width / cols, height / rows)
        new_w, new_h = round(cols * ratio), round(rows * ratio)
        resized = resize(frame, new_w, new_h)
        left, top = (width - new_w) // 2, (height - new_h) // 2
        boxed = cv2.copyMakeBorder(resized, top, height - new_h - top, left, width - new_w - left,
                                   cv2.BORDER_CONSTANT, value=(self.spec.pad_value,) * 3)
        return boxed, Letterbox(ratio, ratio, left, top)


class VisionModel:
    """One vision model version: its manifest decides preprocessing and decoding."""

    def __init__(self, path: Path, manifest: ModelManifest,
                 options: RuntimeOptions | None = None) -> None:
        self.manifest = manifest
        self.spec = vision_spec(manifest)
        self.runner = OnnxRunner(path, manifest, options=options)
        self._check_against_model()
        self.input_name = manifest.inputs[0].name
        self.preprocess = Preprocessor(self.spec.preprocessing, manifest.inputs[0].dtype)

    def _check_against_model(self) -> None:
        """Refuse settings that cannot fit the model's real input and output."""
        spec, manifest = self.spec, self.manifest
        name = f"model {manifest.name} {manifest.version}"
        shape = manifest.inputs[0].shape
        if len(shape) != 4:
            raise ModelLoadError(f"{name}: input {manifest.inputs[0].name!r} has shape {shape}; "
                                 "a vision model takes one image batch of rank 4")
        pre = spec.preprocessing
        width, height = pre.size
        dims = (shape[1], shape[2], shape[3]) if pre.layout == "NCHW" else (
            shape[3], shape[1], shape[2])
        expected = (pre.channels, height, width)
        for what, actual, wanted in zip(("channels", "height", "width"), dims, expected,
                                        strict=True):
            if isinstance(actual, int) and actual != wanted:
                raise ModelLoadError(
                    f"{name}: preprocessing gives {what} {wanted} ({pre.layout}, size "
                    f"{width}x{height}, {pre.color}), the model's input {shape} wants {actual}")
        output = manifest.outputs[0].shape
        labels = spec.labels
        decoder = spec.decoder
        classes = class_count(output)
        if isinstance(decoder, ClassificationDecoder) and labels and isinstance(classes, int) \
                and classes != len(labels):
            raise ModelLoadError(f"{name}: output {output} has {classes} classes, the "
                                 f"manifest lists {len(labels)} labels")
        if isinstance(decoder, DetectionDecoder):
            if len(output) != 3:
                raise ModelLoadError(f"{name}: output {output} is not the YOLOv8 layout "
                                     "[1, 4+classes, boxes]")
            if labels and isinstance(output[1], int) and output[1] != 4 + len(labels):
                raise ModelLoadError(f"{name}: output {output} has {output[1] - 4} classes, "
                                     f"the manifest lists {len(labels)} labels")

    def infer(self, frame: np.ndarray) -> VisionResult:
        tensor, fit = self.preprocess(frame)
        outputs = self.runner.run({self.input_name: tensor})
        return self.decode(next(iter(outputs.values())), fit, frame.shape[:2])

    def decode(self, output: np.ndarray, fit: Letterbox,
               frame_shape: tuple[int, int]) -> VisionResult:
        decoder = self.spec.decoder
        if isinstance(decoder, ClassificationDecoder):
            return decode_classification(output, decoder, self.spec.labels)
        if isinstance(decoder, DetectionDecoder):
            return decode_yolov8(output, decoder, self.spec.labels, fit, frame_shape)
        return decode_anomaly(output, decoder, frame_shape)


def _label(labels: list[str], index: int) -> str:
    return labels[index] if index < len(labels) else f"class_{index}"


def decode_classification(output: np.ndarray, decoder: ClassificationDecoder,
                          labels: list[str]) -> VisionResult:
    scores = np.asarray(output, dtype=np.float64).reshape(-1)
    if decoder.activation == "softmax":
        scores = np.exp(scores - scores.max())
        scores /= scores.sum()
    order = np.argsort(scores)[::-1][:decoder.top_k]
    top = [(_label(labels, int(i)), float(scores[i])) for i in order]
    return VisionResult("classification", top[0][0], top[0][1], top=top)


def decode_yolov8(output: np.ndarray, decoder: DetectionDecoder, labels: list[str],
                  fit: Letterbox, frame_shape: tuple[int, int]) -> VisionResult:
    rows = np.asarray(output, dtype=np.float32)[0].T  # [N, 4 + classes]
    scores = rows[:, 4:]
    classes = scores.argmax(axis=1)
    confidence = scores[np.arange(len(rows)), classes]
    keep = confidence >= decoder.confidence
    rows, classes, confidence = rows[keep], classes[keep], confidence[keep]
    detections: list[Detection] = []
    if len(rows):
        cx, cy, w, h = rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3]
        boxes = np.stack([cx - w / 2, cy - h / 2, w, h], axis=1)
        chosen = cv2.dnn.NMSBoxesBatched(boxes.tolist(), confidence.tolist(), classes.tolist(),
                                         decoder.confidence, decoder.iou)
        height, width = frame_shape
        for i in np.asarray(chosen, dtype=int).reshape(-1)[:decoder.max_detections]:
            x1, y1 = fit.to_frame(boxes[i, 0], boxes[i, 1])
            x2, y2 = fit.to_frame(boxes[i, 0] + boxes[i, 2], boxes[i, 1] + boxes[i, 3])
            box = (int(max(0, round(x1))), int(max(0, round(y1))),
                   int(min(width, round(x2))), int(min(height, round(y2))))
            detections.append(Detection(_label(labels, int(classes[i])), float(confidence[i]),
                                        box))
        detections.sort(key=lambda d: d.confidence, reverse=True)
    best = detections[0] if detections else None
    return VisionResult("detection", best.label if best else "none",
                        best.confidence if best else 0.0, detections=detections)


def decode_anomaly(output: np.ndarray, decoder: AnomalyDecoder,
                   frame_shape: tuple[int, int]) -> VisionResult:
    values = np.asarray(output, dtype=np.float32)
    heatmap = None
    if decoder.output == "map":
        surface = values.reshape(values.shape[-2], values.shape[-1])
        score = float(surface.max())
        low, high = float(surface.min()), score
        norm = (surface - low) / (high - low) if high > low else np.zeros_like(surface)
        heatmap = cv2.resize(norm, (frame_shape[1], frame_shape[0]),
                             interpolation=cv2.INTER_LINEAR)
    else:
        score = float(values.reshape(-1)[0])
    label = "anomaly" if score >= decoder.threshold else "normal"
    return VisionResult("anomaly", label, score, anomaly_score=score, heatmap=heatmap)

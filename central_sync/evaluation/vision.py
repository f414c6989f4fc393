"""Vision models run on central as a gateway runs them (the agent's own preprocessing and
decoder, edge_agent.inference.vision), over labelled images, into the figures of metrics.py.

Each image is decoded once and shown to every model being compared, so the candidate and the
version serving now are measured on exactly the same pixels.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from central_sync.evaluation.metrics import (
    Box,
    ScoredBox,
    classification_metrics,
    detection_metrics,
    latency_summary,
)
from edge_agent.inference.vision import VisionModel, VisionResult
from edge_agent.kernel.contract import AnomalyDecoder, DetectionDecoder

OK_LABEL = "ok"  # a normal frame's class in datasets
ANOMALY_LABELS = ("normal", "anomaly")  # what an anomaly decoder says
Progress = Callable[[int], None]  # called with the number of images done so far


@dataclass(frozen=True)
class VisionSample:
    """One labelled image: the region the model sees, its true class, and for detection its
    true boxes in that region's pixels."""

    image: np.ndarray  # BGR, as the gateway's camera gives it
    label: str
    boxes: tuple[Box, ...] = ()


def task_of(model: VisionModel) -> str:
    """"detection", or "classification" (anomaly models answer ok / anomaly)."""
    return "detection" if isinstance(model.spec.decoder, DetectionDecoder) else "classification"


class _Tally:
    """What one model said about each image, and how long it took."""

    def __init__(self, model: VisionModel) -> None:
        self.model = model
        self.anomaly = isinstance(model.spec.decoder, AnomalyDecoder)
        self.predicted: list[Any] = []
        self.latencies_ms: list[float] = []

    def observe(self, sample: VisionSample) -> None:
        started = time.perf_counter()
        result = self.model.infer(sample.image)
        self.latencies_ms.append((time.perf_counter() - started) * 1000)
        self.predicted.append(self._answer(result))

    def _answer(self, result: VisionResult) -> Any:
        if result.kind == "detection":
            return [(d.label, *map(float, d.box), d.confidence) for d in result.detections]
        if self.anomaly:
            return OK_LABEL if result.label == ANOMALY_LABELS[0] else ANOMALY_LABELS[1]
        return result.label

    def metrics(self, truths: list[str], true_boxes: list[tuple[Box, ...]]) -> dict[str, Any]:
        manifest = self.model.manifest
        if task_of(self.model) == "detection":
            predicted: list[list[ScoredBox]] = self.predicted
            figures = detection_metrics(true_boxes, predicted, self.model.spec.labels)
        elif self.anomaly:
            figures = classification_metrics(
                [t if t == OK_LABEL else ANOMALY_LABELS[1] for t in truths], self.predicted,
                [OK_LABEL, ANOMALY_LABELS[1]])
        else:
            figures = classification_metrics(truths, self.predicted, self.model.spec.labels)
        return {"version": manifest.version, **figures,
                "latency_ms": latency_summary(self.latencies_ms)}


def evaluate_vision(models: Sequence[VisionModel], samples: Iterable[VisionSample],
                    on_progress: Progress | None = None) -> list[dict[str, Any]]:
    """Each model's METRICS over the same samples, in the order of `models`: accuracy,
    per-class precision / recall / support, confusion matrix, latency (mean, p95)."""
    tallies = [_Tally(model) for model in models]
    truths: list[str] = []
    true_boxes: list[tuple[Box, ...]] = []
    for done, sample in enumerate(samples, start=1):
        truths.append(sample.label)
        true_boxes.append(sample.boxes)
        for tally in tallies:
            if done == 1:  # ONNX Runtime's first run sets itself up: not a latency
                tally.model.infer(sample.image)
            tally.observe(sample)
        if on_progress is not None:
            on_progress(done)
    return [tally.metrics(truths, true_boxes) for tally in tallies]

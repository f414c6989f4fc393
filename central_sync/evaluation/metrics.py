"""The figures of an evaluation, from what a model said and what was true: pure functions.

Classification: accuracy, per-class precision / recall / support, confusion matrix.
Detection: boxes matched at IoU >= 0.5, per class; a confusion matrix with "none" for a box
missed or invented. Regression (process models): MAE, bias, in-spec agreement. Latency.
A figure that cannot be computed (no prediction of a class, no example of it) is None.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

IOU_MATCH = 0.5  # a predicted box at least this close to a true box of its class finds it
NO_BOX = "none"  # the confusion matrix's row and column for a box missed or invented
Box = tuple[str, float, float, float, float]  # label, x1, y1, x2, y2
ScoredBox = tuple[str, float, float, float, float, float]  # label, x1, y1, x2, y2, confidence


def _ratio(numerator: int, denominator: int) -> float | None:
    return round(numerator / denominator, 4) if denominator else None


def label_order(known: Sequence[str], *seen: Sequence[str]) -> list[str]:
    """The model's labels in their order, then any other label seen, sorted."""
    extra = sorted({label for labels in seen for label in labels} - set(known))
    return [*known, *extra]


def confusion(truths: Sequence[str], predictions: Sequence[str],
              labels: Sequence[str]) -> dict[str, Any]:
    """{"labels": [...], "matrix": rows = true class, columns = predicted class}."""
    index = {label: i for i, label in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    for truth, predicted in zip(truths, predictions, strict=True):
        matrix[index[truth]][index[predicted]] += 1
    return {"labels": list(labels), "matrix": matrix}


def classification_metrics(truths: Sequence[str], predictions: Sequence[str],
                           known_labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, per-class precision, recall and support, and the confusion matrix."""
    labels = label_order(known_labels, truths, predictions)
    table = confusion(truths, predictions, labels)
    matrix = np.asarray(table["matrix"], dtype=np.int64).reshape(len(labels), len(labels))
    per_class = {}
    for i, label in enumerate(labels):
        hits = int(matrix[i, i])
        per_class[label] = {"precision": _ratio(hits, int(matrix[:, i].sum())),
                            "recall": _ratio(hits, int(matrix[i, :].sum())),
                            "support": int(matrix[i, :].sum())}
    correct = sum(t == p for t, p in zip(truths, predictions, strict=True))
    return {"accuracy": _ratio(correct, len(truths)), "per_class": per_class,
            "confusion": table}


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two boxes (x1, y1, x2, y2)."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match_boxes(truth: Sequence[Box], predicted: Sequence[ScoredBox],
                same_class: bool) -> list[tuple[int | None, int | None]]:
    """Greedy matching, most confident prediction first, each to the unmatched true box it
    overlaps most (IoU >= IOU_MATCH; of its own class when `same_class`). Returns (truth
    index, prediction index) pairs, None on the side that has no partner."""
    order = sorted(range(len(predicted)), key=lambda i: -predicted[i][5])
    free = set(range(len(truth)))
    pairs: list[tuple[int | None, int | None]] = []
    for p in order:
        best, best_iou = None, IOU_MATCH
        for t in free:
            if same_class and truth[t][0] != predicted[p][0]:
                continue
            overlap = iou(truth[t][1:5], predicted[p][1:5])
            if overlap >= best_iou:
                best, best_iou = t, overlap
        if best is not None:
            free.discard(best)
        pairs.append((best, p))
    pairs += [(t, None) for t in sorted(free)]
    return pairs


def detection_metrics(truths: Sequence[Sequence[Box]], predictions: Sequence[Sequence[ScoredBox]],
                      known_labels: Sequence[str]) -> dict[str, Any]:
    """Per-class precision and recall of boxes at IoU >= 0.5 (class-aware matching); the
    share of images whose boxes were all found with none invented ("accuracy"); a confusion
    matrix of boxes matched whatever their class, with NO_BOX for a box missed or invented."""
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    support: Counter[str] = Counter()
    rows: list[str] = []
    columns: list[str] = []
    exact = 0
    for truth, predicted in zip(truths, predictions, strict=True):
        support.update(box[0] for box in truth)
        perfect = True
        for t, p in match_boxes(truth, predicted, same_class=True):
            if t is not None and p is not None:
                tp[truth[t][0]] += 1
            elif p is not None:
                fp[predicted[p][0]] += 1
                perfect = False
            else:
                perfect = False
        exact += perfect
        for t, p in match_boxes(truth, predicted, same_class=False):
            rows.append(truth[t][0] if t is not None else NO_BOX)
            columns.append(predicted[p][0] if p is not None else NO_BOX)
    labels = label_order(known_labels, list(support), list(fp), list(tp))
    per_class = {label: {"precision": _ratio(tp[label], tp[label] + fp[label]),
                         "recall": _ratio(tp[label], support[label]),
                         "support": support[label]} for label in labels}
    return {"accuracy": _ratio(exact, len(truths)), "per_class": per_class,
            "confusion": confusion(rows, columns, [*labels, NO_BOX])}


def latency_summary(latencies_ms: Sequence[float]) -> dict[str, float | None]:
    """Mean and 95th percentile in ms, as central's CPU measured them (a gateway's differ)."""
    if not latencies_ms:
        return {"mean": None, "p95": None}
    values = np.asarray(latencies_ms, dtype=np.float64)
    return {"mean": round(float(values.mean()), 3),
            "p95": round(float(np.percentile(values, 95)), 3)}


def in_range(value: float, low: float | None, high: float | None) -> bool:
    return (low is None or value >= low) and (high is None or value <= high)


def regression_metrics(predicted: Sequence[float], measured: Sequence[float],
                       low: float | None = None, high: float | None = None) -> dict[str, Any]:
    """MAE and bias (mean of predicted - measured) over the rows; with a spec range, the share
    of rows where prediction and measurement agree on in-spec or out-of-spec."""
    pairs = [(p, m) for p, m in zip(predicted, measured, strict=True)
             if math.isfinite(p) and math.isfinite(m)]
    metrics: dict[str, Any] = {"rows": len(pairs), "mae": None, "bias": None}
    if pairs:
        errors = np.asarray([p - m for p, m in pairs], dtype=np.float64)
        metrics["mae"] = round(float(np.abs(errors).mean()), 6)
        metrics["bias"] = round(float(errors.mean()), 6)
    if low is None and high is None:
        metrics["note"] = ("in-spec agreement left out: the manifest has no spec limits "
                           "(metadata.spec low/high)")
    else:
        agree = sum(in_range(p, low, high) == in_range(m, low, high) for p, m in pairs)
        metrics["in_spec_agreement"] = _ratio(agree, len(pairs))
    return metrics

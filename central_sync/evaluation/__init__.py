"""Evaluation on central: a candidate version and the version serving now, measured on the
same held-out data with the gateway's own preprocessing and decoding, side by side.

`evaluate_model` stores the report (db.add_evaluation) and marks the candidate evaluated, the
step before a second account may approve it."""

from central_sync.db import Evaluation
from central_sync.evaluation.evaluate import (
    DEFAULT_MAX_ITEMS,
    EvaluationError,
    choose_baseline,
    evaluate_model,
    test_items,
)
from central_sync.evaluation.metrics import (
    classification_metrics,
    detection_metrics,
    latency_summary,
    regression_metrics,
)
from central_sync.evaluation.process import ProcessRow, evaluate_process
from central_sync.evaluation.vision import VisionSample, evaluate_vision

__all__ = [
    "DEFAULT_MAX_ITEMS",
    "Evaluation",
    "EvaluationError",
    "ProcessRow",
    "VisionSample",
    "choose_baseline",
    "classification_metrics",
    "detection_metrics",
    "evaluate_model",
    "evaluate_process",
    "evaluate_vision",
    "latency_summary",
    "regression_metrics",
    "test_items",
]

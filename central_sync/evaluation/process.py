"""Process models evaluated on what the line recorded: the inputs a pipeline's model saw at a
moment, with the target its `recommend.measured_tag` read at that moment (a
recommendation_outcome record). The candidate runs on those inputs with ONNX Runtime, through
the gateway's own output decoding (edge_agent.inference.outputs)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from central_sync.evaluation.metrics import regression_metrics
from edge_agent.inference.outputs import OutputDecoder
from edge_agent.inference.runtime import OnnxRunner
from edge_agent.kernel.contract import ModelManifest

BATCH_ROWS = 1024  # rows per ONNX Runtime call for a model with a dynamic batch dimension


@dataclass(frozen=True)
class ProcessRow:
    """The inputs a model saw, by feature, and the target measured at that moment."""

    inputs: dict[str, float]
    measured: float


class ProcessEvaluationError(Exception):
    """A process model cannot be run on the recorded inputs; the message says why."""


def target_output(manifest: ModelManifest, columns: Sequence[str]) -> str:
    """The output a measured value is compared with: the spec's target, else the metadata's
    "target" name, else the model's first output column."""
    meta = manifest.meta
    declared = manifest.metadata.get("target")
    for name in (meta.spec.target if meta.spec else None,
                 declared.get("name") if isinstance(declared, dict) else None):
        if name and name in columns:
            return str(name)
    return columns[0]


def predict(path: Path, manifest: ModelManifest,
            rows: Sequence[ProcessRow]) -> tuple[list[float], list[float], str]:
    """(predicted, measured, target output) for the rows that hold every feature the model
    takes (metadata.features)."""
    features = manifest.meta.features
    if not features:
        raise ProcessEvaluationError(
            f"model {manifest.name} {manifest.version} names no input features "
            "(metadata.features), so its inputs cannot be taken from recorded predictions")
    usable = [row for row in rows if all(f in row.inputs for f in features)]
    runner = OnnxRunner(path, manifest)
    decoder = OutputDecoder(manifest.meta.classes)
    input_name = manifest.inputs[0].name
    batch = BATCH_ROWS if not isinstance(manifest.inputs[0].shape[0], int) else 1
    matrix = np.asarray([[row.inputs[f] for f in features] for row in usable],
                        dtype=np.float32).reshape(len(usable), len(features))
    predicted: list[float] = []
    target = ""
    for start in range(0, len(usable), batch):
        columns = decoder.columns(runner.run({input_name: matrix[start:start + batch]}))
        target = target or target_output(manifest, list(columns))
        predicted += [float(v) for v in columns[target]]
    if not target:  # no usable row: name the target all the same
        columns = decoder.columns(runner.run({input_name: np.zeros((1, len(features)),
                                                                   dtype=np.float32)}))
        target = target_output(manifest, list(columns))
    return predicted, [row.measured for row in usable], target


def evaluate_process(models: Sequence[tuple[Path, ModelManifest]],
                     rows: Sequence[ProcessRow]) -> list[dict[str, Any]]:
    """Each model's METRICS on the same recorded rows: rows, MAE, bias, in-spec agreement
    (when its manifest has spec limits), and the rows it could not use."""
    results = []
    for path, manifest in models:
        predicted, measured, target = predict(path, manifest, rows)
        spec = manifest.meta.spec
        limits = (spec.low, spec.high) if spec and spec.target in (None, target) else (None, None)
        figures = regression_metrics(predicted, measured, *limits)
        results.append({"version": manifest.version, "target": target, **figures,
                        "rows_without_features": len(rows) - len(measured)})
    return results


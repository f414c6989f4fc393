"""Process-model outputs as numbers: one column per output (and per class probability), and
whether the quality output is within its spec. Pure functions of what ONNX Runtime returned."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edge_agent.kernel.contract import OutputSpec


class OutputError(Exception):
    """A model output cannot be read as numbers; the message says how to export it."""


class OutputDecoder:
    """Raw outputs -> one column of numbers per name, one value per input row.

    Regression outputs keep their names; a classifier gives its label (text labels as their
    index in `classes`) and one `<output>.<class>` column per class probability, from a tensor
    or from a ZipMap (a list of dicts).
    """

    def __init__(self, classes: Sequence[Any] | None = None) -> None:
        self.classes = [str(c) for c in classes] if classes else None

    def columns(self, outputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        zipmaps = [v for v in outputs.values() if isinstance(v, list) and v
                   and isinstance(v[0], dict)]
        classes = self.classes or ([str(k) for k in zipmaps[0][0]] if zipmaps else None)
        columns: dict[str, np.ndarray] = {}
        for name, value in outputs.items():
            if isinstance(value, list):
                columns.update(_zipmap_columns(name, value))
                continue
            array = np.asarray(value)
            rows = array.reshape(len(array) if array.ndim else 1, -1)
            if array.dtype.kind in "OUS":
                if not classes:
                    raise OutputError(
                        f"output {name} gives text labels; add the class names in order to the "
                        "model's metadata as 'classes' so they can be recorded")
                index = {c: float(i) for i, c in enumerate(classes)}
                columns[name] = np.asarray([index.get(str(v), math.nan) for v in rows[:, 0]])
            elif rows.shape[1] == 1:
                columns[name] = rows[:, 0].astype(np.float64)
            else:
                keys = classes if classes and len(classes) == rows.shape[1] \
                    else [str(i) for i in range(rows.shape[1])]
                for i, key in enumerate(keys):
                    columns[f"{name}.{key}"] = rows[:, i].astype(np.float64)
        return columns


def _zipmap_columns(name: str, value: list[Any]) -> dict[str, np.ndarray]:
    if not all(isinstance(v, dict) for v in value):
        raise OutputError(
            f"output {name} is a sequence of {type(value[0]).__name__ if value else 'nothing'}, "
            "not numbers; export the model without ZipMap (skl2onnx: options={'zipmap': False})")
    keys = list(value[0]) if value else []
    return {f"{name}.{key}": np.asarray([float(row[key]) for row in value]) for key in keys}


def in_spec(spec: OutputSpec | None, columns: Mapping[str, float | None]) -> bool | None:
    """Whether the spec's target output is within [low, high]; None without a spec."""
    if spec is None or spec.target not in columns:
        return None
    value = columns[spec.target]
    if value is None:
        return None
    return (spec.low is None or value >= spec.low) and (spec.high is None or value <= spec.high)

"""Run one installed model version with ONNX Runtime, checked against its manifest."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from edge_agent.contract import ModelManifest, TensorSpec

log = logging.getLogger(__name__)

_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(uint8)": "uint8",
    "tensor(int8)": "int8",
    "tensor(bool)": "bool",
    "tensor(string)": "string",
    "tensor(float16)": "float16",
}


class ModelLoadError(Exception):
    """A model file cannot be used as its manifest describes; the message says what differs."""


def tensor_specs(args: list[Any]) -> list[TensorSpec]:
    """TensorSpecs of an ONNX Runtime session's inputs or outputs."""
    return [
        TensorSpec(name=a.name, dtype=_ORT_TYPES.get(a.type, a.type),
                   shape=[d if isinstance(d, int) else None for d in a.shape])
        for a in args
    ]


def spec_differences(label: str, declared: list[TensorSpec], actual: list[TensorSpec]) -> list[str]:
    """Human-readable differences between a manifest's tensor specs and the model's."""
    problems = []
    actual_by_name = {s.name: s for s in actual}
    for spec in declared:
        found = actual_by_name.get(spec.name)
        if found is None:
            names = ", ".join(actual_by_name) or "none"
            problems.append(f"{label} {spec.name!r} is not in the model (it has: {names})")
            continue
        if spec.dtype != found.dtype:
            problems.append(f"{label} {spec.name!r} is {found.dtype}, manifest says {spec.dtype}")
        if len(spec.shape) != len(found.shape) or any(
            isinstance(d, int) and isinstance(f, int) and d != f
            for d, f in zip(spec.shape, found.shape, strict=False)
        ):
            problems.append(
                f"{label} {spec.name!r} has shape {_shape(found.shape)}, "
                f"manifest says {_shape(spec.shape)}"
            )
    return problems


def _shape(shape: list[Any]) -> str:
    return "x".join("?" if not isinstance(d, int) else str(d) for d in shape)


def default_providers() -> list[str]:
    return ["CPUExecutionProvider"]


class OnnxRunner:
    """One ONNX Runtime session for one model version."""

    def __init__(self, path: Path, manifest: ModelManifest,
                 providers: list[str] | None = None) -> None:
        self.manifest = manifest
        try:
            options = ort.SessionOptions()
            options.log_severity_level = 3
            self.session = ort.InferenceSession(
                str(path), sess_options=options, providers=providers or default_providers()
            )
        except Exception as exc:  # ORT raises several unrelated types for a bad file
            raise ModelLoadError(
                f"model {manifest.name} {manifest.version} at {path} does not load: {exc}"
            ) from exc
        problems = spec_differences(
            "input", manifest.inputs, tensor_specs(self.session.get_inputs())
        ) + spec_differences("output", manifest.outputs, tensor_specs(self.session.get_outputs()))
        if problems:
            raise ModelLoadError(
                f"model {manifest.name} {manifest.version} does not match its manifest: "
                + "; ".join(problems)
            )
        self.output_names = [o.name for o in manifest.outputs]

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.session.run(self.output_names, feed)
        return dict(zip(self.output_names, outputs, strict=True))

"""Run one installed model version with ONNX Runtime, checked against its manifest."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edge_agent.contract import ModelManifest
from edge_agent.inference.specs import spec_differences, tensor_specs

log = logging.getLogger(__name__)

class ModelLoadError(Exception):
    """A model file cannot be used as its manifest describes; the message says what differs."""


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
        ) + spec_differences(
            "output", manifest.outputs, tensor_specs(self.session.get_outputs())
        )
        if problems:
            raise ModelLoadError(
                f"model {manifest.name} {manifest.version} does not match its manifest: "
                + "; ".join(problems)
            )
        self.output_names = [o.name for o in manifest.outputs]

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.session.run(self.output_names, feed)
        return dict(zip(self.output_names, outputs, strict=True))

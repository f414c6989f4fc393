"""Run one installed model version with ONNX Runtime, checked against its manifest."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort
from pydantic import BaseModel, ConfigDict, Field

from edge_agent.inference.specs import tensor_specs
from edge_agent.kernel.contract import ModelManifest, spec_differences

log = logging.getLogger(__name__)

CPU_PROVIDER = "CPUExecutionProvider"  # every ONNX Runtime build has it: the fallback
ERRORS_ONLY = 3  # ONNX Runtime's log severity: its warnings about graphs are noise here


class ModelLoadError(Exception):
    """A model file cannot be used as its manifest describes; the message says what differs."""


_OPTIMIZATION = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


class RuntimeOptions(BaseModel):
    """ONNX Runtime settings of a pipeline (`runtime:` in the agent's configuration)."""

    model_config = ConfigDict(extra="forbid")

    intra_op_threads: int = Field(0, ge=0, description="Threads inside an operator; 0: ORT's "
                                  "choice (one per core)")
    inter_op_threads: int = Field(0, ge=0, description="Threads across operators; 0: default")
    graph_optimization: Literal["disabled", "basic", "extended", "all"] = "all"
    spin_wait: bool = Field(
        False, description="Let idle ONNX Runtime threads spin: a little lower latency, but "
        "they take CPU from decoding and preprocessing on the same cores")
    providers: list[str] = Field(
        default_factory=lambda: [CPU_PROVIDER],
        description="Execution providers in order of preference, e.g. [CUDAExecutionProvider, "
        "CPUExecutionProvider]; those this machine lacks are skipped, CPU is always last",
    )

    def session_options(self) -> ort.SessionOptions:
        options = ort.SessionOptions()
        options.log_severity_level = ERRORS_ONLY
        options.intra_op_num_threads = self.intra_op_threads
        options.inter_op_num_threads = self.inter_op_threads
        options.graph_optimization_level = _OPTIMIZATION[self.graph_optimization]
        spin = "1" if self.spin_wait else "0"
        options.add_session_config_entry("session.intra_op.allow_spinning", spin)
        options.add_session_config_entry("session.inter_op.allow_spinning", spin)
        return options

    def available_providers(self) -> list[str]:
        """The configured providers this ONNX Runtime has, with the CPU as the fallback."""
        have = set(ort.get_available_providers())
        chosen = [p for p in self.providers if p in have and p != CPU_PROVIDER]
        for missing in (p for p in self.providers if p not in have):
            log.warning("execution provider %s is not available here; skipped", missing)
        return [*chosen, CPU_PROVIDER]


class OnnxRunner:
    """One ONNX Runtime session for one model version."""

    def __init__(self, path: Path, manifest: ModelManifest,
                 providers: list[str] | None = None,
                 options: RuntimeOptions | None = None) -> None:
        self.manifest = manifest
        self.path = path
        try:
            session_options = options.session_options() if options else ort.SessionOptions()
            session_options.log_severity_level = ERRORS_ONLY
            chosen = providers or (options.available_providers() if options
                                   else [CPU_PROVIDER])
            self.session = ort.InferenceSession(
                str(path), sess_options=session_options, providers=chosen
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

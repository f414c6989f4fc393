"""One model check, used by central's `model publish` and by the gateway's health check: load a
version as its pipeline will serve it, run the golden (or a neutral) input through the same
pre- and post-processing, so both sides accept and refuse the same versions in the same words."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from edge_agent.inference.outputs import OutputDecoder, OutputError
from edge_agent.inference.runtime import ModelLoadError, OnnxRunner, RuntimeOptions
from edge_agent.inference.specs import tensor_specs
from edge_agent.inference.vision import Letterbox, VisionModel
from edge_agent.kernel.contract import Golden, ModelManifest, TensorSpec

LATENCY_RUNS = 20  # inferences timed against the latency budget; p95 of 20 needs one outlier
NEUTRAL_GRAY = 114  # the frame a vision model is shown when no golden input is given


class ModelCheckFailed(Exception):
    """A version cannot serve; the message says why and what to fix."""


def inspect_model(path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The input and output specs of an ONNX file, read by ONNX Runtime on the CPU."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), sess_options=options,
                                       providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises several unrelated types for a bad file
        raise ModelCheckFailed(
            f"{path} is not a model ONNX Runtime can load: {_first_line(exc)}") from None
    return tensor_specs(session.get_inputs()), tensor_specs(session.get_outputs())


def all_finite(outputs: dict[str, Any]) -> bool:
    """No NaN or infinity in any floating-point output."""
    for value in outputs.values():
        array = np.asarray(value)
        if array.dtype.kind in "fc" and not np.all(np.isfinite(array)):
            return False
    return True


def check_model(path: Path, manifest: ModelManifest, options: RuntimeOptions | None = None,
                measure_latency: bool = False) -> str:
    """Check one version as its pipeline will run it; a one-line summary, or ModelCheckFailed.

    Loads it (specs must match the manifest), builds the kind's serving path (a vision model's
    preprocessing and decoder must fit it; a process model's outputs must read as numbers),
    runs the golden input (or zeros) through the model and the post-processing, compares the
    golden output, and with `measure_latency` times it against `latency_budget_ms` (the
    gateway does; central's machine says nothing about a gateway's speed).
    """
    runner, post_process = _serving_path(path, manifest, options)
    golden = manifest.meta.golden
    feed = golden_feed(manifest, golden) if golden else neutral_feed(manifest)
    which = "golden" if golden else "neutral (zeros)"
    try:
        outputs = runner.run(feed)
    except Exception as exc:  # ORT raises several unrelated types for a bad input
        raise ModelCheckFailed(f"the {which} input does not run through the model: "
                               f"{_first_line(exc)}") from None
    if not all_finite(outputs):
        raise ModelCheckFailed(f"the {which} input gives NaN or infinite outputs")
    summary = "loads, specs match"
    if golden:
        _compare_golden(outputs[manifest.outputs[0].name], golden)
        summary += ", golden output within tolerance"
    post_process(outputs)
    summary += ", outputs decode as the pipeline reads them"
    budget = manifest.meta.latency_budget_ms
    if measure_latency and budget:
        p95 = _latency_p95_ms(runner, feed)
        if p95 > budget:
            raise ModelCheckFailed(f"latency p95 {p95:.1f} ms over the budget of {budget:g} ms")
        summary += f", latency p95 {p95:.2f} ms (budget {budget:g} ms)"
    return summary


def _serving_path(path: Path, manifest: ModelManifest, options: RuntimeOptions | None):
    """The runner, and what the pipeline does with its outputs, for this kind of model."""
    try:
        if manifest.kind == "vision":
            model = VisionModel(path, manifest, options=options)
            return model.runner, lambda outputs: _decode_vision(model, outputs)
        runner = OnnxRunner(path, manifest, options=options)
    except ModelLoadError as exc:
        raise ModelCheckFailed(str(exc)) from None
    decoder = OutputDecoder(manifest.meta.classes)
    return runner, lambda outputs: _decode_process(decoder, outputs)


def _decode_vision(model: VisionModel, outputs: dict[str, Any]) -> None:
    """Decode the checked output, then take a gray frame through preprocessing, the model
    and the decoder, as the pipeline takes every camera frame."""
    width, height = model.spec.preprocessing.size
    frame = np.full((height, width, 3), NEUTRAL_GRAY, dtype=np.uint8)
    try:
        model.decode(next(iter(outputs.values())), Letterbox(1.0, 1.0, 0.0, 0.0),
                     (height, width))
        model.infer(frame)
    except Exception as exc:  # numpy and ORT raise several unrelated types
        raise ModelCheckFailed(
            f"model {model.manifest.name} {model.manifest.version}: the "
            f"{model.spec.decoder.type} decoder cannot read the model's output "
            f"{model.manifest.outputs[0].shape}: {_first_line(exc)}; fix the metadata's "
            "decoder or export the model with the documented output") from None


def _decode_process(decoder: OutputDecoder, outputs: dict[str, Any]) -> None:
    try:
        decoder.columns(outputs)
    except OutputError as exc:
        raise ModelCheckFailed(str(exc)) from None


def golden_feed(manifest: ModelManifest, golden: Golden) -> dict[str, np.ndarray]:
    spec = manifest.inputs[0]
    try:
        return {spec.name: np.asarray(golden.input, dtype=spec.dtype)}
    except (TypeError, ValueError) as exc:
        raise ModelCheckFailed(f"golden input is not a {spec.dtype} tensor: {exc}; fix the "
                               "metadata's golden.input") from None


def neutral_feed(manifest: ModelManifest) -> dict[str, np.ndarray]:
    """Zeros of each input's shape (dynamic dimensions as 1)."""
    feed = {}
    for spec in manifest.inputs:
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in spec.shape]
        try:
            feed[spec.name] = np.zeros(shape, dtype=spec.dtype)
        except TypeError:
            raise ModelCheckFailed(
                f"input {spec.name!r} has type {spec.dtype}: give the manifest a golden input"
            ) from None
    return feed


def _compare_golden(output: Any, golden: Golden) -> None:
    actual = np.asarray(output, dtype=np.float64)
    expected = np.asarray(golden.output, dtype=np.float64)
    if actual.shape != expected.shape or not np.allclose(actual, expected,
                                                         atol=golden.tolerance):
        raise ModelCheckFailed(
            f"golden input gives {actual.reshape(-1)[:4].tolist()}, the metadata's "
            f"golden.output is {expected.reshape(-1)[:4].tolist()} (within "
            f"{golden.tolerance}); fix golden.output or the model")


def _latency_p95_ms(runner: OnnxRunner, feed: dict[str, np.ndarray]) -> float:
    timings = []
    for _ in range(LATENCY_RUNS):
        started = time.perf_counter()
        runner.run(feed)
        timings.append((time.perf_counter() - started) * 1000)
    return float(np.percentile(timings, 95))


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]

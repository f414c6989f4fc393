"""ONNX Runtime runner: a manifest that does not describe the file is refused at load."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.inference.runtime import ModelLoadError, OnnxRunner
from edge_agent.kernel.contract import TensorSpec, spec_differences
from tests.helpers import SAMPLE_MODEL, manifest_for


def test_sample_model_runs_as_its_manifest_says() -> None:
    runner = OnnxRunner(SAMPLE_MODEL, manifest_for(SAMPLE_MODEL))
    outputs = runner.run({"features": np.asarray([[175, 185, 190, 150, 60, 50]], np.float32)})
    assert outputs["scrap_rate_pct"].shape == (1, 1)


def test_manifest_with_wrong_input_shape_is_refused_saying_what_differs() -> None:
    manifest = manifest_for(SAMPLE_MODEL).model_copy(update={
        "inputs": [TensorSpec(name="features", dtype="float32", shape=[None, 7])]})
    with pytest.raises(ModelLoadError) as err:
        OnnxRunner(SAMPLE_MODEL, manifest)
    assert "input 'features' has shape ?x6 in the model, manifest says ?x7" in str(err.value)


def test_file_that_is_not_a_model_is_refused(tmp_path) -> None:
    bogus = tmp_path / "model.onnx"
    bogus.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="does not load"):
        OnnxRunner(bogus, manifest_for(SAMPLE_MODEL))


def test_spec_differences_name_dtype_and_shape() -> None:
    model = [TensorSpec(name="images", dtype="float32", shape=["batch", 3, 320, 320])]
    assert spec_differences("input", [TensorSpec(name="images", dtype="float32",
                                                 shape=[None, 3, 320, 320])], model) == []
    assert spec_differences("input", [TensorSpec(name="x", dtype="float32", shape=[1])],
                            model) == ["inputs are ['images'] in the model, manifest says ['x']"]
    problems = spec_differences(
        "input", [TensorSpec(name="images", dtype="uint8", shape=[1, 3, 224, 224])], model)
    assert problems == [
        "input 'images' has dtype float32 in the model, manifest says uint8",
        "input 'images' has shape ?x3x320x320 in the model, manifest says 1x3x224x224",
    ]

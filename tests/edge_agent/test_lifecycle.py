"""Shadow runs and probation: the judgements, and the deployer acting on them with a pipeline."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edge_agent.config import ProcessPipelineConfig
from edge_agent.lifecycle import ModelWatch, Probation, ProbationPolicy, ShadowPolicy, ShadowRun
from edge_agent.model_store import InstalledModel
from edge_agent.pipelines.process import ProcessPipeline
from edge_agent.sources.opcua import TagValue
from tests.edge_agent.deployment.test_deployer import deploy_command, setup
from tests.helpers import SAMPLE_METADATA, SAMPLE_MODEL, manifest_for

FEATURES = ["zone1_temp_c", "zone2_temp_c", "zone3_temp_c", "melt_pressure_bar",
            "screw_speed_rpm", "ambient_humidity_pct"]
TYPICAL = [178.0, 184.0, 190.0, 150.0, 60.0, 45.0]


def probation(reference: list[float] | None = None, budget: float | None = None,
              **policy: object) -> Probation:
    return Probation("m", "a" * 64, ProbationPolicy(**policy), budget, reference or [])


def test_probation_trips_on_the_first_nan_by_default() -> None:
    watch = probation()
    watch.add(1.0, 1.0, None)
    assert watch.verdict is None
    watch.add(None, 1.0, None)
    assert watch.verdict is not None and "NaN" in watch.verdict and watch.tripped.is_set()


def test_probation_judges_error_rate_latency_and_shift_once_it_has_seen_enough() -> None:
    errors = probation(min_observations=10, max_error_rate=0.2)
    for i in range(10):
        errors.add(2.0, 1.0, "boom" if i % 3 == 0 else None)
    assert errors.verdict == "4 of 10 inferences failed (more than 20%)"

    slow = probation(budget=5.0, min_observations=10, latency_p99_factor=2.0)
    for latency in [1.0] * 9 + [50.0]:
        slow.add(2.0, latency, None)
    assert slow.verdict is not None and "over 10.0 ms" in slow.verdict

    reference = list(np.random.default_rng(1).normal(2.0, 0.3, 200))
    steady = probation(reference, min_observations=10)
    for value in np.random.default_rng(2).normal(2.1, 0.3, 50):
        steady.add(float(value), 1.0, None)
    assert steady.verdict is None and steady.output_shift() < 1

    shifted = probation(reference, min_observations=10)
    for value in np.random.default_rng(3).normal(4.0, 0.3, 10):
        shifted.add(float(value), 1.0, None)
    assert shifted.verdict is not None and "shifted" in shifted.verdict


def test_shadow_run_counts_agreement_within_tolerance() -> None:
    run = ShadowRun(InstalledModel(manifest_for(SAMPLE_MODEL), SAMPLE_MODEL),
                    ShadowPolicy(predictions=4, tolerance=0.1))
    for active, shadow in ((1.0, 1.05), (1.0, 1.5), (2.0, None), (3.0, 3.0)):
        run.add(active, shadow)
    assert (run.compared, run.agreed, run.errors) == (4, 2, 1)
    assert run.enough.is_set() and run.agreement == 0.5


def test_probation_judges_the_operators_rejections_once_enough_answers_came() -> None:
    watch = probation(min_answers=4, max_rejection_rate=0.25)
    for rejected in (True, False, True):
        watch.add_answer(rejected)
    assert watch.verdict is None  # 3 answers: too few to judge
    watch.add_answer(False)
    assert watch.verdict == ("operators rejected 2 of 4 recommendations (50%), above the 25% "
                             "allowed") and watch.tripped.is_set()
    assert "2 of 4 recommendations rejected" in watch.summary()

    defaults = probation()  # at least 5 answers, at most 50% rejected
    for rejected in (True, True, False, True, False):
        defaults.add_answer(rejected)
    assert defaults.verdict == ("operators rejected 3 of 5 recommendations (60%), above the "
                                "50% allowed")


def test_shadow_run_that_compared_too_little_says_what_to_check() -> None:
    vision = InstalledModel(manifest_for(SAMPLE_MODEL).model_copy(update={"kind": "vision"}),
                            SAMPLE_MODEL)
    run = ShadowRun(vision, ShadowPolicy(predictions=20))
    assert run.shortfall(60.02) == ("shadow run compared 0 regions in 60 s (at least 5 needed); "
                                    "is the camera delivering frames?")
    for agreed in (True, False, None, True, True):
        run.add_decision(agreed)
    assert run.shortfall(60) is None and run.agreement == 0.6
    assert run.summary() == "agreement 60% over 5 regions (label and defect classes, 1 failed)"

    process = ShadowRun(InstalledModel(manifest_for(SAMPLE_MODEL), SAMPLE_MODEL),
                        ShadowPolicy(predictions=3, min_comparisons=10))
    process.add(1.0, 1.0)
    assert process.shortfall(2.5) == ("shadow run compared 1 inputs in 2.5 s (at least 3 "
                                      "needed); is the line delivering fresh tag values?")


def retrained_alike(path: Path) -> Path:
    """Other bytes, same answers: a retrain that changed nothing that matters."""
    model = onnx.load(SAMPLE_MODEL)
    entry = model.metadata_props.add()
    entry.key, entry.value = "retrained", "yes"
    onnx.save(model, path)
    return path


def sum_model(path: Path) -> Path:
    """Same inputs and outputs as the sample model, but it answers the sum of the features."""
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["features", "axes"], ["scrap_rate_pct"], keepdims=1)],
        "sum", [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, 6])],
        [helper.make_tensor_value_info("scrap_rate_pct", TensorProto.FLOAT, [None, 1])],
        initializer=[helper.make_tensor("axes", TensorProto.INT64, [1], [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("candidate", ["same", "different"])
def test_shadow_run_gates_activation_on_agreement(tmp_path: Path, candidate: str) -> None:
    async def scenario() -> None:
        file = (retrained_alike(tmp_path / "alike.onnx") if candidate == "same"
                else sum_model(tmp_path / "sum.onnx"))
        h = await setup(tmp_path, file.read_bytes())
        h.store.install(manifest_for(SAMPLE_MODEL), SAMPLE_MODEL)
        h.store.activate("extruder-scrap", "1.0.0")
        watch: ModelWatch = h.deployer.watch
        latest: dict[str, TagValue] = {}
        pipeline = ProcessPipeline(
            ProcessPipelineConfig(name="scrap", source="line1", model="extruder-scrap",
                                  features=FEATURES), latest, h.store, h.buffer, watch)

        async def line() -> None:
            while True:
                now = time.time()
                for tag, value in zip(FEATURES, TYPICAL, strict=True):
                    latest[tag] = TagValue(value, True, now, now)
                await pipeline.tick()
                await asyncio.sleep(0.01)  # the line's pace: a prediction every 10 ms

        metadata = json.loads(SAMPLE_METADATA.read_text())
        metadata["shadow"] = {"predictions": 8, "duration_s": 20, "tolerance": 0.01}
        if candidate == "different":
            metadata["golden"] = {"input": [TYPICAL], "output": [[sum(TYPICAL)]]}
        manifest = manifest_for(file, version="1.1.0", metadata=metadata)
        running = asyncio.create_task(line())
        activated = await h.deployer.deploy(deploy_command(manifest))
        running.cancel()
        shadow = [e for e in h.events if e.step == "shadow"]
        assert shadow and "agreement" in shadow[-1].detail
        if candidate == "same":
            assert activated and shadow[-1].progress == 1.0
            assert h.store.active("extruder-scrap").manifest.version == "1.1.0"
        else:
            assert not activated and shadow[-1].progress == 0.0
            assert "shadow run: agreement 0%" in h.events[-1].detail
            assert h.store.active("extruder-scrap").manifest.version == "1.0.0"
        assert watch.shadow_candidate("extruder-scrap") is None
        await h.buffer.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))

"""Process pipeline: features from fresh good tags only, predictions stamped with lineage."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.buffer import Buffer
from edge_agent.config import ProcessPipelineConfig
from edge_agent.inference.outputs import OutputDecoder, OutputError
from edge_agent.model_store import ModelStore
from edge_agent.pipelines.features import FeatureError, build_features
from edge_agent.pipelines.process import ProcessPipeline
from edge_agent.sources.opcua import TagValue
from tests.helpers import SAMPLE_MODEL, manifest_for, manifest_of

FEATURES = ["zone1_temp_c", "zone2_temp_c", "zone3_temp_c", "melt_pressure_bar",
            "screw_speed_rpm", "ambient_humidity_pct"]
VALUES = [175.0, 185.0, 190.0, 150.0, 60.0, 50.0]


def tags(now: float, **override: TagValue) -> dict[str, TagValue]:
    latest = {t: TagValue(v, True, now, now) for t, v in zip(FEATURES, VALUES, strict=True)}
    latest.update(override)
    return latest


def test_features_follow_the_model_order() -> None:
    now = time.time()
    row = build_features(tags(now), FEATURES, 30, now)
    assert row.shape == (1, 6) and row.dtype.name == "float32"
    assert row[0].tolist() == VALUES


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"zone2_temp_c": TagValue(185.0, True, 0, 0)}, "tag zone2_temp_c stale for"),
        ({"zone2_temp_c": TagValue(None, False, 0, time.time(), "BadCommunicationError")},
         "tag zone2_temp_c is BadCommunicationError"),
    ],
)
def test_stale_or_bad_tags_give_no_prediction(override: dict, message: str) -> None:
    now = time.time()
    with pytest.raises(FeatureError, match=message):
        build_features(tags(now, **override), FEATURES, 30, now)


def test_missing_tag_gives_no_prediction() -> None:
    latest = tags(time.time())
    del latest["screw_speed_rpm"]
    with pytest.raises(FeatureError, match="no prediction: tag screw_speed_rpm has no value"):
        build_features(latest, FEATURES, 30, time.time())


def test_pipeline_waits_for_model_then_predicts_with_lineage(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = ModelStore(tmp_path / "models")
        buffer = Buffer(tmp_path / "buffer.db", 10**7)
        latest = tags(time.time())
        config = ProcessPipelineConfig(name="scrap", source="line1", model="extruder-scrap")
        pipeline = ProcessPipeline(config, latest, store, buffer)
        assert await pipeline.tick() is None
        assert pipeline.status.state == "waiting"
        manifest = manifest_for(SAMPLE_MODEL)
        store.install(manifest, SAMPLE_MODEL)
        store.activate(manifest.name, manifest.version)
        payload = await pipeline.tick()
        assert payload["model"] == manifest.ref.model_dump()
        assert payload["inputs"]["zone2_temp_c"] == 185.0
        assert 0.0 <= payload["outputs"]["scrap_rate_pct"] <= 100.0
        batch = await buffer.next_batch(10)
        assert batch[0].type == "prediction" and json.loads(batch[0].payload_json) == payload
        await buffer.close()

    asyncio.run(scenario())


def test_pipeline_sums_each_interval_into_a_model_stats_record(tmp_path: Path) -> None:
    async def scenario() -> list[dict]:
        store = ModelStore(tmp_path / "models")
        buffer = Buffer(tmp_path / "buffer.db", 10**7)
        manifest = manifest_for(SAMPLE_MODEL)
        store.install(manifest, SAMPLE_MODEL)
        store.activate(manifest.name, manifest.version)
        now = [time.time()]
        config = ProcessPipelineConfig(name="scrap", source="line1", model="extruder-scrap")
        latest = tags(now[0])
        pipeline = ProcessPipeline(config, latest, store, buffer, clock=lambda: now[0],
                                   stats_interval_s=60)
        for _ in range(4):
            latest.update(tags(now[0]))  # the source keeps the values fresh
            assert await pipeline.tick() is not None, pipeline.status.detail
            now[0] += 20
        records = await buffer.next_batch(100)
        await buffer.close()
        return [json.loads(r.payload_json) for r in records if r.type == "model_stats"]

    [stats] = asyncio.run(scenario())  # ticks at 0, 20, 40, 60 s: one full interval
    assert stats["predictions"] == 4 and stats["model"]["name"] == "extruder-scrap"
    zone2 = stats["inputs"]["zone2_temp_c"]
    assert zone2["mean"] == 185.0 and sum(zone2["histogram"]["counts"]) == 4  # reference bins
    assert sum(stats["outputs"]["scrap_rate_pct"]["histogram"]["counts"]) == 4


# --- scikit-learn models, classifiers, spec limits, recommendations ------------------------

LINE = ["z1", "z2", "speed"]


def line_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.column_stack([rng.uniform(170, 180, 400), rng.uniform(178, 192, 400),
                         rng.uniform(50, 70, 400)]).astype(np.float32)
    width = 12.0 + 0.04 * (x[:, 0] - 175) - 0.01 * (x[:, 2] - 60)
    return x, width


def export(model: object, path: Path, zipmap: bool = False, output: str | None = None) -> Path:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    final = [(output, FloatTensorType([None, 1]))] if output else None
    onx = convert_sklearn(model, initial_types=[("features", FloatTensorType([None, 3]))],
                          options={"zipmap": zipmap} if hasattr(model, "classes_") else None,
                          final_types=final, target_opset={"": 17, "ai.onnx.ml": 3})
    path.write_bytes(onx.SerializeToString())
    return path


def line_tags(now: float, values: list[float]) -> dict[str, TagValue]:
    return {t: TagValue(v, True, now, now) for t, v in zip(LINE, values, strict=True)}


async def pipeline_on(tmp_path: Path, onnx_path: Path, metadata: dict,
                      latest: dict[str, TagValue], config: dict | None = None,
                      **kwargs: Any) -> ProcessPipeline:
    store = ModelStore(tmp_path / "models")
    manifest = manifest_of(onnx_path, metadata, name="width", kind="process")
    store.install(manifest, onnx_path)
    store.activate("width", "1.0.0")
    pipeline_config = ProcessPipelineConfig.model_validate(
        {"name": "line", "source": "line1", "model": "width", "features": LINE,
         **(config or {})})
    return ProcessPipeline(pipeline_config, latest, store, Buffer(tmp_path / "b.db", 10**7),
                           **kwargs)


def regressors() -> dict[str, object]:
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.linear_model import LinearRegression
    from sklearn.neural_network import MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.tree import DecisionTreeRegressor

    return {"tree": DecisionTreeRegressor(max_depth=6, random_state=0),
            "forest": RandomForestRegressor(n_estimators=10, max_depth=5, random_state=0),
            "scaled_linear": make_pipeline(StandardScaler(), LinearRegression()),
            "mlp": make_pipeline(StandardScaler(), MLPRegressor(
                hidden_layer_sizes=(16,), max_iter=300, random_state=0))}


@pytest.mark.parametrize("kind", ["tree", "forest", "scaled_linear", "mlp"])
def test_scikit_learn_regressors_predict_as_in_python_with_spec_verdict(
        tmp_path: Path, kind: str) -> None:
    import warnings

    async def scenario() -> None:
        x, y = line_data()
        model = regressors()[kind]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(x, y)  # type: ignore[attr-defined]
        path = export(model, tmp_path / f"{kind}.onnx", output="width_mm")
        values = [176.0, 185.0, 58.0]
        pipeline = await pipeline_on(tmp_path, path, {"spec": {"target": "width_mm",
                                                               "low": 11.8, "high": 12.2}},
                                     line_tags(time.time(), values))
        payload = await pipeline.tick()
        assert payload is not None, pipeline.status.detail
        expected = float(model.predict(np.asarray([values], np.float32))[0])  # type: ignore
        assert payload["outputs"]["width_mm"] == pytest.approx(expected, abs=1e-3)
        assert payload["outputs"]["in_spec"] == (1.0 if 11.8 <= expected <= 12.2 else 0.0)

    asyncio.run(scenario())


@pytest.mark.parametrize("zipmap", [False, True])
def test_classifier_records_label_and_class_probabilities(tmp_path: Path, zipmap: bool) -> None:
    from sklearn.linear_model import LogisticRegression

    async def scenario() -> None:
        x, width = line_data()
        labels = np.where(width > 12.0, "wide", "ok")
        model = LogisticRegression(max_iter=500).fit(x, labels)
        path = export(model, tmp_path / "clf.onnx", zipmap=zipmap)
        values = [179.0, 185.0, 52.0]
        pipeline = await pipeline_on(tmp_path, path, {"classes": ["ok", "wide"]},
                                     line_tags(time.time(), values))
        payload = await pipeline.tick()
        assert payload is not None, pipeline.status.detail
        probabilities = model.predict_proba(np.asarray([values], np.float32))[0]
        outputs = payload["outputs"]
        label, probability = ("output_label", "output_probability") if zipmap \
            else ("label", "probabilities")
        assert outputs[label] == 1.0  # index of "wide" in classes
        assert outputs[f"{probability}.ok"] == pytest.approx(probabilities[0], abs=1e-4)
        assert outputs[f"{probability}.wide"] == pytest.approx(probabilities[1], abs=1e-4)

    asyncio.run(scenario())


def test_zipmap_that_is_not_a_list_of_dicts_is_refused_clearly() -> None:
    with pytest.raises(OutputError, match="export the model without ZipMap"):
        OutputDecoder().columns({"probabilities": [[0.1, 0.9]]})


RECOMMEND = {"controls": {"z1": {"min": 170, "max": 180, "step": 0.5, "max_change": 3},
                          "speed": {"min": 50, "max": 70, "step": 1, "max_change": 5}},
             "objective": {"type": "target", "margin": 0.05}, "outcome_after_s": 0,
             "measured_tag": "width_measured_mm"}


async def recommending_pipeline(tmp_path: Path, mode: str, writer: Any = None,
                                fixed_batch: bool = False) -> ProcessPipeline:
    from sklearn.linear_model import LinearRegression

    x, width = line_data()
    path = export(LinearRegression().fit(x, width), tmp_path / "lin.onnx", output="width_mm")
    if fixed_batch:
        import onnx

        model = onnx.load(path)
        model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
        onnx.save(model, path)
    latest = line_tags(time.time(), [171.0, 185.0, 62.0])  # predicts about 11.82 mm
    latest["width_measured_mm"] = TagValue(11.83, True, time.time(), time.time())
    return await pipeline_on(
        tmp_path, path, {"spec": {"target": "width_mm", "low": 11.8, "high": 12.2}}, latest,
        {"recommend": {**RECOMMEND, "mode": mode}}, writer=writer,
        nodes={"z1": "ns=2;s=z1"})


async def records_of(pipeline: ProcessPipeline, kind: str) -> list[dict]:
    batch = await pipeline._buffer.next_batch(1000)
    return [json.loads(r.payload_json) for r in batch if r.type == kind]


def test_pipeline_offers_a_recommendation_once_with_its_predicted_effect(tmp_path: Path) -> None:
    async def scenario() -> None:
        pipeline = await recommending_pipeline(tmp_path, "advise")
        await pipeline.tick()
        board = pipeline.board
        assert board is not None and board.open is not None, pipeline.status.recommendation
        offered = board.open
        assert offered.model == pipeline._loaded.runner.manifest.ref  # type: ignore[union-attr]
        assert offered.target == "width_mm" and offered.mode == "advise"
        assert offered.predicted_now < 11.85  # inside the spec, but not its margin
        assert 11.85 <= offered.predicted_after <= 12.15
        assert all(c.tag in ("z1", "speed") for c in offered.changes)
        await pipeline.tick()  # the same proposal again: not re-offered
        assert board.open.id == offered.id
        assert "already proposes this" in pipeline.status.recommendation
        assert len(await records_of(pipeline, "recommendation")) == 1

    asyncio.run(scenario())


def test_a_tree_model_recommends_from_its_tables(tmp_path: Path) -> None:
    from sklearn.ensemble import GradientBoostingRegressor

    async def scenario() -> None:
        x, width = line_data()
        path = export(GradientBoostingRegressor(n_estimators=50, max_depth=3).fit(x, width),
                      tmp_path / "gbr.onnx", output="width_mm")
        latest = line_tags(time.time(), [171.0, 185.0, 62.0])
        pipeline = await pipeline_on(
            tmp_path, path, {"spec": {"target": "width_mm", "low": 11.8, "high": 12.2}},
            latest, {"recommend": {**RECOMMEND, "objective": {"type": "maximise"}}})
        await pipeline.tick()
        assert pipeline._loaded.recommender.scoring == "tree tables"  # type: ignore[union-attr]
        offered = pipeline.board.open  # type: ignore[union-attr]
        assert offered is not None, pipeline.status.recommendation
        assert offered.predicted_after > offered.predicted_now

    asyncio.run(scenario())


def test_accepting_in_advise_mode_writes_nothing(tmp_path: Path) -> None:
    async def scenario() -> None:
        writes: list[tuple[str, float]] = []

        async def writer(tag: str, value: float) -> float:
            writes.append((tag, value))
            return 0.0

        pipeline = await recommending_pipeline(tmp_path, "advise", writer)
        await pipeline.tick()
        assert pipeline.board is not None and pipeline.board.open is not None
        await pipeline.board.answer(pipeline.board.open.id, "accepted", "ana")
        assert writes == [] and await records_of(pipeline, "setpoint_write") == []

    asyncio.run(scenario())


def test_accepting_in_auto_mode_writes_and_outcome_follows(tmp_path: Path) -> None:
    async def scenario() -> None:
        writes: list[tuple[str, float]] = []

        async def writer(tag: str, value: float) -> float:
            writes.append((tag, value))
            return 171.0

        pipeline = await recommending_pipeline(tmp_path, "auto", writer)
        await pipeline.tick()
        assert pipeline.board is not None and pipeline.board.open is not None
        offered = pipeline.board.open
        await pipeline.board.answer(offered.id, "accepted", "ana")
        assert writes == [(c.tag, c.proposed) for c in offered.changes]
        written = await records_of(pipeline, "setpoint_write")
        assert [w["ok"] for w in written] == [True] * len(offered.changes)
        assert pipeline.status.writes_this_hour == 1
        assert pipeline.status.last_write is not None and pipeline.status.last_write["ok"]
        await pipeline.tick()  # outcome_after_s 0: the outcome is due at once
        outcomes = await records_of(pipeline, "recommendation_outcome")
        assert outcomes[0]["id"] == offered.id and outcomes[0]["measured"] == 11.83
        assert outcomes[0]["predicted"] is not None

    asyncio.run(scenario())


def test_model_without_a_dynamic_batch_stops_the_pipeline_with_the_reason(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        pipeline = await recommending_pipeline(tmp_path, "advise", fixed_batch=True)
        assert await pipeline.tick() is None
        assert pipeline.status.state == "error"
        assert "needs a dynamic batch dimension" in pipeline.status.detail

    asyncio.run(scenario())


def test_windowed_features_read_the_source_history(tmp_path: Path) -> None:
    from collections import deque

    from sklearn.linear_model import LinearRegression

    async def scenario() -> None:
        x, width = line_data()
        path = export(LinearRegression().fit(x, width), tmp_path / "lin.onnx")
        now = time.time()
        latest = line_tags(now, [176.0, 185.0, 60.0])
        history = {"z1": deque(TagValue(v, True, now - age, now - age)
                               for v, age in ((170.0, 20), (176.0, 0)))}
        pipeline = await pipeline_on(
            tmp_path, path, {}, latest,
            {"features": [{"tag": "z1", "transform": "mean", "window_s": 60}, "z2", "speed"]},
            history=history)
        payload = await pipeline.tick()
        assert payload is not None, pipeline.status.detail
        assert payload["inputs"] == {"z1_mean_60s": 173.0, "z2": 185.0, "speed": 60.0}

    asyncio.run(scenario())

"""Process pipeline: features from fresh good tags only, predictions stamped with lineage."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from edge_agent.buffer import Buffer
from edge_agent.config import ProcessPipelineConfig
from edge_agent.inference.process import FeatureError, ProcessPipeline, build_features
from edge_agent.model_store import ModelStore
from edge_agent.sources.opcua import TagValue
from tests.helpers import SAMPLE_MODEL, manifest_for

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

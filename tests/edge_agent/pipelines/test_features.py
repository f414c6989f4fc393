"""Features: last values and window statistics, and every reason not to predict in words."""

from __future__ import annotations

from collections import deque

import pytest
from pydantic import ValidationError

from edge_agent.config import AgentConfig, FeatureConfig, ProcessPipelineConfig
from edge_agent.pipelines.features import FeatureError, as_feature_configs, build_features
from edge_agent.sources.opcua import TagValue

NOW = 1_000_000.0


def good(value: float, age_s: float = 0.0) -> TagValue:
    return TagValue(value, True, NOW - age_s, NOW - age_s)


def ramp(values: list[float], every_s: float = 10.0) -> deque[TagValue]:
    """Values received every `every_s` seconds, the last one now (oldest first)."""
    count = len(values)
    return deque(good(v, (count - 1 - i) * every_s) for i, v in enumerate(values))


def feature(**fields: object) -> FeatureConfig:
    return FeatureConfig.model_validate({"tag": "zone2_temp_c", **fields})


def test_plain_tags_are_last_values_in_model_order() -> None:
    latest = {"a": good(1.5), "b": good(2.5)}
    row = build_features(latest, ["b", "a"], 30, NOW)
    assert row.dtype.name == "float32" and row.tolist() == [[2.5, 1.5]]


@pytest.mark.parametrize(("transform", "expected"),
                         [("mean", 184.0), ("min", 182.0), ("max", 186.0), ("rate", 4 / 40)])
def test_window_statistics_use_the_history_within_the_window(transform: str,
                                                             expected: float) -> None:
    history = {"zone2_temp_c": ramp([150.0, 182.0, 183.0, 184.0, 185.0, 186.0])}
    latest = {"zone2_temp_c": history["zone2_temp_c"][-1]}
    # The 150 is 50 s old: outside the 45 s window.
    row = build_features(latest, [feature(transform=transform, window_s=45)], 30, NOW, history)
    assert row[0, 0] == pytest.approx(expected)


def test_feature_names_say_the_transform_and_window() -> None:
    names = [f.feature_name for f in as_feature_configs([
        "a", feature(transform="mean", window_s=60),
        feature(transform="rate", window_s=30, name="z2_trend")])]
    assert names == ["a", "zone2_temp_c_mean_60s", "z2_trend"]


def test_value_outside_its_valid_range_gives_no_prediction() -> None:
    latest = {"zone2_temp_c": good(250.0)}
    with pytest.raises(FeatureError, match=r"no prediction: tag zone2_temp_c = 250 °C outside "
                                           r"its valid range 150\.\.220"):
        build_features(latest, [feature(unit="°C", valid=[150, 220])], 30, NOW)


def test_stale_tag_gives_no_prediction_with_its_age() -> None:
    with pytest.raises(FeatureError, match="no prediction: tag zone2_temp_c stale for 42 s"):
        build_features({"zone2_temp_c": good(185.0, age_s=42)}, ["zone2_temp_c"], 30, NOW)


def test_steady_value_confirmed_by_the_server_is_not_stale() -> None:
    """OPC-UA reports changes only: a value unchanged for minutes is fresh while the server
    keeps answering, and stale once it stops."""
    latest = {"zone2_temp_c": good(185.0, age_s=300)}
    row = build_features(latest, ["zone2_temp_c"], 30, NOW, confirmed_at=NOW - 1)
    assert row.tolist() == [[185.0]]
    with pytest.raises(FeatureError, match="tag zone2_temp_c stale for 45 s"):
        build_features(latest, ["zone2_temp_c"], 30, NOW, confirmed_at=NOW - 45)


def test_bad_status_gives_no_prediction() -> None:
    latest = {"zone2_temp_c": TagValue(None, False, NOW, NOW, "BadSensorFailure")}
    with pytest.raises(FeatureError, match="no prediction: tag zone2_temp_c is BadSensorFailure"):
        build_features(latest, ["zone2_temp_c"], 30, NOW)


def test_bad_value_inside_the_window_gives_no_prediction() -> None:
    points = ramp([184.0, 185.0, 186.0])
    points[1] = TagValue(None, False, NOW - 10, NOW - 10, "BadSensorFailure")
    with pytest.raises(FeatureError, match="tag zone2_temp_c was BadSensorFailure within the "
                                           "last 60 s"):
        build_features({"zone2_temp_c": points[-1]}, [feature(transform="mean", window_s=60)],
                       30, NOW, {"zone2_temp_c": points})


def test_missing_tag_gives_no_prediction() -> None:
    with pytest.raises(FeatureError, match="tag zone2_temp_c has no value yet"):
        build_features({}, ["zone2_temp_c"], 30, NOW)


def test_rate_over_too_few_points_says_so() -> None:
    history = {"zone2_temp_c": ramp([185.0])}
    with pytest.raises(FeatureError, match="tag zone2_temp_c has 1 value in the last 60 s; "
                                           "its rate over 60 s needs at least 2"):
        build_features({"zone2_temp_c": good(185.0)}, [feature(transform="rate", window_s=60)],
                       30, NOW, history)


def test_window_without_history_says_the_source_must_keep_some() -> None:
    with pytest.raises(FeatureError, match=r"no history of tag zone2_temp_c .* keep at least 60 s"):
        build_features({"zone2_temp_c": good(185.0)}, [feature(transform="max", window_s=60)],
                       30, NOW, None)


def test_feature_objects_and_plain_tags_mix_in_the_config() -> None:
    config = ProcessPipelineConfig.model_validate({
        "name": "scrap", "source": "line1", "model": "extruder-scrap",
        "features": ["zone1_temp_c", {"tag": "zone2_temp_c", "transform": "mean",
                                      "window_s": 60, "unit": "°C", "valid": [150, 220]}]})
    features = config.feature_configs
    assert features is not None
    assert [f.transform for f in features] == ["last", "mean"]
    assert features[1].valid == (150, 220)


@pytest.mark.parametrize(("fields", "message"), [
    ({"transform": "mean"}, "transform mean needs window_s"),
    ({"window_s": 60}, "window_s applies to mean, min, max and rate"),
    ({"valid": [220, 150]}, "valid must be \\[low, high\\] with low < high"),
])
def test_feature_config_mistakes_say_what_to_do(fields: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        feature(**fields)


def test_windowed_feature_tags_must_be_read_by_the_source() -> None:
    with pytest.raises(ValidationError, match=r"needs tags \['zone2_temp_c'\] that source "
                                              "'line1' does not read"):
        AgentConfig.model_validate({
            "device_id": "gw1", "security": {"verify_signatures": False},
            "sources": [{"name": "line1", "endpoint": "opc.tcp://h:4840",
                         "nodes": {"zone1_temp_c": "ns=2;s=z1"}}],
            "pipelines": [{"name": "scrap", "source": "line1", "model": "m", "features": [
                "zone1_temp_c", {"tag": "zone2_temp_c", "transform": "mean", "window_s": 60}]}]})

"""Model inputs from tags: last values or statistics over a window, checked before use.

A feature row is made only from fresh, good values inside their valid ranges; otherwise
FeatureError says which tag stopped the prediction and why, in words for the operator.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from edge_agent.config import FeatureConfig
from edge_agent.pipelines.inputs import TagReading


class FeatureError(Exception):
    """No prediction can be made from the current tag values; the message says why."""


def as_feature_configs(features: Sequence[str | FeatureConfig]) -> list[FeatureConfig]:
    """Plain tag names are last values."""
    return [FeatureConfig(tag=f) if isinstance(f, str) else f for f in features]


def build_features(latest: Mapping[str, TagReading], features: Sequence[str | FeatureConfig],
                   max_staleness_s: float, now: float,
                   history: Mapping[str, Sequence[TagReading]] | None = None,
                   confirmed_at: float = 0.0) -> np.ndarray:
    """One float32 row in the model's feature order, or FeatureError naming the bad tag.

    `history` holds each tag's recent values, oldest first (the source's `history`); only
    windowed features read it. `confirmed_at` is when the source last heard from its server
    (data or keepalive): OPC-UA reports changes only, so a steady value is as fresh as that.
    """
    return feature_values(latest, features, max_staleness_s, now, history,
                          confirmed_at)[None, :].astype(np.float32)


def feature_values(latest: Mapping[str, TagReading], features: Sequence[str | FeatureConfig],
                   max_staleness_s: float, now: float,
                   history: Mapping[str, Sequence[TagReading]] | None = None,
                   confirmed_at: float = 0.0) -> np.ndarray:
    """The features as float64, exactly as read (the recommender proposes from these)."""
    return np.asarray([feature_value(latest, history, f, max_staleness_s, now, confirmed_at)
                       for f in as_feature_configs(features)], dtype=np.float64)


def feature_value(latest: Mapping[str, TagReading],
                  history: Mapping[str, Sequence[TagReading]] | None, feature: FeatureConfig,
                  max_staleness_s: float, now: float, confirmed_at: float = 0.0) -> float:
    tag = feature.tag
    value = latest.get(tag)
    if value is None:
        raise FeatureError(f"no prediction: tag {tag} has no value yet")
    _check_good(feature, value)
    age_s = now - max(value.received_at, confirmed_at)
    if age_s > max_staleness_s:
        raise FeatureError(f"no prediction: tag {tag} stale for {age_s:.0f} s")
    assert value.value is not None
    if feature.transform == "last":
        return value.value
    return _window_value(feature, history, now)


def _window_value(feature: FeatureConfig, history: Mapping[str, Sequence[TagReading]] | None,
                  now: float) -> float:
    tag, window_s = feature.tag, feature.window_s
    assert window_s is not None
    what = f"{feature.transform} over {window_s:g} s"
    if history is None or tag not in history:
        raise FeatureError(f"no prediction: no history of tag {tag} for its {what}; the "
                           f"source must keep at least {window_s:g} s of history")
    points = [p for p in history[tag] if now - window_s <= p.received_at <= now]
    for point in points:
        _check_good(feature, point, f" within the last {window_s:g} s")
    needed = 2 if feature.transform == "rate" else 1
    if len(points) < needed:
        count = f"{len(points)} value" + ("" if len(points) == 1 else "s")
        raise FeatureError(f"no prediction: tag {tag} has {count} in the last {window_s:g} s; "
                           f"its {what} needs at least {needed}")
    values = np.asarray([p.value for p in points], dtype=np.float64)
    if feature.transform == "mean":
        return float(values.mean())
    if feature.transform == "min":
        return float(values.min())
    if feature.transform == "max":
        return float(values.max())
    span_s = points[-1].received_at - points[0].received_at
    if span_s <= 0:
        raise FeatureError(f"no prediction: tag {tag} has values from one instant only in "
                           f"the last {window_s:g} s; its {what} needs two moments")
    return float((values[-1] - values[0]) / span_s)


def _check_good(feature: FeatureConfig, value: TagReading, when: str = "") -> None:
    tag = feature.tag
    if not value.good or value.value is None:
        was = "was" if when else "is"
        raise FeatureError(f"no prediction: tag {tag} {was} {value.status}{when}")
    if feature.valid is not None:
        low, high = feature.valid
        if not low <= value.value <= high:
            unit = f" {feature.unit}" if feature.unit else ""
            raise FeatureError(
                f"no prediction: tag {tag} = {value.value:g}{unit} outside its valid range "
                f"{low:g}..{high:g}{when}")

"""Process-model pipeline: latest tag values -> feature vector -> ONNX Runtime -> prediction record.

A prediction is made only from fresh, good values; otherwise the pipeline says why not.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_agent.buffer import Buffer
from edge_agent.config import ProcessPipelineConfig
from edge_agent.contract import RECORD_PREDICTION, PredictionPayload
from edge_agent.inference.runtime import ModelLoadError, OnnxRunner
from edge_agent.lifecycle import ModelWatch
from edge_agent.model_store import InstalledModel, ModelStore
from edge_agent.recommendations import RecommendationBoard
from edge_agent.sources.opcua import TagValue

log = logging.getLogger(__name__)


class FeatureError(Exception):
    """No prediction can be made from the current tag values; the message says why."""


def build_features(
    latest: Mapping[str, TagValue], features: list[str], max_staleness_s: float, now: float
) -> np.ndarray:
    """One float32 row in the model's feature order, or FeatureError naming the bad tag."""
    row = []
    for tag in features:
        value = latest.get(tag)
        if value is None:
            raise FeatureError(f"no prediction: tag {tag} has no value yet")
        if not value.good or value.value is None:
            raise FeatureError(f"no prediction: tag {tag} is {value.status}")
        age_s = now - value.received_at
        if age_s > max_staleness_s:
            raise FeatureError(f"no prediction: tag {tag} stale for {age_s:.0f} s")
        row.append(value.value)
    return np.asarray([row], dtype=np.float32)


def features_of(config: ProcessPipelineConfig, installed: InstalledModel) -> list[str]:
    if config.features:
        return config.features
    from_manifest = installed.manifest.metadata.get("features")
    if not isinstance(from_manifest, list) or not from_manifest:
        raise ModelLoadError(
            f"pipeline {config.name}: model {installed.manifest.name} "
            f"{installed.manifest.version} names no 'features' in its metadata; "
            "list them under the pipeline's features"
        )
    return [str(f) for f in from_manifest]


TREND_POINTS = 720  # an hour at one prediction every 5 s


@dataclass(frozen=True)
class TrendPoint:
    at: float
    inputs: dict[str, float]
    outputs: dict[str, float | None]


@dataclass
class PipelineState:
    state: str = "waiting"
    detail: str = ""
    predictions: int = 0
    last_prediction: dict[str, Any] | None = None


class ProcessPipeline:
    def __init__(self, config: ProcessPipelineConfig, latest: Mapping[str, TagValue],
                 store: ModelStore, buffer: Buffer, watch: ModelWatch | None = None) -> None:
        self.config = config
        self.name = config.name
        self._latest = latest
        self._store = store
        self._buffer = buffer
        self._watch = watch or ModelWatch()
        self._runner: OnnxRunner | None = None
        self._shadow_runner: OnnxRunner | None = None
        self._failed_sha: str | None = None
        self.status = PipelineState(detail=f"waiting for model {config.model}")
        # For the operator page: recent predictions, and the recommendation board when the
        # pipeline recommends setpoints.
        self.trend: deque[TrendPoint] = deque(maxlen=TREND_POINTS)
        self.board: RecommendationBoard | None = None

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # one bad tick must not stop the line's predictions
                log.exception("pipeline tick failed pipeline=%s", self.name)
            await asyncio.sleep(self.config.interval_s)

    async def tick(self) -> dict[str, Any] | None:
        """Make one prediction if possible; returns the record payload buffered."""
        loop = asyncio.get_running_loop()
        installed = self._store.active(self.config.model)
        if installed is None:
            self._set("waiting", f"waiting for model {self.config.model} to be deployed")
            return None
        if self._runner is None or self._runner.manifest.sha256 != installed.manifest.sha256:
            if self._failed_sha == installed.manifest.sha256:
                return None
            try:
                self._runner = await loop.run_in_executor(
                    None, OnnxRunner, installed.path, installed.manifest
                )
                features_of(self.config, installed)
            except ModelLoadError as exc:
                self._failed_sha = installed.manifest.sha256
                self._runner = None
                self._set("error", str(exc))
                return None
            log.info("pipeline model loaded pipeline=%s model=%s version=%s", self.name,
                     installed.manifest.name, installed.manifest.version)
        runner = self._runner
        features = features_of(self.config, installed)
        try:
            row = build_features(self._latest, features, self.config.max_staleness_s, time.time())
        except FeatureError as exc:
            self._set("no_prediction", str(exc))
            return None
        feed = {runner.manifest.inputs[0].name: row}
        started = time.perf_counter()
        try:
            outputs = await loop.run_in_executor(None, runner.run, feed)
        except Exception as exc:  # ORT raises several unrelated types
            latency_ms = (time.perf_counter() - started) * 1000
            self._watch.observe(runner.manifest.name, runner.manifest.sha256, None, latency_ms,
                                error=str(exc))
            self._set("error", f"inference failed: {exc}")
            return None
        latency_ms = (time.perf_counter() - started) * 1000
        self._watch.observe(runner.manifest.name, runner.manifest.sha256, outputs, latency_ms)
        await self._run_shadow(feed, outputs)
        payload = PredictionPayload(
            pipeline=self.name,
            model=runner.manifest.ref,
            inputs={tag: float(v) for tag, v in zip(features, row[0], strict=True)},
            outputs={name: _scalar(value) for name, value in outputs.items()},
            latency_ms=round(latency_ms, 3),
        ).model_dump(mode="json")
        await self._buffer.append(RECORD_PREDICTION, payload)
        self.status.predictions += 1
        self.status.last_prediction = payload
        self.trend.append(TrendPoint(time.time(), payload["inputs"], payload["outputs"]))
        self._set("running", "")
        return payload

    async def _run_shadow(self, feed: dict[str, np.ndarray],
                          active: dict[str, np.ndarray]) -> None:
        """Give the same input to a version being shadowed; its outputs are only compared."""
        candidate = self._watch.shadow_candidate(self.config.model)
        if candidate is None:
            self._shadow_runner = None
            return
        loop = asyncio.get_running_loop()
        shadow: dict[str, np.ndarray] | None = None
        try:
            if self._shadow_runner is None or \
                    self._shadow_runner.manifest.sha256 != candidate.manifest.sha256:
                self._shadow_runner = await loop.run_in_executor(
                    None, OnnxRunner, candidate.path, candidate.manifest)
            name = candidate.manifest.inputs[0].name
            shadow = await loop.run_in_executor(
                None, self._shadow_runner.run, {name: next(iter(feed.values()))})
        except Exception as exc:  # a failing candidate counts against it, nothing more
            log.info("shadow inference failed pipeline=%s version=%s error=%s", self.name,
                     candidate.manifest.version, exc)
        self._watch.observe_shadow(self.config.model, active, shadow)

    def _set(self, state: str, detail: str) -> None:
        if (state, detail) != (self.status.state, self.status.detail):
            log.info("pipeline state pipeline=%s state=%s detail=%s", self.name, state, detail)
        self.status.state, self.status.detail = state, detail


def _scalar(value: np.ndarray) -> float | None:
    flat = np.asarray(value).reshape(-1)
    if flat.size == 0:
        return None
    number = float(flat[0])
    return number if math.isfinite(number) else None

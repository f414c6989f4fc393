"""Process-model pipeline: tag values -> features -> ONNX Runtime -> prediction record.

A prediction is made only from fresh, good values; otherwise the pipeline says why not. With
`recommend` configured it also searches for better setpoints and offers them on its board.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_agent.buffer import Buffer
from edge_agent.config import FeatureConfig, ProcessPipelineConfig
from edge_agent.inference.outputs import OutputDecoder, OutputError, in_spec
from edge_agent.inference.recommender import (
    Objective,
    Recommender,
    RecommenderError,
    offer_refusal,
    require_dynamic_batch,
    resolve_objective,
)
from edge_agent.inference.runtime import ModelLoadError, OnnxRunner
from edge_agent.inference.tree_tables import TreeEnsemble
from edge_agent.kernel.contract import (
    RECORD_PREDICTION,
    OutputSpec,
    PredictionPayload,
    RecommendationAnswerPayload,
    RecommendationPayload,
    SetpointChange,
)
from edge_agent.lifecycle import ModelWatch
from edge_agent.model_store import InstalledModel, ModelStore
from edge_agent.monitoring import DEFAULT_INTERVAL_S as DEFAULT_STATS_INTERVAL_S
from edge_agent.monitoring import ModelMonitor
from edge_agent.pipelines.base import Pipeline, PipelineContext, PipelineStatus
from edge_agent.pipelines.features import FeatureError, feature_values
from edge_agent.pipelines.inputs import TagReading, TagSource
from edge_agent.pipelines.setpoints import SetpointGuard, Writer
from edge_agent.pipelines.snapshot import PipelineSnapshot, ProcessDetails, TrendPoint
from edge_agent.recommendations import RecommendationBoard

log = logging.getLogger(__name__)


def features_of(config: ProcessPipelineConfig, installed: InstalledModel) -> list[FeatureConfig]:
    """The pipeline's features, or the last values of the manifest's 'features' tags."""
    configured = config.feature_configs
    if configured:
        return configured
    from_manifest = installed.manifest.meta.features
    if not from_manifest:
        raise ModelLoadError(
            f"pipeline {config.name}: model {installed.manifest.name} "
            f"{installed.manifest.version} names no 'features' in its metadata; "
            "list them under the pipeline's features"
        )
    return [FeatureConfig(tag=tag) for tag in from_manifest]


TREND_POINTS = 720  # an hour at one prediction every 5 s


@dataclass
class ProcessStatus(PipelineStatus):
    predictions: int = 0
    last_prediction: dict[str, Any] | None = None
    recommendation: str = ""  # the latest search: what it found, or why nothing was offered
    last_write: dict[str, Any] | None = None  # automatic mode: the latest write or refusal
    writes_this_hour: int = 0


@dataclass
class _Loaded:
    runner: OnnxRunner
    features: list[FeatureConfig]
    decoder: OutputDecoder
    spec: OutputSpec | None
    recommender: Recommender | None = None


class ProcessPipeline(Pipeline):
    """One process model on one source's tags; recommends setpoints when configured.

    `history` is the source's recent values per tag (windowed features read it),
    `confirmed_at` when it last heard from its server (a steady value is that fresh), `writer`
    its setpoint write (automatic mode), `nodes` its tag -> NodeId (for write records). A
    `board` given here is used instead of a new one; its on_accept should call
    `apply_accepted`.
    """

    kind = "process"

    def __init__(self, config: ProcessPipelineConfig, latest: Mapping[str, TagReading],
                 store: ModelStore, buffer: Buffer, watch: ModelWatch | None = None, *,
                 history: Mapping[str, Sequence[TagReading]] | None = None,
                 confirmed_at: Callable[[], float] | None = None,
                 writer: Writer | None = None, nodes: Mapping[str, str] | None = None,
                 board: RecommendationBoard | None = None,
                 clock: Callable[[], float] = time.time,
                 stats_interval_s: float = DEFAULT_STATS_INTERVAL_S) -> None:
        self.config = config
        self.name = config.name
        self.monitor = ModelMonitor(config.name, buffer, stats_interval_s, clock)
        self._latest = latest
        self._history = history
        self._confirmed_at = confirmed_at or (lambda: 0.0)
        self._store = store
        self._buffer = buffer
        self._watch = watch or ModelWatch()
        self._clock = clock
        self._loaded: _Loaded | None = None
        self._shadow_runner: OnnxRunner | None = None
        self._failed_sha: str | None = None
        self.status = ProcessStatus(detail=f"waiting for model {config.model}")
        # For the operator page: recent predictions, and the recommendation board when the
        # pipeline recommends setpoints.
        self.trend: deque[TrendPoint] = deque(maxlen=TREND_POINTS)
        self.board: RecommendationBoard | None = board
        self.guard: SetpointGuard | None = None
        recommend = config.recommend
        if recommend is not None:
            if self.board is None:
                self.board = RecommendationBoard(
                    self.name, buffer, outcome_after_s=recommend.outcome_after_s,
                    on_accept=self.apply_accepted, clock=clock)
            self.guard = SetpointGuard(self.name, recommend, writer, buffer, nodes, clock)
        if self.board is not None:
            self.board.answer_listeners.append(self._judge_answer)

    @classmethod
    def from_source(cls, config: ProcessPipelineConfig, source: TagSource,
                    context: PipelineContext) -> ProcessPipeline:
        """The pipeline on an OPC-UA source's tags, writing setpoints through it."""
        return cls(config, source.latest, context.store, context.buffer, context.watch,
                   history=source.history, confirmed_at=lambda: source.confirmed_at,
                   writer=source.write, nodes=source.config.setpoints,
                   stats_interval_s=context.stats_interval_s)

    def snapshot(self) -> PipelineSnapshot:
        status, board = self.status, self.board
        return PipelineSnapshot(
            name=self.name, type=self.kind, model=self.config.model, state=status.state,
            detail=status.detail, inferences=status.predictions,
            process=ProcessDetails(
                last_prediction=status.last_prediction, recommends=board is not None,
                open_recommendation=board.open if board is not None else None,
                answered=tuple(board.recent) if board is not None else (),
                search=status.recommendation, last_write=status.last_write,
                writes_this_hour=status.writes_this_hour, trend=tuple(self.trend)))

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # one bad tick must not stop the line's predictions
                log.exception("pipeline tick failed pipeline=%s", self.name)
            await asyncio.sleep(self.config.interval_s)

    async def tick(self) -> dict[str, Any] | None:
        """Make one prediction if possible; returns the record payload buffered."""
        installed = self._store.active(self.config.model)
        if installed is None:
            self._set("waiting", f"waiting for model {self.config.model} to be deployed")
            return None
        loaded = await self._load(installed)
        if loaded is None:
            return None
        if self.board is not None:
            await self.board.expire()
        payload, row = await self._predict(loaded)
        if self.board is not None:
            if payload is not None and row is not None and loaded.recommender is not None:
                await self._recommend(loaded.recommender, row, payload)
            objective = loaded.recommender.objective if loaded.recommender else None
            predicted = payload["outputs"].get(objective.output) if payload and objective \
                else None
            await self.board.record_outcomes(self._setpoints, lambda: predicted, self._measured)
        if self.guard is not None:
            self.status.writes_this_hour = self.guard.writes_this_hour()
        return payload

    async def _load(self, installed: InstalledModel) -> _Loaded | None:
        """The loaded model, (re)loaded when the active version changed; None if unusable."""
        sha = installed.manifest.sha256
        if self._loaded is not None and self._loaded.runner.manifest.sha256 == sha:
            return self._loaded
        if self._failed_sha == sha:
            return None
        loop = asyncio.get_running_loop()
        try:
            runner = await loop.run_in_executor(None, OnnxRunner, installed.path,
                                                installed.manifest)
            meta = installed.manifest.meta
            loaded = _Loaded(runner, features_of(self.config, installed),
                             OutputDecoder(meta.classes), meta.spec)
            if self.config.recommend is not None:
                loaded.recommender = await loop.run_in_executor(
                    None, self._make_recommender, loaded)
        except (ModelLoadError, RecommenderError, OutputError) as exc:
            self._failed_sha = sha
            self._loaded = None
            self._set("error", str(exc))
            return None
        self._loaded = loaded
        log.info("pipeline model loaded pipeline=%s model=%s version=%s", self.name,
                 installed.manifest.name, installed.manifest.version)
        return loaded

    def _make_recommender(self, loaded: _Loaded) -> Recommender:
        recommend = self.config.recommend
        assert recommend is not None
        manifest = loaded.runner.manifest
        require_dynamic_batch(manifest)
        input_name = manifest.inputs[0].name
        probe = np.zeros((2, len(loaded.features)), dtype=np.float32)
        try:
            outputs = loaded.runner.run({input_name: probe})
        except Exception as exc:  # ORT raises several unrelated types
            raise RecommenderError(
                f"model {manifest.name} {manifest.version} fails on a batch of 2 rows ({exc}); "
                "the recommender needs a model that takes many rows at once") from exc
        names = list(loaded.decoder.columns(outputs))
        objective = resolve_objective(recommend.objective, loaded.spec, names, self.name)

        def predict(batch: np.ndarray) -> np.ndarray:
            outputs = loaded.runner.run({input_name: batch})
            return loaded.decoder.columns(outputs)[objective.output]

        grid = TreeEnsemble.from_onnx(loaded.runner.path)
        if grid is not None and grid.output_name != objective.output:
            grid = None
        recommender = Recommender(recommend, loaded.features, objective, predict, self.name,
                                  grid=grid)
        log.info("recommender ready pipeline=%s model=%s version=%s scoring=%s", self.name,
                 manifest.name, manifest.version, recommender.scoring)
        return recommender

    async def _predict(self, loaded: _Loaded) -> tuple[dict[str, Any] | None, np.ndarray | None]:
        loop = asyncio.get_running_loop()
        runner = loaded.runner
        try:
            values = feature_values(self._latest, loaded.features,
                                    self.config.max_staleness_s, self._clock(), self._history,
                                    self._confirmed_at())
        except FeatureError as exc:
            self._set("no_prediction", str(exc))
            return None, None
        row = values[None, :].astype(np.float32)
        feed = {runner.manifest.inputs[0].name: row}
        started = time.perf_counter()
        try:
            outputs = await loop.run_in_executor(None, runner.run, feed)
            columns = loaded.decoder.columns(outputs)
        except Exception as exc:  # ORT raises several unrelated types
            latency_ms = (time.perf_counter() - started) * 1000
            self._watch.observe(runner.manifest.name, runner.manifest.sha256, None, latency_ms,
                                error=str(exc))
            await self.monitor.error(runner.manifest)
            self._set("error", f"inference failed: {exc}")
            return None, None
        latency_ms = (time.perf_counter() - started) * 1000
        self._watch.observe(runner.manifest.name, runner.manifest.sha256, columns, latency_ms)
        await self._run_shadow(feed, columns, loaded.decoder)
        predicted = {name: _finite(column[0]) for name, column in columns.items()}
        spec_ok = in_spec(loaded.spec, predicted)
        if spec_ok is not None:
            predicted["in_spec"] = 1.0 if spec_ok else 0.0
        payload = PredictionPayload(
            pipeline=self.name,
            model=runner.manifest.ref,
            inputs={f.feature_name: float(v) for f, v in zip(loaded.features, values,
                                                             strict=True)},
            outputs=predicted,
            latency_ms=round(latency_ms, 3),
        ).model_dump(mode="json")
        await self._buffer.append(RECORD_PREDICTION, payload)
        await self.monitor.observe(runner.manifest, payload["inputs"], predicted, latency_ms)
        self.status.predictions += 1
        self.status.last_prediction = payload
        self.trend.append(TrendPoint(self._clock(), payload["inputs"], payload["outputs"]))
        self._set("running", "")
        return payload, values

    async def _recommend(self, recommender: Recommender, row: np.ndarray,
                         prediction: dict[str, Any]) -> None:
        assert self.board is not None and self.config.recommend is not None
        loop = asyncio.get_running_loop()
        try:
            proposal = await loop.run_in_executor(None, recommender.search, row)
        except Exception as exc:  # a failed search costs this tick's recommendation only
            log.warning("recommendation search failed pipeline=%s error=%s", self.name, exc)
            self.status.recommendation = f"search failed: {exc}"
            return
        now = self._clock()
        recent = self.board.recent[0] if self.board.recent else None
        last_closed = (recent.recommendation, recent.answer.at) if recent else None
        refusal = offer_refusal(proposal, self.config.recommend, recommender.objective,
                                self.board.open, last_closed, now)
        if refusal is not None:
            self.status.recommendation = f"nothing offered: {refusal}"
            return
        recommendation = self._recommendation(recommender.objective, proposal.changed,
                                              proposal.current, proposal.predicted_now,
                                              proposal.predicted_after, prediction, now)
        await self.board.offer(recommendation)
        self.status.recommendation = (f"offered {recommendation.id}: "
                                      f"{recommender.objective.output} "
                                      f"{proposal.predicted_now:.4g} -> "
                                      f"{proposal.predicted_after:.4g}")

    def _recommendation(self, objective: Objective, changed: dict[str, float],
                        current: dict[str, float], predicted_now: float,
                        predicted_after: float, prediction: dict[str, Any],
                        now: float) -> RecommendationPayload:
        recommend = self.config.recommend
        assert recommend is not None and self._loaded is not None
        return RecommendationPayload(
            pipeline=self.name, model=self._loaded.runner.manifest.ref,
            target=objective.output, unit=self._unit(objective.output),
            objective=objective.describe(),
            changes=[SetpointChange(tag=tag, current=current[tag], proposed=value,
                                    unit=self._unit(tag)) for tag, value in changed.items()],
            predicted_now=predicted_now, predicted_after=predicted_after,
            inputs=prediction["inputs"], mode=recommend.mode, created_at=now,
            expires_at=now + recommend.hold_s)

    async def apply_accepted(self, recommendation: RecommendationPayload) -> None:
        """The operator accepted: in automatic mode write it through the guard."""
        recommend = self.config.recommend
        if recommend is None or self.guard is None or recommend.mode != "auto":
            log.info("recommendation accepted, advise mode: the operator sets the values "
                     "pipeline=%s id=%s", self.name, recommendation.id)
            return
        attempts = await self.guard.apply(recommendation, self._setpoints())
        self.status.writes_this_hour = self.guard.writes_this_hour()
        last = attempts[-1] if attempts else None
        if last is not None:
            self.status.last_write = {"recommendation": recommendation.id, "at": last.at,
                                      "ok": all(a.ok for a in attempts),
                                      "values": {a.tag: a.value for a in attempts},
                                      "detail": "; ".join(dict.fromkeys(
                                          a.detail for a in attempts if a.detail))}

    def _judge_answer(self, recommendation: RecommendationPayload,
                      answer: RecommendationAnswerPayload) -> None:
        """An operator's answer counts for the version that made the recommendation (its
        probation, then its watch)."""
        self._watch.observe_answer(recommendation.model.name, recommendation.model.sha256,
                                   rejected=answer.decision == "rejected")

    def _setpoints(self) -> dict[str, float | None]:
        """Current values of the controllable tags (None: missing or bad)."""
        recommend = self.config.recommend
        return {tag: self._good_value(tag) for tag in (recommend.controls if recommend else {})}

    def _measured(self) -> float | None:
        recommend = self.config.recommend
        tag = recommend.measured_tag if recommend else None
        return self._good_value(tag) if tag else None

    def _good_value(self, tag: str) -> float | None:
        value = self._latest.get(tag)
        return value.value if value is not None and value.good else None

    def _unit(self, name: str) -> str:
        for feature in self._loaded.features if self._loaded else []:
            if feature.tag == name and feature.unit:
                return feature.unit
        units = self._loaded.runner.manifest.meta.units if self._loaded else None
        return (units or {}).get(name, "")

    async def _run_shadow(self, feed: dict[str, np.ndarray], active: dict[str, np.ndarray],
                          decoder: OutputDecoder) -> None:
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
            outputs = await loop.run_in_executor(
                None, self._shadow_runner.run, {name: next(iter(feed.values()))})
            shadow = decoder.columns(outputs)
        except Exception as exc:  # a failing candidate counts against it, nothing more
            log.info("shadow inference failed pipeline=%s version=%s error=%s", self.name,
                     candidate.manifest.version, exc)
        self._watch.observe_shadow(self.config.model, active, shadow)


def _finite(value: float) -> float | None:
    number = float(value)
    return number if math.isfinite(number) else None

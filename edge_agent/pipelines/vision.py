"""Vision pipeline: a camera's newest frames through the active vision model, defects recorded.

Frames are decoded by the camera's reader thread; preprocessing of the next frame runs while
the model works on the current one in its own thread, so the pipeline is bound by the model.
Each region of interest is judged on its own. A defect becomes one `defect` record (with JPEG
evidence and an annotated copy) once it was seen in `min_consecutive` frames in a row, then the
same class in the same region is quiet for `cooldown_s`. Frames the model is unsure about, and a
small random share of normal ones, become `sample` records within hourly and daily quotas, for
labelling. While a candidate version runs in shadow, it sees the same regions and each region's
decision is compared with the active version's.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from edge_agent.buffer import Buffer
from edge_agent.config import RoiConfig, VisionPipelineConfig
from edge_agent.inference.runtime import ModelLoadError
from edge_agent.inference.vision import Letterbox, VisionModel, VisionResult
from edge_agent.kernel.contract import (
    RECORD_DEFECT,
    RECORD_SAMPLE,
    DefectPayload,
    DetectedBox,
    EvidenceImage,
    SamplePayload,
)
from edge_agent.lifecycle import ModelWatch
from edge_agent.model_store import ModelStore
from edge_agent.monitoring import DEFAULT_INTERVAL_S as DEFAULT_STATS_INTERVAL_S
from edge_agent.monitoring import ModelMonitor
from edge_agent.pipelines.base import Pipeline, PipelineContext, PipelineStatus
from edge_agent.pipelines.evidence import annotate, evidence_jpeg, image_stats, thumbnail, to_frame
from edge_agent.pipelines.inputs import Frame, FrameSource
from edge_agent.pipelines.model_thread import ModelThread
from edge_agent.pipelines.reject import RejectOutput
from edge_agent.pipelines.snapshot import (
    RECENT_DEFECTS,
    PipelineSnapshot,
    RecentDefect,
    VisionDetails,
)
from edge_agent.pipelines.vision_shadow import ShadowFrame, ShadowLoader, same_decision

log = logging.getLogger(__name__)

WHOLE_FRAME = "frame"
FRAME_WAIT_S = 5.0  # without a frame this long, the pipeline says the camera is silent
DAY_S, HOUR_S = 86400.0, 3600.0

_Results = list[tuple[str, VisionResult, float]]  # per region: name, result, latency in ms


@dataclass
class VisionStatus(PipelineStatus):
    frames: int = 0
    defects: int = 0
    samples: int = 0
    last_result: dict[str, Any] | None = None


class DefectRule:
    """Consecutive-frame and cooldown logic for one pipeline, per (ROI, class)."""

    def __init__(self, min_consecutive: int, cooldown_s: float) -> None:
        self.min_consecutive = min_consecutive
        self.cooldown_s = cooldown_s
        self._streak: dict[tuple[str, str], int] = {}
        self._last_record: dict[tuple[str, str], float] = {}

    def observe(self, roi: str, labels: set[str], now: float) -> list[str]:
        """The labels of this ROI that become a defect record now."""
        for key in [k for k in self._streak if k[0] == roi and k[1] not in labels]:
            del self._streak[key]  # the streak is broken
        due = []
        for label in sorted(labels):
            key = (roi, label)
            self._streak[key] = self._streak.get(key, 0) + 1
            if self._streak[key] >= self.min_consecutive and \
                    now - self._last_record.get(key, -math.inf) >= self.cooldown_s:
                self._last_record[key] = now
                due.append(label)
        return due


class Quota:
    """At most `per_hour` and `per_day` events (rolling windows)."""

    def __init__(self, per_hour: int, per_day: int) -> None:
        self.per_hour, self.per_day = per_hour, per_day
        self._times: deque[float] = deque()

    def take(self, now: float) -> bool:
        while self._times and now - self._times[0] > DAY_S:
            self._times.popleft()
        last_hour = sum(1 for t in self._times if now - t <= HOUR_S)
        if len(self._times) >= self.per_day or last_hour >= self.per_hour:
            return False
        self._times.append(now)
        return True


@dataclass
class _Prepared:
    frame: Frame
    model: VisionModel  # the version that judges this frame, even if another is activated
    regions: list[tuple[str, RoiConfig | None, np.ndarray, Letterbox]] = field(
        default_factory=list)
    image_stats: dict[str, dict[str, float]] = field(default_factory=dict)  # by region
    shadow: ShadowFrame | None = None  # a candidate in shadow sees the same regions


class VisionPipeline(Pipeline):
    """One vision model on one camera's newest frames."""

    kind = "vision"

    def __init__(self, config: VisionPipelineConfig, camera: FrameSource, store: ModelStore,
                 buffer: Buffer, watch: ModelWatch | None = None,
                 rng: random.Random | None = None,
                 stats_interval_s: float = DEFAULT_STATS_INTERVAL_S,
                 reject: RejectOutput | None = None) -> None:
        self.config = config
        self.reject = reject  # the PLC tag confirmed defects write; None: off
        self.name = config.name
        self.monitor = ModelMonitor(config.name, buffer, stats_interval_s)
        self.camera = camera
        self._store = store
        self._buffer = buffer
        self._watch = watch or ModelWatch()
        self._rng = rng or random.Random()
        self._model: VisionModel | None = None
        self._failed_sha: str | None = None
        self._shadow = ShadowLoader(config.model, self._watch, config.runtime)
        self._rule = DefectRule(config.defects.min_consecutive, config.defects.cooldown_s)
        self._quota = Quota(config.sampling.per_hour, config.sampling.per_day)
        # OpenCV's own worker threads would take the core the model runs on: every OpenCV call
        # here already runs beside the model in a thread of its own (decode, preparation).
        cv2.setNumThreads(1)
        # Frames are prepared (and models loaded) here, while the model thread runs the model.
        self._prepare_pool = ThreadPoolExecutor(1, thread_name_prefix=f"{config.name}-prep")
        self.status = VisionStatus(detail=f"waiting for model {config.model}")
        # Newest first. Twice what the page shows, so a picture on a page just rendered is
        # still here when the browser asks for it, however fast defects come.
        self.recent_defects: deque[RecentDefect] = deque(maxlen=2 * RECENT_DEFECTS)

    @classmethod
    def from_source(cls, config: VisionPipelineConfig, source: FrameSource,
                    context: PipelineContext) -> VisionPipeline:
        """The pipeline on a camera's frames, writing its reject tag through its OPC-UA source."""
        reject = None
        if config.reject is not None:
            writer = context.node_writers.get(config.reject.source)
            if writer is None:
                raise ValueError(f"pipeline {config.name!r}: reject.source "
                                 f"{config.reject.source!r} is not an OPC-UA source here")
            reject = RejectOutput(config.name, config.reject, writer, context.buffer)
        return cls(config, source, context.store, context.buffer, context.watch,
                   stats_interval_s=context.stats_interval_s, reject=reject)

    def snapshot(self) -> PipelineSnapshot:
        status = self.status
        return PipelineSnapshot(
            name=self.name, type=self.kind, model=self.config.model, state=status.state,
            detail=status.detail, inferences=status.frames,
            vision=VisionDetails(camera=self.camera.name, defects=status.defects,
                                 samples=status.samples, last_result=status.last_result,
                                 recent_defects=tuple(self.recent_defects)))

    async def run(self) -> None:
        after = -1
        model_thread: ModelThread[_Prepared, _Results] = ModelThread(self.name, self._infer)
        in_flight = 0  # frames given to the model thread whose results are not handled yet
        try:
            while True:
                frame = await self.camera.next_frame(after, timeout_s=FRAME_WAIT_S)
                if frame is None:
                    # No next frame (a file that ended, a camera gone quiet): the frame
                    # still in the model thread is judged and recorded now, not lost.
                    while in_flight:
                        done, results = await model_thread.result()
                        in_flight -= 1
                        await self._handle(done, results)
                    self._set("waiting", f"no frame from camera {self.camera.name}: "
                              f"{self.camera.state.state} {self.camera.state.detail}".rstrip())
                    continue
                after = frame.index
                model = await self._current_model()
                if model is None:
                    continue
                shadow = await self._shadow.frame(self._prepare_pool)
                prepared = await asyncio.get_running_loop().run_in_executor(
                    self._prepare_pool, self._prepare, model, frame, shadow)
                await model_thread.put(prepared)
                in_flight += 1
                # One frame runs while the next waits prepared; results are handled in order.
                while in_flight > 1 or model_thread.has_results():
                    done, results = await model_thread.result()
                    in_flight -= 1
                    await self._handle(done, results)
        finally:
            self._prepare_pool.shutdown(wait=False, cancel_futures=True)
            await model_thread.close()
            if self.reject is not None:  # a pulse under way ends reset, not left high
                await self.reject.wait_resets()

    async def process(self, frame: Frame) -> list[dict[str, Any]]:
        """One frame start to end (no overlap); returns the records written. For tests and
        tools; `run()` does the same with the next frame prepared during inference."""
        model = await self._current_model()
        if model is None:
            return []
        loop = asyncio.get_running_loop()
        shadow = await self._shadow.frame(self._prepare_pool)
        prepared = await loop.run_in_executor(self._prepare_pool, self._prepare, model, frame,
                                              shadow)
        results = await loop.run_in_executor(self._prepare_pool, self._infer, prepared)
        return await self._handle(prepared, results)

    async def _current_model(self) -> VisionModel | None:
        installed = self._store.active(self.config.model)
        if installed is None:
            self._set("waiting", f"waiting for model {self.config.model} to be deployed")
            return None
        if self._model is not None and self._model.manifest.sha256 == installed.manifest.sha256:
            return self._model
        if self._failed_sha == installed.manifest.sha256:
            return None
        try:
            self._model = await asyncio.get_running_loop().run_in_executor(
                self._prepare_pool, lambda: VisionModel(installed.path, installed.manifest,
                                                      self.config.runtime))
        except ModelLoadError as exc:
            self._failed_sha = installed.manifest.sha256
            self._model = None
            self._set("error", str(exc))
            return None
        log.info("vision model loaded pipeline=%s model=%s version=%s", self.name,
                 installed.manifest.name, installed.manifest.version)
        return self._model

    def _prepare(self, model: VisionModel, frame: Frame,
                 shadow: ShadowFrame | None = None) -> _Prepared:
        prepared = _Prepared(frame, model, shadow=shadow)
        rois = self.camera.config.rois or [None]
        for roi in rois:
            image = frame.image
            if roi is not None:
                image = image[roi.y:roi.y + roi.height, roi.x:roi.x + roi.width]
                if image.size == 0:
                    continue
            tensor, fit = model.preprocess(image)
            name = roi.name if roi else WHOLE_FRAME
            prepared.regions.append((name, roi, tensor, fit))
            prepared.image_stats[name] = image_stats(image)
            if shadow is not None:
                shadow.prepare(name, image)
        return prepared

    @staticmethod
    def _infer(prepared: _Prepared) -> _Results:
        model, results, shapes = prepared.model, [], {}
        for name, roi, tensor, fit in prepared.regions:
            started = time.perf_counter()
            output = model.runner.run({model.input_name: tensor})
            shape = (roi.height, roi.width) if roi else prepared.frame.image.shape[:2]
            result = model.decode(next(iter(output.values())), fit, shape)
            results.append((name, result, (time.perf_counter() - started) * 1000))
            shapes[name] = shape
        if prepared.shadow is not None:  # after the active version: its latency is the line's
            prepared.shadow.infer(shapes)
        return results

    async def _handle(self, prepared: _Prepared,
                      results: list[tuple[str, VisionResult, float]]) -> list[DefectPayload]:
        model = prepared.model
        records = []
        now = prepared.frame.grabbed_at  # rules count in the camera's time
        for roi_name, result, latency_ms in results:
            self._watch.observe(model.manifest.name, model.manifest.sha256,
                                {"confidence": np.asarray([result.confidence])}, latency_ms)
            await self.monitor.observe(model.manifest, prepared.image_stats.get(roi_name, {}),
                                       {"confidence": result.confidence}, latency_ms,
                                       label=result.label)
            if prepared.shadow is not None:
                self._watch.observe_shadow_decision(
                    model.manifest.name, prepared.shadow.sha256,
                    same_decision(result, prepared.shadow.results.get(roi_name),
                                  lambda r: set(self._defect_labels(r))))
            hits = self._defect_labels(result)
            for label in self._rule.observe(roi_name, set(hits), now):
                records.append(self._record(RECORD_DEFECT, prepared, roi_name, result, label,
                                            hits[label], now))
            if not hits:
                reason = self._sample_reason(result)
                if reason and self._quota.take(now):
                    records.append(self._record(RECORD_SAMPLE, prepared, roi_name, result,
                                                result.label, result.confidence, now, reason))
            self.status.last_result = {"roi": roi_name, **result.summary().model_dump(mode="json"),
                                       "latency_ms": round(latency_ms, 2)}
        for kind, payload in records:
            await self._buffer.append(kind, payload.model_dump(mode="json"))
            if kind == RECORD_DEFECT:
                self.status.defects += 1
                self._keep_for_page(payload, prepared, results)
                if self.reject is not None:
                    await self.reject.on_defect(payload.label, payload.roi)
            else:
                self.status.samples += 1
        self.status.frames += 1
        self._set("running", "")
        return [payload for _, payload in records]

    def _keep_for_page(self, payload: DefectPayload, prepared: _Prepared,
                       results: _Results) -> None:
        roi = next((r for name, r, _, _ in prepared.regions if name == payload.roi), None)
        result = next(r for name, r, _ in results if name == payload.roi)
        self.recent_defects.appendleft(RecentDefect(
            self.status.defects, payload.captured_at, payload.roi, payload.label,
            payload.confidence, thumbnail(prepared.frame.image, roi, result)))

    def _defect_labels(self, result: VisionResult) -> dict[str, float]:
        """Defect classes present in this result, with their confidence."""
        rules = self.config.defects
        wanted = set(rules.classes)
        if result.kind == "detection":
            found: dict[str, float] = {}
            for detection in result.detections:
                if detection.label in wanted and detection.confidence >= rules.min_confidence:
                    found[detection.label] = max(found.get(detection.label, 0.0),
                                                 detection.confidence)
            return found
        if result.kind == "anomaly":
            return {result.label: result.confidence} if result.label in wanted else {}
        if result.label in wanted and result.confidence >= rules.min_confidence:
            return {result.label: result.confidence}
        return {}

    def _sample_reason(self, result: VisionResult) -> str | None:
        sampling = self.config.sampling
        band = sampling.uncertain_band
        if band and result.kind != "anomaly" and band[0] <= result.confidence <= band[1]:
            return "uncertain"
        if sampling.normal_share and self._rng.random() < sampling.normal_share:
            return "random"
        return None

    def _record(self, kind: str, prepared: _Prepared, roi_name: str, result: VisionResult,
                label: str, confidence: float, now: float,
                reason: str | None = None) -> tuple[str, DefectPayload]:
        model = prepared.model
        roi = next((r for _, r, _, _ in prepared.regions if r is not None
                    and r.name == roi_name), None)
        fields: dict[str, Any] = dict(
            pipeline=self.name, camera=self.camera.name, roi=roi_name,
            roi_box=(roi.x, roi.y, roi.width, roi.height) if roi else None,
            frame_size=(prepared.frame.image.shape[1], prepared.frame.image.shape[0]),
            label=label, confidence=round(float(confidence), 4),
            boxes=[DetectedBox(label=d.label, confidence=round(d.confidence, 4),
                               box=to_frame(d.box, roi)) for d in result.detections],
            result=result.summary(), model=model.manifest.ref,
            frame_index=prepared.frame.index, captured_at=prepared.frame.grabbed_at,
            images=self._evidence(prepared.frame.image, roi, result))
        payload = (DefectPayload(**fields) if reason is None
                   else SamplePayload(**fields, reason=reason))
        log.info("%s recorded pipeline=%s roi=%s label=%s confidence=%.3f", kind, self.name,
                 roi_name, label, confidence)
        return kind, payload

    def _evidence(self, image: np.ndarray, roi: RoiConfig | None,
                  result: VisionResult) -> dict[str, EvidenceImage]:
        evidence = self.config.evidence
        images = {"frame": evidence_jpeg(image, evidence.max_side_px, evidence.jpeg_quality)}
        if evidence.annotated:
            annotated = annotate(image, roi, result)
            images["annotated"] = evidence_jpeg(annotated, evidence.max_side_px,
                                                evidence.jpeg_quality)
        return images

"""Model monitoring on the gateway: per interval, what each model saw and did.

A `StatsWindow` sums one model version's inputs, outputs, predicted classes and latency; every
`interval_s` it becomes one `model_stats` record (a few kilobytes however many predictions it
summarises). Values are binned on the manifest's reference edges (`metadata.reference`), so
central can compare them with what the model was trained on and flag drift.
"""

from __future__ import annotations

import bisect
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from edge_agent.buffer import Buffer
from edge_agent.kernel.contract import (
    RECORD_MODEL_STATS,
    Histogram,
    ModelManifest,
    ModelStatsPayload,
    ValueStats,
)

LATENCY_EDGES_MS = (0.0, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0,
                    2000.0, 5000.0)


def reference_edges(manifest: ModelManifest) -> dict[str, dict[str, list[float]]]:
    """The bin edges of the manifest's reference histograms (`metadata.reference`), by side
    ("inputs", "outputs") and name."""
    reference = manifest.meta.reference
    if reference is None:
        return {"inputs": {}, "outputs": {}}
    return {"inputs": {name: h.edges for name, h in reference.inputs.items()},
            "outputs": {name: h.edges for name, h in reference.outputs.items()}}


class _Values:
    """Count, moments, extremes and (with edges) a histogram of one stream of numbers."""

    def __init__(self, edges: list[float] | None) -> None:
        self.edges = [float(e) for e in edges] if edges else None
        self.counts = [0] * (len(edges) - 1) if edges else None
        self.count, self.total, self.squares = 0, 0.0, 0.0
        self.low, self.high = math.inf, -math.inf

    def add(self, value: float) -> None:
        if not math.isfinite(value):
            return
        self.count += 1
        self.total += value
        self.squares += value * value
        self.low, self.high = min(self.low, value), max(self.high, value)
        if self.edges is not None and self.counts is not None:  # per prediction: plain Python
            index = bisect.bisect_right(self.edges, value) - 1
            self.counts[min(max(index, 0), len(self.counts) - 1)] += 1

    def stats(self) -> ValueStats:
        if not self.count:
            return ValueStats(count=0)
        mean = self.total / self.count
        histogram = None
        if self.edges is not None and self.counts is not None:
            histogram = Histogram(edges=self.edges, counts=self.counts)
        return ValueStats(count=self.count, mean=mean,
                          std=math.sqrt(max(0.0, self.squares / self.count - mean * mean)),
                          min=self.low, max=self.high, histogram=histogram)


class StatsWindow:
    """One model version's statistics since the last record; not thread-safe (one pipeline)."""

    def __init__(self, pipeline: str, manifest: ModelManifest, interval_s: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.pipeline = pipeline
        self.manifest = manifest
        self.interval_s = interval_s
        self._clock = clock
        self._edges = reference_edges(manifest)
        self._reset(clock())

    def _reset(self, now: float) -> None:
        self.started_at = now
        self.predictions = self.errors = 0
        self._latency = _Values(list(LATENCY_EDGES_MS))
        self._inputs: dict[str, _Values] = {}
        self._outputs: dict[str, _Values] = {}
        self._labels: Counter[str] = Counter()

    def observe(self, inputs: Mapping[str, float], outputs: Mapping[str, float | None],
                latency_ms: float, label: str | None = None) -> None:
        self.predictions += 1
        self._latency.add(latency_ms)
        for side, values, store in (("inputs", inputs, self._inputs),
                                    ("outputs", outputs, self._outputs)):
            for name, value in values.items():
                if value is None:
                    continue
                if name not in store:
                    store[name] = _Values(self._edges[side].get(name))
                store[name].add(float(value))
        if label is not None:
            self._labels[label] += 1

    def error(self) -> None:
        self.errors += 1

    def due(self, now: float | None = None) -> bool:
        now = self._clock() if now is None else now
        return now - self.started_at >= self.interval_s

    def flush(self, now: float | None = None) -> dict[str, Any] | None:
        """The record payload of this interval (None when nothing happened), and a new one."""
        now = self._clock() if now is None else now
        payload = None
        if self.predictions or self.errors:
            latency = self._latency.stats().histogram
            assert latency is not None
            payload = ModelStatsPayload(
                pipeline=self.pipeline, model=self.manifest.ref, started_at=self.started_at,
                ended_at=now, predictions=self.predictions, errors=self.errors,
                latency_ms=latency,
                inputs={n: v.stats() for n, v in sorted(self._inputs.items())},
                outputs={n: v.stats() for n, v in sorted(self._outputs.items())},
                labels=dict(sorted(self._labels.items()))).model_dump(mode="json")
        self._reset(now)
        return payload


DEFAULT_INTERVAL_S = 300.0


class ModelMonitor:
    """A pipeline's statistics: one window per model version, buffered as a `model_stats`
    record every interval and whenever another version takes over."""

    def __init__(self, pipeline: str, buffer: Buffer, interval_s: float = DEFAULT_INTERVAL_S,
                 clock: Callable[[], float] = time.time) -> None:
        self.pipeline = pipeline
        self._buffer = buffer
        self.interval_s = interval_s
        self._clock = clock
        self._window: StatsWindow | None = None
        self.records = 0

    async def observe(self, manifest: ModelManifest, inputs: Mapping[str, float],
                      outputs: Mapping[str, float | None], latency_ms: float,
                      label: str | None = None) -> None:
        window = await self._window_for(manifest)
        window.observe(inputs, outputs, latency_ms, label)
        if window.due():
            await self._emit(window)

    async def error(self, manifest: ModelManifest) -> None:
        window = await self._window_for(manifest)
        window.error()
        if window.due():
            await self._emit(window)

    async def _window_for(self, manifest: ModelManifest) -> StatsWindow:
        if self._window is None or self._window.manifest.sha256 != manifest.sha256:
            if self._window is not None:
                await self._emit(self._window)
            self._window = StatsWindow(self.pipeline, manifest, self.interval_s, self._clock)
        return self._window

    async def _emit(self, window: StatsWindow) -> None:
        payload = window.flush()
        if payload is not None:
            await self._buffer.append(RECORD_MODEL_STATS, payload)
            self.records += 1

"""The sources and pipelines the gateway runs, each an asyncio task, changed by difference.

A new configuration touches only what it changes: an unchanged pipeline keeps its task (no
gap, no reload); a changed pipeline on an unchanged source starts beside the old one, which
stops once the new one works; a changed source stops and starts again with its pipelines.
Everything is built before anything stops, so a configuration that cannot be built changes
nothing. The buffer is never touched: records already taken stay. `problems()` says what the
parts the last change started are doing wrong, for the probation of a configuration.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from edge_agent.buffer import Buffer
from edge_agent.config import AgentConfig, OpcUaSourceConfig, PipelineConfig, SourceConfig
from edge_agent.kernel.contract import RECORD_SOURCE_GAP, SourceGapPayload
from edge_agent.lifecycle import ModelWatch
from edge_agent.model_store import ModelStore
from edge_agent.pipelines.base import Pipeline, PipelineContext
from edge_agent.pipelines.registry import build_pipeline
from edge_agent.sources.camera import CameraSource
from edge_agent.sources.opcua import OpcUaSource
from edge_agent.sources.opcua_trust import TRUST_FOLDER

log = logging.getLogger(__name__)

Source = OpcUaSource | CameraSource
# A new pipeline has this long to leave its first "waiting" state (model loaded, first input
# judged) before the one it replaces stops anyway: one waiting for a model never gets there.
HANDOVER_S = 20.0
HANDOVER_POLL_S = 0.05
STOP_WAIT_S = 10.0  # a task that does not end by then is left to finish on its own


@dataclass(frozen=True)
class Change:
    """What applying a configuration did, by pipeline and source name."""

    kept: tuple[str, ...] = ()  # pipelines left running untouched
    handed_over: tuple[str, ...] = ()  # started beside the old one, which then stopped
    restarted: tuple[str, ...] = ()  # stopped and started again with their changed source
    started: tuple[str, ...] = ()  # new pipelines
    stopped: tuple[str, ...] = ()  # pipelines no longer configured
    sources_started: tuple[str, ...] = ()  # new or changed sources
    sources_stopped: tuple[str, ...] = ()  # sources no longer configured

    @property
    def new_pipelines(self) -> tuple[str, ...]:
        """The pipelines this change started: the ones its probation judges."""
        return (*self.handed_over, *self.restarted, *self.started)

    def summary(self) -> str:
        parts = [f"{label}: {', '.join(names)}" for label, names in (
            ("kept", self.kept), ("replaced beside the old", self.handed_over),
            ("restarted with their source", self.restarted), ("started", self.started),
            ("stopped", self.stopped), ("sources started", self.sources_started),
            ("sources stopped", self.sources_stopped)) if names]
        return "; ".join(parts) or "nothing to change"


class Workload:
    """The running sources (`sources`, by name) and pipelines (`pipelines`, in configuration
    order) of one configuration (`config`)."""

    def __init__(self, config: AgentConfig, store: ModelStore, buffer: Buffer,
                 watch: ModelWatch, handover_s: float = HANDOVER_S) -> None:
        self.config = config
        self.handover_s = handover_s
        self._store, self._buffer, self._watch = store, buffer, watch
        self.sources: dict[str, Source] = {s.name: self._build_source(s)
                                           for s in config.sources}
        self.pipelines: list[Pipeline] = [self._build_pipeline(p, self.sources)
                                          for p in config.pipelines]
        self._source_tasks: dict[str, asyncio.Task[None]] = {}
        self._pipeline_tasks: dict[Pipeline, asyncio.Task[None]] = {}
        self._lock = asyncio.Lock()
        self._judged = Change()
        self._seen_connected: set[str] = set()

    # --- building ---

    def _build_source(self, config: SourceConfig) -> Source:
        if isinstance(config, OpcUaSourceConfig):
            return OpcUaSource(config, on_gap=self._record_gap,
                               trust_dir=self.config.data_dir / TRUST_FOLDER)
        return CameraSource(config)

    def _build_pipeline(self, config: PipelineConfig, sources: dict[str, Source]) -> Pipeline:
        context = PipelineContext(
            self._store, self._buffer, self._watch, self.config.monitoring_interval_s,
            node_writers={name: s.write_node for name, s in sources.items()
                          if isinstance(s, OpcUaSource)})
        return build_pipeline(config, sources[config.source], context)

    async def _record_gap(self, gap: SourceGapPayload) -> None:
        await self._buffer.append(RECORD_SOURCE_GAP, gap.model_dump())

    # --- starting and stopping ---

    async def start(self) -> None:
        """Start every source and pipeline of the configuration."""
        for name in self.sources:
            self._start_source(name)
        for pipeline in self.pipelines:
            self._start_pipeline(pipeline)

    async def stop(self) -> None:
        """Stop every pipeline, then every source."""
        async with self._lock:
            await asyncio.gather(*(self._stop_pipeline(p) for p in list(self._pipeline_tasks)))
            await asyncio.gather(*(self._stop_source(n) for n in list(self._source_tasks)))

    def task(self, pipeline_name: str) -> asyncio.Task[None] | None:
        """The task running the pipeline of that name now."""
        pipeline = next((p for p in self.pipelines if p.name == pipeline_name), None)
        return self._pipeline_tasks.get(pipeline) if pipeline is not None else None

    def _start_source(self, name: str) -> None:
        self._source_tasks[name] = asyncio.create_task(self.sources[name].run(),
                                                       name=f"source-{name}")

    def _start_pipeline(self, pipeline: Pipeline) -> None:
        task = asyncio.create_task(pipeline.run(), name=f"pipeline-{pipeline.name}")
        task.add_done_callback(lambda done: self._pipeline_ended(pipeline, done))
        self._pipeline_tasks[pipeline] = task

    @staticmethod
    def _pipeline_ended(pipeline: Pipeline, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        why = _why_ended(task)
        # A pipeline ends only when cancelled: say so on the page and in the log, and let the
        # probation of a configuration (or a restart) deal with it; the agent serves on.
        log.error("pipeline task ended pipeline=%s %s", pipeline.name, why,
                  exc_info=task.exception())
        pipeline.status.state, pipeline.status.detail = "error", why

    async def _stop_pipeline(self, pipeline: Pipeline) -> None:
        task = self._pipeline_tasks.pop(pipeline, None)
        if task is not None:
            await _cancel(task, f"pipeline {pipeline.name}")

    async def _stop_source(self, name: str) -> None:
        task = self._source_tasks.pop(name, None)
        if task is not None:
            await _cancel(task, f"source {name}")
        self._seen_connected.discard(name)

    # --- applying a configuration ---

    async def apply(self, new: AgentConfig) -> Change:
        """Run `new` instead of the current configuration, touching only what differs."""
        async with self._lock:
            plan = _Plan(self.config, new)
            # Build everything first: a part that cannot be built leaves all running as it was.
            fresh_sources = {n: self._build_source(plan.new_sources[n])
                             for n in (*plan.added_sources, *plan.changed_sources)}
            sources_after = {**{n: s for n, s in self.sources.items()
                                if n in plan.new_sources and n not in plan.changed_sources},
                             **fresh_sources}
            previous_config, self.config = self.config, new
            try:
                fresh = {c.name: self._build_pipeline(c, sources_after)
                         for c in (*plan.started, *plan.handed_over, *plan.restarted)}
            except Exception:
                self.config = previous_config
                raise
            await self._carry_out(plan, fresh_sources, fresh)
            self.pipelines = [next(p for p in self.pipelines if p.name == c.name)
                              for c in new.pipelines]
            change = plan.change()
            self._judged, self._seen_connected = change, set()
            log.info("workload changed: %s", change.summary())
            return change

    async def _carry_out(self, plan: _Plan, fresh_sources: dict[str, Source],
                         fresh: dict[str, Pipeline]) -> None:
        by_name = {p.name: p for p in self.pipelines}
        for name in plan.stopped:
            await self._stop_pipeline(by_name[name])
        self.pipelines = [p for p in self.pipelines if p.name not in plan.stopped]
        for name in plan.added_sources:
            self.sources[name] = fresh_sources[name]
            self._start_source(name)
        for config in plan.started:
            self.pipelines.append(fresh[config.name])
            self._start_pipeline(fresh[config.name])
        await asyncio.gather(*(self._hand_over(by_name[c.name], fresh[c.name])
                               for c in plan.handed_over))
        for source_name in plan.changed_sources:
            names = {c.name for c in plan.restarted if c.source == source_name}
            await asyncio.gather(*(self._stop_pipeline(p) for p in self.pipelines
                                   if p.name in names))
            self.pipelines = [p for p in self.pipelines if p.name not in names]
            await self._stop_source(source_name)
            self.sources[source_name] = fresh_sources[source_name]
            self._start_source(source_name)
            for name in names:
                self.pipelines.append(fresh[name])
                self._start_pipeline(fresh[name])
        for name in plan.removed_sources:
            await self._stop_source(name)
            del self.sources[name]

    async def _hand_over(self, old: Pipeline, new: Pipeline) -> None:
        """Start `new` beside `old`; stop `old` once `new` works (or after `handover_s`)."""
        self.pipelines = [new if p is old else p for p in self.pipelines]
        self._start_pipeline(new)
        task = self._pipeline_tasks[new]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.handover_s
        while new.status.state == "waiting" and not task.done() and loop.time() < deadline:
            await asyncio.sleep(HANDOVER_POLL_S)
        await self._stop_pipeline(old)

    async def restart_pipeline(self, name: str) -> str:
        """Stop the pipeline `name` and start it afresh, with its source when no other
        pipeline reads that source; what was done, in words. ValueError for an unknown name."""
        async with self._lock:
            old = next((p for p in self.pipelines if p.name == name), None)
            if old is None:
                known = ", ".join(p.name for p in self.pipelines) or "none"
                raise ValueError(f"no pipeline {name!r} on this gateway; pipelines: {known}")
            config = next(c for c in self.config.pipelines if c.name == name)
            shared = any(c.source == config.source and c.name != name
                         for c in self.config.pipelines)
            await self._stop_pipeline(old)
            if not shared:
                source_config = next(s for s in self.config.sources
                                     if s.name == config.source)
                await self._stop_source(config.source)
                self.sources[config.source] = self._build_source(source_config)
                self._start_source(config.source)
            new = self._build_pipeline(config, self.sources)
            self.pipelines = [new if p is old else p for p in self.pipelines]
            self._start_pipeline(new)
            with_source = "" if shared else f" with its source {config.source}"
            log.info("pipeline restarted pipeline=%s source_restarted=%s", name, not shared)
            return f"pipeline {name} restarted{with_source}"

    # --- judging ---

    def problems(self, final: bool = False) -> list[str]:
        """What the sources and pipelines the last change started do wrong, one line each: a
        source that failed, a pipeline task that died; with `final` (the end of a probation)
        also a source that never connected and a pipeline that produced only errors."""
        found = []
        for name in self._judged.sources_started:
            source = self.sources.get(name)
            if source is None:
                continue
            state = source.state
            if state.state == "connected":
                self._seen_connected.add(name)
            elif state.state == "failed":
                found.append(f"source {name} failed: {state.detail}")
            elif final and name not in self._seen_connected and state.state != "stopped":
                found.append(f"source {name} never connected: {state.state} {state.detail}"
                             .rstrip())
        for pipeline in self._judged_pipelines():
            task = self._pipeline_tasks.get(pipeline)
            if task is not None and task.done() and not task.cancelled():
                found.append(f"pipeline {pipeline.name} {_why_ended(task)}")
                continue
            snapshot = pipeline.snapshot()
            if final and snapshot.state == "error" and snapshot.inferences == 0:
                found.append(f"pipeline {pipeline.name} produced only errors: "
                             f"{snapshot.detail}")
        return found

    def _judged_pipelines(self) -> Iterable[Pipeline]:
        names = set(self._judged.new_pipelines)
        return [p for p in self.pipelines if p.name in names]


class _Plan:
    """The difference between two configurations, by name."""

    def __init__(self, old: AgentConfig, new: AgentConfig) -> None:
        old_sources = {s.name: s for s in old.sources}
        self.new_sources = {s.name: s for s in new.sources}
        self.added_sources = [n for n in self.new_sources if n not in old_sources]
        self.changed_sources = [n for n, s in self.new_sources.items()
                                if n in old_sources and old_sources[n] != s]
        self.removed_sources = [n for n in old_sources if n not in self.new_sources]
        old_pipelines = {p.name: p for p in old.pipelines}
        # Every pipeline counts its statistics over this interval: a new one restarts them all.
        interval_changed = old.monitoring_interval_s != new.monitoring_interval_s
        self.kept: list[PipelineConfig] = []
        self.handed_over: list[PipelineConfig] = []
        self.restarted: list[PipelineConfig] = []
        self.started: list[PipelineConfig] = []
        for config in new.pipelines:
            if config.source in self.changed_sources:
                self.restarted.append(config)
            elif config.name not in old_pipelines:
                self.started.append(config)
            elif config != old_pipelines[config.name] or interval_changed:
                self.handed_over.append(config)
            else:
                self.kept.append(config)
        new_names = {p.name for p in new.pipelines}
        self.stopped = [n for n in old_pipelines if n not in new_names]

    def change(self) -> Change:
        return Change(
            kept=tuple(c.name for c in self.kept),
            handed_over=tuple(c.name for c in self.handed_over),
            restarted=tuple(c.name for c in self.restarted),
            started=tuple(c.name for c in self.started), stopped=tuple(self.stopped),
            sources_started=(*self.added_sources, *self.changed_sources),
            sources_stopped=tuple(self.removed_sources))


def _why_ended(task: asyncio.Task[None]) -> str:
    error = task.exception()
    return f"stopped: {error!r}" if error is not None else "stopped by itself"


async def _cancel(task: asyncio.Task[None], what: str) -> None:
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=STOP_WAIT_S)
    if not done:
        log.warning("%s did not stop within %.0f s; left to finish", what, STOP_WAIT_S)

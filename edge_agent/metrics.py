"""Prometheus metrics of one agent, read from its live state when `/metrics` is scraped.

The buffer's SQLite connection belongs to the buffer's thread, so a scrape first gathers an
`AgentSnapshot` on the event loop (the agent's `metrics_snapshot`, awaiting the buffer), then
renders the registry from it.
"""

from __future__ import annotations

import typing
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from edge_agent.kernel.contract import BufferHealth, DeviceStatus, SourceState
from edge_agent.pipelines.snapshot import PipelineSnapshot

SOURCE_STATES: tuple[str, ...] = typing.get_args(SourceState.model_fields["state"].annotation)


@dataclass(frozen=True)
class AgentSnapshot:
    """Everything one scrape exposes, gathered at one moment."""

    status: DeviceStatus
    pipelines: list[PipelineSnapshot]
    resent_batches: int
    rejected_messages: dict[str, int]  # by receiver


class AgentMetrics:
    """A private registry (several agents may share a process) rendering one agent's state."""

    def __init__(self, snapshot: Callable[[], Awaitable[AgentSnapshot]]) -> None:
        self._snapshot = snapshot
        self._collector = _SnapshotCollector()
        self.registry = CollectorRegistry()
        self.registry.register(self._collector)

    async def exposition(self) -> bytes:
        """The Prometheus text exposition of the agent's state now."""
        snapshot = await self._snapshot()
        # No await between setting and rendering: concurrent scrapes cannot see each other's.
        self._collector.snapshot = snapshot
        try:
            return generate_latest(self.registry)
        finally:
            self._collector.snapshot = None


class _SnapshotCollector(Collector):
    def __init__(self) -> None:
        self.snapshot: AgentSnapshot | None = None

    def collect(self) -> Iterator[Any]:
        if self.snapshot is None:
            return
        yield from agent_metric_families(self.snapshot)


def agent_metric_families(snapshot: AgentSnapshot) -> Iterator[Any]:
    """Every `edge_agent_*` metric family for one snapshot."""
    status = snapshot.status
    info = InfoMetricFamily("edge_agent", "The agent's device id and software version",
                            labels=["device_id", "version"])
    info.add_metric([status.device_id, status.agent_version], {})
    yield info
    if status.buffer is not None:
        yield from buffer_metric_families(status.buffer)
    yield from _uplink_families(snapshot)
    yield from _pipeline_families(snapshot.pipelines)
    yield from _source_families(status.sources)


def buffer_metric_families(health: BufferHealth) -> Iterator[Any]:
    """Buffer gauges, and its eviction counter labelled by record kind."""
    yield GaugeMetricFamily("edge_agent_buffer_depth",
                            "Records waiting in the buffer for central's ack", value=health.depth)
    yield GaugeMetricFamily("edge_agent_buffer_oldest_record_age_seconds",
                            "Age of the oldest record not yet acked; 0 when the buffer is empty",
                            value=health.oldest_age_s or 0.0)
    yield GaugeMetricFamily("edge_agent_buffer_used_bytes", "Bytes of records in the buffer",
                            value=health.bytes_used)
    yield GaugeMetricFamily("edge_agent_buffer_quota_bytes", "The buffer's disk quota",
                            value=health.quota_bytes)
    evicted = CounterMetricFamily("edge_agent_buffer_evicted_records",
                                  "Records dropped to respect the buffer's quota", labels=["kind"])
    for kind, count in sorted(health.evicted_by_kind.items()):
        evicted.add_metric([kind], count)
    yield evicted


def _uplink_families(snapshot: AgentSnapshot) -> Iterator[Any]:
    uplink = snapshot.status.uplink
    if uplink is not None:
        yield GaugeMetricFamily("edge_agent_uplink_connected",
                                "1 while the MQTT broker is connected", value=int(uplink.connected))
        yield CounterMetricFamily("edge_agent_uplink_acked_records",
                                  "Records acked by central since the agent started",
                                  value=uplink.acked_records)
        yield GaugeMetricFamily("edge_agent_uplink_records_per_second",
                                "Records acked per second over the last minute",
                                value=uplink.records_per_s)
        round_trip = GaugeMetricFamily("edge_agent_uplink_round_trip_seconds",
                                       "Time from sending the last acked batch to its ack")
        if uplink.round_trip_ms is not None:
            round_trip.add_metric([], uplink.round_trip_ms / 1000)
        yield round_trip
    yield CounterMetricFamily("edge_agent_uplink_resent_batches",
                              "Batches sent again because central's ack did not come in time",
                              value=snapshot.resent_batches)
    rejected = CounterMetricFamily("edge_agent_rejected_messages",
                                   "Received MQTT messages refused (bad JSON, schema, device)",
                                   labels=["receiver"])
    for receiver, count in sorted(snapshot.rejected_messages.items()):
        rejected.add_metric([receiver], count)
    yield rejected


def _pipeline_families(pipelines: list[PipelineSnapshot]) -> Iterator[Any]:
    predictions = CounterMetricFamily(
        "edge_agent_pipeline_predictions",
        "Inferences since the agent started (process: predictions, vision: frames judged)",
        labels=["pipeline"])
    defects = CounterMetricFamily("edge_agent_vision_defects",
                                  "Defect records written by a vision pipeline",
                                  labels=["pipeline"])
    samples = CounterMetricFamily("edge_agent_vision_samples",
                                  "Frames kept for labelling by a vision pipeline",
                                  labels=["pipeline"])
    state = GaugeMetricFamily("edge_agent_pipeline_state",
                              "1 for the pipeline's current state", labels=["pipeline", "state"])
    for pipeline in pipelines:
        predictions.add_metric([pipeline.name], pipeline.inferences)
        if pipeline.vision is not None:
            defects.add_metric([pipeline.name], pipeline.vision.defects)
            samples.add_metric([pipeline.name], pipeline.vision.samples)
        state.add_metric([pipeline.name, pipeline.state], 1)
    yield predictions
    yield defects
    yield samples
    yield state


def _source_families(sources: dict[str, SourceState]) -> Iterator[Any]:
    connected = GaugeMetricFamily("edge_agent_source_connected",
                                  "1 while the source's server session is up", labels=["source"])
    state = GaugeMetricFamily("edge_agent_source_state",
                              "1 for the source's current state, 0 for the others",
                              labels=["source", "state"])
    for name, source in sorted(sources.items()):
        connected.add_metric([name], int(source.state == "connected"))
        for candidate in SOURCE_STATES:
            state.add_metric([name, candidate], int(source.state == candidate))
    yield connected
    yield state

"""Model monitoring on the gateway: intervals binned on the manifest's reference edges."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from edge_agent.buffer import Buffer, BufferPolicy
from edge_agent.kernel.contract import ModelManifest, ModelStatsPayload, TensorSpec
from edge_agent.monitoring import ModelMonitor, StatsWindow, reference_edges

REFERENCE = {"inputs": {"zone2_temp_c": {"edges": [170, 180, 190, 200], "counts": [5, 10, 5]}},
             "outputs": {"scrap": {"edges": [0, 2, 4], "counts": [8, 2]}}}


def manifest(version: str = "1.0.0", reference: dict | None = REFERENCE) -> ModelManifest:
    spec = TensorSpec(name="x", dtype="float32", shape=[None, 2])
    return ModelManifest(name="scrap-model", version=version, kind="process",
                         sha256=version[0] * 64, size_bytes=1, chunk_size_bytes=1024,
                         inputs=[spec], outputs=[spec],
                         metadata={"reference": reference} if reference else {})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_values_are_binned_on_the_reference_edges_with_their_moments() -> None:
    clock = Clock()
    window = StatsWindow("scrap", manifest(), 60, clock)
    for temperature, scrap in [(165, 1.0), (175, 1.5), (185, 3.0), (185, 5.0), (210, None)]:
        window.observe({"zone2_temp_c": temperature, "humidity": 40.0},
                       {"scrap": scrap}, latency_ms=3.0, label="ok")
    window.error()
    clock.now += 61
    assert window.due()
    stats = ModelStatsPayload.model_validate(window.flush())
    temperature = stats.inputs["zone2_temp_c"]
    assert temperature.histogram.counts == [2, 2, 1]  # below and above count in the end bins
    assert (temperature.count, temperature.min, temperature.max) == (5, 165, 210)
    assert temperature.mean == pytest.approx(184.0)
    assert stats.inputs["humidity"].histogram is None  # no reference: moments only
    assert stats.outputs["scrap"].histogram.counts == [2, 2]  # the missing value is not counted
    assert (stats.predictions, stats.errors, stats.labels) == (5, 1, {"ok": 5})
    assert sum(stats.latency_ms.counts) == 5
    assert (stats.started_at, stats.ended_at) == (1000.0, 1061.0)
    assert window.flush() is None  # a new, empty interval


def test_reference_edges_come_from_the_typed_metadata() -> None:
    assert reference_edges(manifest())["outputs"] == {"scrap": [0, 2, 4]}
    assert reference_edges(manifest(reference=None)) == {"inputs": {}, "outputs": {}}


def test_a_manifest_with_an_invalid_reference_histogram_is_refused_naming_it() -> None:
    broken = {"outputs": {"broken": {"edges": [1, 0], "counts": [3]}}}
    with pytest.raises(ValidationError, match=r"metadata is invalid: reference.outputs.broken"):
        manifest(reference=broken)


def test_monitor_buffers_a_record_per_interval_and_when_the_version_changes(
        tmp_path: Path) -> None:
    async def scenario() -> list[dict]:
        clock = Clock()
        buffer = Buffer(tmp_path / "b.db", BufferPolicy(quota_bytes=10**7))
        monitor = ModelMonitor("scrap", buffer, interval_s=60, clock=clock)
        for _ in range(3):
            await monitor.observe(manifest(), {"zone2_temp_c": 182}, {"scrap": 1.0}, 2.0)
            clock.now += 25  # the third observation closes the first interval
        await monitor.observe(manifest("2.0.0"), {"zone2_temp_c": 182}, {"scrap": 1.0}, 2.0)
        await monitor.observe(manifest("2.0.0"), {"zone2_temp_c": 190}, {"scrap": 3.0}, 2.0)
        clock.now += 100
        await monitor.observe(manifest("2.0.0"), {"zone2_temp_c": 190}, {"scrap": 3.0}, 2.0)
        batch = await buffer.next_batch(100)
        await buffer.close()
        return [json.loads(r.payload_json) for r in batch if r.type == "model_stats"]

    records = asyncio.run(scenario())
    assert [(r["model"]["version"], r["predictions"]) for r in records] == [
        ("1.0.0", 3), ("2.0.0", 3)]

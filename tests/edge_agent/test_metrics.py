"""The agent's Prometheus `/metrics`: live buffer, uplink, pipeline and source state."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.registry import Collector

from edge_agent import __version__, web
from edge_agent.app import Agent
from edge_agent.buffer import Buffer
from edge_agent.config import AgentConfig
from edge_agent.kernel.httpserver import WebServer
from edge_agent.kernel.transport.memory import MemoryBroker, MemoryTransport
from edge_agent.metrics import buffer_metric_families
from tests.conftest import free_port
from tests.helpers import Scrape, write_test_keys


def agent_config(tmp_path: Path, device_id: str = "gw-1") -> AgentConfig:
    return AgentConfig.model_validate({
        "device_id": device_id,
        "data_dir": str(tmp_path / device_id),
        "sources": [{"name": "line-1", "endpoint": "opc.tcp://127.0.0.1:4840",
                     "nodes": {"zone2_temp_c": "ns=2;s=zone2_temp_c"}}],
        "pipelines": [{"name": "scrap", "source": "line-1", "model": "extruder-scrap"}],
        "ui": {"port": 0},
        "security": {"central_public_key": str(write_test_keys(tmp_path / "keys")[1])},
    })


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    made = Agent(agent_config(tmp_path), transport=MemoryTransport(MemoryBroker()))
    yield made
    asyncio.run(made.buffer.close())


async def scrape(agent: Agent) -> Scrape:
    return Scrape((await agent.metrics.exposition()).decode())


def test_metrics_endpoint_serves_buffer_pipeline_and_source_state(agent: Agent) -> None:
    async def scenario() -> tuple[str, str]:
        for i in range(3):
            await agent.buffer.append("prediction", {"i": i}, created_at=1.0)
        server = WebServer(web.create_app(agent.status_document, agent.metrics.exposition),
                           "127.0.0.1", free_port())
        await server.start()
        try:
            return await asyncio.to_thread(_get, server.url + "metrics")
        finally:
            await server.stop()

    content_type, text = asyncio.run(scenario())
    assert content_type == CONTENT_TYPE_LATEST
    metrics = Scrape(text)
    assert metrics.value("edge_agent_info", device_id="gw-1", version=__version__) == 1
    assert metrics.value("edge_agent_buffer_depth") == 3
    assert metrics.value("edge_agent_buffer_oldest_record_age_seconds") > 1_000_000
    assert metrics.value("edge_agent_buffer_used_bytes") > 0
    assert metrics.value("edge_agent_buffer_quota_bytes") == agent.config.buffer.quota_bytes
    assert metrics.value("edge_agent_uplink_connected") == 0
    assert metrics.value("edge_agent_pipeline_predictions_total", pipeline="scrap") == 0
    assert metrics.value("edge_agent_pipeline_state", pipeline="scrap", state="waiting") == 1
    assert metrics.value("edge_agent_source_connected", source="line-1") == 0
    assert metrics.value("edge_agent_source_state", source="line-1", state="connecting") == 1
    assert metrics.value("edge_agent_source_state", source="line-1", state="connected") == 0


def test_uplink_counters_come_from_the_running_uplink_and_deployer(agent: Agent) -> None:
    async def scenario() -> Scrape:
        await agent.transport.start()
        agent.uplink.stats.record_ack(5, round_trip_s=0.25)
        agent.uplink.stats.resent_batches = 2
        agent.uplink.stats.rejected_messages = 1
        agent.deployer.rejected_messages = 4
        try:
            return await scrape(agent)
        finally:
            await agent.transport.stop()

    metrics = asyncio.run(scenario())
    assert metrics.value("edge_agent_uplink_connected") == 1
    assert metrics.value("edge_agent_uplink_acked_records_total") == 5
    assert metrics.value("edge_agent_uplink_records_per_second") > 0
    assert metrics.value("edge_agent_uplink_round_trip_seconds") == pytest.approx(0.25)
    assert metrics.value("edge_agent_uplink_resent_batches_total") == 2
    assert metrics.value("edge_agent_rejected_messages_total", receiver="uplink") == 1
    assert metrics.value("edge_agent_rejected_messages_total", receiver="deployer") == 4


def test_round_trip_is_absent_until_a_batch_is_acked(agent: Agent) -> None:
    metrics = asyncio.run(scrape(agent))
    assert "edge_agent_uplink_round_trip_seconds" not in metrics.names()
    assert metrics.value("edge_agent_buffer_oldest_record_age_seconds") == 0


def test_evictions_are_counted_by_record_kind(tmp_path: Path) -> None:
    async def scenario() -> Any:
        buffer = Buffer(tmp_path / "small.db", 2000)
        for i in range(10):
            await buffer.append("prediction", {"i": i, "pad": "x" * 400})
        health = await buffer.health()
        await buffer.close()
        return health

    health = asyncio.run(scenario())
    metrics = Scrape(_render(buffer_metric_families(health)))
    evicted = metrics.value("edge_agent_buffer_evicted_records_total", kind="prediction")
    assert evicted == health.evicted > 0


def test_each_agent_has_its_own_registry(tmp_path: Path) -> None:
    broker = MemoryBroker()
    agents = [Agent(agent_config(tmp_path, name), transport=MemoryTransport(broker))
              for name in ("gw-1", "gw-2")]

    async def scenario() -> list[Scrape]:
        try:
            return [await scrape(a) for a in agents]
        finally:
            for a in agents:
                await a.buffer.close()

    first, second = asyncio.run(scenario())
    assert first.value("edge_agent_info", device_id="gw-1", version=__version__) == 1
    assert second.value("edge_agent_info", device_id="gw-2", version=__version__) == 1


def _get(url: str) -> tuple[str, str]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.headers["content-type"], response.read().decode()


class _Fixed(Collector):
    def __init__(self, families: Iterator[Any]) -> None:
        self.families = list(families)

    def collect(self) -> Iterator[Any]:
        return iter(self.families)


def _render(families: Iterator[Any]) -> str:
    registry = CollectorRegistry()
    registry.register(_Fixed(families))
    return generate_latest(registry).decode()

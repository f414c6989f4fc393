"""A real agent with `sparkplug:` on: its pipelines appear on the SCADA broker and die with it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from edge_agent.app import Agent
from edge_agent.config import AgentConfig
from edge_agent.kernel.transport.memory import MemoryBroker, MemoryTransport
from tests.edge_agent.sparkplug.consumer import Consumer
from tests.helpers import write_test_keys

pytestmark = pytest.mark.timeout(90)


def agent_config(tmp_path: Path, sparkplug: dict) -> AgentConfig:
    return AgentConfig.model_validate({
        "device_id": "gw-1",
        "data_dir": str(tmp_path / "gw-1"),
        "sources": [{"name": "line-1", "endpoint": "opc.tcp://127.0.0.1:9",
                     "nodes": {"zone2_temp_c": "ns=2;s=zone2_temp_c"}}],
        "pipelines": [{"name": "scrap", "source": "line-1", "model": "extruder-scrap"}],
        "sparkplug": sparkplug,
        "security": {"central_public_key": str(write_test_keys(tmp_path / "keys")[1])},
    })


def test_sparkplug_is_off_by_default(tmp_path: Path) -> None:
    config = agent_config(tmp_path, {})
    assert config.sparkplug.enabled is False


def test_agent_pipelines_are_sparkplug_devices(mosquitto, tmp_path: Path) -> None:
    consumer = Consumer(mosquitto.port)
    config = agent_config(tmp_path, {"enabled": True, "group_id": "plant1",
                                     "broker": {"port": mosquitto.port}})
    # Central's broker is not the SCADA broker: the agent's own uplink goes elsewhere.
    agent = Agent(config, transport=MemoryTransport(MemoryBroker()))

    async def scenario() -> None:
        stop = asyncio.Event()
        running = asyncio.create_task(agent.run(stop))
        try:
            nbirth = await asyncio.to_thread(consumer.next, "NBIRTH", 30)
            assert nbirth.topic == "spBv1.0/plant1/NBIRTH/gw-1"
            dbirth = await asyncio.to_thread(consumer.next, "DBIRTH")
            assert dbirth.topic == "spBv1.0/plant1/DBIRTH/gw-1/scrap"
            metrics = dbirth.by_name()
            assert metrics["Model"].value == "extruder-scrap"
            assert metrics["Health/State"].datatype == "String"
            assert metrics["Health/Running"].value is False  # no model installed, no PLC
        finally:
            stop.set()
            await asyncio.wait_for(running, 30)
        ndeath = await asyncio.to_thread(consumer.next, "NDEATH")
        assert ndeath.by_name()["bdSeq"].value == nbirth.by_name()["bdSeq"].value

    try:
        asyncio.run(scenario())
    finally:
        consumer.close()

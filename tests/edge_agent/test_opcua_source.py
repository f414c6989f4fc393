"""The OPC-UA source against the real line simulator, including a server restart."""

from __future__ import annotations

import asyncio

from edge_agent.config import OpcUaSourceConfig
from edge_agent.sources.opcua import OpcUaSource
from tests.conftest import LineSimulatorProcess, start_line_simulator

TAGS = ["zone1_temp_c", "zone2_temp_c", "melt_pressure_bar", "screw_speed_rpm"]


def source_for(endpoint: str) -> OpcUaSource:
    return OpcUaSource(OpcUaSourceConfig(
        name="line1", endpoint=endpoint, sampling_interval_ms=100,
        nodes={tag: f"ns=2;s=line1.{tag}" for tag in TAGS}, reconnect_max_backoff_s=1.0,
    ))


async def until(predicate, timeout_s: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def test_source_reads_live_tags_with_timestamps(line_simulator: LineSimulatorProcess) -> None:
    async def scenario() -> None:
        source = source_for(line_simulator.endpoint)
        task = asyncio.create_task(source.run())
        await until(lambda: set(source.latest) == set(TAGS), 15, "all tags")
        first = source.latest["zone2_temp_c"]
        assert first.good and 150 < first.value < 220
        await until(lambda: source.latest["zone2_temp_c"].source_time > first.source_time, 10,
                    "a newer value")
        assert source.state.state == "connected"
        task.cancel()

    asyncio.run(scenario())


def test_source_reconnects_after_server_restart(line_simulator: LineSimulatorProcess) -> None:
    async def scenario() -> None:
        source = source_for(line_simulator.endpoint)
        task = asyncio.create_task(source.run())
        await until(lambda: source.state.state == "connected", 15, "connection")
        line_simulator.process.terminate()
        line_simulator.process.wait(timeout=10)
        await until(lambda: source.state.state == "reconnecting", 15, "loss detected")
        assert source.state.detail, "the reason is reported"
        restarted = await asyncio.to_thread(start_line_simulator, line_simulator.port)
        try:
            seen_before = source.latest["zone1_temp_c"].received_at
            await until(lambda: source.state.state == "connected", 20, "reconnection")
            await until(lambda: source.latest["zone1_temp_c"].received_at > seen_before, 10,
                        "values after reconnection")
            assert source.reconnects >= 1
        finally:
            task.cancel()
            restarted.process.terminate()
            restarted.process.wait(timeout=10)

    asyncio.run(scenario())

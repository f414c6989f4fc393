"""Only central's fresh, signed, new requests are answered by a running gateway on a real
Mosquitto: a forged, unsigned, stale or replayed one is counted and logged, never answered or
carried out. The unsigned clock probe is answered with the gateway's time, at most once a
second."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from edge_agent.app import Agent
from edge_agent.config import AgentConfig
from edge_agent.kernel.contract import (
    ClockProbe,
    ClockReply,
    DiagnoseRequest,
    DiagnosticReply,
    LogRequest,
    RestartCommand,
    decode,
)
from edge_agent.kernel.signing import Signer
from edge_agent.kernel.transport.memory import MemoryBroker, MemoryTransport
from tests.conftest import Mosquitto
from tests.edge_agent.fleet.diagnostics_parts import (
    DEVICE,
    TOPICS,
    Central,
    gateway_config,
    running_gateway,
)
from tests.helpers import TEST_SIGNER, Scrape, wait_until_async

HOUR_S = 3600.0


def clock_replies(central: Central) -> list[ClockReply]:
    return [a for a in central.answers if isinstance(a, ClockReply)]


def test_forged_stale_and_replayed_requests_are_counted_and_never_answered(
        tmp_path: Path, mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture) -> None:
    stranger = Signer.generate()
    forged = [
        stranger.signed(DiagnoseRequest(device_id=DEVICE)),
        stranger.signed(RestartCommand(device_id=DEVICE)),
        DiagnoseRequest(device_id=DEVICE),  # unsigned
        # Within the deploy window (24 h), but a diagnostic request is good for an hour.
        TEST_SIGNER.signed(RestartCommand(device_id=DEVICE, issued_at=time.time() - 2 * HOUR_S)),
        TEST_SIGNER.signed(LogRequest(device_id=DEVICE, issued_at=time.time() + HOUR_S)),
    ]
    genuine = TEST_SIGNER.signed(DiagnoseRequest(device_id=DEVICE))

    async def scenario() -> tuple[Central, Scrape, bool, str]:
        async with running_gateway(tmp_path, mosquitto.port) as gateway:
            central = gateway.central
            for command in forged:
                await central.send(command, sign=False)
            await central.send(genuine, sign=False)
            await wait_until_async(lambda: central.replies(genuine.command_id), 10)
            await central.send(genuine, sign=False)  # replayed
            last = await central.send(LogRequest(device_id=DEVICE, lines=0))
            await wait_until_async(lambda: central.answered(last.command_id), 10)
            metrics = Scrape((await gateway.agent.metrics.exposition()).decode())
            return central, metrics, gateway.run.done(), last.command_id

    central, metrics, stopped, last_id = asyncio.run(scenario())
    assert not stopped  # the forged and the stale restart did nothing
    assert [r.request_id for r in central.replies()] == [genuine.command_id]
    assert {a.request_id for a in central.answers} == {genuine.command_id, last_id}
    assert metrics.value("edge_agent_rejected_messages_total", receiver="diagnostics") == 6
    reasons = [r.getMessage() for r in caplog.records if "request rejected" in r.getMessage()]
    assert len(reasons) == 6
    assert any(f"signed by key {stranger.key_id}" in r for r in reasons)
    assert any("is unsigned" in r for r in reasons)
    assert any("2.0 h ago, longer than the 1.0 h" in r for r in reasons)
    assert any("in the future" in r for r in reasons)
    assert any("already carried out (replayed)" in r for r in reasons)


def test_clock_probe_is_answered_with_the_gateway_time_at_most_once_a_second(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    async def scenario() -> tuple[Central, list[ClockProbe], float, float, int]:
        async with running_gateway(tmp_path, mosquitto.port) as gateway:
            central = gateway.central
            before = time.time()
            probes = [ClockProbe(device_id=DEVICE) for _ in range(5)]
            for probe in probes:
                await central.send(probe, sign=False)
            last = await central.send(LogRequest(device_id=DEVICE, lines=0))
            await wait_until_async(lambda: central.answered(last.command_id), 10)
            after = time.time()
            dropped = gateway.agent.diagnostics.counts.dropped_clock_probes

            async def probe_again() -> bool:
                await central.send(ClockProbe(device_id=DEVICE), sign=False)
                return len(clock_replies(central)) == 2

            await wait_until_async(probe_again, 10, interval_s=0.2, what="a second reply")
            return central, probes, before, after, dropped

    central, probes, before, after, dropped = asyncio.run(scenario())
    first, second = clock_replies(central)
    assert first.probe_id == probes[0].probe_id
    assert first.central_sent_at == probes[0].central_sent_at
    assert before <= first.device_time <= after
    assert dropped == 4
    assert second.device_time - first.device_time >= 0.9



def test_unsigned_requests_are_answered_only_where_signature_checks_are_off(
        tmp_path: Path) -> None:
    raw = gateway_config(tmp_path, 1883)
    raw["security"] = {"verify_signatures": False}
    broker = MemoryBroker()
    agent = Agent(AgentConfig.model_validate(raw), transport=MemoryTransport(broker))
    central = MemoryTransport(broker)
    answers: list[bytes] = []

    async def collect(_topic: str, payload: bytes) -> None:
        answers.append(payload)

    async def scenario() -> None:
        await central.subscribe(TOPICS.diagnostics(DEVICE), collect)
        await central.start()
        await agent.transport.start()
        try:
            await agent.diagnostics.on_diagnose_request(DiagnoseRequest(device_id=DEVICE))
        finally:
            await agent.buffer.close()

    asyncio.run(scenario())
    [reply] = [decode(a, expect=(DiagnosticReply,)) for a in answers]
    assert isinstance(reply, DiagnosticReply) and reply.ok
    assert reply.report["effective_config"]["security"]["verify_signatures"] is False

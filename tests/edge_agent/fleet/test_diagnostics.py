"""Central reads a running gateway's log over a real Mosquitto: the newest lines at a level,
a follow that sends new lines until it ends, and the bounds (requests a minute, lines a
message and a second, follows at once) that keep a flood of requests harmless."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

import pytest

from edge_agent.fleet.logstreams import LINES_PER_S, MAX_BATCH_BYTES
from edge_agent.fleet.logtail import KEEP_RECORDS
from edge_agent.kernel.contract import (
    MAX_LOG_LINE_CHARS,
    MAX_LOG_LINES,
    ClockProbe,
    ClockReply,
    LogBatch,
    LogRequest,
)
from tests.conftest import Mosquitto
from tests.edge_agent.fleet.diagnostics_parts import (
    CAMERA_PASSWORD,
    DEVICE,
    Central,
    running_gateway,
)
from tests.helpers import wait_until_async

line = logging.getLogger("tests.diagnostics.line")
OURS = "tests.diagnostics.line"


@pytest.fixture(autouse=True)
def info_logs(caplog: pytest.LogCaptureFixture) -> None:
    """The agent's log level: what `edge-agent run` sets by default."""
    caplog.set_level(logging.INFO)


def ours(batches: list[LogBatch]) -> list[str]:
    return [entry.message for batch in batches for entry in batch.lines
            if entry.logger == OURS]


async def everything_handled(central: Central) -> None:
    """Wait until the agent has handled every command sent before: it takes them in order, so
    once a clock probe sent last is answered, so is everything before it."""
    probe = ClockProbe(device_id=DEVICE)
    await asyncio.sleep(0)
    sent = await central.send(probe, sign=False)
    await wait_until_async(lambda: any(isinstance(a, ClockReply) and a.probe_id == sent.probe_id
                                       for a in central.answers), 10, what="the probe answered")


def test_log_tail_sends_the_newest_lines_at_the_level_asked(tmp_path: Path,
                                                            mosquitto: Mosquitto) -> None:
    async def scenario() -> tuple[list[LogBatch], list[LogBatch]]:
        async with running_gateway(tmp_path, mosquitto.port) as gateway:
            for number in range(5):
                line.info("routine %d", number)
                line.warning("attention %d", number)
            line.error("camera lost at http://viewer:%s@10.0.0.5/s.mjpg", CAMERA_PASSWORD)
            central = gateway.central
            warnings = await central.send(LogRequest(device_id=DEVICE, level="WARNING",
                                                     lines=200))
            newest = await central.send(LogRequest(device_id=DEVICE, level="DEBUG", lines=2))
            for request in (warnings, newest):
                await wait_until_async(lambda r=request: central.answered(r.command_id), 10)
            return central.batches(warnings.command_id), central.batches(newest.command_id)

    warnings, newest = asyncio.run(scenario())
    assert len(warnings) == 1 and warnings[0].final and warnings[0].dropped == 0
    assert ours(warnings) == [*(f"attention {n}" for n in range(5)),
                              "camera lost at http://viewer:***@10.0.0.5/s.mjpg"]
    assert {entry.level for entry in warnings[0].lines} <= {"WARNING", "ERROR", "CRITICAL"}
    assert len(newest) == 1 and newest[0].final and len(newest[0].lines) == 2
    assert newest[0].lines[0].at <= newest[0].lines[1].at


def test_follow_sends_new_lines_then_a_final_batch(tmp_path: Path,
                                                   mosquitto: Mosquitto) -> None:
    async def scenario() -> list[LogBatch]:
        async with running_gateway(tmp_path, mosquitto.port) as gateway:
            central = gateway.central
            line.warning("before the follow")
            request = await central.send(LogRequest(device_id=DEVICE, level="INFO", lines=20,
                                                    follow_s=2.0))
            await wait_until_async(lambda: central.batches(request.command_id), 10)
            assert not central.batches(request.command_id)[0].final
            # Worker threads log too (OPC-UA, cameras, the buffer): their lines come as well.
            worker = threading.Thread(target=lambda: [line.info("from a thread %d", n)
                                                      for n in range(3)])
            worker.start()
            await asyncio.to_thread(worker.join)
            line.info("from the loop")
            await wait_until_async(lambda: central.answered(request.command_id), 10)
            return central.batches(request.command_id)

    batches = asyncio.run(scenario())
    assert ours(batches[:1]) == ["before the follow"]
    assert ours(batches[1:]) == ["from a thread 0", "from a thread 1", "from a thread 2",
                                 "from the loop"]
    assert [b.final for b in batches] == [False] * (len(batches) - 1) + [True]
    assert sum(b.dropped for b in batches) == 0


def test_a_flood_of_requests_gets_twenty_answers_a_minute_in_bounded_messages(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    async def scenario() -> tuple[Central, list[LogRequest], int]:
        async with running_gateway(tmp_path, mosquitto.port) as gateway:
            for number in range(KEEP_RECORDS + 500):
                line.info("flood %04d %s", number, "x" * 300)
            central = gateway.central
            requests = [await central.send(LogRequest(device_id=DEVICE, level="INFO",
                                                      lines=MAX_LOG_LINES))
                        for _ in range(100)]
            await everything_handled(central)
            await wait_until_async(lambda: sum(central.answered(r.command_id)
                                               for r in requests) >= 80, 20)
            return central, requests, len(gateway.agent.logtail.records)

    central, requests, kept = asyncio.run(scenario())
    answered = [r for r in requests if central.batches(r.command_id)]
    assert len(answered) == 20
    for request in answered:
        batches = central.batches(request.command_id)
        assert sum(len(b.lines) for b in batches) == MAX_LOG_LINES
        assert batches[-1].final and not any(b.final for b in batches[:-1])
    refusals = central.replies()
    # Refusals are answered too, up to 60 a minute; past that only logged.
    assert len(refusals) == 60 and not any(r.ok for r in refusals)
    assert all(r.action == "logs" and "more than 20 diagnostic requests" in r.detail
               for r in refusals)
    assert kept == KEEP_RECORDS


def test_a_long_tail_comes_in_messages_of_bounded_size_with_lines_clipped(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    async def scenario() -> tuple[Central, LogRequest]:
        async with running_gateway(tmp_path, mosquitto.port) as gateway:
            for number in range(MAX_LOG_LINES):
                line.warning("long %04d %s", number, "é" * (MAX_LOG_LINE_CHARS + 500))
            central = gateway.central
            request = await central.send(LogRequest(device_id=DEVICE, level="WARNING",
                                                    lines=MAX_LOG_LINES))
            await wait_until_async(lambda: central.answered(request.command_id), 10)
            return central, request

    central, request = asyncio.run(scenario())
    batches = central.batches(request.command_id)
    assert len(batches) > 1 and batches[-1].final and not any(b.final for b in batches[:-1])
    assert sum(len(b.lines) for b in batches) == MAX_LOG_LINES
    assert max(len(payload) for payload in central.raw) <= MAX_BATCH_BYTES + 4096
    longest = max(len(entry.message) for b in batches for entry in b.lines)
    assert longest == MAX_LOG_LINE_CHARS + 1  # clipped, with "…" at the end


def test_a_third_follow_ends_the_oldest_and_stopping_ends_the_rest(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    async def scenario() -> tuple[Central, list[LogRequest], list[bool], int]:
        async with running_gateway(tmp_path, mosquitto.port) as gateway:
            central = gateway.central
            follows = []
            for _ in range(3):
                request = await central.send(LogRequest(device_id=DEVICE, lines=0,
                                                        follow_s=60))
                await wait_until_async(lambda r=request: central.batches(r.command_id), 10)
                follows.append(request)
            await wait_until_async(lambda: central.answered(follows[0].command_id), 10,
                                   what="the oldest follow ended")
            running = [central.answered(r.command_id) for r in follows]
            following = gateway.agent.diagnostics.logs.following
            gateway.stop.set()
            await gateway.run
            await wait_until_async(lambda: all(central.answered(r.command_id)
                                               for r in follows), 10, what="all ended")
            return central, follows, running, following

    central, follows, running, following = asyncio.run(scenario())
    assert running == [True, False, False]
    assert following == 2
    for request in follows:
        assert central.batches(request.command_id)[-1].final


def test_follows_send_at_most_about_fifty_lines_a_second_together(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    async def scenario() -> tuple[list[list[LogBatch]], float]:
        async with running_gateway(tmp_path, mosquitto.port) as gateway:
            central = gateway.central
            follows = [await central.send(LogRequest(device_id=DEVICE, lines=0, follow_s=1.5))
                       for _ in range(2)]
            for request in follows:
                await wait_until_async(lambda r=request: central.batches(r.command_id), 10)
            loop = asyncio.get_running_loop()
            started = loop.time()
            for number in range(1000):
                line.info("burst %d", number)
            for request in follows:
                await wait_until_async(lambda r=request: central.answered(r.command_id), 10)
            return [central.batches(r.command_id) for r in follows], loop.time() - started

    each, took_s = asyncio.run(scenario())
    sent = sum(len(b.lines) for batches in each for b in batches)
    # Both together within what central takes: the rate, and what a second saves up.
    assert sent <= LINES_PER_S * (took_s + 1.5)
    for batches in each:
        dropped = sum(b.dropped for b in batches)
        assert dropped > 0 and len(ours(batches)) + dropped >= 1000
        assert len(ours(batches)) > 0 and batches[-1].final

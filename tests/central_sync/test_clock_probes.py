"""Clock probes without a broker: the offset computed from one exchange, at most one probe per
interval, a reply taken once and only for a probe central made, and memory bounded."""

from __future__ import annotations

import pytest

from central_sync.diagnostics import (
    MAX_PROBE_ROUND_TRIP_S,
    MAX_REMEMBERED,
    ClockProbes,
    ClockReading,
    clock_offset,
)
from central_sync.ratelimit import TokenBuckets
from edge_agent.kernel.contract import ClockReply
from edge_agent.kernel.signing import Signer
from tests.helpers import TEST_SIGNER


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def reply_to(probe, device_time: float, device_id: str | None = None) -> ClockReply:
    return ClockReply(device_id=device_id or probe.device_id, probe_id=probe.probe_id,
                      central_sent_at=probe.central_sent_at, device_time=device_time)


def test_offset_is_the_device_time_against_the_middle_of_the_round_trip() -> None:
    assert clock_offset(100.0, 100.2, 130.1) == pytest.approx((30.0, 200.0))
    assert clock_offset(100.0, 100.0, 99.0) == (-1.0, 0.0)


def test_a_reply_gives_the_reading_once() -> None:
    clock = Clock()
    probes = ClockProbes(TEST_SIGNER, interval_s=60, clock=clock)
    probe = probes.due("gw-1")
    assert probe is not None and probes.due("gw-1") is None  # within the interval
    clock.now += 0.5
    reading = probes.accept(reply_to(probe, clock.now + 30.0 - 0.25))
    assert isinstance(reading, ClockReading)
    assert reading.offset_s == pytest.approx(30.0) and reading.rtt_ms == pytest.approx(500.0)
    assert "answered already" in probes.accept(reply_to(probe, clock.now))
    clock.now += 60
    assert probes.due("gw-1") is not None


def test_replies_central_did_not_probe_for_are_refused() -> None:
    clock = Clock()
    probes = ClockProbes(TEST_SIGNER, interval_s=60, clock=clock)
    probe = probes.due("gw-1")
    assert "not one central sent to gw-2" in probes.accept(reply_to(probe, 1.0, "gw-2"))
    made_up = probe.model_copy(update={"probe_id": "0123-" + "f" * 32})
    assert "not one central sent" in probes.accept(reply_to(made_up, 1.0))
    moved = probe.model_copy(update={"central_sent_at": probe.central_sent_at - 100})
    assert "not one central sent" in probes.accept(reply_to(moved, 1.0))
    clock.now += MAX_PROBE_ROUND_TRIP_S + 1
    assert "after its probe" in probes.accept(reply_to(probe, clock.now))


def test_another_central_process_with_the_same_key_takes_the_reply() -> None:
    clock = Clock()
    sender = ClockProbes(TEST_SIGNER, interval_s=60, clock=clock)
    receiver = ClockProbes(TEST_SIGNER, interval_s=60, clock=clock)
    stranger = ClockProbes(Signer.generate(), interval_s=60, clock=clock)
    probe = sender.due("gw-1")
    assert isinstance(receiver.accept(reply_to(probe, clock.now)), ClockReading)
    assert isinstance(stranger.accept(reply_to(probe, clock.now)), str)


def test_memory_stays_bounded_whatever_device_ids_arrive() -> None:
    probes = ClockProbes(TEST_SIGNER, interval_s=60, clock=Clock())
    for n in range(MAX_REMEMBERED + 50):
        probes.due(f"gw-{n}")
    assert len(probes._last_probe) == MAX_REMEMBERED
    buckets = TokenBuckets(1.0, 5, clock=Clock(), max_keys=100)
    for n in range(1000):
        buckets.take(f"gw-{n}", 1)
    assert len(buckets) == 100
    assert buckets.take("gw-999", 5) == 4  # a recent key keeps its bucket

"""The SQLite buffer: durable, ordered, forgets only acked records, evicts by a stated policy."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.buffer import Buffer, BufferPolicy, NewRecord
from edge_agent.kernel.contract import EvictionPayload


def records(n: int, type_: str = "prediction", pad: int = 0) -> list[NewRecord]:
    return [NewRecord(type_, {"i": i, "pad": "x" * pad}, float(i)) for i in range(n)]


@pytest.fixture
def buffer(tmp_path: Path):
    opened = Buffer(tmp_path / "buffer.db", 10**7)
    yield opened
    opened.close_sync()


def test_records_wait_until_acked_and_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    buffer = Buffer(path, 10**6)
    seqs = buffer.append_many_sync(records(5))
    assert seqs == sorted(seqs) and len(set(seqs)) == 5
    buffer.next_batch_sync(2)
    buffer.ack_sync(seqs[:2])
    buffer.close_sync()

    reopened = Buffer(path, 10**6)
    batch = reopened.next_batch_sync(10)
    assert [r.seq for r in batch] == seqs[2:]
    assert [json.loads(r.payload_json)["i"] for r in batch] == [2, 3, 4]
    assert reopened.health_sync().depth == 3
    reopened.close_sync()


def test_seqs_are_never_reused_after_records_are_acked(buffer: Buffer) -> None:
    first = buffer.append_many_sync(records(1))
    buffer.ack_sync(first)
    second = buffer.append_many_sync(records(1))
    assert second[0] > first[0]


def test_records_in_flight_are_not_handed_out_twice_until_released(buffer: Buffer) -> None:
    seqs = buffer.append_many_sync(records(6))
    first = buffer.next_batch_sync(4)
    second = buffer.next_batch_sync(4)
    assert [r.seq for r in first] == seqs[:4]
    assert [r.seq for r in second] == seqs[4:]
    assert buffer.next_batch_sync(4) == []
    asyncio.run(buffer.release([r.seq for r in first]))
    assert [r.seq for r in buffer.next_batch_sync(10)] == seqs[:4]


def test_batches_are_bounded_by_bytes(buffer: Buffer) -> None:
    buffer.append_many_sync(records(10, pad=1000))
    batch = buffer.next_batch_sync(100, max_bytes=3500)
    assert len(batch) == 3
    assert sum(r.size_bytes for r in batch) <= 3500
    assert len(buffer.next_batch_sync(100, max_bytes=10)) == 1, "one record always goes"


def test_quota_evicts_lowest_priority_oldest_first_and_counts_per_kind(tmp_path: Path) -> None:
    policy = BufferPolicy(quota_bytes=6000, priorities={"metric": 40, "prediction": 20,
                                                        "deployment_event": 90})
    buffer = Buffer(tmp_path / "b.db", policy)
    event = buffer.append_many_sync([NewRecord("deployment_event", {"step": "activated"}, 0)])
    metrics = buffer.append_many_sync(records(10, "metric", pad=100))
    predictions = buffer.append_many_sync(records(60, "prediction", pad=100))
    health = buffer.health_sync()
    assert health.bytes_used <= 6000
    remaining = {r.seq for r in buffer.next_batch_sync(1000)}
    assert event[0] in remaining and set(metrics) <= remaining
    kept_predictions = [s for s in predictions if s in remaining]
    assert kept_predictions == predictions[-len(kept_predictions):], "oldest go first"
    assert health.evicted_by_kind == {"prediction": 60 - len(kept_predictions)}
    assert health.evicted == 60 - len(kept_predictions)
    buffer.close_sync()


def test_kept_kinds_are_never_evicted_even_over_quota(tmp_path: Path) -> None:
    buffer = Buffer(tmp_path / "b.db", BufferPolicy(quota_bytes=200, keep=frozenset({"audit"})))
    seqs = buffer.append_many_sync(records(10, "audit", pad=50))
    assert [r.seq for r in buffer.next_batch_sync(100)] == seqs
    assert buffer.health_sync().evicted == 0
    buffer.close_sync()


def test_records_in_flight_are_not_evicted(tmp_path: Path) -> None:
    buffer = Buffer(tmp_path / "b.db", BufferPolicy(quota_bytes=2000))
    first = buffer.append_many_sync(records(5, pad=100))
    in_flight = buffer.next_batch_sync(5)
    buffer.append_many_sync(records(30, pad=100))
    assert buffer.health_sync().evicted > 0
    buffer.ack_sync([r.seq for r in in_flight])
    assert buffer.health_sync().depth < 30
    assert all(s in [r.seq for r in in_flight] for s in first)
    buffer.close_sync()


def test_evictions_are_reported_as_ranges_in_a_kept_record(tmp_path: Path) -> None:
    buffer = Buffer(tmp_path / "b.db", BufferPolicy(quota_bytes=3000))
    seqs = buffer.append_many_sync(records(40, pad=100))
    health = buffer.health_sync()
    assert asyncio.run(buffer.take_eviction_report()) == 1
    assert asyncio.run(buffer.take_eviction_report()) == 0, "reported once"
    report = [r for r in buffer.next_batch_sync(1000) if r.type == "eviction"]
    payload = EvictionPayload.model_validate_json(report[0].payload_json)
    evicted = {s for first, last, _ in payload.ranges for s in range(first, last + 1)}
    assert len(evicted) == health.evicted == payload.by_kind["prediction"]
    assert evicted == set(seqs[:len(evicted)])
    assert payload.ranges == [(seqs[0], seqs[len(evicted) - 1], "prediction")]
    buffer.close_sync()


def test_concurrent_appends_are_committed_together_in_order(buffer: Buffer) -> None:
    async def scenario() -> list[int]:
        return await asyncio.gather(*(buffer.append("prediction", {"i": i}) for i in range(300)))

    seqs = asyncio.run(scenario())
    assert seqs == sorted(seqs) and len(set(seqs)) == 300
    assert buffer.health_sync().depth == 300


def test_acked_space_is_given_back_to_the_file_system(tmp_path: Path) -> None:
    buffer = Buffer(tmp_path / "b.db", 10**9)
    seqs = buffer.append_many_sync(records(3000, pad=2000))
    buffer.ack_sync(seqs)
    buffer.close_sync()
    size = os.path.getsize(tmp_path / "b.db")
    assert size < 8 * 1024 * 1024, f"file is {size} bytes after acking everything"


def test_a_killed_writer_leaves_a_consistent_buffer(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    code = (
        "import sys, time\n"
        "from edge_agent.buffer import Buffer, NewRecord\n"
        f"b = Buffer(r'{path}', 10**9)\n"
        "print('ready', flush=True)\n"
        "i = 0\n"
        "while True:\n"
        "    b.append_many_sync([NewRecord('prediction', {'i': i + k}, 0.0) for k in range(50)])\n"
        "    i += 50\n"
        "    print(i, flush=True)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    committed = 0
    for line in process.stdout:
        if line.strip().isdigit():
            committed = int(line)
            if committed >= 2000:
                break
    process.kill()
    process.wait()
    buffer = Buffer(path, 10**9)
    stored = buffer.next_batch_sync(100_000)
    values = [json.loads(r.payload_json)["i"] for r in stored]
    assert len(stored) >= committed, "every acknowledged append survived"
    assert values == list(range(len(values))), "no gap, no duplicate, no partial batch"
    buffer.close_sync()


def test_a_caller_cancelled_while_waiting_does_not_stop_the_writer(buffer: Buffer) -> None:
    async def scenario() -> None:
        waiting = [asyncio.ensure_future(buffer.append("prediction", {"i": i}))
                   for i in range(200)]
        await asyncio.sleep(0)
        for task in waiting[100:]:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        assert await buffer.append("prediction", {"after": True}) > 0
        assert (await buffer.health()).depth >= 101

    asyncio.run(scenario())


def test_a_bad_record_fails_only_its_own_caller(buffer: Buffer) -> None:
    async def scenario() -> None:
        good = asyncio.ensure_future(buffer.append("prediction", {"v": 1.0}))
        bad = asyncio.ensure_future(buffer.append("prediction", {"v": float("nan")}))
        also_good = asyncio.ensure_future(buffer.append("prediction", {"v": 2.0}))
        results = await asyncio.gather(good, bad, also_good, return_exceptions=True)
        assert isinstance(results[1], ValueError)
        assert isinstance(results[0], int) and isinstance(results[2], int)
        assert (await buffer.health()).depth == 2

    asyncio.run(scenario())


def test_close_while_appends_are_queued_finishes(tmp_path: Path) -> None:
    async def scenario() -> None:
        buffer = Buffer(tmp_path / "b.db", 10**7)
        appends = [asyncio.ensure_future(buffer.append("prediction", {"i": i}))
                   for i in range(50)]
        await asyncio.sleep(0)
        await asyncio.wait_for(buffer.close(), 10)
        await asyncio.gather(*appends, return_exceptions=True)

    asyncio.run(scenario())

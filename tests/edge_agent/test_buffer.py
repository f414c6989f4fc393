"""The SQLite buffer: durable, ordered, forgets only acked records, respects its quota."""

from __future__ import annotations

import asyncio
from pathlib import Path

from edge_agent.buffer import Buffer, NewRecord


def test_records_wait_until_acked_and_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "buffer.db"
    buffer = Buffer(path, quota_bytes=10**6)
    seqs = buffer.append_many_sync([NewRecord("prediction", {"i": i}, float(i)) for i in range(5)])
    assert seqs == sorted(seqs) and len(set(seqs)) == 5
    buffer.ack_sync(seqs[:2])
    asyncio.run(buffer.close())

    reopened = Buffer(path, quota_bytes=10**6)
    batch = reopened.next_batch_sync(10, exclude=set())
    assert [r.seq for r in batch] == seqs[2:]
    assert [r.payload["i"] for r in batch] == [2, 3, 4]
    assert reopened.health_sync().depth == 3
    asyncio.run(reopened.close())


def test_seqs_are_never_reused_after_records_are_acked(tmp_path: Path) -> None:
    buffer = Buffer(tmp_path / "b.db", quota_bytes=10**6)
    first = buffer.append_many_sync([NewRecord("prediction", {}, 0.0)])
    buffer.ack_sync(first)
    second = buffer.append_many_sync([NewRecord("prediction", {}, 0.0)])
    assert second[0] > first[0]
    asyncio.run(buffer.close())


def test_next_batch_skips_records_in_flight(tmp_path: Path) -> None:
    buffer = Buffer(tmp_path / "b.db", quota_bytes=10**6)
    seqs = buffer.append_many_sync([NewRecord("prediction", {}, 0.0) for _ in range(6)])
    batch = buffer.next_batch_sync(3, exclude=set(seqs[:4]))
    assert [r.seq for r in batch] == seqs[4:]
    asyncio.run(buffer.close())


def test_quota_evicts_low_priority_oldest_first_and_counts_it(tmp_path: Path) -> None:
    buffer = Buffer(tmp_path / "b.db", quota_bytes=2000)
    event = buffer.append_many_sync([NewRecord("deployment_event", {"step": "activated"}, 0.0)])
    buffer.append_many_sync([NewRecord("prediction", {"pad": "x" * 100}, float(i))
                             for i in range(40)])
    health = buffer.health_sync()
    assert health.bytes_used <= 2000
    assert health.evicted > 0
    remaining = buffer.next_batch_sync(100, exclude=set())
    assert remaining[0].seq == event[0], "the high-priority event must be kept"
    predictions = [r.seq for r in remaining if r.type == "prediction"]
    assert predictions == sorted(predictions) and predictions[-1] == remaining[-1].seq
    asyncio.run(buffer.close())


def test_async_api_runs_off_the_event_loop(tmp_path: Path) -> None:
    async def scenario() -> None:
        buffer = Buffer(tmp_path / "b.db", quota_bytes=10**6)
        seq = await buffer.append("prediction", {"v": 1.5})
        batch = await buffer.next_batch(5, set())
        assert batch[0].seq == seq and batch[0].payload == {"v": 1.5}
        assert await buffer.ack([seq]) == 1
        assert (await buffer.health()).depth == 0
        await buffer.close()

    asyncio.run(scenario())

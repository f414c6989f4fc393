"""The log tail in memory: bounded, filtered by level, clipped and without URL passwords;
followers get new records from any thread and lose (and count) what does not fit, never
blocking the thread that logs."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator

import pytest

from edge_agent.fleet.logstreams import MAX_BATCH_BYTES, LineAllowance, batches
from edge_agent.fleet.logtail import LogTail
from edge_agent.kernel.contract import MAX_LOG_LINE_CHARS, MAX_LOG_LINES, LogLine
from tests.helpers import wait_until_async


@pytest.fixture
def tail() -> Iterator[tuple[LogTail, logging.Logger]]:
    """A tail on its own logger, so that the test sees only its lines."""
    logger = logging.getLogger("tests.logtail")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    made = LogTail(keep=50)
    made.install(logger)
    yield made, logger
    made.remove()
    logger.propagate = True


def test_only_the_newest_records_are_kept(tail: tuple[LogTail, logging.Logger]) -> None:
    kept, logger = tail
    for number in range(120):
        logger.info("line %d", number)
    assert len(kept.records) == 50
    assert [r.message for r in kept.tail("DEBUG", 3)] == ["line 117", "line 118", "line 119"]


def test_tail_filters_by_level_and_keeps_order(tail: tuple[LogTail, logging.Logger]) -> None:
    kept, logger = tail
    logger.debug("d")
    logger.info("i")
    logger.warning("w")
    logger.log(35, "between warning and error")
    logger.error("e")
    logger.critical("c")
    found = kept.tail("WARNING", 10)
    assert [(r.level, r.message) for r in found] == [
        ("WARNING", "w"), ("WARNING", "between warning and error"), ("ERROR", "e"),
        ("CRITICAL", "c")]
    assert [r.message for r in kept.tail("ERROR", 1)] == ["c"]
    assert kept.tail("DEBUG", 0) == []
    assert found[0].logger == "tests.logtail" and found[0].at > 0


def test_messages_are_clipped_with_their_traceback_and_url_passwords_redacted(
        tail: tuple[LogTail, logging.Logger]) -> None:
    kept, logger = tail
    logger.warning("camera rtsp://admin:Pa55@cam/stream?token=abc lost")
    logger.info("x" * (MAX_LOG_LINE_CHARS * 3))
    try:
        raise ValueError("bad frame")
    except ValueError:
        logger.exception("pipeline failed")
    redacted, long, failed = (r.message for r in kept.tail("DEBUG", 3))
    assert redacted == "camera rtsp://admin:***@cam/stream?token=*** lost"
    assert len(long) == MAX_LOG_LINE_CHARS + 1 and long.endswith("…")
    assert failed.startswith("pipeline failed\nTraceback") and "ValueError: bad frame" in failed
    LogLine(at=1.0, level="INFO", message=long)  # fits what the wire holds


def test_followers_get_new_records_from_any_thread(tail: tuple[LogTail, logging.Logger]) -> None:
    kept, logger = tail

    async def scenario() -> tuple[list[str], list[str], int]:
        logger.warning("before")
        before, follower = kept.tail_and_follow("INFO", 10, asyncio.get_running_loop())
        logger.debug("below the level")
        workers = [threading.Thread(target=lambda n=n: logger.info("thread %d", n))
                   for n in range(4)]
        for worker in workers:
            worker.start()
            await asyncio.to_thread(worker.join)
        logger.info("loop")
        await wait_until_async(lambda: follower.queue.qsize() >= 5, 5)
        kept.unfollow(follower)
        logger.info("after unfollow")
        await asyncio.sleep(0)
        return ([r.message for r in before], [r.message for r in follower.take(100)],
                kept.followers)

    before, followed, followers = asyncio.run(scenario())
    assert before == ["before"]
    assert followed == ["thread 0", "thread 1", "thread 2", "thread 3", "loop"]
    assert followers == 0


def test_a_follower_that_falls_behind_drops_and_counts_without_blocking(
        tail: tuple[LogTail, logging.Logger]) -> None:
    kept, logger = tail

    async def scenario() -> tuple[int, int, int]:
        _, follower = kept.tail_and_follow("INFO", 0, asyncio.get_running_loop(), maxsize=10)
        # The loop is busy here, as it is when a thread logs a burst: nothing is taken.
        worker = threading.Thread(target=lambda: [logger.info("burst %d", n)
                                                  for n in range(1000)])
        worker.start()
        worker.join(timeout=10)
        assert not worker.is_alive()  # logging never waited for the loop
        await asyncio.sleep(0)
        taken = len(follower.take(1000))
        return taken, follower.take_dropped(), follower.take_dropped()

    taken, dropped, dropped_again = asyncio.run(scenario())
    assert taken == 10 and dropped == 990 and dropped_again == 0


def test_log_batches_hold_at_most_the_line_and_byte_bounds() -> None:
    short = [LogLine(at=1.0, level="INFO", message="m") for _ in range(MAX_LOG_LINES + 1)]
    assert [len(b) for b in batches(short)] == [MAX_LOG_LINES, 1]
    wide = [LogLine(at=1.0, level="INFO", message="€" * MAX_LOG_LINE_CHARS)
            for _ in range(100)]
    cut = batches(wide)
    assert sum(len(b) for b in cut) == 100 and len(cut) > 1
    for batch in cut:
        assert sum(len(line.model_dump_json().encode()) + 1 for line in batch) <= MAX_BATCH_BYTES
    assert batches([]) == []


def test_line_allowance_gives_its_rate_and_a_bounded_burst() -> None:
    allowance = LineAllowance(rate=50, burst=50, now=0.0)
    assert allowance.take(80, now=0.0) == 50
    assert allowance.take(80, now=0.5) == 25
    assert allowance.take(1000, now=100.0) == 50  # saved up at most the burst

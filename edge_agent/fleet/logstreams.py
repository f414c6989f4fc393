"""Answering a log request: the tail at once, then with `follow_s` the new lines every half
second until it ends. Bounded: each message holds at most MAX_LOG_LINES lines and
MAX_BATCH_BYTES; the follows send at most LINES_PER_S together (the rest counted as dropped);
at most MAX_FOLLOWS follows run at once (a new one ends the oldest)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from pydantic import BaseModel

from edge_agent.fleet.logtail import FOLLOW_QUEUE_RECORDS, Follower, LogTail, TailRecord
from edge_agent.kernel.contract import MAX_LOG_LINES, LogBatch, LogLine, LogRequest

log = logging.getLogger(__name__)

MAX_FOLLOWS = 2
LINES_PER_S = 50.0  # what a person can read, and within what central takes per gateway
FOLLOW_INTERVAL_S = 0.5
MAX_BATCH_BYTES = 256 * 1024  # far under the broker's and the contract's message limit
STOP_WAIT_S = 2.0  # at shutdown, a follow has this long to send its final batch

Send = Callable[[BaseModel], Awaitable[bool]]  # True when the broker took it


class LineAllowance:
    """A token bucket of lines: `rate` a second, at most `burst` saved up."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst = rate, burst
        self._tokens, self._at = burst, now

    def take(self, wanted: int, now: float) -> int:
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        granted = min(wanted, int(self._tokens))
        self._tokens -= granted
        return granted


@dataclass(eq=False)
class _Follow:
    request: LogRequest
    follower: Follower
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


def batches(lines: list[LogLine]) -> list[list[LogLine]]:
    """Lines cut into messages of at most MAX_LOG_LINES lines and about MAX_BATCH_BYTES."""
    found: list[list[LogLine]] = []
    current: list[LogLine] = []
    size = 0
    for line in lines:
        line_bytes = len(line.model_dump_json().encode("utf-8")) + 1  # and its comma
        if current and (len(current) >= MAX_LOG_LINES or size + line_bytes > MAX_BATCH_BYTES):
            found.append(current)
            current, size = [], 0
        current.append(line)
        size += line_bytes
    if current:
        found.append(current)
    return found


class LogStreams:
    """The log answers of one agent: tails sent at once, and the follows running."""

    def __init__(self, device_id: str, tail: LogTail, send: Send,
                 max_follows: int = MAX_FOLLOWS, lines_per_s: float = LINES_PER_S,
                 interval_s: float = FOLLOW_INTERVAL_S) -> None:
        self.device_id = device_id
        self.tail = tail
        self._send = send
        self.max_follows = max_follows
        self.lines_per_s = lines_per_s
        self.interval_s = interval_s
        self._follows: list[_Follow] = []  # oldest first

    @property
    def following(self) -> int:
        return len(self._follows)

    async def answer(self, request: LogRequest) -> None:
        """Send the tail the request asks for; with follow_s, go on in a task of its own."""
        if request.follow_s <= 0:
            await self._send_lines(request, self.tail.tail(request.level, request.lines),
                                   final=True)
            return
        records, follower = self.tail.tail_and_follow(request.level, request.lines,
                                                      asyncio.get_running_loop())
        follow = _Follow(request, follower)
        while len(self._follows) >= self.max_follows:
            oldest = self._follows.pop(0)
            log.info("log follow ended for a newer one device=%s request=%s",
                     self.device_id, oldest.request.command_id)
            oldest.ended.set()
        self._follows.append(follow)
        if not await self._send_lines(request, records, final=False):
            self._end(follow)  # central is not there to read it
            return
        follow.task = asyncio.create_task(self._follow(follow),
                                          name=f"log-follow-{request.command_id}")

    async def stop(self) -> None:
        """End every follow, each with its final batch if it can still be sent."""
        follows = list(self._follows)
        for follow in follows:
            follow.ended.set()
        tasks = [f.task for f in follows if f.task is not None]
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=STOP_WAIT_S)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for follow in follows:
            self._end(follow)

    def _end(self, follow: _Follow) -> None:
        follow.ended.set()
        self.tail.unfollow(follow.follower)
        with contextlib.suppress(ValueError):
            self._follows.remove(follow)

    async def _follow(self, follow: _Follow) -> None:
        loop = asyncio.get_running_loop()
        ends_at = loop.time() + follow.request.follow_s
        allowance = LineAllowance(self.lines_per_s, self.lines_per_s, loop.time())
        try:
            while not follow.ended.is_set():
                remaining = ends_at - loop.time()
                if remaining <= 0:
                    break
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(self.interval_s, remaining)):
                        await follow.ended.wait()
                if not await self._send_new(follow, allowance, final=False):
                    return  # central cannot hear it now: the follow ends here
            await self._send_new(follow, allowance, final=True)
        finally:
            self._end(follow)

    async def _send_new(self, follow: _Follow, allowance: LineAllowance, final: bool) -> bool:
        """Send what came since the last batch, within the allowance. False when it could
        not be sent (the follow then ends)."""
        records = follow.follower.take(FOLLOW_QUEUE_RECORDS)
        # Follows share the rate: central takes only so many lines a second per gateway.
        allowance.rate = allowance.burst = self.lines_per_s / max(1, self.following)
        granted = allowance.take(len(records), asyncio.get_running_loop().time())
        dropped = len(records) - granted + follow.follower.take_dropped()
        if not records and not dropped and not final:
            return True
        return await self._send_lines(follow.request, records[:granted], final=final,
                                      dropped=dropped)

    async def _send_lines(self, request: LogRequest, records: list[TailRecord], final: bool,
                          dropped: int = 0) -> bool:
        groups = batches([r.line() for r in records]) or [[]]
        for number, group in enumerate(groups, 1):
            last = number == len(groups)
            batch = LogBatch(device_id=self.device_id, request_id=request.command_id,
                             lines=group, dropped=dropped if last else 0,
                             final=final and last)
            if not await self._send(batch):
                return False
        return True

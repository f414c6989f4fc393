"""The agent's recent log in memory, for central to read over MQTT: a logging handler on the
root logger keeps the last records (bounded), and followers get new ones pushed to a bounded
asyncio queue, whichever thread logged them; a full queue drops and counts, never blocks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from dataclasses import dataclass

from edge_agent.kernel.contract import LOG_LEVELS, LogLine, clip_log_message
from edge_agent.kernel.redaction import redact_credentials

KEEP_RECORDS = 2000  # a few minutes of a busy agent; at most ~4 MB with every line clipped
FOLLOW_QUEUE_RECORDS = 500  # per follower: ten seconds of the most a follow sends
MAX_LOGGER_CHARS = 200  # what a LogLine holds


@dataclass(frozen=True, slots=True)
class TailRecord:
    """One log record as kept: cheap to make on every log call, a LogLine when sent."""

    at: float
    levelno: int
    level: str  # one of LOG_LEVELS
    logger: str
    message: str

    def line(self) -> LogLine:
        return LogLine(at=self.at, level=self.level, logger=self.logger,  # type: ignore[arg-type]
                       message=self.message)


def level_number(name: str) -> int:
    """logging's number for a level name of the contract (DEBUG..CRITICAL)."""
    return int(logging.getLevelName(name))


def _level_name(levelno: int) -> str:
    """The contract's name for any level number (custom levels fall to the one below)."""
    for name in reversed(LOG_LEVELS):
        if levelno >= level_number(name):
            return name
    return "DEBUG"


class Follower:
    """New records at or above `levelno`, handed to the loop's queue from any thread.

    Records waiting to be put on the queue (scheduled with call_soon_threadsafe) count
    against the same bound, so a thread logging faster than the loop runs cannot pile up
    callbacks either: past the bound a record is dropped and counted in `dropped`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, levelno: int,
                 maxsize: int = FOLLOW_QUEUE_RECORDS) -> None:
        self.levelno = levelno
        self.queue: asyncio.Queue[TailRecord] = asyncio.Queue(maxsize)
        self.dropped = 0
        self._loop = loop
        self._maxsize = maxsize
        self._pending = 0  # scheduled or queued, not yet taken
        self._lock = threading.Lock()

    def offer(self, record: TailRecord) -> None:
        """Called from the logging thread (any thread)."""
        if record.levelno < self.levelno:
            return
        with self._lock:
            if self._pending >= self._maxsize:
                self.dropped += 1
                return
            self._pending += 1
        try:
            self._loop.call_soon_threadsafe(self._put, record)
        except RuntimeError:  # the loop is closed: nobody follows any more
            with self._lock:
                self._pending -= 1

    def _put(self, record: TailRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except asyncio.QueueFull:
            with self._lock:
                self._pending -= 1
                self.dropped += 1

    def take(self, most: int) -> list[TailRecord]:
        """Up to `most` records waiting now, oldest first (on the loop)."""
        taken: list[TailRecord] = []
        while len(taken) < most:
            try:
                taken.append(self.queue.get_nowait())
            except asyncio.QueueEmpty:
                break
        with self._lock:
            self._pending -= len(taken)
        return taken

    def take_dropped(self) -> int:
        """Records dropped since the last call."""
        with self._lock:
            dropped, self.dropped = self.dropped, 0
        return dropped


class LogTail(logging.Handler):
    """The last `keep` records of every logger, and their followers."""

    def __init__(self, keep: int = KEEP_RECORDS) -> None:
        super().__init__(logging.DEBUG)
        self.records: deque[TailRecord] = deque(maxlen=keep)
        self._followers: list[Follower] = []
        self._body = logging.Formatter("%(message)s")  # the message and any traceback
        self._installed_on: logging.Logger | None = None

    def emit(self, record: logging.LogRecord) -> None:
        # logging calls emit under self.lock: records and followers change under it only.
        try:
            text = clip_log_message(redact_credentials(self._body.format(record)))
            kept = TailRecord(record.created, record.levelno, _level_name(record.levelno),
                              record.name[:MAX_LOGGER_CHARS], text)
        except Exception:
            self.handleError(record)
            return
        self.records.append(kept)
        for follower in self._followers:
            follower.offer(kept)

    def tail(self, level: str, lines: int) -> list[TailRecord]:
        """The newest `lines` records at `level` or above, oldest first."""
        with self._locked():
            return _newest(self.records, level_number(level), lines)

    def tail_and_follow(self, level: str, lines: int, loop: asyncio.AbstractEventLoop,
                        maxsize: int = FOLLOW_QUEUE_RECORDS) -> tuple[list[TailRecord], Follower]:
        """The tail now and a follower of what comes after it: taken together, so that no
        record falls between them or comes twice."""
        follower = Follower(loop, level_number(level), maxsize)
        with self._locked():
            self._followers.append(follower)
            return _newest(self.records, follower.levelno, lines), follower

    def unfollow(self, follower: Follower) -> None:
        with self._locked(), contextlib.suppress(ValueError):
            self._followers.remove(follower)

    @property
    def followers(self) -> int:
        return len(self._followers)

    def install(self, logger: logging.Logger | None = None) -> None:
        """Start keeping the records of `logger` (the root logger: every logger's)."""
        self._installed_on = logger or logging.getLogger()
        self._installed_on.addHandler(self)

    def remove(self) -> None:
        if self._installed_on is not None:
            self._installed_on.removeHandler(self)
            self._installed_on = None

    @contextlib.contextmanager
    def _locked(self):  # type: ignore[no-untyped-def]
        self.acquire()
        try:
            yield
        finally:
            self.release()


def _newest(records: deque[TailRecord], levelno: int, lines: int) -> list[TailRecord]:
    if lines <= 0:
        return []
    found: list[TailRecord] = []
    for record in reversed(records):
        if record.levelno >= levelno:
            found.append(record)
            if len(found) == lines:
                break
    found.reverse()
    return found

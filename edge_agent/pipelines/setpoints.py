"""Automatic mode's setpoint writer: an accepted recommendation goes to the PLC only within each
control's hard limits and the rate limits, all of it or none (a write failing partway restores
the tags already written), and every write, refusal or restore becomes a `setpoint_write` record
(the audit of what the agent did to the line)."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from edge_agent.buffer import Buffer
from edge_agent.config import AutoWriteConfig, RecommendConfig
from edge_agent.kernel.contract import (
    RECORD_SETPOINT_WRITE,
    RecommendationPayload,
    SetpointWritePayload,
)

log = logging.getLogger(__name__)

Writer = Callable[[str, float], Awaitable[float | None]]  # tag, value -> the value it replaced
HOUR_S = 3600.0  # the window of auto.max_writes_per_hour
TOLERANCE = 1e-9  # a move of exactly max_change stays allowed despite float rounding


@dataclass(frozen=True)
class WriteAttempt:
    tag: str
    value: float
    previous: float | None
    ok: bool
    detail: str
    at: float


class SetpointGuard:
    """Automatic mode: writes an accepted recommendation only within limits and rate limits.

    Either every setpoint of a recommendation passes the checks or none is written; each write
    or refusal is logged and becomes a `setpoint_write` record.
    """

    def __init__(self, pipeline: str, config: RecommendConfig, writer: Writer | None,
                 buffer: Buffer, nodes: Mapping[str, str] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.pipeline = pipeline
        self.config = config
        self._writer = writer
        self._buffer = buffer
        self._nodes = nodes or {}
        self._clock = clock
        self._written_at: deque[float] = deque()  # accepted recommendations written, by time
        self.last_write: WriteAttempt | None = None

    @property
    def limits(self) -> AutoWriteConfig:
        return self.config.auto

    def writes_this_hour(self) -> int:
        now = self._clock()
        while self._written_at and self._written_at[0] <= now - HOUR_S:
            self._written_at.popleft()
        return len(self._written_at)

    async def apply(self, recommendation: RecommendationPayload,
                    current: Mapping[str, float | None]) -> list[WriteAttempt]:
        """Write the recommendation's setpoints, or refuse them all with the reason."""
        refusal = self._refusal(recommendation, current)
        attempts: list[WriteAttempt] = []
        if refusal is not None:
            for change in recommendation.changes:
                attempts.append(await self._record(recommendation, change.tag, change.proposed,
                                                   current.get(change.tag), False, refusal))
            return attempts
        assert self._writer is not None
        self._written_at.append(self._clock())
        failed = ""
        changed: list[tuple[str, float, float | None]] = []  # tag, value written, value before
        for change in recommendation.changes:
            if failed:
                attempts.append(await self._record(
                    recommendation, change.tag, change.proposed, current.get(change.tag), False,
                    f"not written: {failed}"))
                continue
            try:
                previous = await self._writer(change.tag, change.proposed)
            except Exception as exc:  # the PLC refused or is away: recorded, never retried here
                failed = f"writing {change.tag} failed: {exc}"
                attempts.append(await self._record(recommendation, change.tag, change.proposed,
                                                   current.get(change.tag), False, failed))
                before = getattr(exc, "previous", None)  # set when the node changed anyway
                if before is not None:
                    changed.append((change.tag, change.proposed, before))
                continue
            attempts.append(await self._record(recommendation, change.tag, change.proposed,
                                               previous, True, ""))
            changed.append((change.tag, change.proposed, previous))
        if failed:
            attempts += await self._restore(recommendation, changed, failed)
        return attempts

    async def _restore(self, recommendation: RecommendationPayload,
                       changed: list[tuple[str, float, float | None]],
                       failed: str) -> list[WriteAttempt]:
        """Put the tags a failed recommendation already changed back, latest first."""
        assert self._writer is not None
        attempts = []
        for tag, value, before in reversed(changed):
            if before is None:
                attempts.append(await self._record(
                    recommendation, tag, value, value, False,
                    f"not restored: its value before was unknown; set {tag} by hand "
                    f"(after: {failed})"))
                continue
            try:
                replaced = await self._writer(tag, before)
            except Exception as exc:  # the line now runs with a partial recommendation: say so
                attempts.append(await self._record(
                    recommendation, tag, before, value, False,
                    f"restoring {tag} to {before:g} failed: {exc}; it stays at {value:g}, "
                    f"check it on the line (after: {failed})"))
                continue
            attempts.append(await self._record(recommendation, tag, before, replaced, True,
                                               f"restored after: {failed}"))
        return attempts

    def _refusal(self, recommendation: RecommendationPayload,
                 current: Mapping[str, float | None]) -> str | None:
        if self.config.mode != "auto":
            return "advise mode: the agent never writes setpoints"
        if self._writer is None:
            return "the source of this pipeline cannot write setpoints"
        now = self._clock()
        if self.writes_this_hour() >= self.limits.max_writes_per_hour:
            return (f"rate limit: {self.limits.max_writes_per_hour} writes in the last hour "
                    "already (auto.max_writes_per_hour)")
        if self._written_at and now - self._written_at[-1] < self.limits.min_interval_s:
            return (f"rate limit: last write {now - self._written_at[-1]:.0f} s ago, "
                    f"auto.min_interval_s is {self.limits.min_interval_s:g}")
        for change in recommendation.changes:
            control = self.config.controls.get(change.tag)
            if control is None:
                return f"{change.tag} is not a control of pipeline {self.pipeline}"
            if not control.min <= change.proposed <= control.max:
                return (f"{change.tag} {change.proposed:g} is outside its limits "
                        f"{control.min:g}..{control.max:g}")
            value = current.get(change.tag)
            if value is None:
                return f"{change.tag} has no current value to compare with"
            if abs(change.proposed - value) > control.max_change + TOLERANCE:
                return (f"{change.tag} would move {abs(change.proposed - value):g} from its "
                        f"current {value:g}; max_change is {control.max_change:g}")
        return None

    async def _record(self, recommendation: RecommendationPayload, tag: str, value: float,
                      previous: float | None, ok: bool, detail: str) -> WriteAttempt:
        payload = SetpointWritePayload(
            recommendation=recommendation.id, pipeline=self.pipeline, tag=tag,
            node=self._nodes.get(tag, ""), value=value, previous=previous, ok=ok, detail=detail)
        await self._buffer.append(RECORD_SETPOINT_WRITE, payload.model_dump())
        attempt = WriteAttempt(tag, value, previous, ok, detail, self._clock())
        self.last_write = attempt
        if ok:
            log.info("setpoint written pipeline=%s recommendation=%s tag=%s value=%g "
                     "previous=%s", self.pipeline, recommendation.id, tag, value, previous)
        else:
            log.warning("setpoint not written pipeline=%s recommendation=%s tag=%s value=%g "
                        "reason=%s", self.pipeline, recommendation.id, tag, value, detail)
        return attempt

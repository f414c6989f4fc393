"""A vision pipeline's reject output: a confirmed defect of chosen classes writes a PLC tag (set,
or pulse and reset), never sooner than `min_interval_s` after the last one nor more than
`max_per_minute` times; every write or refusal becomes a `reject_write` record."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Literal

from edge_agent.buffer import Buffer
from edge_agent.config import RejectOutputConfig
from edge_agent.kernel.contract import RECORD_REJECT_WRITE, RejectWritePayload

log = logging.getLogger(__name__)

NodeWriter = Callable[[str, float], Awaitable[float | None]]  # NodeId, value -> value before
MINUTE_S = 60.0
Action = Literal["set", "pulse", "reset"]


class RejectOutput:
    """Writes the reject tag for confirmed defects, within the minimum interval and rate limit.

    Times are monotonic: a clock step on the gateway must neither block nor release rejects.
    """

    def __init__(self, pipeline: str, config: RejectOutputConfig, writer: NodeWriter,
                 buffer: Buffer, clock: Callable[[], float] = time.monotonic) -> None:
        self.pipeline = pipeline
        self.config = config
        self._writer = writer
        self._buffer = buffer
        self._clock = clock
        self._accepted: deque[float] = deque()  # rejects let through, by monotonic time
        self._resets: set[asyncio.Task[None]] = set()

    def wants(self, label: str) -> bool:
        return label in self.config.classes

    async def on_defect(self, label: str, roi: str) -> RejectWritePayload | None:
        """A confirmed defect: write the reject if its class is chosen and the limits allow."""
        if not self.wants(label):
            return None
        refusal = self._refusal()
        if refusal is not None:
            return await self._record(label, roi, self.config.mode, self.config.value, None,
                                      False, refusal)
        self._accepted.append(self._clock())
        record = await self._write(label, roi, self.config.mode, self.config.value)
        if record.ok and self.config.mode == "pulse":
            task = asyncio.create_task(self._reset_after_pulse(label, roi))
            self._resets.add(task)
            task.add_done_callback(self._resets.discard)
        return record

    async def wait_resets(self) -> None:
        """Until every pulse under way is reset (for a stop, and for tests)."""
        if self._resets:
            await asyncio.gather(*self._resets, return_exceptions=True)

    def _refusal(self) -> str | None:
        now = self._clock()
        while self._accepted and self._accepted[0] <= now - MINUTE_S:
            self._accepted.popleft()
        if self._accepted and now - self._accepted[-1] < self.config.min_interval_s:
            return (f"rate limit: last reject {now - self._accepted[-1]:.2f} s ago, "
                    f"reject.min_interval_s is {self.config.min_interval_s:g}")
        if len(self._accepted) >= self.config.max_per_minute:
            return (f"rate limit: {self.config.max_per_minute} rejects in the last minute "
                    "already (reject.max_per_minute)")
        return None

    async def _reset_after_pulse(self, label: str, roi: str) -> None:
        await asyncio.sleep(self.config.pulse_ms / 1000)
        await self._write(label, roi, "reset", self.config.reset_value)

    async def _write(self, label: str, roi: str, action: Action,
                     value: float) -> RejectWritePayload:
        try:
            previous = await self._writer(self.config.node, value)
        except Exception as exc:  # not connected, refused, read-back differs: recorded
            return await self._record(label, roi, action, value, None, False, str(exc))
        return await self._record(label, roi, action, value, previous, True, "")

    async def _record(self, label: str, roi: str, action: Action, value: float,
                      previous: float | None, ok: bool, detail: str) -> RejectWritePayload:
        payload = RejectWritePayload(
            pipeline=self.pipeline, source=self.config.source, node=self.config.node,
            label=label, roi=roi, action=action, value=value, previous=previous, ok=ok,
            detail=detail)
        await self._buffer.append(RECORD_REJECT_WRITE, payload.model_dump())
        if ok:
            log.info("reject written pipeline=%s label=%s roi=%s action=%s node=%s value=%g",
                     self.pipeline, label, roi, action, self.config.node, value)
        else:
            log.warning("reject not written pipeline=%s label=%s roi=%s action=%s node=%s "
                        "reason=%s", self.pipeline, label, roi, action, self.config.node, detail)
        return payload

"""The watch after probation: each active version judged again, one window at a time.

Every `watch.interval_s` the version's statistics over the window (inferences, failures, NaN,
latency, output shift, the operators' rejections) are judged against its probation
thresholds and sent to central as a `model_watch` record. `watch.breaches` breaching windows
in a row make a sustained breach: that window's record carries `alert`, and a warning is
logged. Nothing is rolled back: after probation, people decide.
"""

from __future__ import annotations

import asyncio
import logging
import time

from edge_agent.buffer import Buffer
from edge_agent.kernel.contract import RECORD_MODEL_WATCH, ModelRef, ModelWatchPayload
from edge_agent.lifecycle import ModelWatch, VersionStats
from edge_agent.model_store import ModelStore

log = logging.getLogger(__name__)


class StandingWatch:
    """One task per served model; paused while a deployment of that model is under way."""

    def __init__(self, store: ModelStore, watch: ModelWatch, buffer: Buffer) -> None:
        self._store = store
        self._watch = watch
        self._buffer = buffer
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def follow(self, name: str, reference: list[float] | None = None) -> None:
        """Watch model `name`'s active version from now on (again), with the previous
        version's outputs as the reference for the output shift when known."""
        self.pause(name)
        self._tasks[name] = asyncio.create_task(self._run(name, list(reference or ())),
                                                name=f"watch-{name}")

    def pause(self, name: str) -> None:
        """Stop watching model `name` (a deployment of it takes over; `follow` resumes)."""
        task = self._tasks.pop(name, None)
        if task is not None:
            task.cancel()

    def following(self, name: str) -> bool:
        task = self._tasks.get(name)
        return task is not None and not task.done()

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, name: str, reference: list[float]) -> None:
        consecutive = 0
        while True:
            active = self._store.active(name)
            if active is None:
                return
            policy = active.manifest.meta.watch_policy
            if policy.interval_s == 0:
                return
            window = self._watch.start_window(active, reference)
            try:
                await asyncio.sleep(policy.interval_s)
            finally:
                self._watch.end_window(window)
            now_active = self._store.active(name)
            if now_active is None or now_active.manifest.sha256 != window.sha256:
                # Switched under us (a rollback command): its own watch starts afresh.
                consecutive, reference = 0, []
                continue
            breaches = window.breaches()
            consecutive = consecutive + 1 if breaches else 0
            await self._report(window, active.manifest.ref, breaches, consecutive,
                               alert=consecutive == policy.breaches)

    async def _report(self, window: VersionStats, model: ModelRef, breaches: list[str],
                      consecutive: int, alert: bool) -> None:
        p99 = window.latency_p99_ms()
        shift = window.output_shift()
        payload = ModelWatchPayload(
            model=model, started_at=window.started_at, ended_at=time.time(),
            inferences=window.observations, errors=window.errors, nonfinite=window.nonfinite,
            latency_p99_ms=None if p99 is None else round(p99, 3),
            output_shift=None if shift is None else round(shift, 3),
            answers=window.answers, rejected=window.rejected, breaches=breaches,
            consecutive=consecutive, alert=alert)
        if alert:
            log.warning("sustained breach after probation model=%s sha256=%s windows=%d "
                        "breaches=%s; reported to central, not rolled back", window.name,
                        window.sha256[:12], consecutive, "; ".join(breaches))
        await self._buffer.append(RECORD_MODEL_WATCH, payload.model_dump(mode="json"))

"""The model's own thread for a vision pipeline: it starts on the next prepared frame the moment
it finishes one, without waiting for the event loop in between."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

Job = TypeVar("Job")
Result = TypeVar("Result")

CLOSE_WAIT_S = 30.0  # a model run cannot be interrupted; longer than any sane inference


class ModelThread(Generic[Job, Result]):
    """Runs `infer` on one job at a time in its own thread; one job waits ready at most: no
    backlog.

    Its replies to the loop go through a second thread: waking the loop directly lets the loop
    take the GIL while the model thread still needs it, and on a busy 2-core gateway that wait
    cost about a millisecond a frame."""

    def __init__(self, name: str, infer: Callable[[Job], Result]) -> None:
        self._infer = infer
        self._loop = asyncio.get_running_loop()
        self._ready = threading.Condition()
        self._next: Job | None = None
        self._closed = False
        self._slot_free = asyncio.Event()
        self._slot_free.set()
        self._results: asyncio.Queue[tuple[Job, Result | BaseException]] = asyncio.Queue()
        self._outbox: queue.SimpleQueue[tuple[Callable[..., None], tuple[Any, ...]] | None] = \
            queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-model", daemon=True),
            threading.Thread(target=self._post, name=f"{name}-model-replies", daemon=True)]
        for thread in self._threads:
            thread.start()

    async def put(self, job: Job) -> None:
        """Hand over the next job, once the model has taken the previous one."""
        await self._slot_free.wait()
        self._slot_free.clear()
        with self._ready:
            self._next = job
            self._ready.notify()

    def has_results(self) -> bool:
        return not self._results.empty()

    async def result(self) -> tuple[Job, Result]:
        """The oldest job and its result; an error of the model is raised here."""
        job, outcome = await self._results.get()
        if isinstance(outcome, BaseException):
            raise outcome
        return job, outcome

    async def close(self) -> None:
        """Stop after the job being run (ONNX Runtime cannot be interrupted)."""
        with self._ready:
            self._closed = True
            self._ready.notify()
        for thread in self._threads:
            await asyncio.to_thread(thread.join, CLOSE_WAIT_S)

    def _work(self) -> None:
        while True:
            with self._ready:
                while self._next is None and not self._closed:
                    self._ready.wait()
                if self._closed:
                    break
                job, self._next = self._next, None
            self._outbox.put((self._slot_free.set, ()))
            try:
                outcome: Result | BaseException = self._infer(job)
            except Exception as exc:  # handed to the pipeline, which stops with it
                outcome = exc
            self._outbox.put((self._results.put_nowait, ((job, outcome),)))
        self._outbox.put(None)

    def _post(self) -> None:
        while (reply := self._outbox.get()) is not None:
            callback, args = reply
            try:
                self._loop.call_soon_threadsafe(callback, *args)
            except RuntimeError:  # the loop is closed: the pipeline is gone
                with self._ready:
                    self._closed = True
                    self._ready.notify()

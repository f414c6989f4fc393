"""Evaluations asked for from the model page, run one at a time on a worker thread so a page
request never waits for a large dataset; the page shows each version's job until its report is
stored. Jobs live in this process only: a restart forgets queued ones (ask again)."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

MAX_QUEUED = 8  # evaluations waiting at once; more are refused until some finish
FINISHED_KEPT_S = 3600.0  # a failed job's message stays on its page this long


class QueueFull(Exception):
    """Too many evaluations wait already; the message says to try later."""


@dataclass
class EvaluationJob:
    model_name: str
    version: str
    dataset: str | None
    requested_by: str
    state: str = "queued"  # queued, running, done, failed
    error: str = ""
    finished_at: float | None = None

    @property
    def active(self) -> bool:
        return self.state in ("queued", "running")


# (model_name, version, dataset ref or None, requested_by) -> stores the evaluation
Evaluate = Callable[[str, str, str | None, str], object]


class EvaluationQueue:
    """One worker thread, started with the first job, runs `evaluate` for each job in turn."""

    def __init__(self, evaluate: Evaluate, expected: tuple[type[Exception], ...]) -> None:
        self._evaluate = evaluate
        self._expected = expected  # refusals shown as they are; anything else is logged
        self._jobs: dict[tuple[str, str], EvaluationJob] = {}
        self._queue: queue.Queue[EvaluationJob] = queue.Queue(MAX_QUEUED)
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None

    def submit(self, model_name: str, version: str, dataset: str | None,
               requested_by: str) -> EvaluationJob:
        """Queue an evaluation; the one already queued or running for the version stands."""
        with self._lock:
            current = self._jobs.get((model_name, version))
            if current is not None and current.active:
                return current
            job = EvaluationJob(model_name, version, dataset, requested_by)
            try:
                self._queue.put_nowait(job)
            except queue.Full:
                raise QueueFull(f"{MAX_QUEUED} evaluations are waiting already; try again "
                                "when one has finished") from None
            self._jobs[(model_name, version)] = job
            if self._worker is None:
                # A daemon: an evaluation cut short by a stop stores nothing, and is asked again.
                self._worker = threading.Thread(target=self._run, name="central-evaluations",
                                                daemon=True)
                self._worker.start()
        log.info("evaluation queued model=%s version=%s dataset=%s by=%s", model_name,
                 version, dataset or "-", requested_by)
        return job

    def job(self, model_name: str, version: str) -> EvaluationJob | None:
        """The version's current job, or its failure within the last hour."""
        with self._lock:
            job = self._jobs.get((model_name, version))
        if job is None or job.state == "done":
            return None
        if job.finished_at is not None and time.time() - job.finished_at > FINISHED_KEPT_S:
            return None
        return job

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            job.state = "running"
            try:
                self._evaluate(job.model_name, job.version, job.dataset, job.requested_by)
                job.state = "done"
            except self._expected as exc:
                job.state, job.error = "failed", str(exc)
                log.warning("evaluation refused model=%s version=%s dataset=%s: %s",
                            job.model_name, job.version, job.dataset or "-", exc)
            except Exception as exc:
                job.state, job.error = "failed", f"{type(exc).__name__}: {exc}"
                log.exception("evaluation failed model=%s version=%s dataset=%s",
                              job.model_name, job.version, job.dataset or "-")
            job.finished_at = time.time()

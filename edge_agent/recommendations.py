"""The operator's side of recommendations: the open one, the answers, and what followed.

A process pipeline offers a recommendation here; the operator page shows the open one of each
pipeline and answers it (accept or reject). Every step is a buffered record, so central sees the
recommendation, its answer and, `outcome_after_s` later, what the line did: whether the
controllable tags reached the proposed values and what the model predicts then.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from edge_agent.buffer import Buffer
from edge_agent.kernel.contract import (
    RECORD_RECOMMENDATION,
    RECORD_RECOMMENDATION_ANSWER,
    RECORD_RECOMMENDATION_OUTCOME,
    RecommendationAnswerPayload,
    RecommendationOutcomePayload,
    RecommendationPayload,
)

log = logging.getLogger(__name__)

Decision = Literal["accepted", "rejected", "expired", "superseded"]
OnAccept = Callable[[RecommendationPayload], Awaitable[None]]
# Told of every operator answer (accepted or rejected), e.g. to judge the model that made it.
AnswerListener = Callable[[RecommendationPayload, RecommendationAnswerPayload], None]
RECENT_ANSWERS = 20  # answered recommendations kept to recognise a late second answer
DEFAULT_OUTCOME_AFTER_S = 600.0  # as recommend.outcome_after_s
ROUNDING = 1e-9  # a setpoint exactly half way to the proposal counts as applied


class AnswerError(Exception):
    """The answer cannot be taken (unknown or already answered); the message says why."""


@dataclass(frozen=True)
class Answered:
    recommendation: RecommendationPayload
    answer: RecommendationAnswerPayload


class RecommendationBoard:
    """One pipeline's open recommendation, its recent answers and the outcomes still due."""

    def __init__(self, pipeline: str, buffer: Buffer,
                 outcome_after_s: float = DEFAULT_OUTCOME_AFTER_S,
                 on_accept: OnAccept | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.pipeline = pipeline
        self.outcome_after_s = outcome_after_s
        self.open: RecommendationPayload | None = None
        self.recent: deque[Answered] = deque(maxlen=RECENT_ANSWERS)  # newest first
        self._buffer = buffer
        self._on_accept = on_accept
        self._clock = clock
        self._due: list[tuple[float, Answered]] = []  # outcomes to record, by time
        self.answer_listeners: list[AnswerListener] = []

    def knows(self, recommendation_id: str) -> bool:
        """Whether the recommendation is the open one or among the recently answered."""
        return (self.open is not None and self.open.id == recommendation_id) or any(
            a.recommendation.id == recommendation_id for a in self.recent)

    async def offer(self, recommendation: RecommendationPayload) -> None:
        """Show a new recommendation; one still open is superseded by it."""
        if self.open is not None:
            await self._close("superseded", "agent", "")
        self.open = recommendation
        await self._buffer.append(RECORD_RECOMMENDATION, recommendation.model_dump(mode="json"))
        log.info("recommendation offered pipeline=%s id=%s changes=%s", self.pipeline,
                 recommendation.id, ", ".join(f"{c.tag} {c.current:g}->{c.proposed:g}"
                                              for c in recommendation.changes))

    async def answer(self, recommendation_id: str, decision: Literal["accepted", "rejected"],
                     by: str, comment: str = "") -> RecommendationAnswerPayload:
        """The operator's answer; raises AnswerError when it is not the open recommendation."""
        if self.open is None or self.open.id != recommendation_id:
            earlier = next((a for a in self.recent
                            if a.recommendation.id == recommendation_id), None)
            if earlier is not None:
                raise AnswerError(f"recommendation {recommendation_id} was already "
                                  f"{earlier.answer.decision} by {earlier.answer.by}")
            raise AnswerError(f"no open recommendation {recommendation_id} in pipeline "
                              f"{self.pipeline}; reload the page to see the current one")
        recommendation = self.open
        answered = await self._close(decision, by, comment)
        for listener in self.answer_listeners:
            listener(recommendation, answered.answer)
        if decision == "accepted" and self._on_accept is not None:
            await self._on_accept(recommendation)
        return answered.answer

    async def expire(self) -> None:
        """Close the open recommendation once it is past its expiry."""
        if self.open is not None and self._clock() >= self.open.expires_at:
            await self._close("expired", "agent", "")

    async def record_outcomes(self, setpoints: Callable[[], dict[str, float | None]],
                              predict: Callable[[], float | None],
                              measured: Callable[[], float | None] = lambda: None) -> int:
        """Write the outcome of every answer `outcome_after_s` old; returns how many."""
        now = self._clock()
        written = 0
        while self._due and self._due[0][0] <= now:
            _, answered = self._due.pop(0)
            values = setpoints()
            applied = all(
                values.get(c.tag) is not None
                and abs(values[c.tag] - c.proposed) <= abs(c.proposed - c.current) / 2 + ROUNDING
                for c in answered.recommendation.changes)
            outcome = RecommendationOutcomePayload(
                id=answered.recommendation.id, pipeline=self.pipeline,
                decision=answered.answer.decision, after_s=round(now - answered.answer.at, 1),
                setpoints={c.tag: values.get(c.tag) for c in answered.recommendation.changes},
                applied=applied, predicted=predict(), measured=measured())
            await self._buffer.append(RECORD_RECOMMENDATION_OUTCOME, outcome.model_dump())
            written += 1
        return written

    async def _close(self, decision: Decision, by: str, comment: str) -> Answered:
        assert self.open is not None
        answer = RecommendationAnswerPayload(id=self.open.id, pipeline=self.pipeline,
                                             decision=decision, by=by, at=self._clock(),
                                             comment=comment)
        answered = Answered(self.open, answer)
        self.open = None
        await self._buffer.append(RECORD_RECOMMENDATION_ANSWER, answer.model_dump())
        self.recent.appendleft(answered)
        self._due.append((answer.at + self.outcome_after_s, answered))
        self._due.sort(key=lambda item: item[0])
        log.info("recommendation %s pipeline=%s id=%s by=%s", decision, self.pipeline,
                 answer.id, by)
        return answered

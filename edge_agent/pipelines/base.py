"""The one interface the agent, its page and its metrics use for every pipeline: a name, a
status (state and detail), a typed `snapshot()`, and `run()`; and what pipelines are built with.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from edge_agent.buffer import Buffer
from edge_agent.lifecycle import ModelWatch
from edge_agent.model_store import ModelStore
from edge_agent.monitoring import DEFAULT_INTERVAL_S
from edge_agent.pipelines.snapshot import PipelineSnapshot
from edge_agent.recommendations import RecommendationBoard

log = logging.getLogger(__name__)


@dataclass
class PipelineStatus:
    """What a pipeline is doing: waiting, running, no_prediction or error, and why."""

    state: str = "waiting"
    detail: str = ""


@dataclass(frozen=True)
class PipelineContext:
    """The agent's parts every pipeline works with."""

    store: ModelStore
    buffer: Buffer
    watch: ModelWatch
    stats_interval_s: float = DEFAULT_INTERVAL_S
    # OPC-UA source name -> its write of one node (NodeId, value -> value before), for outputs
    # such as a vision pipeline's reject tag.
    node_writers: Mapping[str, Callable[[str, float], Awaitable[float | None]]] = field(
        default_factory=dict)


class Pipeline(ABC):
    """A source bound to a model: runs until cancelled and reports what it does."""

    kind: ClassVar[str]  # the configuration's `type`
    name: str
    status: PipelineStatus
    # Where the operator answers this pipeline's recommendations; None: it makes none.
    board: RecommendationBoard | None = None

    @abstractmethod
    def snapshot(self) -> PipelineSnapshot:
        """The pipeline's state now, for the page, `/api/status` and `/metrics`."""

    @abstractmethod
    async def run(self) -> None:
        """Work until cancelled; one failed input must not end it."""

    def _set(self, state: str, detail: str) -> None:
        if (state, detail) != (self.status.state, self.status.detail):
            log.info("pipeline state pipeline=%s state=%s detail=%s", self.name, state, detail)
        self.status.state, self.status.detail = state, detail

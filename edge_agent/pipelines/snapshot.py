"""A pipeline's state at one moment, typed, for the operator page, `/api/status` and `/metrics`.

Every pipeline fills the common fields; each kind adds its own part (`process`, `vision`), so
readers show what a kind has without asking which class a pipeline is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edge_agent.kernel.contract import RecommendationPayload
from edge_agent.recommendations import Answered

RECENT_DEFECTS = 8  # the operator page shows this many: two rows, legible on a 1080p screen


@dataclass(frozen=True)
class TrendPoint:
    """One prediction of a process pipeline, as its trend chart draws it."""

    at: float
    inputs: dict[str, float]
    outputs: dict[str, float | None]


@dataclass(frozen=True)
class RecentDefect:
    """A defect as the operator page shows it: a small annotated JPEG kept in memory."""

    number: int  # counts up from 1 per pipeline; names the thumbnail's URL
    at: float
    roi: str
    label: str
    confidence: float
    thumbnail_jpeg: bytes


@dataclass(frozen=True)
class ProcessDetails:
    """What a process pipeline adds: predictions, its recommendations and setpoint writes."""

    last_prediction: dict[str, Any] | None
    recommends: bool  # has a recommendation board
    open_recommendation: RecommendationPayload | None
    answered: tuple[Answered, ...]  # newest first
    search: str  # the latest search: what it found, or why nothing was offered
    last_write: dict[str, Any] | None  # automatic mode: the latest write or refusal
    writes_this_hour: int
    trend: tuple[TrendPoint, ...]  # oldest first

    def document(self, predictions: int) -> dict[str, Any]:
        return {"predictions": predictions, "last_prediction": self.last_prediction,
                "recommendation": (self.open_recommendation.model_dump(mode="json")
                                   if self.open_recommendation is not None else None),
                "recent_answers": [a.answer.model_dump(mode="json") for a in self.answered],
                "search": self.search, "last_write": self.last_write,
                "writes_this_hour": self.writes_this_hour}


@dataclass(frozen=True)
class VisionDetails:
    """What a vision pipeline adds: its camera, what it recorded, and the latest defects."""

    camera: str
    defects: int
    samples: int
    last_result: dict[str, Any] | None
    recent_defects: tuple[RecentDefect, ...]  # newest first

    def document(self, frames: int) -> dict[str, Any]:
        return {"camera": self.camera, "frames": frames, "defects": self.defects,
                "samples": self.samples, "last_result": self.last_result,
                "recent_defects": [{"number": d.number, "at": d.at, "roi": d.roi,
                                    "label": d.label, "confidence": d.confidence}
                                   for d in self.recent_defects]}

    def defect(self, number: int) -> RecentDefect | None:
        return next((d for d in self.recent_defects if d.number == number), None)


@dataclass(frozen=True)
class PipelineSnapshot:
    """One pipeline now: what every kind has, and the part of its own kind."""

    name: str
    type: str
    model: str
    state: str
    detail: str
    inferences: int  # process: predictions made; vision: frames judged
    process: ProcessDetails | None = None
    vision: VisionDetails | None = None

    def document(self) -> dict[str, Any]:
        """The pipeline as `/api/status` shows it."""
        document: dict[str, Any] = {"name": self.name, "type": self.type, "model": self.model,
                                    "state": self.state, "detail": self.detail}
        if self.vision is not None:
            document.update(self.vision.document(self.inferences))
        if self.process is not None:
            document.update(self.process.document(self.inferences))
        return document

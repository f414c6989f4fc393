"""Uplink records: what leaves the gateway, by kind, each with a typed payload."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, model_validator

from edge_agent.kernel.contract.fields import (
    FINITE,
    ModelRef,
    Seq,
    new_id,
    now,
)


class UplinkRecord(BaseModel):
    """One record leaving the gateway; `(device_id, seq)` identifies it for ever."""

    model_config = FINITE

    seq: Seq = Field(description="Per-device sequence number, strictly increasing")
    type: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")] = Field(
        description="Record type: prediction, deployment_event, ..."
    )
    created_at: float
    payload: dict[str, Any]


RECORD_PREDICTION = "prediction"
RECORD_DEPLOYMENT_EVENT = "deployment_event"
RECORD_EVICTION = "eviction"
RECORD_DEFECT = "defect"  # a vision pipeline's defect, with its evidence images
RECORD_SAMPLE = "sample"  # a frame kept for labelling (the model was unsure, or at random)


class EvidenceImage(BaseModel):
    """One JPEG of a defect's or sample's evidence, base64-encoded."""

    model_config = FINITE

    jpeg_b64: str = Field(description="The JPEG file, base64")
    width: int = Field(ge=1)
    height: int = Field(ge=1)


Box = tuple[int, int, int, int]  # x1, y1, x2, y2 in pixels


class DetectedBox(BaseModel):
    """One object a detector found."""

    model_config = FINITE

    label: str
    confidence: float
    box: Box


class VisionSummary(BaseModel):
    """What the model said of one frame or region, whatever its decoder."""

    model_config = FINITE

    kind: Literal["classification", "detection", "anomaly"]
    label: str
    confidence: float
    top: list[tuple[str, float]] = Field(default_factory=list,
                                         description="Best classes with their scores")
    detections: list[DetectedBox] = Field(default_factory=list,
                                          description="Boxes in the region's pixels")
    anomaly_score: float | None = None


class DefectPayload(BaseModel):
    """The payload of a `defect` record: a defect a vision pipeline found, with its evidence."""

    model_config = FINITE

    pipeline: str
    camera: str
    roi: str = Field(description="Region of interest, or 'frame' for the whole frame")
    roi_box: tuple[int, int, int, int] | None = Field(
        description="The region as x, y, width, height in frame pixels (None: whole frame)")
    frame_size: tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]] | None = Field(
        None, description="The camera frame's width and height in pixels, which roi_box and "
        "boxes are measured in (the evidence images may be smaller); None from agents that "
        "did not send it")
    label: str = Field(description="The defect class")
    confidence: float
    boxes: list[DetectedBox] = Field(default_factory=list,
                                     description="Detections in frame pixels")
    result: VisionSummary
    model: ModelRef
    frame_index: int = Field(ge=0)
    captured_at: float = Field(description="When the camera took the frame")
    images: dict[str, EvidenceImage] = Field(
        description="Evidence by name: 'frame', and 'annotated' when configured")


class SamplePayload(DefectPayload):
    """The payload of a `sample` record: a frame kept for labelling, and why."""

    reason: Literal["uncertain", "random"] = Field(
        description="uncertain: the confidence was in the sampling band; random: a normal "
        "frame kept at random")


class PredictionPayload(BaseModel):
    """The payload of a `prediction` record: what a pipeline predicted, from what, with what."""

    model_config = FINITE

    pipeline: str
    model: ModelRef
    inputs: dict[str, float] = Field(description="Feature values the model saw, by tag")
    outputs: dict[str, float | None] = Field(description="First value of each model output")
    latency_ms: float = Field(ge=0)


RECORD_RECOMMENDATION = "recommendation"  # setpoint changes offered to the operator
RECORD_RECOMMENDATION_ANSWER = "recommendation_answer"  # accepted, rejected, expired, superseded
RECORD_RECOMMENDATION_OUTCOME = "recommendation_outcome"  # the line some minutes after an answer
RECORD_SETPOINT_WRITE = "setpoint_write"  # automatic mode wrote, or refused to write, a setpoint
RECORD_SOURCE_GAP = "source_gap"  # a source had no usable data for a while, and why
RECORD_REJECT_WRITE = "reject_write"  # a confirmed defect wrote, or was refused, the reject tag


class SetpointChange(BaseModel):
    """One controllable tag in a recommendation: where it is and where it should go."""

    model_config = FINITE

    tag: str
    current: float
    proposed: float
    unit: str = ""


class RecommendationPayload(BaseModel):
    """The payload of a `recommendation` record: a better setting and its predicted effect."""

    model_config = FINITE

    id: str = Field(default_factory=new_id, min_length=1, max_length=64)
    pipeline: str
    model: ModelRef
    target: str = Field(description="The predicted quality value, e.g. scrap_rate_pct")
    unit: str = ""
    objective: str = Field(description="In words, e.g. 'minimise scrap_rate_pct'")
    changes: list[SetpointChange] = Field(min_length=1)
    predicted_now: float = Field(description="The target predicted at the current setting")
    predicted_after: float = Field(description="The target predicted at the proposed setting")
    inputs: dict[str, float] = Field(description="Model inputs at the time, by feature")
    mode: Literal["advise", "auto"] = "advise"
    created_at: float = Field(default_factory=now)
    expires_at: float


class RecommendationAnswerPayload(BaseModel):
    """The payload of a `recommendation_answer` record: what became of a recommendation."""

    model_config = FINITE

    id: str = Field(description="The recommendation's id")
    pipeline: str
    decision: Literal["accepted", "rejected", "expired", "superseded"]
    by: str = Field(description="Who answered: the operator's name, or 'agent'")
    at: float = Field(default_factory=now)
    comment: str = Field("", max_length=500)


class RecommendationOutcomePayload(BaseModel):
    """The payload of a `recommendation_outcome` record: the line `after_s` after an answer."""

    model_config = FINITE

    id: str = Field(description="The recommendation's id")
    pipeline: str
    decision: Literal["accepted", "rejected", "expired", "superseded"]
    after_s: float
    setpoints: dict[str, float | None] = Field(description="The controllable tags' values now")
    applied: bool = Field(description="Every controllable tag moved at least halfway to "
                                       "its proposed value")
    predicted: float | None = Field(description="The target predicted now (None: no prediction)")
    measured: float | None = Field(None, description="The target as measured, if a tag reads it")


class SetpointWritePayload(BaseModel):
    """The payload of a `setpoint_write` record: one write to the PLC in automatic mode."""

    model_config = FINITE

    recommendation: str = Field(description="The recommendation's id")
    pipeline: str
    tag: str
    node: str
    value: float
    previous: float | None
    ok: bool
    detail: str = ""


class RejectWritePayload(BaseModel):
    """The payload of a `reject_write` record: one write of a vision pipeline's reject output
    to the PLC (set, pulse or the pulse's reset), or why it was refused."""

    model_config = FINITE

    pipeline: str
    source: str = Field(description="The OPC-UA source whose server holds the tag")
    node: str
    label: str = Field(description="The defect class that asked for the reject")
    roi: str
    action: Literal["set", "pulse", "reset"]
    value: float
    previous: float | None = Field(description="What the node held before, when known")
    ok: bool
    detail: str = ""


class SourceGapPayload(BaseModel):
    """The payload of a `source_gap` record: a source delivered nothing usable for a while."""

    model_config = FINITE

    source: str
    started_at: float
    ended_at: float
    duration_s: float = Field(ge=0)
    reason: str


RECORD_MODEL_STATS = "model_stats"  # one model's inputs, outputs and latency over an interval


class Histogram(BaseModel):
    """Counts between edges: counts[i] for edges[i] <= x < edges[i+1]; values below the first
    edge count in the first bin, values from the last edge on in the last."""

    model_config = FINITE

    edges: list[float] = Field(min_length=2)
    counts: list[int]

    @model_validator(mode="after")
    def _consistent(self) -> Histogram:
        if len(self.counts) != len(self.edges) - 1:
            raise ValueError(f"{len(self.edges)} edges need {len(self.edges) - 1} counts, "
                             f"got {len(self.counts)}")
        if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise ValueError("edges must increase")
        if any(c < 0 for c in self.counts):
            raise ValueError("counts cannot be negative")
        return self


class ValueStats(BaseModel):
    """One input or output over an interval; the histogram on the manifest's reference edges
    when the manifest has them (what drift is computed from)."""

    model_config = FINITE

    count: int = Field(ge=0)
    mean: float | None = None
    std: float | None = None
    min: float | None = None
    max: float | None = None
    histogram: Histogram | None = None


class ModelStatsPayload(BaseModel):
    """The payload of a `model_stats` record: what one model saw and did over an interval."""

    model_config = FINITE

    pipeline: str
    model: ModelRef
    started_at: float
    ended_at: float
    predictions: int = Field(ge=0)
    errors: int = Field(0, ge=0)
    latency_ms: Histogram
    inputs: dict[str, ValueStats] = Field(
        default_factory=dict, description="Process models: each feature; vision: image "
        "brightness and contrast")
    outputs: dict[str, ValueStats] = Field(
        default_factory=dict, description="Each output (vision: the confidence)")
    labels: dict[str, int] = Field(default_factory=dict,
                                   description="Predictions per class, for classifiers")


RECORD_MODEL_WATCH = "model_watch"  # an active version judged over a window after probation


class ModelWatchPayload(BaseModel):
    """The payload of a `model_watch` record: what the active version did over one window
    after its probation, judged against the manifest's probation thresholds. Sent every
    `watch.interval_s`; `alert` marks a sustained breach. The version is not rolled back."""

    model_config = FINITE

    model: ModelRef
    started_at: float
    ended_at: float
    inferences: int = Field(ge=0)
    errors: int = Field(ge=0, description="Failed inferences")
    nonfinite: int = Field(ge=0, description="NaN or infinite outputs")
    latency_p99_ms: float | None = Field(description="None: no successful inference")
    output_shift: float | None = Field(
        description="Mean output shift from the previous version's, in its spreads (None: "
        "too few outputs, or no previous version's outputs known since the agent started)")
    answers: int = Field(ge=0, description="Operators' answers (accepted or rejected) to the "
                         "version's recommendations")
    rejected: int = Field(ge=0)
    breaches: list[str] = Field(description="Each probation threshold breached in this "
                                "window, in words (empty: none)")
    consecutive: int = Field(ge=0, description="Windows in a row that breached, this one "
                             "included")
    alert: bool = Field(description="A sustained breach: `consecutive` reached the "
                        "manifest's watch.breaches in this window (once per breaching run)")


class EvictionPayload(BaseModel):
    """The payload of an `eviction` record: seqs the agent dropped to respect its disk quota."""

    model_config = FINITE

    ranges: list[tuple[Seq, Seq, str]] = Field(
        description="[first_seq, last_seq, record type], inclusive"
    )
    by_kind: dict[str, int]


"""The model manifest: what an agent needs to fetch, verify and run one version, and the typed
metadata a data scientist writes for it (preprocessing, decoder, golden check, policies...)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    model_validator,
)

from edge_agent.kernel.contract.fields import (
    ModelName,
    ModelRef,
    Sha256,
    Version,
    now,
)
from edge_agent.kernel.contract.records import Histogram

_STRICT = ConfigDict(frozen=True, extra="forbid")


class Preprocessing(BaseModel):
    """`metadata.preprocessing` of a vision model: how a frame becomes its input tensor."""

    model_config = _STRICT

    size: tuple[int, int] = Field(description="Model input width and height in pixels")
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    color: Literal["RGB", "BGR", "GRAY"] = "RGB"
    scale: float = Field(1 / 255, description="Pixel values are multiplied by this first")
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    resize: Literal["resize", "letterbox"] = "resize"
    pad_value: int = Field(114, ge=0, le=255)

    @model_validator(mode="after")
    def _channels(self) -> Preprocessing:
        for name in ("mean", "std"):
            value = getattr(self, name)
            if len(value) not in (1, self.channels):
                raise ValueError(f"{name} has {len(value)} values; {self.color} has "
                                 f"{self.channels}")
        if any(s == 0 for s in self.std):
            raise ValueError("std may not contain 0")
        return self

    @property
    def channels(self) -> int:
        return 1 if self.color == "GRAY" else 3


class ClassificationDecoder(BaseModel):
    """Class scores: `activation` "softmax" for logits, "none" for probabilities."""

    model_config = _STRICT

    type: Literal["classification"] = "classification"
    activation: Literal["softmax", "none"] = "softmax"
    top_k: int = Field(3, ge=1)


class DetectionDecoder(BaseModel):
    """YOLOv8-style boxes: output [1, 4+classes, N] of centre, size and class scores."""

    model_config = _STRICT

    type: Literal["detection"] = "detection"
    format: Literal["yolov8"] = "yolov8"
    confidence: float = Field(0.25, ge=0, le=1)
    iou: float = Field(0.45, ge=0, le=1)
    max_detections: int = Field(100, ge=1)


class AnomalyDecoder(BaseModel):
    """An anomaly score, or a map whose maximum is the score, against `threshold`."""

    model_config = _STRICT

    type: Literal["anomaly"] = "anomaly"
    output: Literal["score", "map"] = "score"
    threshold: float = 0.5


Decoder = Annotated[ClassificationDecoder | DetectionDecoder | AnomalyDecoder,
                    Field(discriminator="type")]


class Golden(BaseModel):
    """An input with its expected output: central and every device check it before use."""

    model_config = _STRICT

    input: list[Any]
    output: list[Any]
    tolerance: float = Field(1e-4, ge=0)


class Lineage(BaseModel):
    """Where a version comes from, for the people who review and audit it."""

    model_config = ConfigDict(frozen=True, extra="allow")

    training_data: str = ""
    metrics: dict[str, float] = Field(default_factory=dict)
    code_revision: str = ""
    author: str = ""
    notes: str = ""
    dataset: str = Field("", description="The dataset version it was trained on, NAME@N, as "
                         "central's `dataset list` names it ('' when trained elsewhere)")
    dataset_id: str = Field("", pattern=r"^([0-9a-f]{64})?$",
                            description="That dataset version's id: the SHA-256 of its manifest")


class TrainingSummary(BaseModel):
    """`metadata.training`: how the version was trained, as the model page shows it."""

    model_config = ConfigDict(frozen=True, extra="allow")

    algorithm: str = Field("", description="e.g. sklearn.ensemble.GradientBoostingRegressor")
    rows: int | None = Field(None, ge=0, description="Training rows")
    holdout_rows: int | None = Field(None, ge=0)
    data: str = Field("", description="The data it was trained on")


class ShadowPolicy(BaseModel):
    """`metadata.shadow`: run the new version beside the active one before switching.

    Process models compare the first output of each input within `tolerance`; vision models
    compare each region's decision (its label, and the set of defect classes found)."""

    model_config = _STRICT

    predictions: int = Field(20, ge=1, description="Inputs (vision: regions) both versions "
                             "must see; the run ends early once they have")
    duration_s: float = Field(600.0, gt=0, description="Longest wait for those inputs")
    tolerance: float = Field(0.5, ge=0, description="Process models: outputs this close "
                             "count as agreeing")
    min_agreement: float = Field(0.9, ge=0, le=1, description="Share that must agree")
    min_comparisons: int = Field(
        5, ge=1, description="A run that compared fewer inputs (vision: regions) than this, "
        "or than `predictions` if that is fewer, fails: a shadow run that saw nothing proves "
        "nothing")

    @property
    def required_comparisons(self) -> int:
        return min(self.min_comparisons, self.predictions)


class ProbationPolicy(BaseModel):
    """`metadata.probation`: watch a newly active version; roll back when it misbehaves."""

    model_config = _STRICT

    duration_s: float = Field(60.0, ge=0, description="How long the version is watched")
    min_observations: int = Field(10, ge=1, description="Before rates and shifts are judged")
    max_error_rate: float = Field(0.1, ge=0, le=1, description="Failed inferences, share")
    max_nonfinite: int = Field(0, ge=0, description="NaN or infinite outputs tolerated")
    latency_p99_factor: float = Field(
        2.0, gt=0, description="p99 latency may reach this multiple of latency_budget_ms")
    max_output_shift: float | None = Field(
        3.0, gt=0, description="Mean output shift vs the previous version, in its spreads")
    max_rejection_rate: float = Field(
        0.5, ge=0, le=1, description="Process models: share of the operators' answers to the "
        "version's recommendations that may be rejections")
    min_answers: int = Field(5, ge=1, description="Answers (accepted or rejected) before the "
                             "rejection rate is judged")


class WatchPolicy(BaseModel):
    """`metadata.watch`: after probation, the active version's statistics are judged again, one
    window of `interval_s` at a time, against the probation thresholds; `breaches` windows in
    a row that breach one raise an alert to central. The version is never rolled back for it."""

    model_config = _STRICT

    interval_s: float = Field(300.0, ge=0, description="Length of one window (one report to "
                              "central each); 0 turns the watch off")
    breaches: int = Field(3, ge=1, description="Consecutive breaching windows that make a "
                          "sustained breach, reported as an alert")


class ReferenceStats(BaseModel):
    """`metadata.reference`: histograms of the training data, per input and output; the
    gateways bin what they see on the same edges, and central computes drift from both."""

    model_config = _STRICT

    inputs: dict[str, Histogram] = Field(default_factory=dict)
    outputs: dict[str, Histogram] = Field(default_factory=dict)


class OutputSpec(BaseModel):
    """`metadata.spec` of a process model: the in-spec range of its quality output."""

    model_config = ConfigDict(frozen=True, extra="allow")

    target: str | None = Field(None, description="The output this range is for")
    low: float | None = None
    high: float | None = None


class ModelMetadata(BaseModel):
    """The keys of a manifest's metadata that central and the agents act on, typed. Other keys
    (training notes, say) are kept as given."""

    model_config = ConfigDict(frozen=True, extra="allow")

    labels: list[str] | None = Field(None, description="Class names, in output order")
    thresholds: dict[str, float] | None = None
    preprocessing: Preprocessing | None = Field(None, description="Vision models")
    decoder: Decoder | None = Field(None, description="Vision models")
    golden: Golden | None = None
    latency_budget_ms: float | None = Field(None, gt=0)
    health_check_timeout_s: float | None = Field(None, gt=0)
    reference: ReferenceStats | None = None
    lineage: Lineage | None = None
    training: TrainingSummary | None = None
    shadow: ShadowPolicy | None = None
    probation: ProbationPolicy | None = None
    watch: WatchPolicy | None = None
    features: list[str] | None = Field(
        None, description="Process models: the tags whose last values are the inputs, in order")
    classes: list[str | int] | None = Field(
        None, description="Process classifiers: class names in output order")
    spec: OutputSpec | None = None
    units: dict[str, str] | None = Field(None, description="Unit of each tag or output")

    @property
    def shadow_policy(self) -> ShadowPolicy:
        return self.shadow or ShadowPolicy()

    @property
    def probation_policy(self) -> ProbationPolicy:
        return self.probation or ProbationPolicy()

    @property
    def watch_policy(self) -> WatchPolicy:
        return self.watch or WatchPolicy()


class MetadataError(ValueError):
    """A manifest's metadata does not fit ModelMetadata; the message names each bad field."""


def typed_metadata(metadata: dict[str, Any]) -> ModelMetadata:
    """The metadata validated; MetadataError names each bad field."""
    try:
        return ModelMetadata.model_validate(metadata)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}"
                             for error in exc.errors())
        raise MetadataError(f"metadata is invalid: {problems}") from None


class TensorSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    dtype: str = Field(description="Element type, e.g. float32")
    shape: list[int | str | None] = Field(description="Dimensions; null or a name if dynamic")


class ModelManifest(BaseModel):
    """Everything an agent needs to fetch, verify and run one model version."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: ModelName
    version: Version
    kind: Literal["process", "vision"]
    sha256: Sha256
    size_bytes: int = Field(gt=0)
    chunk_size_bytes: int = Field(gt=0)
    inputs: list[TensorSpec] = Field(min_length=1)
    outputs: list[TensorSpec] = Field(min_length=1)
    # The wire keeps metadata as given (what central signed); `meta` is its typed view.
    metadata: dict[str, Any] = Field(default_factory=dict)
    published_at: float = Field(default_factory=now)
    key_id: str = Field("", max_length=64, description="Key that signed it (see signing.py)")
    signature: str = Field(
        "", max_length=256,
        description="Ed25519 signature (base64) over everything else, canonically encoded",
    )

    _typed: tuple[dict[str, Any], ModelMetadata] | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _metadata_is_valid(self) -> ModelManifest:
        self._typed = (self.metadata, typed_metadata(self.metadata))
        return self

    @property
    def meta(self) -> ModelMetadata:
        """The metadata, typed; validated when the manifest was made (or copied with new
        metadata)."""
        if self._typed is None or self._typed[0] is not self.metadata:
            self._typed = (self.metadata, typed_metadata(self.metadata))
        return self._typed[1]

    @property
    def chunk_count(self) -> int:
        return -(-self.size_bytes // self.chunk_size_bytes)

    @property
    def ref(self) -> ModelRef:
        return ModelRef(name=self.name, version=self.version, sha256=self.sha256)


def spec_differences(side: str, declared: list[TensorSpec], actual: list[TensorSpec],
                     source: str = "manifest") -> list[str]:
    """What differs between declared specs and the model's; empty when they agree.

    `side` is "input" or "output". A dynamic dimension (null or a name) matches any dynamic
    dimension.
    """
    declared_names = [spec.name for spec in declared]
    actual_names = [spec.name for spec in actual]
    if declared_names != actual_names:
        return [f"{side}s are {actual_names} in the model, {source} says {declared_names}"]
    problems = []
    for want, got in zip(declared, actual, strict=True):
        if want.dtype != got.dtype:
            problems.append(f"{side} {got.name!r} has dtype {got.dtype} in the model, "
                            f"{source} says {want.dtype}")
        if [_dim(d) for d in want.shape] != [_dim(d) for d in got.shape]:
            problems.append(f"{side} {got.name!r} has shape {_shape(got.shape)} in the model, "
                            f"{source} says {_shape(want.shape)}")
    return problems


def _dim(value: int | str | None) -> int | None:
    return value if isinstance(value, int) else None


def _shape(shape: list[int | str | None]) -> str:
    return "x".join("?" if not isinstance(d, int) else str(d) for d in shape) or "scalar"

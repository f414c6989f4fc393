"""Configuration of the pipelines: process models with their features and recommendations,
vision models with their defect rules (`pipelines:` in the YAML file)."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Discriminator, Field, Tag, model_validator

from edge_agent.config.common import Name, StrictModel, require_unique
from edge_agent.config.sources import OpcUaSourceConfig, SourceConfig
from edge_agent.inference.runtime import RuntimeOptions

Transform = Literal["last", "mean", "min", "max", "rate"]


class FeatureConfig(StrictModel):
    """One model input made from one tag: its last value, or a statistic over a time window."""

    tag: str = Field(min_length=1, description="Tag name, as the source's nodes name it")
    transform: Transform = Field(
        "last", description="last value, or mean/min/max over window_s, or rate: change per "
        "second over window_s")
    window_s: float | None = Field(
        None, gt=0, description="Window of mean, min, max and rate, in seconds (the source "
        "must keep at least that much history)")
    unit: str = Field("", description="Unit, shown with the value, e.g. °C")
    valid: tuple[float, float] | None = Field(
        None, description="[low, high]: a value outside means a faulty sensor; no prediction")
    name: str | None = Field(
        None, min_length=1, description="Input name in records; default: the tag for last "
        "values, else tag_transform_<window>s, e.g. zone2_temp_c_mean_60s")

    @model_validator(mode="after")
    def _window_fits_transform(self) -> FeatureConfig:
        if self.transform == "last" and self.window_s is not None:
            raise ValueError(f"feature {self.tag}: window_s applies to mean, min, max and rate; "
                             "remove it or choose one of those transforms")
        if self.transform != "last" and self.window_s is None:
            raise ValueError(f"feature {self.tag}: transform {self.transform} needs window_s "
                             "(seconds), e.g. window_s: 60")
        if self.valid is not None and self.valid[0] >= self.valid[1]:
            raise ValueError(f"feature {self.tag}: valid must be [low, high] with low < high")
        return self

    @property
    def feature_name(self) -> str:
        if self.name:
            return self.name
        if self.transform == "last":
            return self.tag
        return f"{self.tag}_{self.transform}_{self.window_s:g}s"


class ControlConfig(StrictModel):
    """A tag the recommender may change: its hard limits, step and largest single move."""

    min: float = Field(description="Never propose (or write) below this")
    max: float = Field(description="Never propose (or write) above this")
    step: float = Field(gt=0, description="Proposals are multiples of this, e.g. 0.5")
    max_change: float = Field(gt=0, description="Largest move from the current value at once")

    @model_validator(mode="after")
    def _ordered(self) -> ControlConfig:
        if self.min >= self.max:
            raise ValueError(f"control limits need min < max; got min {self.min:g}, "
                             f"max {self.max:g}")
        return self


class ObjectiveConfig(StrictModel):
    """What the recommender aims for, on one model output."""

    type: Literal["minimise", "maximise", "target"] = Field(
        description="minimise or maximise the output, or keep it on a target value or inside "
        "[low, high] (default: the manifest's spec) with a margin")
    output: str | None = Field(
        None, description="Model output, e.g. scrap_rate_pct or probabilities.ok; default: "
        "the manifest's spec target, else the first output")
    low: float | None = Field(None, description="type target: lower spec limit")
    high: float | None = Field(None, description="type target: upper spec limit")
    target: float | None = Field(None, description="type target: the value to hold")
    margin: float = Field(0.0, ge=0, description="type target: aim this far inside [low, high]")

    @model_validator(mode="after")
    def _limits_fit_type(self) -> ObjectiveConfig:
        if self.type != "target" and (self.low, self.high, self.target) != (None, None, None):
            raise ValueError(f"objective {self.type}: low, high and target apply to type "
                             "target only; remove them")
        if self.target is not None and (self.low, self.high) != (None, None):
            raise ValueError("objective target: give either target or low/high, not both")
        if self.low is not None and self.high is not None and \
                self.low + self.margin >= self.high - self.margin:
            raise ValueError(f"objective target: [low + margin, high - margin] is empty "
                             f"(low {self.low:g}, high {self.high:g}, margin {self.margin:g})")
        return self


class AutoWriteConfig(StrictModel):
    """Limits of automatic mode: how often accepted recommendations may be written."""

    max_writes_per_hour: int = Field(4, ge=1, description="Accepted recommendations written "
                                     "per hour at most (each may change several tags)")
    min_interval_s: float = Field(300.0, ge=0, description="Seconds between two writes at least")


class RecommendConfig(StrictModel):
    """Setpoint recommendations: the model searched over the controllable tags."""

    controls: dict[str, ControlConfig] = Field(
        min_length=1, description="Tag -> limits; each must be a last-value feature of the "
        "pipeline (3-5 are typical)")
    objective: ObjectiveConfig
    candidates: int = Field(10_000, ge=10, le=1_000_000,
                            description="Settings scored in the first search batch")
    refine_candidates: int = Field(
        1000, ge=0, le=100_000, description="Settings scored around the best one in the second, "
        "finer batch; 0: no refinement")
    min_improvement: float = Field(
        0.0, ge=0, description="Shown only when it improves the objective by more than this "
        "(in the output's unit), and a new one replaces the open one only when it beats it by "
        "this much")
    hold_s: float = Field(900.0, gt=0, description="An unanswered recommendation expires then")
    outcome_after_s: float = Field(600.0, ge=0,
                                   description="The line is looked at this long after an answer")
    measured_tag: str | None = Field(
        None, description="Tag measuring the objective's output, recorded with the outcome")
    mode: Literal["advise", "auto"] = Field(
        "advise", description="advise: the operator sets the values; auto: an accepted "
        "recommendation is written to the PLC within the control limits")
    auto: AutoWriteConfig = Field(default_factory=AutoWriteConfig)


class ProcessPipelineConfig(StrictModel):
    """Runs a process model on the latest tag values of one source."""

    source_type: ClassVar[str] = "opcua"
    type: Literal["process"] = "process"
    name: Name
    source: Name = Field(description="Name of the source providing the tags")
    model: Name = Field(description="Model name as published in central's registry")
    features: list[str | FeatureConfig] | None = Field(
        None, description="Model inputs in order: tags (their last values) or {tag, transform, "
        "window_s, unit, valid, name}; default: the tags of the model's manifest 'features'"
    )
    interval_s: float = Field(5.0, gt=0, description="Seconds between predictions")
    max_staleness_s: float = Field(
        30.0, gt=0, description="A tag older than this stops predictions until it updates"
    )
    recommend: RecommendConfig | None = Field(
        None, description="Recommend setpoints of controllable tags (see README 'Recommendations')")

    @property
    def feature_configs(self) -> list[FeatureConfig] | None:
        """The features as objects (plain tags are last values); None: the manifest's."""
        if self.features is None:
            return None
        return [FeatureConfig(tag=f) if isinstance(f, str) else f for f in self.features]

    @model_validator(mode="after")
    def _controls_are_features(self) -> ProcessPipelineConfig:
        features = self.feature_configs
        if self.recommend is None or features is None:
            return self  # manifest features: checked when the model loads
        names = [f.feature_name for f in features]
        require_unique(names, f"pipeline {self.name!r} feature")
        last_values = [f.tag for f in features if f.transform == "last"]
        for tag in self.recommend.controls:
            if tag not in last_values:
                raise ValueError(
                    f"control {tag} is not a feature of pipeline {self.name}; controls must be "
                    f"among its last-value features: {', '.join(last_values) or 'none'}")
        return self

    def source_problem(self, source: SourceConfig) -> str | None:
        """Why `source` cannot feed this pipeline: a tag it uses is not among its nodes."""
        assert isinstance(source, OpcUaSourceConfig)  # the source type is checked first
        wanted_tags = [f.tag for f in self.feature_configs or []]
        if self.recommend is not None:
            wanted_tags += list(self.recommend.controls)
            wanted_tags += [self.recommend.measured_tag or ""]
        missing = list(dict.fromkeys(t for t in wanted_tags if t and t not in source.nodes))
        if missing:
            return (f"pipeline {self.name!r} needs tags {missing} that source "
                    f"{source.name!r} does not read; add them under its nodes")
        if self.recommend is not None and self.recommend.mode == "auto":
            problem = source.insecure_write_problem()
            if problem:
                return f"pipeline {self.name!r} has recommend mode auto, but {problem}"
        return None

    def summary(self) -> str:
        """Lines for `edge-agent check-config`."""
        line = (f"pipeline:  {self.name}: {self.source} -> model {self.model} "
                f"every {self.interval_s:g} s")
        recommend = self.recommend
        if recommend is None:
            return line
        controls = ", ".join(f"{tag} {c.min:g}..{c.max:g}" for tag, c in recommend.controls.items())
        writes = (f"writes accepted setpoints, at most {recommend.auto.max_writes_per_hour} an "
                  "hour" if recommend.mode == "auto" else "advises only, never writes")
        return f"{line}\n  recommends: {controls} ({recommend.objective.type}; {writes})"


class DefectRules(StrictModel):
    """When a vision result is a defect worth one record."""

    classes: list[str] = Field(
        min_length=1, description="Labels that are defects (anomaly models: [anomaly])")
    min_confidence: float = Field(0.5, ge=0, le=1)
    min_consecutive: int = Field(2, ge=1, description="Frames in a row before it counts")
    cooldown_s: float = Field(10.0, ge=0, description="One defect passing the camera is one "
                              "record: the same class in the same ROI is quiet this long")


class EvidenceConfig(StrictModel):
    max_side_px: int = Field(1280, ge=64, description="Evidence images are shrunk to this")
    jpeg_quality: int = Field(85, ge=10, le=100)
    annotated: bool = Field(True, description="Also keep a copy with boxes or the heat map")


class SamplingConfig(StrictModel):
    """Frames kept for labelling besides defects: unsure ones and a few normal ones."""

    uncertain_band: tuple[float, float] | None = Field(
        (0.4, 0.6), description="Top confidence in this band: the model is unsure")
    normal_share: float = Field(0.001, ge=0, le=1, description="Share of normal frames kept")
    per_hour: int = Field(60, ge=0)
    per_day: int = Field(500, ge=0)


class RejectOutputConfig(StrictModel):
    """A PLC tag the pipeline writes when a defect of chosen classes is confirmed by its defect
    rules, e.g. to open a reject gate; every write or refusal becomes a `reject_write` record."""

    source: Name = Field(description="Name of the OPC-UA source whose server holds the tag")
    node: str = Field(description="Writable NodeId of the tag, e.g. 'ns=2;s=line1.reject'")
    classes: list[str] = Field(
        min_length=1, description="Defect classes that reject; each one of defects.classes")
    mode: Literal["pulse", "set"] = Field(
        "pulse", description="pulse: write value, then reset_value after pulse_ms; "
        "set: write value and leave it (the PLC resets it)")
    value: float = Field(1, description="Written on a reject, in the node's own data type")
    reset_value: float = Field(0, description="Written pulse_ms after value (mode pulse)")
    pulse_ms: int = Field(500, ge=10, le=60_000, description="How long a pulse holds value")
    min_interval_s: float = Field(
        1.0, ge=0, description="A reject sooner than this after the last one is refused")
    max_per_minute: int = Field(
        30, ge=1, description="Rejects in any 60 s beyond this are refused (a model gone "
        "wrong must not empty the line)")


class VisionPipelineConfig(StrictModel):
    """Runs a vision model on a camera's newest frames; defects become records with evidence."""

    source_type: ClassVar[str] = "camera"
    type: Literal["vision"]
    name: Name
    source: Name = Field(description="Name of the camera source")
    model: Name = Field(description="Model name as published in central's registry")
    defects: DefectRules
    evidence: EvidenceConfig = Field(default_factory=EvidenceConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    runtime: RuntimeOptions = Field(default_factory=RuntimeOptions)
    reject: RejectOutputConfig | None = Field(
        None, description="A PLC tag written on confirmed defects; off when absent")

    @model_validator(mode="after")
    def _reject_classes_are_defects(self) -> VisionPipelineConfig:
        unknown = [c for c in (self.reject.classes if self.reject else [])
                   if c not in self.defects.classes]
        if unknown:
            raise ValueError(
                f"pipeline {self.name!r}: reject.classes {unknown} are not in defects.classes "
                f"{self.defects.classes}; only a confirmed defect can reject")
        return self

    def source_problem(self, source: SourceConfig) -> str | None:
        """Any camera can feed a vision pipeline."""
        return None

    def summary(self) -> str:
        """One line for `edge-agent check-config`."""
        return (f"pipeline:  {self.name}: camera {self.source} -> model {self.model}, "
                f"defects: {', '.join(self.defects.classes)}")


def _pipeline_type(value: Any) -> str:
    kind = value.get("type", "process") if isinstance(value, dict) else getattr(value, "type", "")
    return kind if kind in ("process", "vision") else "process"


PipelineConfig = Annotated[
    Annotated[ProcessPipelineConfig, Tag("process")]
    | Annotated[VisionPipelineConfig, Tag("vision")],
    Discriminator(_pipeline_type),
]


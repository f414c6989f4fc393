"""The agent's configuration: one YAML file, validated by these models (which document it)."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    SecretStr,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from edge_agent.buffer import DEFAULT_KEEP, DEFAULT_PRIORITIES, BufferPolicy
from edge_agent.inference.runtime import RuntimeOptions
from edge_agent.kernel.configfile import load_yaml_model, resolve_path
from edge_agent.kernel.contract import ID_PATTERN
from edge_agent.kernel.signing import Verifier
from edge_agent.kernel.transport import BrokerConfig

EXAMPLE = "deploy/edge-agent.example.yaml"
Name = Annotated[str, Field(pattern=ID_PATTERN)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OpcUaSourceConfig(_Strict):
    """Tags read from an OPC-UA server through a subscription, and setpoints written back."""

    type: Literal["opcua"] = "opcua"
    name: Name = Field(description="Name pipelines use to refer to this source")
    endpoint: str = Field(description="Server URL, e.g. opc.tcp://192.168.1.20:4840")
    nodes: dict[str, str] = Field(
        min_length=1,
        description="Tag name -> NodeId or browse path, e.g. zone2_temp_c: "
        "'ns=2;s=line1.zone2_temp_c' or '/Objects/2:Line1/2:zone2_temp_c'",
    )
    sampling_interval_ms: int = Field(500, ge=0, description="Server-side sampling interval")
    deadband: float | None = Field(
        None, gt=0, description="Absolute deadband in tag units: smaller changes are not sent"
    )
    reconnect_max_backoff_s: float = Field(
        4.0, gt=0, le=8.0,
        description="Longest wait between retries; kept short so data resumes within 10 s of "
        "the server's return",
    )
    history_s: float = Field(
        600.0, ge=0, description="Seconds of values kept per tag for windowed features"
    )
    setpoints: dict[str, str] = Field(
        default_factory=dict,
        description="Tag name -> writable NodeId or browse path of its setpoint, for write-back",
    )
    security_policy: Literal["None", "Basic256Sha256"] = Field(
        "None", description="Basic256Sha256 needs certificate and private_key"
    )
    security_mode: Literal["Sign", "SignAndEncrypt"] = Field(
        "SignAndEncrypt", description="Message security when security_policy is not None"
    )
    certificate: Path | None = Field(None, description="This client's certificate (PEM or DER)")
    private_key: Path | None = Field(None, description="This client's private key (PEM)")
    server_certificate: Path | None = Field(
        None, description="Server certificate to trust; without it the server's is fetched"
    )
    username: str | None = Field(None, description="User name; anonymous when unset")
    password: SecretStr | None = Field(None, description="Password; prefer password_env")
    password_env: str | None = Field(
        None, description="Name of the environment variable that holds the password"
    )

    @field_validator("endpoint")
    @classmethod
    def _opc_url(cls, value: str) -> str:
        if not value.startswith("opc.tcp://"):
            raise ValueError("must start with opc.tcp://")
        return value

    @field_validator("nodes", "setpoints")
    @classmethod
    def _node_addresses(cls, value: dict[str, str]) -> dict[str, str]:
        for tag, address in value.items():
            problem = opcua_address_problem(address)
            if problem:
                raise ValueError(f"tag {tag}: {problem}")
        return value

    @field_validator("certificate", "private_key", "server_certificate")
    @classmethod
    def _security_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            return None
        path = resolve_path(value, info.context)
        if not path.is_file():
            raise ValueError(f"file {path} does not exist; give the path of a PEM or DER file")
        return path

    @model_validator(mode="after")
    def _security_complete(self) -> OpcUaSourceConfig:
        has_cert, has_key = self.certificate is not None, self.private_key is not None
        if self.security_policy != "None" and not (has_cert and has_key):
            raise ValueError(
                f"security_policy {self.security_policy} needs both certificate and private_key: "
                "set them to this client's certificate and key files"
            )
        if has_cert != has_key:
            raise ValueError("certificate and private_key go together: set both or neither")
        if self.password is not None and self.password_env is not None:
            raise ValueError("set password or password_env, not both")
        if (self.password is not None or self.password_env is not None) and not self.username:
            raise ValueError("a password needs a username: set username")
        return self


def opcua_address_problem(address: str) -> str | None:
    """Why `address` is neither a NodeId string nor a browse path like /Objects/2:Line1/2:x."""
    if address.startswith("/"):
        parts = address.strip("/").split("/")
        for part in parts:
            ns, sep, name = part.rpartition(":")
            if not name or (sep and not ns.isdigit()):
                return (f"browse path {address!r} has a bad element {part!r}; "
                        "write elements as NamespaceIndex:BrowseName, e.g. 2:Line1")
        return None
    if not _NODE_ID.fullmatch(address):
        return (f"{address!r} is neither a NodeId (e.g. 'ns=2;s=line1.x', 'i=2258') nor a "
                "browse path starting with / (e.g. '/Objects/2:Line1/2:zone2_temp_c')")
    return None


# The OPC-UA NodeId string form (Part 6, 5.3.1.10): optional namespace, then the identifier.
_NODE_ID = re.compile(r"(ns=\d+;|nsu=[^;]+;)?(i=\d+|s=.+|g=[0-9a-fA-F-]{36}|b=.+)")


class RoiConfig(_Strict):
    """A region of the frame judged on its own (a crop rectangle, in frame pixels)."""

    name: Name
    x: int = Field(ge=0)
    y: int = Field(ge=0)
    width: int = Field(gt=0)
    height: int = Field(gt=0)


class CameraSourceConfig(_Strict):
    """Frames from a video file, an image folder, a USB camera or an RTSP/HTTP MJPEG stream."""

    type: Literal["camera"]
    name: Name = Field(description="Name pipelines use to refer to this camera")
    url: str = Field(description="A video file or folder path (file:// optional), usb:0 or "
                     "/dev/video0, rtsp://..., or http(s)://... for MJPEG")
    loop: bool = Field(True, description="Files and folders: start again at the end")
    native_rate: bool = Field(
        True, description="Video files play at their frame rate, image folders at 10 frames/s; "
        "false: as fast as the pipelines take frames (each decoded only when wanted)")
    max_fps: float | None = Field(None, gt=0, description="Grab at most this many frames/s")
    decode_width: int | None = Field(
        None, ge=16, description="Shrink frames to this width right after decoding (JPEG "
        "folders decode at 1/2, 1/4 or 1/8 size when that still reaches it)")
    rois: list[RoiConfig] = Field(
        default_factory=list, description="Regions judged separately; none: the whole frame")
    reconnect_max_backoff_s: float = Field(10.0, gt=0, description="Longest wait between retries")

    @model_validator(mode="after")
    def _unique_rois(self) -> CameraSourceConfig:
        _unique([r.name for r in self.rois], f"camera {self.name!r} ROI")
        return self


def _source_type(value: Any) -> str:
    kind = value.get("type", "opcua") if isinstance(value, dict) else getattr(value, "type", "")
    return kind if kind in ("opcua", "camera") else "opcua"


SourceConfig = Annotated[
    Annotated[OpcUaSourceConfig, Tag("opcua")] | Annotated[CameraSourceConfig, Tag("camera")],
    Discriminator(_source_type),
]


Transform = Literal["last", "mean", "min", "max", "rate"]


class FeatureConfig(_Strict):
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


class ControlConfig(_Strict):
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


class ObjectiveConfig(_Strict):
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


class AutoWriteConfig(_Strict):
    """Limits of automatic mode: how often accepted recommendations may be written."""

    max_writes_per_hour: int = Field(4, ge=1, description="Accepted recommendations written "
                                     "per hour at most (each may change several tags)")
    min_interval_s: float = Field(300.0, ge=0, description="Seconds between two writes at least")


class RecommendConfig(_Strict):
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


class ProcessPipelineConfig(_Strict):
    """Runs a process model on the latest tag values of one source."""

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
        _unique(names, f"pipeline {self.name!r} feature")
        last_values = [f.tag for f in features if f.transform == "last"]
        for tag in self.recommend.controls:
            if tag not in last_values:
                raise ValueError(
                    f"control {tag} is not a feature of pipeline {self.name}; controls must be "
                    f"among its last-value features: {', '.join(last_values) or 'none'}")
        return self


class DefectRules(_Strict):
    """When a vision result is a defect worth one record."""

    classes: list[str] = Field(
        min_length=1, description="Labels that are defects (anomaly models: [anomaly])")
    min_confidence: float = Field(0.5, ge=0, le=1)
    min_consecutive: int = Field(2, ge=1, description="Frames in a row before it counts")
    cooldown_s: float = Field(10.0, ge=0, description="One defect passing the camera is one "
                              "record: the same class in the same ROI is quiet this long")


class EvidenceConfig(_Strict):
    max_side_px: int = Field(1280, ge=64, description="Evidence images are shrunk to this")
    jpeg_quality: int = Field(85, ge=10, le=100)
    annotated: bool = Field(True, description="Also keep a copy with boxes or the heat map")


class SamplingConfig(_Strict):
    """Frames kept for labelling besides defects: unsure ones and a few normal ones."""

    uncertain_band: tuple[float, float] | None = Field(
        (0.4, 0.6), description="Top confidence in this band: the model is unsure")
    normal_share: float = Field(0.001, ge=0, le=1, description="Share of normal frames kept")
    per_hour: int = Field(60, ge=0)
    per_day: int = Field(500, ge=0)


class VisionPipelineConfig(_Strict):
    """Runs a vision model on a camera's newest frames; defects become records with evidence."""

    type: Literal["vision"]
    name: Name
    source: Name = Field(description="Name of the camera source")
    model: Name = Field(description="Model name as published in central's registry")
    defects: DefectRules
    evidence: EvidenceConfig = Field(default_factory=EvidenceConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    runtime: RuntimeOptions = Field(default_factory=RuntimeOptions)


def _pipeline_type(value: Any) -> str:
    kind = value.get("type", "process") if isinstance(value, dict) else getattr(value, "type", "")
    return kind if kind in ("process", "vision") else "process"


PipelineConfig = Annotated[
    Annotated[ProcessPipelineConfig, Tag("process")]
    | Annotated[VisionPipelineConfig, Tag("vision")],
    Discriminator(_pipeline_type),
]


class BufferConfig(_Strict):
    """What must leave the gateway waits here; see README 'Buffer quota and eviction order'."""

    quota_bytes: int = Field(
        512 * 1024 * 1024, ge=64 * 1024, description="Bytes of records kept while central is away"
    )
    priorities: dict[str, int] = Field(
        default_factory=dict,
        description="Record type -> priority (higher is evicted later); merged over defaults",
    )
    keep: list[str] = Field(
        default_factory=lambda: sorted(DEFAULT_KEEP),
        description="Record types never evicted (eviction reports are always kept)",
    )

    def policy(self) -> BufferPolicy:
        return BufferPolicy(
            quota_bytes=self.quota_bytes,
            priorities={**DEFAULT_PRIORITIES, **self.priorities},
            keep=frozenset(self.keep),
        )


class UplinkConfig(_Strict):
    batch_size: int = Field(500, ge=1, le=5000, description="Most records per MQTT message")
    batch_max_bytes: int = Field(
        256 * 1024, ge=1024, le=4 * 1024 * 1024, description="Most payload bytes per message"
    )
    compress: bool = Field(False, description="zlib-compress batches (slow or metered links)")
    ack_timeout_s: float = Field(10.0, gt=0, description="Resend a batch not acked by then")
    max_in_flight: int = Field(4, ge=1, le=64, description="Batches awaiting ack at once")


class UiConfig(_Strict):
    """The operator page on the gateway (see README 'Operator page')."""

    host: str = Field("127.0.0.1", description="Address of the gateway's operator page; any "
                      "other than a loopback address needs ui.token or ui.password")
    port: int = Field(8080, ge=0, le=65535, description="0 turns the page off")
    token: SecretStr | None = Field(
        None, description="Needed by every request but /healthz: as `Authorization: Bearer` "
        "or typed once into the page's login form")
    password: SecretStr | None = Field(
        None, description="Typed into the page's login form (or sent as Bearer) instead of "
        "the token")
    refresh_s: float = Field(5.0, ge=1, description="Seconds between the page's live updates")
    tag_names: dict[str, str] = Field(
        default_factory=dict, description="Tag -> words on the page, e.g. zone2_temp_c: "
        "Zone 2 temperature; default: made from the tag name")
    trend_tags: list[str] | None = Field(
        None, description="Tags charted beside the prediction; default: those of the latest "
        "recommendation, else the first four inputs")

    @model_validator(mode="after")
    def _login_when_reachable(self) -> UiConfig:
        if self.port and not is_loopback(self.host) and not (self.token or self.password):
            raise ValueError(
                f"ui.host {self.host!r} lets other machines open the operator page, where "
                "recommendations are answered: set ui.token (or ui.password) so it asks for a "
                "login, or set ui.host to 127.0.0.1")
        return self


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach `host` (names other than localhost count as not)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class SecurityConfig(_Strict):
    verify_signatures: bool = Field(
        True, description="Accept only manifests and commands signed by central's key"
    )
    central_public_key: Path | None = Field(
        None,
        description="central's signing.pub (from `central-sync keys init`); relative paths "
        "are relative to this file",
    )

    @field_validator("central_public_key")
    @classmethod
    def _relative_to_file(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else resolve_path(value, info.context)

    @model_validator(mode="after")
    def _key_when_verifying(self) -> SecurityConfig:
        if self.verify_signatures and self.central_public_key is None:
            raise ValueError(
                "central_public_key is required while verify_signatures is on (the default): "
                "copy signing.pub from central (`central-sync keys show`) and name it here"
            )
        return self

    def verifier(self) -> Verifier | None:
        """The key to check signatures with; None only when checking is turned off."""
        if not self.verify_signatures:
            return None
        assert self.central_public_key is not None
        return Verifier.from_file(self.central_public_key)


class AgentConfig(_Strict):
    device_id: Name = Field(description="This gateway's id, unique in the plant")
    labels: list[Name] = Field(
        default_factory=list,
        description="Groups for rollouts, e.g. [line-3, extruders]: `rollout start --group`",
    )
    data_dir: Path = Field(
        Path("var/edge-agent"), validate_default=True,
        description="Buffer and model store; relative paths are relative to this file",
    )
    broker: BrokerConfig = Field(default_factory=BrokerConfig)
    sources: list[SourceConfig] = Field(default_factory=list)
    pipelines: list[PipelineConfig] = Field(default_factory=list)
    buffer: BufferConfig = Field(default_factory=BufferConfig)
    uplink: UplinkConfig = Field(default_factory=UplinkConfig)
    ui: UiConfig = Field(default_factory=UiConfig)
    security: SecurityConfig = Field(default_factory=dict, validate_default=True)  # type: ignore[arg-type]
    status_interval_s: float = Field(10.0, gt=0, description="Seconds between status updates")
    monitoring_interval_s: float = Field(
        300.0, ge=1, description="Seconds each model_stats record sums up (latency, inputs, "
        "outputs and classes per model version, binned for drift)")

    @field_validator("data_dir")
    @classmethod
    def _relative_to_file(cls, value: Path, info: ValidationInfo) -> Path:
        return resolve_path(value, info.context)

    @model_validator(mode="after")
    def _no_password_in_clear(self) -> AgentConfig:
        broker = self.broker
        if (broker.password or broker.password_file) and not broker.tls and not is_loopback(
                broker.host):
            raise ValueError(
                f"broker.tls is off but the broker {broker.host} is another machine: the "
                "password would cross the network in clear; set broker.tls: true and "
                "broker.port: 8883 (with ca_file), or run the broker on this machine")
        return self

    @model_validator(mode="after")
    def _references_resolve(self) -> AgentConfig:
        source_names = [s.name for s in self.sources]
        _unique(source_names, "source")
        _unique([p.name for p in self.pipelines], "pipeline")
        for pipeline in self.pipelines:
            if pipeline.source not in source_names:
                known = ", ".join(source_names) or "none defined"
                raise ValueError(
                    f"pipeline {pipeline.name!r} uses source {pipeline.source!r}, "
                    f"which is not defined (sources: {known})"
                )
            source = next(s for s in self.sources if s.name == pipeline.source)
            wanted = "opcua" if pipeline.type == "process" else "camera"
            if source.type != wanted:
                raise ValueError(
                    f"{pipeline.type} pipeline {pipeline.name!r} needs a {wanted} source; "
                    f"{source.name!r} is a {source.type} source"
                )
            if not isinstance(pipeline, ProcessPipelineConfig):
                continue
            assert isinstance(source, OpcUaSourceConfig)
            wanted_tags = [f.tag for f in pipeline.feature_configs or []]
            if pipeline.recommend is not None:
                wanted_tags += list(pipeline.recommend.controls)
                wanted_tags += [pipeline.recommend.measured_tag or ""]
            missing = list(dict.fromkeys(t for t in wanted_tags if t and t not in source.nodes))
            if missing:
                raise ValueError(
                    f"pipeline {pipeline.name!r} needs tags {missing} that source "
                    f"{source.name!r} does not read; add them under its nodes"
                )
        return self

    @property
    def buffer_path(self) -> Path:
        return self.data_dir / "buffer.db"

    @property
    def model_store_path(self) -> Path:
        return self.data_dir / "models"


def _unique(names: list[str], what: str) -> None:
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{what} names must be unique; repeated: {', '.join(duplicates)}")


def load_agent_config(path: str | Path) -> AgentConfig:
    return load_yaml_model(path, AgentConfig, example=EXAMPLE)

"""The agent's configuration file as a whole: identity, broker, buffer, uplink, operator page
and security around the sources and pipelines; `load_agent_config` reads and checks it."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, ValidationInfo, field_validator, model_validator

from edge_agent.buffer import DEFAULT_KEEP, DEFAULT_PRIORITIES, BufferPolicy
from edge_agent.config.common import Name, StrictModel, require_unique
from edge_agent.config.opcua_server import OpcUaServerConfig
from edge_agent.config.pipelines import PipelineConfig
from edge_agent.config.sources import SourceConfig
from edge_agent.config.sparkplug import SparkplugConfig
from edge_agent.config.ui import UiConfig, is_loopback
from edge_agent.kernel.configfile import load_yaml_model, resolve_path
from edge_agent.kernel.signing import Verifier
from edge_agent.kernel.transport import BrokerConfig

EXAMPLE = "deploy/edge-agent.example.yaml"

class BufferConfig(StrictModel):
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


class UplinkConfig(StrictModel):
    batch_size: int = Field(500, ge=1, le=5000, description="Most records per MQTT message")
    batch_max_bytes: int = Field(
        256 * 1024, ge=1024, le=4 * 1024 * 1024, description="Most payload bytes per message"
    )
    compress: bool = Field(False, description="zlib-compress batches (slow or metered links)")
    ack_timeout_s: float = Field(10.0, gt=0, description="Resend a batch not acked by then")
    max_in_flight: int = Field(4, ge=1, le=64, description="Batches awaiting ack at once")


# A signed command acts only this soon after central issued it: central signs each command as
# it sends it (a rollout's too, wave by wave), and the broker keeps one for a gateway that is
# away; a copy held back or replayed later than this is refused and must be sent again.
DEFAULT_COMMAND_MAX_AGE_S = 24 * 3600.0
DEFAULT_COMMAND_CLOCK_SKEW_S = 300.0  # how far central's clock may be ahead of the gateway's


class SecurityConfig(StrictModel):
    verify_signatures: bool = Field(
        True, description="Accept only manifests and commands signed by central's key"
    )
    central_public_key: Path | None = Field(
        None,
        description="central's signing.pub (from `central-sync keys init`); relative paths "
        "are relative to this file",
    )
    command_max_age_s: float = Field(
        DEFAULT_COMMAND_MAX_AGE_S, gt=0,
        description="A deploy or rollback command issued longer ago than this is refused, "
        "signed or not (reported as a failed deployment step): it bounds how long a command "
        "may wait at the broker for this gateway, and how late a recorded one can be replayed",
    )
    command_clock_skew_s: float = Field(
        DEFAULT_COMMAND_CLOCK_SKEW_S, ge=0,
        description="How far in the future, by this gateway's clock, a command's issue time "
        "may be; keep the clocks in step with NTP rather than raising it",
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


class AgentConfig(StrictModel):
    device_id: Name = Field(description="This gateway's id, unique in the plant")
    labels: list[Name] = Field(
        default_factory=list,
        description="What this gateway reports as its groups, e.g. [line-3]: shown on "
        "central's pages; rollouts select devices by the labels central provisioned "
        "(`central-sync device label`), never by these",
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
    opcua_server: OpcUaServerConfig | None = Field(
        None, description="An OPC-UA server for HMIs and SCADA with the pipelines' latest "
        "values, read-only; off unless set")
    sparkplug: SparkplugConfig = Field(default_factory=SparkplugConfig)
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
    def _login_before_writing_to_the_plc(self) -> AgentConfig:
        # In auto mode an answer on the page writes setpoints: nobody may answer unseen.
        writers = [p.name for p in self.pipelines if p.type == "process"
                   and p.recommend is not None and p.recommend.mode == "auto"]
        if writers and self.ui.port and not self.ui.login_required:
            raise ValueError(
                f"pipeline {writers[0]!r} writes accepted recommendations to the PLC "
                "(recommend.mode: auto), so the operator page must ask for a login: set "
                "ui.password (or ui.token), or set ui.port: 0 to turn the page off")
        return self

    @model_validator(mode="after")
    def _references_resolve(self) -> AgentConfig:
        source_names = [s.name for s in self.sources]
        require_unique(source_names, "source")
        require_unique([p.name for p in self.pipelines], "pipeline")
        for pipeline in self.pipelines:
            if pipeline.source not in source_names:
                known = ", ".join(source_names) or "none defined"
                raise ValueError(
                    f"pipeline {pipeline.name!r} uses source {pipeline.source!r}, "
                    f"which is not defined (sources: {known})"
                )
            source = next(s for s in self.sources if s.name == pipeline.source)
            if source.type != pipeline.source_type:
                raise ValueError(
                    f"{pipeline.type} pipeline {pipeline.name!r} needs a {pipeline.source_type} "
                    f"source; {source.name!r} is a {source.type} source"
                )
            problem = pipeline.source_problem(source)
            if problem:
                raise ValueError(problem)
            reject = getattr(pipeline, "reject", None)
            if reject is not None and not any(
                    s.name == reject.source and s.type == "opcua" for s in self.sources):
                raise ValueError(
                    f"pipeline {pipeline.name!r}: reject.source {reject.source!r} must name an "
                    "opcua source of this configuration")
        return self

    @property
    def buffer_path(self) -> Path:
        return self.data_dir / "buffer.db"

    @property
    def model_store_path(self) -> Path:
        return self.data_dir / "models"


def load_agent_config(path: str | Path) -> AgentConfig:
    return load_yaml_model(path, AgentConfig, example=EXAMPLE)

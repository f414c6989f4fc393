"""Running the fleet from central: signed gateway configurations, agent software updates, and
diagnostics (log tails, the effective configuration, restarts, the gateway's clock).

A configuration document carries the sources and pipelines (`body`) that central rolls out to
gateways; it is versioned per name, immutable, identified by the SHA-256 of its body and signed
by central like a model manifest. The body is checked here only for size and shape: the agent's
own configuration models (`edge_agent.config.remote`) validate what it says, on central at
publish and on every gateway before it is applied.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edge_agent.kernel.contract.deployment import _Command
from edge_agent.kernel.contract.fields import (
    ID_PATTERN,
    DeviceId,
    ModelName,
    Sha256,
    Version,
    WireMessage,
    new_id,
    now,
)

MAX_CONFIG_BODY_BYTES = 256 * 1024  # a line's sources and pipelines are a few KB
MAX_CONFIG_VERSION = 10**9
DEFAULT_CONFIG_PROBATION_S = 60.0
MAX_CONFIG_PROBATION_S = 3600.0
AGENT_PACKAGE_NAME = "edge-agent"
DEFAULT_AGENT_HEALTHY_WITHIN_S = 120.0
MAX_AGENT_HEALTHY_WITHIN_S = 3600.0
MAX_REQUIREMENTS = 200
MAX_LOG_LINES = 500  # per request and per log message
MAX_LOG_LINE_CHARS = 2000  # longer lines are cut, with "…" at the end
MAX_FOLLOW_S = 600.0  # a follow ends by itself after this; ask again to go on
MAX_REPORT_BYTES = 512 * 1024  # a diagnose report: the effective configuration and states

ConfigVersion = Annotated[int, Field(ge=1, le=MAX_CONFIG_VERSION,
                                     description="Version of a configuration: 1, 2, 3...")]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
LOG_LEVELS: tuple[str, ...] = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

_STRICT = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


def canonical_json(value: Any) -> bytes:
    """The bytes a configuration body is hashed over: keys sorted, no whitespace, ASCII."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def config_body_sha256(body: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(body)).hexdigest()


class ConfigRef(BaseModel):
    """One configuration version, as a status and a deployment name it."""

    model_config = _STRICT

    name: ModelName
    version: ConfigVersion
    sha256: Sha256

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"


class ConfigDocument(BaseModel):
    """A signed, immutable configuration version: the sources and pipelines of its gateways."""

    model_config = _STRICT

    name: ModelName = Field(description="e.g. line-3-vision; versions count up per name")
    version: ConfigVersion
    body: dict[str, Any] = Field(description="sources, pipelines and the other settings central "
                                 "may set (see `edge-agent config-schema`)")
    sha256: Sha256 = Field(description="SHA-256 of the body, canonically encoded")
    probation_s: float = Field(
        DEFAULT_CONFIG_PROBATION_S, ge=0, le=MAX_CONFIG_PROBATION_S,
        description="How long a gateway watches the new configuration before confirming it; "
        "a failed source or pipeline within it sends the gateway back to its previous one")
    notes: str = Field("", max_length=2000)
    published_at: float = Field(default_factory=now)
    published_by: str = Field("", max_length=128)
    key_id: str = Field("", max_length=64)
    signature: str = Field("", max_length=256)

    @model_validator(mode="after")
    def _body_matches_hash(self) -> ConfigDocument:
        size = len(canonical_json(self.body))
        if size > MAX_CONFIG_BODY_BYTES:
            raise ValueError(f"configuration body is {size} bytes, more than "
                             f"{MAX_CONFIG_BODY_BYTES}")
        actual = config_body_sha256(self.body)
        if actual != self.sha256:
            raise ValueError(f"configuration body has sha256 {actual[:12]}, the document says "
                             f"{self.sha256[:12]}")
        return self

    @property
    def ref(self) -> ConfigRef:
        return ConfigRef(name=self.name, version=self.version, sha256=self.sha256)

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"


class ConfigDeployCommand(_Command):
    """Apply a configuration version; a lower version of the same name needs a rollback."""

    kind: Literal["config_deploy"] = "config_deploy"
    document: ConfigDocument


class ConfigRollbackCommand(_Command):
    """Return to the configuration the gateway ran before (or the named version of `name`)."""

    kind: Literal["config_rollback"] = "config_rollback"
    name: ModelName
    to_version: ConfigVersion | None = None


Requirement = Annotated[str, Field(min_length=1, max_length=200)]


class AgentPackage(BaseModel):
    """A signed agent release: the project's wheel with its dependency list, sent in chunks
    like a model artifact."""

    model_config = _STRICT

    name: Literal["edge-agent"] = AGENT_PACKAGE_NAME
    version: Version
    filename: str = Field(pattern=r"^[A-Za-z0-9_.+-]{1,200}\.whl$",
                          description="The wheel's file name, as pip needs it")
    sha256: Sha256
    size_bytes: int = Field(gt=0)
    chunk_size_bytes: int = Field(gt=0)
    requires: list[Requirement] = Field(default_factory=list, max_length=MAX_REQUIREMENTS,
                                        description="Requires-Dist of the wheel")
    requires_python: str = Field("", max_length=100)
    published_at: float = Field(default_factory=now)
    published_by: str = Field("", max_length=128)
    key_id: str = Field("", max_length=64)
    signature: str = Field("", max_length=256)

    @property
    def chunk_count(self) -> int:
        return -(-self.size_bytes // self.chunk_size_bytes)


class AgentUpdateCommand(_Command):
    """Install an agent release beside the running one and switch to it; the previous one
    comes back if the new one is not online and healthy within `healthy_within_s`."""

    kind: Literal["agent_update"] = "agent_update"
    package: AgentPackage
    healthy_within_s: float = Field(DEFAULT_AGENT_HEALTHY_WITHIN_S, gt=0,
                                    le=MAX_AGENT_HEALTHY_WITHIN_S)


class AgentRollbackCommand(_Command):
    """Go back to the agent release that ran before the current one."""

    kind: Literal["agent_rollback"] = "agent_rollback"


class LogRequest(_Command):
    """Send the last `lines` log lines at `level` or above; with `follow_s`, keep sending new
    ones for that long."""

    kind: Literal["log_request"] = "log_request"
    level: LogLevel = "INFO"
    lines: int = Field(100, ge=0, le=MAX_LOG_LINES)
    follow_s: float = Field(0.0, ge=0, le=MAX_FOLLOW_S)


class DiagnoseRequest(_Command):
    """Report the effective configuration (secrets redacted), versions, sources, buffer."""

    kind: Literal["diagnose_request"] = "diagnose_request"


class RestartCommand(_Command):
    """Restart one pipeline (with its source when no other pipeline uses it), or the agent."""

    kind: Literal["restart"] = "restart"
    pipeline: str | None = Field(None, pattern=ID_PATTERN,
                                 description="The pipeline to restart; none: the whole agent")


class ClockProbe(WireMessage):
    """Central's time now; the agent answers at once with its own (ClockReply), so central
    measures the offset between the clocks from the round trip. Not signed: it changes nothing
    and the agent answers at most one per second."""

    kind: Literal["clock_probe"] = "clock_probe"
    device_id: DeviceId
    probe_id: str = Field(default_factory=new_id, min_length=1, max_length=64)
    central_sent_at: float = Field(default_factory=now)


class ClockReply(WireMessage):
    kind: Literal["clock_reply"] = "clock_reply"
    device_id: DeviceId
    probe_id: str = Field(min_length=1, max_length=64)
    central_sent_at: float
    device_time: float = Field(default_factory=now)


class LogLine(BaseModel):
    model_config = _STRICT

    at: float
    level: LogLevel
    logger: str = Field("", max_length=200)
    message: str = Field(max_length=MAX_LOG_LINE_CHARS + 1)


class LogBatch(WireMessage):
    """Log lines answering a LogRequest; `final` when no more come for it."""

    kind: Literal["log_lines"] = "log_lines"
    device_id: DeviceId
    request_id: str = Field(min_length=1, max_length=64, description="The LogRequest's "
                            "command_id")
    lines: list[LogLine] = Field(default_factory=list, max_length=MAX_LOG_LINES)
    dropped: int = Field(0, ge=0, description="Lines left out to respect the rate limit")
    final: bool = False
    sent_at: float = Field(default_factory=now)


class DiagnosticReply(WireMessage):
    """The answer to a DiagnoseRequest or RestartCommand (and to a refused LogRequest)."""

    kind: Literal["diagnostic_reply"] = "diagnostic_reply"
    device_id: DeviceId
    request_id: str = Field(min_length=1, max_length=64)
    action: Literal["diagnose", "restart", "logs"]
    ok: bool
    detail: str = Field("", max_length=4000)
    report: dict[str, Any] = Field(default_factory=dict)
    sent_at: float = Field(default_factory=now)

    @model_validator(mode="after")
    def _bounded_report(self) -> DiagnosticReply:
        size = len(canonical_json(self.report))
        if size > MAX_REPORT_BYTES:
            raise ValueError(f"report is {size} bytes, more than {MAX_REPORT_BYTES}")
        return self


def clip_log_message(message: str) -> str:
    """A log message cut to what a LogLine holds."""
    if len(message) <= MAX_LOG_LINE_CHARS:
        return message
    return message[:MAX_LOG_LINE_CHARS] + "…"

"""The device's retained status: online state, models, sources, buffer and uplink."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from edge_agent.kernel.contract.fields import (
    FINITE,
    ID_PATTERN,
    DeviceId,
    ModelRef,
    WireMessage,
    now,
)
from edge_agent.kernel.contract.fleet import ConfigRef
from edge_agent.kernel.redaction import redact_credentials


class SourceState(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    state: Literal["connecting", "connected", "reconnecting", "failed", "stopped"]
    detail: str = Field("", description="Why the source is in this state, for people")

    @field_validator("detail")
    @classmethod
    def _without_credentials(cls, detail: str) -> str:
        # A camera URL in the detail may carry its password; this status is shown on pages,
        # retained on the broker and stored by central, also when an older agent sent it.
        return redact_credentials(detail)


class BufferHealth(BaseModel):
    model_config = FINITE

    depth: int = Field(ge=0, description="Records waiting for central's ack")
    oldest_age_s: float | None = Field(None, description="Age of the oldest unsent record")
    bytes_used: int = Field(ge=0)
    quota_bytes: int = Field(ge=0)
    evicted: int = Field(0, ge=0, description="Records dropped to respect the quota")
    evicted_by_kind: dict[str, int] = Field(
        default_factory=dict, description="Evicted records by record type, since install"
    )


class UplinkHealth(BaseModel):
    model_config = FINITE

    connected: bool
    acked_records: int = Field(0, ge=0)
    records_per_s: float = Field(0.0, ge=0)
    round_trip_ms: float | None = None


class DeviceStatus(WireMessage):
    """Retained on the status topic; the broker publishes the offline form as last will."""

    kind: Literal["device_status"] = "device_status"
    device_id: DeviceId
    state: Literal["online", "offline"]
    sent_at: float = Field(default_factory=now)
    agent_version: str = ""
    labels: list[Annotated[str, Field(pattern=ID_PATTERN)]] = Field(
        default_factory=list, description="Groups the device says it belongs to, e.g. line-3: "
        "shown on central, never trusted (rollout groups come from provisioning)")
    active_models: list[ModelRef] = Field(default_factory=list)
    config: ConfigRef | None = Field(
        None, description="The configuration from central the gateway runs; none: only its "
        "local file")
    sources: dict[str, SourceState] = Field(default_factory=dict)
    buffer: BufferHealth | None = None
    uplink: UplinkHealth | None = None


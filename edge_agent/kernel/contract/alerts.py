"""The open alerts of a device's line that an operator can act on, as central sends them."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from edge_agent.kernel.contract.fields import (
    FINITE,
    ID_PATTERN,
    DeviceId,
    WireMessage,
    now,
)

MAX_OPERATOR_ALERTS = 50  # a screen shows a handful; central keeps the most severe, newest
MAX_ALERT_SUMMARY_CHARS = 300
MAX_ALERT_DEVICES = 200  # the gateways of one line


class OperatorAlert(BaseModel):
    """One open alert as the operator page shows it."""

    model_config = FINITE

    alert_id: Annotated[str, Field(pattern=ID_PATTERN)]
    rule: Annotated[str, Field(pattern=ID_PATTERN, description="The rule that fired it")]
    severity: Literal["info", "warning", "critical"]
    summary: str = Field(max_length=MAX_ALERT_SUMMARY_CHARS, description="What is wrong, "
                         "for people")
    fired_at: float = Field(description="When it fired (Unix seconds)")
    acked: bool = Field(False, description="Someone acknowledged it on central")
    devices: list[DeviceId] = Field(default_factory=list, max_length=MAX_ALERT_DEVICES,
                                    description="The line's devices concerned")


class DeviceAlerts(WireMessage):
    """Retained on a device's alerts topic: every open operator alert of its line, replaced
    whole on each change; an empty list means none is open."""

    kind: Literal["device_alerts"] = "device_alerts"
    device_id: DeviceId
    sent_at: float = Field(default_factory=now, description="Central's clock; a receiver "
                           "keeps the newest")
    alerts: list[OperatorAlert] = Field(default_factory=list, max_length=MAX_OPERATOR_ALERTS)

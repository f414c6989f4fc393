"""Alert rules and notification routes: the `alerts:` section of central's configuration.

The rules that matter on a plant floor are on from the first start (`default_rules`); a
configuration lists its own to change thresholds, durations, targets and routing.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from edge_agent.kernel.contract import ID_PATTERN

Severity = Literal["info", "warning", "critical"]
SEVERITY_RANK: dict[str, int] = {"info": 0, "warning": 1, "critical": 2}
RuleKind = Literal["gateway_offline", "buffer_filling", "buffer_evicting", "source_down",
                   "model_rolled_back", "drift", "defect_rate"]
Template = Literal["json", "slack", "teams", "google_chat", "mattermost"]
Name = Annotated[str, Field(pattern=ID_PATTERN)]
_CLOCK = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")
# The built-in route of the SCADA topic (alerts.mqtt_topic): delivered through the same outbox
# as the configured routes, so a broker outage is retried and every attempt recorded.
SCADA_ROUTE = "scada-topic"


class Targets(BaseModel):
    """What a rule looks at; an empty list means all."""

    model_config = ConfigDict(extra="forbid")

    devices: list[Name] = Field(default_factory=list, description="Device ids")
    labels: list[Name] = Field(default_factory=list, description="Provisioning labels "
                               "(lines, areas); a device with any of them is looked at")
    cameras: list[str] = Field(default_factory=list, description="Camera names (defect_rate)")
    classes: list[str] = Field(default_factory=list, description="Defect classes (defect_rate)")


class RuleConfig(BaseModel):
    """One alert rule: a condition over what central knows, held for `for_s` before it fires
    and clear for `resolve_after_s` before it resolves (no flapping)."""

    model_config = ConfigDict(extra="forbid")

    name: Name = Field(description="Unique; shown in every alert and notification")
    kind: RuleKind = Field(description="Which condition: gateway_offline, buffer_filling, "
                           "buffer_evicting, source_down, model_rolled_back, drift, defect_rate")
    enabled: bool = True
    severity: Severity = "warning"
    for_s: float = Field(0.0, ge=0, description="The condition holds this long before the "
                         "alert fires")
    resolve_after_s: float = Field(60.0, ge=0, description="The condition is clear (below "
                                   "`resolve_threshold`) this long before the alert resolves")
    threshold: float | None = Field(None, description="Fires at or above this value (its unit "
                                    "depends on the kind; each kind has a default)")
    resolve_threshold: float | None = Field(
        None, description="Clear only below this value (hysteresis); default: the threshold")
    window_s: float | None = Field(None, gt=0, description="Period looked back over "
                                   "(buffer_evicting, model_rolled_back, defect_rate)")
    group_by: Literal["device", "line"] = Field(
        "device", description="One alert per device, or one per line (the device's first "
        "provisioning label starting with alerts.line_label_prefix) listing its devices")
    targets: Targets = Field(default_factory=Targets)
    operator: bool = Field(False, description="Also shown on the operator page of each "
                           "gateway concerned (for what an operator on the line can act on)")
    # defect_rate only
    min_count: int = Field(5, ge=1, description="defect_rate: defects in the window below this "
                           "never fire, whatever the rate (one defect never pages anyone)")
    baseline_days: float = Field(7.0, gt=0, description="defect_rate: the baseline is the "
                                 "rate over this many previous days")
    fixed_per_hour: float | None = Field(
        None, gt=0, description="defect_rate: compare against this rate instead of the "
        "baseline (then `threshold` multiplies it)")
    baseline_min_hours: float = Field(
        24.0, ge=0, description="defect_rate: a camera and class with less history than this "
        "have no baseline yet and are not judged, unless `fixed_per_hour` is set (a new line "
        "pages nobody for its ordinary defects)")
    baseline_floor_per_hour: float = Field(
        1.0, gt=0, description="defect_rate: a baseline below this counts as this (a class "
        "that hardly ever occurs is compared with a small rate, not with zero)")

    @model_validator(mode="after")
    def _fill_defaults(self) -> RuleConfig:
        threshold, resolve, window = KIND_DEFAULTS[self.kind]
        if self.threshold is None:
            self.threshold = threshold
        if self.resolve_threshold is None:
            self.resolve_threshold = resolve if self.threshold == threshold else self.threshold
        if self.resolve_threshold > self.threshold:
            raise ValueError(f"rule {self.name}: resolve_threshold {self.resolve_threshold} is "
                             f"above threshold {self.threshold}; it must be at or below it")
        if self.window_s is None:
            self.window_s = window
        return self


# kind -> (threshold, resolve_threshold, window_s); the unit of each is in README "Alerts"
KIND_DEFAULTS: dict[str, tuple[float, float, float]] = {
    "gateway_offline": (1.0, 1.0, 3600.0),      # 1 while offline
    "buffer_filling": (0.8, 0.7, 3600.0),       # share of the buffer's quota used
    "buffer_evicting": (1.0, 1.0, 600.0),       # records evicted within window_s
    "source_down": (1.0, 1.0, 3600.0),          # 1 while a source is failed or reconnecting
    "model_rolled_back": (1.0, 1.0, 3600.0),    # 1 for window_s after a rollback
    "drift": (0.25, 0.1, 3600.0),               # largest PSI over the window
    "defect_rate": (3.0, 1.5, 3600.0),          # rate in the window over the baseline rate
}


class QuietHours(BaseModel):
    """Hours a route stays quiet: notifications below `min_severity` wait until the end."""

    model_config = ConfigDict(extra="forbid")

    start: str = Field(description="HH:MM, local time of central")
    end: str = Field(description="HH:MM; before start means the next day")
    min_severity: Severity = Field("critical", description="Sent even in quiet hours")

    @field_validator("start", "end")
    @classmethod
    def _clock(cls, value: str) -> str:
        if not _CLOCK.match(value):
            raise ValueError(f"{value!r} is not a time of day: write HH:MM, e.g. 22:00")
        return value

    def quiet_until(self, at: float) -> float | None:
        """When the quiet period holding `at` ends (epoch seconds), or None if `at` is not
        in one."""
        local = dt.datetime.fromtimestamp(at).astimezone()
        start, end = (dt.time.fromisoformat(v) for v in (self.start, self.end))
        today = local.date()
        for day in (today - dt.timedelta(days=1), today):
            begins = dt.datetime.combine(day, start, local.tzinfo)
            ends = dt.datetime.combine(day + dt.timedelta(days=int(end <= start)), end,
                                       local.tzinfo)
            if begins <= local < ends:
                return ends.timestamp()
        return None


class RouteConfig(BaseModel):
    """Where notifications go, and which: a webhook, an SMTP mailbox, or MQTT."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: Name
    kind: Literal["webhook", "smtp", "mqtt"]
    enabled: bool = True
    min_severity: Severity = Field("warning", description="Alerts below this are not sent "
                                   "here")
    rules: list[Name] = Field(default_factory=list, description="Only these rules; empty: all")
    labels: list[Name] = Field(default_factory=list, description="Only alerts concerning a "
                               "device with one of these labels; empty: all")
    send_resolved: bool = Field(True, description="Also say when an alert resolves")
    quiet_hours: QuietHours | None = None
    # webhook
    url: str | None = Field(None, description="webhook: http(s) URL that receives a POST")
    url_env: str | None = Field(
        None, description="webhook: environment variable holding the URL instead (a chat "
        "service's webhook URL carries its token: keep it out of this file)")
    template: Template = Field("json", description="webhook: body shape: json (the alert as "
                               "documented), slack, teams, google_chat, mattermost")
    headers_env: dict[str, str] = Field(
        default_factory=dict, description="webhook: header name -> environment variable "
        "holding its value (a token is never written in this file)")
    timeout_s: float = Field(10.0, gt=0, le=120)
    # smtp
    host: str | None = Field(None, description="smtp: server host")
    port: int = Field(587, ge=1, le=65535)
    starttls: bool = Field(True, description="smtp: upgrade with STARTTLS before login "
                           "(refused if the server does not offer it)")
    ca_file: str | None = Field(None, description="smtp: CA certificate to verify the server "
                                "with; default: the system's")
    username: str | None = None
    password_env: str | None = Field(None, description="smtp: environment variable holding "
                                     "the password")
    sender: str | None = Field(None, alias="from", description="smtp: From address")
    to: list[str] = Field(default_factory=list, description="smtp: recipients")
    # mqtt (central's own broker connection)
    topic: str | None = Field(None, description="mqtt: topic root; default "
                              "{topic_prefix}/alerts")

    @model_validator(mode="after")
    def _complete(self) -> RouteConfig:
        missing = {"webhook": [("url or url_env", self.url or self.url_env)],
                   "smtp": [("host", self.host), ("from", self.sender), ("to", self.to)],
                   "mqtt": []}[self.kind]
        absent = [name for name, value in missing if not value]
        if absent:
            raise ValueError(f"route {self.name} ({self.kind}) needs " + ", ".join(absent))
        if self.name == SCADA_ROUTE:
            raise ValueError(f"route name {SCADA_ROUTE} is the built-in SCADA topic's "
                             "(alerts.mqtt_topic); choose another")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"route {self.name}: url must start with http:// or https://")
        if self.url and self.url_env:
            raise ValueError(f"route {self.name}: give url or url_env, not both")
        return self


def default_rules() -> list[RuleConfig]:
    """On from the first start; a configuration's `alerts.rules` replaces them by name."""
    return [
        RuleConfig(name="gateway-offline", kind="gateway_offline", severity="critical",
                   for_s=60.0, resolve_after_s=0.0),
        RuleConfig(name="buffer-filling", kind="buffer_filling", severity="warning",
                   for_s=60.0, resolve_after_s=300.0, operator=True),
        RuleConfig(name="buffer-evicting", kind="buffer_evicting", severity="critical",
                   resolve_after_s=0.0, operator=True),
        RuleConfig(name="source-down", kind="source_down", severity="critical", for_s=60.0,
                   resolve_after_s=30.0, operator=True),
        RuleConfig(name="model-rolled-back", kind="model_rolled_back", severity="warning",
                   resolve_after_s=0.0),
        RuleConfig(name="drift", kind="drift", severity="warning", for_s=0.0,
                   resolve_after_s=900.0),
        RuleConfig(name="defect-rate", kind="defect_rate", severity="warning",
                   resolve_after_s=600.0, operator=True),
    ]


class AlertsConfig(BaseModel):
    """Alerting: rules evaluated on ingest and on a timer by one central process at a time,
    notifications delivered by the same process through the routes."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    evaluate_interval_s: float = Field(10.0, ge=0.2, description="Rules are evaluated this "
                                       "often, and soon after ingest brings news")
    rules: list[RuleConfig] = Field(default_factory=list, description="Rules by name: one "
                                    "named like a default replaces it; others are added")
    routes: list[RouteConfig] = Field(default_factory=list)
    mqtt_topic: bool = Field(True, description="Publish open alerts retained on "
                             "{topic_prefix}/alerts/open/{alert_id} (cleared when resolved) and "
                             "every change on {topic_prefix}/alerts/events, for SCADA")
    line_label_prefix: str = Field("line", description="A label starting with this names a "
                                   "device's line (group_by: line, the plant overview)")
    max_attempts: int = Field(12, ge=1, le=1000, description="Delivery attempts of one "
                              "notification before it goes to the dead-letter list")
    retry_initial_s: float = Field(5.0, gt=0, description="First retry after this; each next "
                                   "waits twice as long")
    retry_max_s: float = Field(900.0, gt=0, description="Longest wait between two attempts")

    @field_validator("rules", "routes")
    @classmethod
    def _unique_names(cls, items: list[RuleConfig] | list[RouteConfig],
                      info: ValidationInfo) -> list[RuleConfig] | list[RouteConfig]:
        names = [item.name for item in items]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"{info.field_name[:-1]} names must be unique: "
                             f"{', '.join(twice)} twice")
        return items

    def effective_rules(self) -> list[RuleConfig]:
        """The defaults, each replaced by a configured rule of its name, then the others."""
        mine = {rule.name: rule for rule in self.rules}
        merged = [mine.pop(rule.name, rule) for rule in default_rules()]
        return [rule for rule in [*merged, *mine.values()] if rule.enabled]

    def route(self, name: str) -> RouteConfig | None:
        return next((r for r in self.routes if r.name == name), None)


class AlertMessage(BaseModel):
    """What every route sends about an alert (the webhook's `json` body, the MQTT payload)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    event: Literal["fired", "resolved", "test"]
    alert_id: str
    rule: str
    kind: str
    severity: Severity
    state: Literal["firing", "resolved"]
    summary: str
    devices: list[str] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)
    value: float | None = None
    threshold: float | None = None
    fired_at: float
    resolved_at: float | None = None
    url: str = Field("", description="Central's page of the alert, when web.public_url is set")
    central_id: str
    sent_at: float

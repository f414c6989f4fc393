"""What central may set on a gateway: its sources, pipelines and monitoring interval.

A configuration document from central carries only these keys (`REMOTE_KEYS`); the gateway's
own YAML keeps what it needs to reach central safely (identity, broker, TLS, central's key, data
folder, page, buffer, uplink, labels), and those local values always win. Central checks a body
with `check_remote_body` at publish; every gateway checks it again with `effective_config`
against its own file before applying it, so both refuse the same bodies in the same words.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, ValidationError

from edge_agent.config.agent import AgentConfig
from edge_agent.config.common import StrictModel
from edge_agent.config.pipelines import PipelineConfig
from edge_agent.config.sources import REMOTE_BODY, REMOTE_CHECK_ONLY, SourceConfig

REMOTE_KEYS = ("sources", "pipelines", "monitoring_interval_s")
_UNION_TAGS = {"opcua", "camera", "process", "vision"}
_CHECK_DEVICE = "central-check"  # the stand-in gateway a body is checked against on central


class RemoteConfigError(ValueError):
    """A configuration body central may not send, or that does not validate; `problems` are
    its reasons, one line each, naming the key."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        noun = "problem" if len(problems) == 1 else "problems"
        super().__init__(f"configuration refused, {len(problems)} {noun}: "
                         + "; ".join(problems))


class RemoteConfig(StrictModel):
    """The part of the agent's configuration central sets: it replaces the gateway's own
    sources and pipelines entirely while it is applied."""

    sources: list[SourceConfig] = Field(
        default_factory=list, description="Cameras and OPC-UA servers, as in the YAML file")
    pipelines: list[PipelineConfig] = Field(
        default_factory=list, description="Pipelines on those sources, as in the YAML file")
    monitoring_interval_s: float | None = Field(
        None, ge=1, description="Seconds each model_stats record sums up; none: the "
        "gateway's own value")


def refused_keys(body: dict[str, Any]) -> list[str]:
    """One line per key of `body` that central may not set, saying why."""
    allowed = ", ".join(REMOTE_KEYS)
    problems = []
    for key in body:
        if key in REMOTE_KEYS:
            continue
        if key in AgentConfig.model_fields:
            problems.append(f"{key}: central may not set this; it stays in the gateway's own "
                            f"YAML file (central sets only {allowed})")
        else:
            problems.append(f"{key}: unknown key; central sets only {allowed}")
    return problems


def effective_config(local: AgentConfig, body: dict[str, Any]) -> AgentConfig:
    """The configuration the gateway runs with `body` from central applied over its own file
    `local`: the body's sources and pipelines replace the local ones, everything else is the
    local file's. Every rule of the agent's configuration applies to the result (a pipeline
    naming an unknown source, automatic writes without a login on the page...);
    RemoteConfigError says what is wrong."""
    return _merge(local, body, {REMOTE_BODY: True})


def check_remote_body(body: dict[str, Any]) -> RemoteConfig:
    """Validate a body as central publishes it, without any gateway's file: the keys, every
    source and pipeline, and the rules between them. Files it names (certificates) are not
    looked for: only the gateway has them. RemoteConfigError says what is wrong."""
    stand_in = AgentConfig(device_id=_CHECK_DEVICE, security={"verify_signatures": False},
                           ui={"port": 0})
    merged = _merge(stand_in, body, {REMOTE_BODY: True, REMOTE_CHECK_ONLY: True})
    return RemoteConfig(sources=merged.sources, pipelines=merged.pipelines,
                        monitoring_interval_s=body.get("monitoring_interval_s"))


def remote_config_json_schema() -> dict[str, Any]:
    """The JSON Schema of what central may set (`edge-agent config-schema`)."""
    schema = RemoteConfig.model_json_schema()
    schema["title"] = "Gateway configuration set by central"
    schema["description"] = (
        f"Keys central may set: {', '.join(REMOTE_KEYS)}. Identity, broker, TLS, security, "
        "data folder, page, buffer, uplink and labels stay in the gateway's own YAML file.")
    return schema


def _merge(local: AgentConfig, body: dict[str, Any], context: dict[str, Any]) -> AgentConfig:
    if not isinstance(body, dict):
        raise RemoteConfigError(["the body must be a mapping of keys to values"])
    problems = refused_keys(body)
    if problems:
        raise RemoteConfigError(problems)
    kept = {name: getattr(local, name) for name in AgentConfig.model_fields
            if name not in REMOTE_KEYS}
    interval = body.get("monitoring_interval_s")
    merged = {**kept, "sources": body.get("sources", []),
              "pipelines": body.get("pipelines", []),
              "monitoring_interval_s": local.monitoring_interval_s if interval is None
              else interval}
    try:
        return AgentConfig.model_validate(merged, context=context)
    except ValidationError as exc:
        raise RemoteConfigError(describe_errors(exc)) from None


def describe_errors(exc: ValidationError) -> list[str]:
    """One line per error: where in the body (e.g. pipelines.0.source) and what is wrong."""
    lines = []
    for err in exc.errors():
        loc, where_parts = err["loc"], []
        for i, part in enumerate(loc):
            # The union's tag (sources.0.opcua.endpoint) says nothing the entry does not.
            if not (i and isinstance(loc[i - 1], int) and part in _UNION_TAGS):
                where_parts.append(str(part))
        where = ".".join(where_parts)
        if err["type"] == "extra_forbidden":
            text = "unknown field; check its spelling against `edge-agent config-schema`"
        elif err["type"] == "missing":
            text = "required field is missing"
        else:
            text = str(err["msg"]).removeprefix("Value error, ")
        lines.append(f"{where}: {text}" if where else text)
    return lines

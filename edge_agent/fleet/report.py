"""The diagnose report a gateway sends central: versions, the configuration in force with its
secrets redacted, models, sources, pipelines, buffer and uplink, in plain JSON values."""

from __future__ import annotations

import math
import platform
import re
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, SecretBytes, SecretStr

from edge_agent import __version__
from edge_agent.buffer import Buffer
from edge_agent.config import AgentConfig
from edge_agent.kernel.contract import (
    MAX_REPORT_BYTES,
    ConfigDocument,
    canonical_json,
    clip_log_message,
)
from edge_agent.kernel.redaction import REDACTED, redact_credentials
from edge_agent.model_store import ModelStore
from edge_agent.pipelines.base import Pipeline
from edge_agent.sources.camera import CameraSource
from edge_agent.sources.opcua import OpcUaSource
from edge_agent.uplink import Uplink

# A key naming a secret: its value is replaced, whatever it is. Keys that only say where a
# secret is (`password_file`, `password_env`) or whether one is allowed keep their value.
_SECRET_KEY = re.compile(
    r"pass(word|wd|phrase)|(^|_)pass($|_)|pwd|secret|token|credential|api_?key|private_?key|"
    r"signature|^key$", re.IGNORECASE)
_NAMES_A_PLACE = re.compile(r"(_file|_env|_path|_dir)$", re.IGNORECASE)
LIBRARIES = ("onnxruntime", "opencv-python-headless", "opencv-python", "asyncua", "paho-mqtt",
             "pydantic", "numpy")


class ConfigsInForce(Protocol):
    @property
    def current(self) -> ConfigDocument | None: ...


class RunningParts(Protocol):
    """The sources and pipelines running now (edge_agent.fleet.workload.Workload)."""

    @property
    def sources(self) -> dict[str, OpcUaSource | CameraSource]: ...

    @property
    def pipelines(self) -> list[Pipeline]: ...

    async def restart_pipeline(self, name: str) -> str: ...


class ReportedAgent(Protocol):
    """What the report reads of the agent."""

    @property
    def effective(self) -> AgentConfig: ...

    @property
    def configs(self) -> ConfigsInForce: ...

    @property
    def workload(self) -> RunningParts: ...

    @property
    def store(self) -> ModelStore: ...

    @property
    def buffer(self) -> Buffer: ...

    @property
    def uplink(self) -> Uplink: ...


def redact_secrets(value: Any, key: str = "") -> Any:
    """A JSON document with secret values replaced by *** (by their key's name) and URL
    credentials taken out of every string."""
    if isinstance(value, SecretStr | SecretBytes):
        return REDACTED
    if key and _SECRET_KEY.search(key) and not _NAMES_A_PLACE.search(key) \
            and value is not None and not isinstance(value, bool):
        return REDACTED
    if isinstance(value, dict):
        return {k: redact_secrets(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_secrets(v) for v in value]
    if isinstance(value, str):
        return redact_credentials(value)
    return value


def effective_config_document(config: AgentConfig) -> dict[str, Any]:
    """The configuration in force as JSON, secrets redacted; files that hold secrets
    (password_file, key files) are named, never read."""
    return redact_secrets(config.model_dump(mode="json"))


def json_safe(value: Any) -> Any:
    """`value` as plain JSON: NaN and infinities become None, paths and other objects text
    (URL credentials taken out)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, str):
        return redact_credentials(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_safe(v) for v in value]
    if isinstance(value, BaseModel):
        return json_safe(value.model_dump(mode="json"))
    if isinstance(value, Path):
        return str(value)
    return redact_credentials(str(value))


def versions() -> dict[str, Any]:
    """The agent's, Python's and the platform's versions, and the main libraries'."""
    libraries = {}
    for name in LIBRARIES:
        try:
            libraries[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {"agent_version": __version__, "python": platform.python_version(),
            "platform": platform.platform(), "libraries": libraries}


def models_document(store: ModelStore, config: AgentConfig) -> dict[str, Any]:
    """Per model the pipelines use or the store serves: the active version and the
    installed ones."""
    active = {m.manifest.name: m for m in store.active_models()}
    names = sorted({*active, *(p.model for p in config.pipelines)})
    found: dict[str, Any] = {}
    for name in names:
        installed = active.get(name)
        found[name] = {
            "active": installed.manifest.version if installed else None,
            "sha256": installed.manifest.sha256 if installed else None,
            "installed": store.versions(name),
        }
    return found


async def build_report(agent: ReportedAgent, uptime_s: float) -> dict[str, Any]:
    """Everything `central-sync device diagnose` shows of the gateway, as JSON values."""
    config = agent.effective
    current = agent.configs.current
    workload = agent.workload
    report: dict[str, Any] = {
        **versions(),
        "uptime_s": round(uptime_s, 1),
        "config": current.ref.model_dump(mode="json") if current is not None else None,
        "device_id": config.device_id,
        "sources": {name: source.state.model_dump(mode="json")
                    for name, source in workload.sources.items()},
        "pipelines": [p.snapshot().document() for p in workload.pipelines],
        "models": models_document(agent.store, config),
        "buffer": (await agent.buffer.health()).model_dump(mode="json"),
        "uplink": agent.uplink.health().model_dump(mode="json"),
        "effective_config": effective_config_document(config),
    }
    return bounded(json_safe(report))


def bounded(report: dict[str, Any]) -> dict[str, Any]:
    """The report, its largest sections replaced by a note while it exceeds what a reply
    holds (a configuration of thousands of tags, say)."""
    budget = MAX_REPORT_BYTES - 4096  # room for the reply around it
    while len(canonical_json(report)) > budget:
        sizes = {key: len(canonical_json(value)) for key, value in report.items()
                 if isinstance(value, dict | list)}
        if not sizes:
            break
        largest = max(sizes, key=sizes.__getitem__)
        report[largest] = {"omitted": clip_log_message(
            f"{sizes[largest]} bytes, more than a report holds ({MAX_REPORT_BYTES}); see "
            "the gateway's own files or `edge-agent check-config` there")}
    return report

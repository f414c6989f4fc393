"""Configuration registry: signed, versioned configurations of gateways' sources and pipelines.

A configuration is published under a name; its versions count up (1, 2, 3...) and are
immutable. Its body is checked by the agent's own configuration models
(`edge_agent.config.remote`), so central refuses at publish what a gateway would refuse, in the
same words. This module also builds the signed commands that deploy a version or roll it back,
compares two versions, and reads configuration files written as in the agent's YAML.
"""

from __future__ import annotations

import asyncio
import difflib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from central_sync.db import CentralDB, DeviceSummary
from central_sync.db.configs import ConfigDeployment, ConfigUnchanged, ConfigVersionTaken
from edge_agent.kernel.contract import (
    DEFAULT_CONFIG_PROBATION_S,
    ID_PATTERN,
    MAX_CONFIG_BODY_BYTES,
    ConfigDeployCommand,
    ConfigDocument,
    ConfigRef,
    ConfigRollbackCommand,
    DeploymentEvent,
    Topics,
    canonical_json,
    config_body_sha256,
    decode,
    encode,
)
from edge_agent.kernel.contract.fleet import MAX_CONFIG_PROBATION_S, MAX_CONFIG_VERSION
from edge_agent.kernel.signing import SignatureError, Signer
from edge_agent.kernel.transport import NotConnected, Transport

log = logging.getLogger(__name__)

__all__ = ["ConfigUnchanged", "ConfigVersionTaken"]  # raised by publish_config, from the db

MAX_CONFIG_FILE_BYTES = 4 * MAX_CONFIG_BODY_BYTES  # YAML with comments is larger than its JSON
MAX_NOTES_CHARS = 2000
_ENV_REFERENCE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::-[^}]*)?\}")


class ConfigError(Exception):
    """A configuration cannot be published or deployed; the message says why and what to do."""


class ConfigInvalid(ConfigError):
    """A body the gateways would refuse; `problems` name the key of each (pipelines.0.source)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        noun = "problem" if len(problems) == 1 else "problems"
        super().__init__(f"configuration refused, {len(problems)} {noun}:\n  "
                         + "\n  ".join(problems))


class UnknownConfig(ConfigError):
    """No such configuration version in the registry."""


class TamperedConfig(ConfigError):
    """A stored version central cannot vouch for (unsigned, another key, altered): not sent."""


def parse_config_ref(text: str, version_required: bool = True) -> tuple[str, int | None]:
    """'line-3-vision@2' -> ('line-3-vision', 2); 'line-3-vision' -> (name, None) when the
    version may be left out. ValueError saying the form otherwise."""
    name, at, version = text.partition("@")
    form = "NAME@VERSION, e.g. line-3-vision@2" if version_required else \
        "NAME or NAME@VERSION, e.g. line-3-vision@2"
    if not re.fullmatch(ID_PATTERN, name) or (at and not re.fullmatch(r"[1-9][0-9]{0,8}",
                                                                      version)):
        raise ValueError(f"{text!r} is not {form}; see `central-sync config list`")
    if not at and version_required:
        raise ValueError(f"{text!r} has no version: give {form}")
    return name, int(version) if at else None


def check_body(body: Any) -> None:
    """ConfigInvalid unless `body` is what a gateway accepts from central: only the keys central
    may set, and sources and pipelines that validate as the agent validates them."""
    # The agent's configuration models are loaded only by what checks a body (publishing),
    # not by the rollout engine and pages that import this module.
    from edge_agent.config.remote import REMOTE_KEYS, RemoteConfigError, check_remote_body

    if not isinstance(body, dict) or not body:
        raise ConfigInvalid([f"the configuration sets nothing: give {', '.join(REMOTE_KEYS)} "
                             "as in the agent's YAML file"])
    size = len(canonical_json(body))
    if size > MAX_CONFIG_BODY_BYTES:
        raise ConfigInvalid([f"the configuration is {size:,} bytes as JSON, more than "
                             f"{MAX_CONFIG_BODY_BYTES:,}; split the line's gateways into "
                             "several configurations"])
    secrets = [f"sources.{i}.password: a configuration from central is stored on central and "
               "sent to every gateway it targets; give the password with password_env (the "
               "name of an environment variable set on the gateway) instead"
               for i, source in enumerate(body.get("sources") or [])
               if isinstance(source, dict) and source.get("password") is not None]
    if secrets:
        raise ConfigInvalid(secrets)
    try:
        check_remote_body(body)
    except RemoteConfigError as exc:
        raise ConfigInvalid(exc.problems) from None


def publish_config(db: CentralDB, signer: Signer, name: str, body: dict[str, Any], by: str,
                   probation_s: float = DEFAULT_CONFIG_PROBATION_S,
                   notes: str = "") -> ConfigDocument:
    """Check, sign and store `body` as the next version of `name`, audited as config.publish.

    ConfigInvalid names each problem; ConfigUnchanged when the newest version has this body
    (it says which); ConfigError for a bad name, probation or notes."""
    if not re.fullmatch(ID_PATTERN, name):
        raise ConfigError(f"configuration name {name!r} is not valid: use letters, digits, "
                          ". _ - (up to 64), e.g. line-3-vision")
    if not 0 <= probation_s <= MAX_CONFIG_PROBATION_S:
        raise ConfigError(f"probation {probation_s:g} s is not between 0 and "
                          f"{MAX_CONFIG_PROBATION_S:g} s")
    if len(notes) > MAX_NOTES_CHARS:
        raise ConfigError(f"notes are {len(notes)} characters, more than {MAX_NOTES_CHARS}")
    check_body(body)
    sha256 = config_body_sha256(body)

    def signed(version: int) -> ConfigDocument:
        if version > MAX_CONFIG_VERSION:
            raise ConfigError(f"{name} has reached version {MAX_CONFIG_VERSION}; publish under "
                              "a new name")
        return signer.signed(ConfigDocument(
            name=name, version=version, body=body, sha256=sha256, probation_s=probation_s,
            notes=notes, published_at=time.time(), published_by=by))

    document = db.publish_config(name, signed)
    log.info("configuration published name=%s version=%d sha256=%s by=%s", name,
             document.version, sha256[:12], by)
    return document


def require_config(db: CentralDB, name: str, version: int) -> ConfigDocument:
    """The stored version, or UnknownConfig saying where to look."""
    document = db.get_config(name, version)
    if document is None:
        newest = db.newest_config(name)
        hint = (f"the newest of {name} is version {newest.version}" if newest
                else f"no configuration is named {name}")
        raise UnknownConfig(f"configuration {name}@{version} is not in the registry ({hint}); "
                            "see `central-sync config list`, or publish it with "
                            "`central-sync config publish FILE --name NAME`")
    return document


def signed_document(document: ConfigDocument, signer: Signer) -> ConfigDocument:
    """The document to send: it must verify against a key central signed with (the current or
    a retired one); re-signed by the current key after a key change. TamperedConfig otherwise:
    a row altered in the database is never sent nor re-signed."""
    fix = (f"publish the configuration again (`central-sync config publish FILE --name "
           f"{document.name}`) and deploy the new version")
    try:
        signer.own_keys().verify(document, "configuration")
    except SignatureError as exc:
        raise TamperedConfig(f"configuration {document.label} in the registry cannot be "
                             f"vouched for ({exc}): {fix}") from None
    if document.key_id == signer.key_id:
        return document
    log.info("configuration re-signed name=%s version=%d old_key=%s key=%s", document.name,
             document.version, document.key_id, signer.key_id)
    return signer.signed(document)


def config_deploy_command(db: CentralDB, signer: Signer, name: str, version: int,
                          device_id: str, issued_by: str) -> ConfigDeployCommand:
    """The signed command applying name@version on one device (not yet recorded nor sent)."""
    document = signed_document(require_config(db, name, version), signer)
    return signer.signed(ConfigDeployCommand(device_id=device_id, document=document,
                                             issued_by=issued_by))


def config_rollback_command(signer: Signer, name: str, device_id: str, issued_by: str,
                            to_version: int | None = None) -> ConfigRollbackCommand:
    """The signed command sending a device back to the configuration it ran before (or to
    `to_version` of `name`), not yet recorded nor sent."""
    return signer.signed(ConfigRollbackCommand(device_id=device_id, name=name,
                                               to_version=to_version, issued_by=issued_by))


def body_yaml(body: dict[str, Any]) -> str:
    """The body as people write it: YAML, keys in their order."""
    return yaml.safe_dump(body, sort_keys=False, allow_unicode=True, default_flow_style=False)


def config_diff(old: ConfigDocument, new: ConfigDocument) -> str:
    """A unified diff of two versions' bodies as YAML; empty when they are the same."""
    return "".join(difflib.unified_diff(
        body_yaml(old.body).splitlines(keepends=True),
        body_yaml(new.body).splitlines(keepends=True),
        fromfile=old.label, tofile=new.label))


@dataclass(frozen=True)
class ConfigFile:
    """A configuration file read for publishing: its body, and the line of each key."""

    path: Path
    body: dict[str, Any]
    lines: dict[tuple[Any, ...], int]

    def locate(self, problem: str) -> str:
        """'pipelines.0.source: ...' -> 'FILE:12: pipelines.0.source: ...'."""
        where, sep, _ = problem.partition(": ")
        if not sep or " " in where:
            return f"{self.path}: {problem}"
        loc = tuple(int(p) if p.isdigit() else p for p in where.split("."))
        while loc and loc not in self.lines:
            loc = loc[:-1]
        return f"{self.path}:{self.lines[loc]}: {problem}" if loc else f"{self.path}: {problem}"


def read_config_file(path: Path) -> ConfigFile:
    """A YAML file of `sources:`, `pipelines:` (and `monitoring_interval_s:`) as written in the
    agent's YAML. ConfigError names the file and line of a syntax error, and of an environment
    reference (a gateway's environment is not central's)."""
    try:
        if path.stat().st_size > MAX_CONFIG_FILE_BYTES:
            raise ConfigError(f"{path}: {path.stat().st_size:,} bytes, more than "
                              f"{MAX_CONFIG_FILE_BYTES:,}; is it the right file?")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    try:
        root = yaml.compose(text)
        body = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"{where}: YAML syntax error: "
                          f"{getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(body, dict):
        from edge_agent.config.remote import REMOTE_KEYS

        raise ConfigError(f"{path}: the top level must be a mapping with "
                          f"{', '.join(REMOTE_KEYS)}, as in the agent's YAML file")
    found = ConfigFile(path, body, _key_lines(root))
    _refuse_env_references(found, body, ())
    return found


def _key_lines(node: yaml.Node | None, prefix: tuple[Any, ...] = ()) -> dict[tuple, int]:
    """Each key path of a YAML document and the 1-based line it starts on."""
    found: dict[tuple, int] = {}
    if isinstance(node, yaml.MappingNode):
        children = [((*prefix, key.value), key, value) for key, value in node.value]
    elif isinstance(node, yaml.SequenceNode):
        children = [((*prefix, index), item, item) for index, item in enumerate(node.value)]
    else:
        return found
    for loc, start, value in children:
        found[loc] = start.start_mark.line + 1
        found.update(_key_lines(value, loc))
    return found


def _refuse_env_references(found: ConfigFile, value: Any, loc: tuple[Any, ...]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _refuse_env_references(found, item, (*loc, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _refuse_env_references(found, item, (*loc, index))
    elif isinstance(value, str) and (reference := _ENV_REFERENCE.search(value)):
        field = ".".join(str(p) for p in loc)
        raise ConfigError(found.locate(
            f"{field}: {reference[0]} refers to an environment variable; a configuration "
            "from central is the same on every gateway and is not expanded: write the value "
            "itself, or for a password name the gateway's variable with password_env"))


@dataclass(frozen=True)
class ConfigWhereabouts:
    """One device in `config where`: what it reports it runs, and its newest deployment."""

    device_id: str
    presence: str
    reported: ConfigRef | None
    last: ConfigDeployment | None


def config_whereabouts(db: CentralDB, name: str | None, now: float,
                       offline_after_s: float) -> list[ConfigWhereabouts]:
    """Per device, the configuration it reports and its newest configuration deployment; with
    `name`, only devices that report it or were sent it."""
    deployments = db.last_config_deployments(name)
    rows = []
    for device in db.list_devices():
        reported = _reported(device)
        if name and device.device_id not in deployments and (
                reported is None or reported.name != name):
            continue
        rows.append(ConfigWhereabouts(device.device_id, device.presence(now, offline_after_s),
                                      reported, deployments.get(device.device_id)))
    return rows


def _reported(device: DeviceSummary) -> ConfigRef | None:
    return device.status.config if device.status is not None else None



CONFIG_FINAL_STEPS = frozenset({"confirmed", "failed", "rolled_back"})


async def send_config_command(db: CentralDB, transport: Transport, topics: Topics,
                              command: ConfigDeployCommand | ConfigRollbackCommand,
                              follow_s: float | None = None,
                              on_event: Callable[[DeploymentEvent], None] | None = None,
                              ) -> DeploymentEvent | None:
    """Record the command (with its audit entry) and send it, QoS 1 (it waits at the broker
    while the gateway is offline). With `follow_s`, follow the gateway's steps until the
    configuration is confirmed after its probation, failed or rolled back, and return that
    step (None when `follow_s` passed first). NotConnected, the deployment marked failed,
    when the broker is not connected."""
    record = (db.create_config_deployment if isinstance(command, ConfigDeployCommand)
              else db.record_config_rollback)
    events: asyncio.Queue[DeploymentEvent] = asyncio.Queue()
    topic = topics.deployment(command.device_id)

    async def collect(_topic: str, payload: bytes) -> None:
        message = decode(payload, expect=(DeploymentEvent,), topic_device_id=command.device_id)
        if isinstance(message, DeploymentEvent) and message.command_id == command.command_id:
            events.put_nowait(message)

    if follow_s is not None:
        await transport.subscribe(topic, collect, qos=1)
    try:
        await asyncio.to_thread(record, command)
        try:
            await transport.publish(topics.commands(command.device_id), encode(command), qos=1)
        except NotConnected as exc:
            await asyncio.to_thread(db.mark_deployment, command.command_id, "failed",
                                    f"command not sent: {exc}")
            raise
        log.info("configuration command sent device=%s kind=%s command=%s by=%s",
                 command.device_id, command.kind, command.command_id, command.issued_by)
        if follow_s is None:
            return None
        return await _final_step(events, follow_s, on_event)
    finally:
        if follow_s is not None:
            await transport.unsubscribe(topic)


async def _final_step(events: asyncio.Queue[DeploymentEvent], follow_s: float,
                      on_event: Callable[[DeploymentEvent], None] | None,
                      ) -> DeploymentEvent | None:
    try:
        async with asyncio.timeout(follow_s):
            while True:
                event = await events.get()
                if on_event is not None:
                    on_event(event)
                if event.step in CONFIG_FINAL_STEPS:
                    return event
    except TimeoutError:
        return None

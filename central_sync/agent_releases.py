"""Agent releases on central: publish the project's wheel as a signed AgentPackage (its version,
dependency list and Python bound read from the wheel's own METADATA), stored by sha256 beside
the models so the chunk server sends it like one; build, record and send the signed commands
that update a gateway's agent or take it back, and follow them to their end."""

from __future__ import annotations

import asyncio
import email.parser
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from central_sync.db import CentralDB
from central_sync.db.agent_releases import AgentReleaseExists
from central_sync.registry import file_sha256, store_artifact
from edge_agent.kernel.contract import (
    AGENT_PACKAGE_NAME,
    SEMVER_PATTERN,
    AgentPackage,
    AgentRollbackCommand,
    AgentUpdateCommand,
    DeploymentEvent,
    Topics,
    decode,
    encode,
)
from edge_agent.kernel.contract.fleet import DEFAULT_AGENT_HEALTHY_WITHIN_S, MAX_REQUIREMENTS
from edge_agent.kernel.signing import SignatureError, Signer
from edge_agent.kernel.transport import NotConnected, Transport

DISTRIBUTION = "edge-mlops"  # the project's name on the wheel
MAX_WHEEL_BYTES = 256 * 1024 * 1024  # the project's wheel is about 1 MB
MAX_METADATA_BYTES = 1024 * 1024
MAX_REQUIREMENT_CHARS = 200
FINAL_STEPS = frozenset({"confirmed", "failed", "rolled_back"})
POLL_S = 1.0  # how often a follow reads the deployment's state central stored
_VERSION_LINE = re.compile(r'^__version__ = "([^"]+)"$', re.M)


class AgentReleaseError(Exception):
    """A wheel that cannot be published, or a release that cannot be sent; the message says
    what to do."""


@dataclass(frozen=True)
class WheelMetadata:
    version: str
    requires: list[str]
    requires_python: str


def read_wheel_metadata(path: Path) -> WheelMetadata:
    """Name, version and requirements from the wheel's METADATA; AgentReleaseError unless it
    is a wheel of edge-mlops whose agent says the same version."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise AgentReleaseError(f"cannot read {path}: {exc}") from None
    if size > MAX_WHEEL_BYTES:
        raise AgentReleaseError(f"{path} has {size} bytes, more than the {MAX_WHEEL_BYTES} an "
                                "agent release may have")
    try:
        with zipfile.ZipFile(path) as wheel:
            metadata = _member(wheel, path, r"[^/]+\.dist-info/METADATA")
            init = _member(wheel, path, r"edge_agent/__init__\.py")
    except (zipfile.BadZipFile, OSError) as exc:
        raise AgentReleaseError(f"{path} is not a wheel (a zip file): {exc}; build one with "
                                "`pip wheel --no-deps .` in the project's folder") from None
    message = email.parser.HeaderParser().parsestr(metadata)
    name = re.sub(r"[-_.]+", "-", (message["Name"] or "").lower())
    if name != DISTRIBUTION:
        raise AgentReleaseError(f"{path} is a wheel of {message['Name']!r}, not of "
                                f"{DISTRIBUTION}: only the agent's own package is published")
    version = (message["Version"] or "").strip()
    if not re.fullmatch(SEMVER_PATTERN, version):
        raise AgentReleaseError(f"{path} has version {version!r}, not a semantic version such "
                                "as 1.4.0: gateways order releases by it")
    said = _VERSION_LINE.search(init)
    if said is None or said[1] != version:
        raise AgentReleaseError(f"{path} is version {version}, but its edge_agent says "
                                f"{said[1] if said else 'no version'}: build it from a checkout "
                                "whose edge_agent/__init__.py and pyproject.toml agree")
    requires = [line.strip() for line in message.get_all("Requires-Dist") or []]
    if len(requires) > MAX_REQUIREMENTS or any(len(r) > MAX_REQUIREMENT_CHARS for r in requires):
        raise AgentReleaseError(f"{path} lists {len(requires)} requirements (at most "
                                f"{MAX_REQUIREMENTS}, each under {MAX_REQUIREMENT_CHARS} "
                                "characters)")
    return WheelMetadata(version, requires, (message["Requires-Python"] or "").strip())


def _member(wheel: zipfile.ZipFile, path: Path, pattern: str) -> str:
    found = [info for info in wheel.infolist() if re.fullmatch(pattern, info.filename)]
    if len(found) != 1:
        raise AgentReleaseError(f"{path} has {len(found)} files matching {pattern}, not one: "
                                f"is it a wheel of {DISTRIBUTION}?")
    if found[0].file_size > MAX_METADATA_BYTES:
        raise AgentReleaseError(f"{path}: {found[0].filename} is {found[0].file_size} bytes, "
                                "far more than it should be")
    return wheel.read(found[0]).decode("utf-8", "replace")


def publish_agent(db: CentralDB, signer: Signer, wheel_path: Path, by: str,
                  artifact_dir: Path, chunk_size_bytes: int) -> tuple[AgentPackage, bool]:
    """Publish a wheel as a signed release; (the release, True) when new, (the stored one,
    False) when the same wheel was published before. AgentReleaseError otherwise."""
    wheel_path = Path(wheel_path)
    meta = read_wheel_metadata(wheel_path)
    sha256, size = file_sha256(wheel_path)
    existing = db.get_agent_package(meta.version)
    if existing is not None and existing.sha256 == sha256:
        return existing, False
    try:
        package = AgentPackage(
            version=meta.version, filename=wheel_path.name, sha256=sha256, size_bytes=size,
            chunk_size_bytes=chunk_size_bytes, requires=meta.requires,
            requires_python=meta.requires_python, published_by=by)
    except ValueError as exc:
        raise AgentReleaseError(f"{wheel_path.name} cannot be an agent release: {exc}") from None
    store_artifact(wheel_path, artifact_dir, sha256)
    try:
        return db.store_agent_package(signer.signed(package))
    except AgentReleaseExists as exc:
        raise AgentReleaseError(str(exc)) from None


def require_release(db: CentralDB, version: str, signer: Signer | None) -> AgentPackage:
    """The stored release, as central signed it (re-signed after a key change);
    AgentReleaseError when it is unknown or altered."""
    package = db.get_agent_package(version)
    if package is None:
        raise AgentReleaseError(f"{AGENT_PACKAGE_NAME} {version} is not published; see "
                                "`central-sync agent list`, or publish its wheel with "
                                "`central-sync agent publish WHEEL`")
    if signer is None:
        return package
    try:
        signer.own_keys().verify(package, "agent package")
    except SignatureError as exc:
        raise AgentReleaseError(f"{AGENT_PACKAGE_NAME} {version} in the database does not "
                                f"match central's signature ({exc}); publish the wheel again "
                                "as a new version") from None
    return package if package.key_id == signer.key_id else signer.signed(package)


def agent_update_command(db: CentralDB, signer: Signer, version: str, device_id: str,
                         issued_by: str,
                         healthy_within_s: float = DEFAULT_AGENT_HEALTHY_WITHIN_S,
                         ) -> AgentUpdateCommand:
    """The signed command updating one gateway's agent to `version` (not recorded or sent)."""
    package = require_release(db, version, signer)
    return signer.signed(AgentUpdateCommand(device_id=device_id, package=package,
                                            issued_by=issued_by,
                                            healthy_within_s=healthy_within_s))


def agent_rollback_command(signer: Signer, device_id: str, issued_by: str) -> AgentRollbackCommand:
    """The signed command sending one gateway back to the agent release it ran before."""
    return signer.signed(AgentRollbackCommand(device_id=device_id, issued_by=issued_by))


def record_agent_command(db: CentralDB, command: AgentUpdateCommand | AgentRollbackCommand,
                         ) -> None:
    """Recorded (with its audit entry) before it is sent: the gateway's steps are accepted only
    for commands central issued to it."""
    if isinstance(command, AgentUpdateCommand):
        db.create_agent_deployment(command)
    else:
        db.record_agent_rollback(command)


async def send_agent_command(db: CentralDB, transport: Transport, topics: Topics,
                             command: AgentUpdateCommand | AgentRollbackCommand,
                             timeout_s: float | None = None,
                             on_event: Callable[[DeploymentEvent], None] | None = None,
                             ) -> tuple[str, str] | None:
    """Record and send the command (QoS 1); with `timeout_s`, follow it until its final step.
    Returns the final (step, detail), live or as central stored it (a step may reach central
    through the gateway's buffer only: a restarted agent reports before it is connected), or
    None when the time ran out (or without `timeout_s`). NotConnected (the deployment marked
    failed) if not sent."""
    events: asyncio.Queue[DeploymentEvent] = asyncio.Queue()
    topic = topics.deployment(command.device_id)

    async def collect(_topic: str, payload: bytes) -> None:
        message = decode(payload, expect=(DeploymentEvent,), topic_device_id=command.device_id)
        if isinstance(message, DeploymentEvent) and message.command_id == command.command_id:
            events.put_nowait(message)

    if timeout_s is not None:
        await transport.subscribe(topic, collect, qos=1)
    try:
        await asyncio.to_thread(record_agent_command, db, command)
        try:
            await transport.publish(topics.commands(command.device_id), encode(command), qos=1)
        except NotConnected as exc:
            await asyncio.to_thread(db.mark_deployment, command.command_id, "failed",
                                    f"command not sent: {exc}")
            raise
        if timeout_s is None:
            return None
        return await _follow(db, events, command.command_id, timeout_s, on_event)
    finally:
        if timeout_s is not None:
            await transport.unsubscribe(topic)


async def _follow(db: CentralDB, events: asyncio.Queue[DeploymentEvent], command_id: str,
                  timeout_s: float, on_event: Callable[[DeploymentEvent], None] | None,
                  ) -> tuple[str, str] | None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        try:
            async with asyncio.timeout(min(POLL_S, max(0.0, deadline - loop.time()))):
                event = await events.get()
        except TimeoutError:
            stored = await asyncio.to_thread(db.get_deployment, command_id)
            if stored is not None and stored["state"] in FINAL_STEPS:
                return str(stored["state"]), str(stored["detail"] or "")
            continue
        if on_event is not None:
            on_event(event)
        if event.step in FINAL_STEPS:
            return event.step, event.detail
    return None

"""Deploying a published model version to a device, and following its steps as they arrive."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from central_sync.db import CentralDB
from edge_agent.kernel.contract import (
    DeployCommand,
    DeploymentEvent,
    ModelManifest,
    Rejection,
    Topics,
    decode,
    encode,
)
from edge_agent.kernel.signing import SignatureError, Signer
from edge_agent.kernel.transport import NotConnected, Transport

log = logging.getLogger(__name__)

TERMINAL_STEPS = frozenset({"activated", "failed", "rolled_back"})


class UnknownModel(LookupError):
    """The model version to deploy is not in the registry."""


def unknown_model_message(name: str, version: str) -> str:
    return (f"model {name} {version} is not in the registry; see `central-sync model list`, "
            "or publish it with `central-sync model publish`")


class TamperedManifest(Exception):
    """A stored manifest central cannot vouch for: unsigned, signed by a key central never had,
    or altered after it was signed. It is neither sent nor re-signed."""


def signed_manifest(manifest: ModelManifest, signer: Signer) -> ModelManifest:
    """The manifest to send. It must verify against the key that signed it at publish, the
    current one or a retired one; it is sent as stored when the current key signed it, and
    re-signed by the current key after a key change. TamperedManifest otherwise."""
    where = f"model {manifest.name} {manifest.version} in the registry"
    fix = ("publish the model file again as a new version (`central-sync model publish`) "
           "and deploy that")
    if not manifest.signature or not manifest.key_id:
        raise TamperedManifest(
            f"{where} is unsigned; every published version is signed, so this one was "
            f"written into the database some other way: {fix}")
    known = signer.own_keys()
    if manifest.key_id not in known.keys:
        raise TamperedManifest(
            f"{where} is signed by key {manifest.key_id}, which is not central's: neither the "
            f"current key {signer.key_id} nor a retired one (the `retired` folder beside the "
            f"signing key). If it was central's key once, put its .pub there as "
            f"{manifest.key_id}.pub; otherwise {fix}")
    try:
        known.verify(manifest, "manifest")
    except SignatureError as exc:
        raise TamperedManifest(
            f"{where} does not match its signature by key {manifest.key_id} ({exc}); it was "
            f"altered after publishing: {fix}") from None
    if manifest.key_id == signer.key_id:
        return manifest
    log.info("manifest re-signed name=%s version=%s old_key=%s key=%s", manifest.name,
             manifest.version, manifest.key_id, signer.key_id)
    return signer.signed(manifest)


def deploy_command(db: CentralDB, signer: Signer, name: str, version: str, device_id: str,
                   issued_by: str, *, approval_required: bool = True) -> DeployCommand:
    """The signed command deploying name@version to one device (not yet recorded or sent).

    NotApproved (saying what to do) unless the version may be deployed: approved, or with
    `approval_required` off (central's `models.require_approval`) not rejected or retired."""
    manifest = db.get_model(name, version)
    if manifest is None:
        raise UnknownModel(unknown_model_message(name, version))
    sent = signed_manifest(manifest, signer)
    db.require_deployable(name, version, approval_required)
    return signer.signed(DeployCommand(device_id=device_id, manifest=sent,
                                       issued_by=issued_by))


async def deploy(
    db: CentralDB,
    transport: Transport,
    signer: Signer,
    name: str,
    version: str,
    device_id: str,
    issued_by: str,
    topics: Topics | None = None,
    *,
    approval_required: bool = True,
) -> DeployCommand:
    """Record a deployment (with its audit entry) and send the signed command, QoS 1.

    Database calls run in a worker thread. NotApproved when the version may not be deployed
    (see deploy_command). If the command cannot be sent the deployment is marked failed and
    NotConnected is raised.
    """
    topics = topics or Topics()
    command = await asyncio.to_thread(deploy_command, db, signer, name, version, device_id,
                                      issued_by, approval_required=approval_required)
    await asyncio.to_thread(db.create_deployment, command)
    try:
        await transport.publish(topics.commands(device_id), encode(command), qos=1)
    except NotConnected as exc:
        await asyncio.to_thread(db.mark_deployment, command.command_id, "failed",
                                f"command not sent: {exc}")
        raise
    log.info("deploy sent device=%s model=%s version=%s command=%s by=%s", device_id, name,
             version, command.command_id, issued_by)
    return command


async def deploy_and_wait(
    db: CentralDB,
    transport: Transport,
    signer: Signer,
    name: str,
    version: str,
    device_id: str,
    issued_by: str,
    timeout_s: float,
    on_event: Callable[[DeploymentEvent], None] | None = None,
    topics: Topics | None = None,
    *,
    approval_required: bool = True,
) -> tuple[DeployCommand, DeploymentEvent | None]:
    """Deploy, then follow the device's steps until activated, failed or rolled back.

    Returns the command and its final event, or None as event when `timeout_s` passed first.
    """
    topics = topics or Topics()
    events: asyncio.Queue[DeploymentEvent] = asyncio.Queue()
    topic = topics.deployment(device_id)

    async def collect(_topic: str, payload: bytes) -> None:
        message = decode(payload, expect=(DeploymentEvent,), topic_device_id=device_id)
        if isinstance(message, Rejection):
            log.warning("deployment event rejected topic=%s reason=%s", _topic, message.reason)
        elif isinstance(message, DeploymentEvent):
            events.put_nowait(message)

    await transport.subscribe(topic, collect, qos=1)
    try:
        command = await deploy(db, transport, signer, name, version, device_id, issued_by,
                               topics, approval_required=approval_required)
        final = await _follow(events, command.command_id, timeout_s, on_event)
    finally:
        await transport.unsubscribe(topic)
    return command, final


async def _follow(
    events: asyncio.Queue[DeploymentEvent],
    command_id: str,
    timeout_s: float,
    on_event: Callable[[DeploymentEvent], None] | None,
) -> DeploymentEvent | None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            return None
        try:
            async with asyncio.timeout(remaining):
                event = await events.get()
        except TimeoutError:
            return None
        if event.command_id != command_id:
            continue
        if on_event is not None:
            on_event(event)
        if event.step in TERMINAL_STEPS:
            return event

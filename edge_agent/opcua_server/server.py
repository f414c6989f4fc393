"""Serves pipelines' snapshots over OPC-UA, Basic256Sha256 SignAndEncrypt with users.

Address space (namespace NAMESPACE_URI, string node ids `<pipeline>.<path>`):
Objects/EdgeAgent/Pipelines/<pipeline>/ with State, Detail, Healthy, Type, Inferences,
ModelName, ModelVersion; Prediction/ (Time, InSpec, HasSpec, Outputs/<output>);
Recommendation/ (State, Id, Target, PredictedNow, PredictedAfter, PredictedEffect, ExpiresAt,
Setpoints/<tag>); Defects/<camera>/<region>/ (Class, Confidence, Time). A pipeline that is
no longer configured keeps its folder with State "absent". Every variable is read-only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asyncua import Node, Server, ua
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
from asyncua.server.user_managers import UserManager

from edge_agent.config.opcua_server import OpcUaServerConfig, PasswordCheck
from edge_agent.pipelines.snapshot import PipelineSnapshot

log = logging.getLogger(__name__)

NAMESPACE_URI = "urn:edge-mlops:edge-agent:pipelines"
NO_TIME = datetime(1601, 1, 1, tzinfo=UTC)  # OPC-UA's null DateTime: nothing seen yet

Snapshots = Callable[[], Sequence[PipelineSnapshot]]


class _Users(UserManager):
    """The configured users with their passwords; anonymous only when configured. All get
    the User role, which asyncua lets read and browse but never write."""

    def __init__(self, users: dict[str, PasswordCheck], anonymous: bool) -> None:
        self._users, self._anonymous = users, anonymous

    def get_user(self, iserver: Any, username: str | None = None,
                 password: str | None = None, certificate: Any = None) -> User | None:
        if username is None:
            return User(role=UserRole.User, name="anonymous") if self._anonymous else None
        check = self._users.get(username)
        if check is not None and check.matches(password):
            return User(role=UserRole.User, name=username)
        log.warning("opcua server login refused user=%s", username)
        return None


async def _trusted(folder: Path) -> CertificateValidator:
    """Accepts only the client certificates in `folder`, within their validity."""
    if not folder.is_dir():
        raise ValueError(f"opcua_server.trusted_clients: {folder} is not a folder; put the "
                         "HMI clients' certificates (PEM or DER) there")
    store = TrustStore([folder], [])
    await store.load()
    return CertificateValidator(CertificateValidatorOptions.TRUSTED
                                | CertificateValidatorOptions.TIME_RANGE
                                | CertificateValidatorOptions.PEER_CLIENT, store)


def _time(at: float | None) -> datetime:
    return NO_TIME if at is None else datetime.fromtimestamp(at, UTC)


class OpcUaServer:
    """Builds the address space as pipelines and their values appear, and refreshes it."""

    def __init__(self, config: OpcUaServerConfig, snapshots: Snapshots) -> None:
        self.config = config
        self._snapshots = snapshots
        self._server: Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._ns = 0
        self._pipelines: Node | None = None
        self._folders: dict[str, Node] = {}  # by node id text
        self._variables: dict[str, tuple[Node, ua.VariantType, Any]] = {}  # node, type, last
        self._shown: set[str] = set()  # pipelines ever shown

    @property
    def endpoint(self) -> str:
        return f"opc.tcp://{self.config.host}:{self.config.port}/{self.config.path}"

    async def start(self) -> None:
        """Listen, publish the current values, and keep them fresh until `stop`."""
        config = self.config
        users = {u.name: u.checker() for u in config.users}  # a missing env fails here
        logging.getLogger("asyncua").setLevel(
            max(logging.WARNING, logging.getLogger("asyncua").getEffectiveLevel()))
        server = Server(user_manager=_Users(users, config.anonymous))
        await server.init()
        await server.set_application_uri(config.application_uri)
        server.set_server_name("edge-mlops edge agent")
        server.set_endpoint(self.endpoint)
        await server.load_certificate(str(config.certificate))
        await server.load_private_key(str(config.private_key))
        server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
        if config.trusted_clients is not None:
            server.set_certificate_validator(await _trusted(config.trusted_clients))
        tokens: list[Any] = [ua.UserNameIdentityToken] if users else []
        if config.anonymous:
            tokens.append(ua.AnonymousIdentityToken)
        server.set_identity_tokens(tokens)
        self._ns = await server.register_namespace(NAMESPACE_URI)
        agent = await server.nodes.objects.add_folder(ua.NodeId("EdgeAgent", self._ns),
                                                      ua.QualifiedName("EdgeAgent", self._ns))
        self._pipelines = await agent.add_folder(ua.NodeId("Pipelines", self._ns),
                                                 ua.QualifiedName("Pipelines", self._ns))
        self._server = server
        await self.refresh()
        await server.start()
        log.info("opcua server listening endpoint=%s users=%d anonymous=%s", self.endpoint,
                 len(users), config.anonymous)
        self._task = asyncio.create_task(self._refresh_loop(), name="opcua-server")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._server is not None:
            server, self._server = self._server, None
            await server.stop()

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.update_interval_s)
            try:
                await self.refresh()
            except Exception:  # a bad value must not end the server; the next round retries
                log.exception("opcua server refresh failed")

    async def refresh(self) -> None:
        """Write what the pipelines show now; only changed values are written."""
        shown = set()
        for snapshot in self._snapshots():
            await self._pipeline(snapshot)
            shown.add(snapshot.name)
        for name in self._shown - shown:  # gone with a new configuration: say so, not stale
            root = self._folders[name]
            await self._set(root, name, "State", "absent", ua.VariantType.String)
            await self._set(root, name, "Healthy", False, ua.VariantType.Boolean)
        self._shown |= shown

    async def _pipeline(self, s: PipelineSnapshot) -> None:
        assert self._pipelines is not None
        root = await self._folder(self._pipelines, s.name, s.name)
        version = ""
        if s.process is not None and s.process.last_prediction is not None:
            version = str(s.process.last_prediction.get("model", {}).get("version", ""))
        await self._set(root, s.name, "Type", s.type, ua.VariantType.String)
        await self._set(root, s.name, "State", s.state, ua.VariantType.String)
        await self._set(root, s.name, "Detail", s.detail, ua.VariantType.String)
        await self._set(root, s.name, "Healthy", s.state == "running", ua.VariantType.Boolean)
        await self._set(root, s.name, "Inferences", s.inferences, ua.VariantType.Int64)
        await self._set(root, s.name, "ModelName", s.model, ua.VariantType.String)
        await self._set(root, s.name, "ModelVersion", version, ua.VariantType.String)
        if s.process is not None:
            at = s.process.trend[-1].at if s.process.trend else None
            await self._prediction(root, s.name, s.process.last_prediction, at)
            await self._recommendation(root, s.name, s)
        if s.vision is not None:
            await self._defects(root, s.name, s)

    async def _prediction(self, root: Node, name: str, prediction: dict[str, Any] | None,
                          at: float | None) -> None:
        path = f"{name}.Prediction"
        folder = await self._folder(root, path, "Prediction")
        outputs = dict((prediction or {}).get("outputs") or {})
        in_spec = outputs.pop("in_spec", None)
        await self._set(folder, path, "Time", _time(at), ua.VariantType.DateTime)
        await self._set(folder, path, "InSpec", bool(in_spec) if in_spec is not None else False,
                        ua.VariantType.Boolean)
        await self._set(folder, path, "HasSpec", in_spec is not None, ua.VariantType.Boolean)
        values = await self._folder(folder, f"{path}.Outputs", "Outputs")
        for output, value in outputs.items():
            await self._set(values, f"{path}.Outputs", output,
                            float("nan") if value is None else float(value),
                            ua.VariantType.Double)

    async def _recommendation(self, root: Node, name: str, s: PipelineSnapshot) -> None:
        assert s.process is not None
        path = f"{name}.Recommendation"
        folder = await self._folder(root, path, "Recommendation")
        open_one = s.process.open_recommendation
        shown = open_one
        state = "none"
        if open_one is not None:
            state = "open"
        elif s.process.answered:
            shown = s.process.answered[0].recommendation
            state = s.process.answered[0].answer.decision
        await self._set(folder, path, "State", state, ua.VariantType.String)
        if shown is None:
            return
        await self._set(folder, path, "Id", shown.id, ua.VariantType.String)
        await self._set(folder, path, "Target", shown.target, ua.VariantType.String)
        await self._set(folder, path, "PredictedNow", shown.predicted_now, ua.VariantType.Double)
        await self._set(folder, path, "PredictedAfter", shown.predicted_after,
                        ua.VariantType.Double)
        await self._set(folder, path, "PredictedEffect",
                        shown.predicted_after - shown.predicted_now, ua.VariantType.Double)
        await self._set(folder, path, "ExpiresAt", _time(shown.expires_at),
                        ua.VariantType.DateTime)
        setpoints = await self._folder(folder, f"{path}.Setpoints", "Setpoints")
        for change in shown.changes:
            await self._set(setpoints, f"{path}.Setpoints", change.tag, change.proposed,
                            ua.VariantType.Double)

    async def _defects(self, root: Node, name: str, s: PipelineSnapshot) -> None:
        assert s.vision is not None
        path = f"{name}.Defects"
        defects = await self._folder(root, path, "Defects")
        camera_path = f"{path}.{s.vision.camera}"
        camera = await self._folder(defects, camera_path, s.vision.camera)
        newest: dict[str, Any] = {}
        for defect in s.vision.recent_defects:  # newest first
            newest.setdefault(defect.roi, defect)
        for roi, defect in newest.items():
            region_path = f"{camera_path}.{roi}"
            region = await self._folder(camera, region_path, roi)
            await self._set(region, region_path, "Class", defect.label, ua.VariantType.String)
            await self._set(region, region_path, "Confidence", float(defect.confidence),
                            ua.VariantType.Double)
            await self._set(region, region_path, "Time", _time(defect.at),
                            ua.VariantType.DateTime)

    async def _folder(self, parent: Node, node_id: str, name: str) -> Node:
        folder = self._folders.get(node_id)
        if folder is None:
            folder = await parent.add_folder(ua.NodeId(node_id, self._ns),
                                             ua.QualifiedName(name, self._ns))
            self._folders[node_id] = folder
        return folder

    async def _set(self, parent: Node, path: str, name: str, value: Any,
                   kind: ua.VariantType) -> None:
        node_id = f"{path}.{name}"
        known = self._variables.get(node_id)
        if known is None:
            node = await parent.add_variable(ua.NodeId(node_id, self._ns),
                                             ua.QualifiedName(name, self._ns),
                                             ua.Variant(value, kind))
            self._variables[node_id] = (node, kind, value)  # not writable: the default
            return
        node, _, last = known
        if last == value or (value != value and last != last):  # NaN equals NaN here
            return
        await node.write_value(ua.Variant(value, kind))
        self._variables[node_id] = (node, kind, value)

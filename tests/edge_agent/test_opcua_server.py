"""The agent's OPC-UA server against a real asyncua client over Basic256Sha256
SignAndEncrypt: logins, browsing, values following the pipelines, and no writes."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, ua
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from pydantic import ValidationError

from edge_agent.app import Agent
from edge_agent.config import AgentConfig
from edge_agent.config.opcua_server import OpcUaServerConfig, hash_password
from edge_agent.kernel.contract import ModelRef, RecommendationPayload, SetpointChange
from edge_agent.kernel.transport.memory import MemoryBroker, MemoryTransport
from edge_agent.opcua_server import NAMESPACE_URI, OpcUaServer
from edge_agent.pipelines.snapshot import (
    PipelineSnapshot,
    ProcessDetails,
    RecentDefect,
    TrendPoint,
    VisionDetails,
)
from tests.conftest import free_port
from tests.edge_agent.sources.opcua_certs import write_app_certificate
from tests.helpers import wait_until_async, write_test_keys

SERVER_URI = "urn:edge-mlops:edge-agent:test-server"
CLIENT_URI = "urn:edge-mlops:hmi:test"
MODEL = ModelRef(name="scrap-model", version="1.2.0", sha256="a" * 64)
NOW = time.time()

pytestmark = pytest.mark.timeout(90)


def process_snapshot(scrap: float, recommendation: RecommendationPayload | None
                     ) -> PipelineSnapshot:
    prediction = {"pipeline": "extruder", "model": MODEL.model_dump(), "inputs": {},
                  "outputs": {"scrap_rate_pct": scrap, "in_spec": 1.0 if scrap < 2 else 0.0}}
    return PipelineSnapshot(
        name="extruder", type="process", model="scrap-model", state="running", detail="",
        inferences=42,
        process=ProcessDetails(last_prediction=prediction, recommends=True,
                               open_recommendation=recommendation, answered=(), search="",
                               last_write=None, writes_this_hour=0,
                               trend=(TrendPoint(NOW, {}, {"scrap_rate_pct": scrap}),)))


def vision_snapshot(defects: tuple[RecentDefect, ...]) -> PipelineSnapshot:
    return PipelineSnapshot(
        name="caps", type="vision", model="cap-defects", state="error", detail="camera lost",
        inferences=7,
        vision=VisionDetails(camera="cam-1", defects=len(defects), samples=0, last_result=None,
                             recent_defects=defects))


RECOMMENDATION = RecommendationPayload(
    pipeline="extruder", model=MODEL, target="scrap_rate_pct", objective="minimise",
    changes=[SetpointChange(tag="zone1_temp_c", current=210.0, proposed=204.5)],
    predicted_now=2.5, predicted_after=1.25, inputs={}, expires_at=NOW + 600)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("opcua-server-certs")
    server_cert, server_key = write_app_certificate(folder, "agent", SERVER_URI, server=True)
    client_cert, client_key = write_app_certificate(folder, "hmi", CLIENT_URI)
    return {"server_cert": server_cert, "server_key": server_key, "client_cert": client_cert,
            "client_key": client_key}


def server_config(certs: dict[str, Path], **overrides: Any) -> OpcUaServerConfig:
    values: dict[str, Any] = {
        "host": "127.0.0.1", "port": free_port(), "certificate": certs["server_cert"],
        "private_key": certs["server_key"], "application_uri": SERVER_URI,
        "users": [{"name": "hmi", "password_hash": hash_password("line-3-hmi!")},
                  {"name": "scada", "password_env": "TEST_OPCUA_SCADA_PASSWORD"}],
        "update_interval_s": 0.1}
    values.update(overrides)
    return OpcUaServerConfig.model_validate(values)


@asynccontextmanager
async def serving(config: OpcUaServerConfig, snapshots: list[PipelineSnapshot]
                  ) -> AsyncIterator[OpcUaServer]:
    server = OpcUaServer(config, lambda: list(snapshots))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def secure_client(endpoint: str, certs: dict[str, Path], user: str | None,
                        password: str | None) -> Client:
    client = Client(endpoint, timeout=10)
    client.application_uri = CLIENT_URI
    await client.set_security(
        SecurityPolicyBasic256Sha256, certificate=str(certs["client_cert"]),
        private_key=str(certs["client_key"]), server_certificate=str(certs["server_cert"]),
        mode=ua.MessageSecurityMode.SignAndEncrypt)
    if user is not None:
        client.set_user(user)
        client.set_password(password or "")
    return client


async def read(client: Client, ns: int, node_id: str) -> Any:
    return await client.get_node(ua.NodeId(node_id, ns)).read_value()


async def has_values(client: Client, ns: int, expected: dict[str, Any]) -> bool:
    """Whether the nodes hold these values: a refresh writes (or adds) them one by one."""
    try:
        return all([await read(client, ns, node_id) == value
                    for node_id, value in expected.items()])
    except ua.uaerrors.BadNodeIdUnknown:
        return False  # not added yet


def test_user_browses_and_reads_values_that_follow_the_pipelines(
    certificates: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TEST_OPCUA_SCADA_PASSWORD", "scada-secret-1")
    snapshots = [process_snapshot(2.5, RECOMMENDATION), vision_snapshot(())]

    async def scenario() -> None:
        async with serving(server_config(certificates), snapshots) as server:
            client = await secure_client(server.endpoint, certificates, "hmi", "line-3-hmi!")
            async with client:
                ns = await client.get_namespace_index(NAMESPACE_URI)
                pipelines = await client.nodes.objects.get_child(
                    [f"{ns}:EdgeAgent", f"{ns}:Pipelines"])
                names = {(await c.read_browse_name()).Name for c in await pipelines.get_children()}
                assert names == {"extruder", "caps"}
                extruder = await pipelines.get_child(f"{ns}:extruder")
                children = {(await c.read_browse_name()).Name
                            for c in await extruder.get_children()}
                assert {"State", "Healthy", "ModelName", "ModelVersion", "Prediction",
                        "Recommendation"} <= children
                outputs = await extruder.get_child([f"{ns}:Prediction", f"{ns}:Outputs",
                                                    f"{ns}:scrap_rate_pct"])
                assert await outputs.read_value() == 2.5
                assert await read(client, ns, "extruder.Prediction.InSpec") is False
                assert await read(client, ns, "extruder.ModelVersion") == "1.2.0"
                assert await read(client, ns, "extruder.Healthy") is True
                assert await read(client, ns, "extruder.Recommendation.State") == "open"
                assert await read(client, ns, "extruder.Recommendation.PredictedEffect") == -1.25
                assert await read(
                    client, ns, "extruder.Recommendation.Setpoints.zone1_temp_c") == 204.5
                assert await read(client, ns, "caps.Healthy") is False
                assert await read(client, ns, "caps.Detail") == "camera lost"

                # The pipelines move on: the server follows at its update interval.
                snapshots[0] = process_snapshot(1.5, None)
                snapshots[1] = vision_snapshot((
                    RecentDefect(2, NOW + 5, "neck", "scratch", 0.91, b""),
                    RecentDefect(1, NOW, "neck", "dent", 0.7, b""),
                    RecentDefect(0, NOW - 5, "body", "dent", 0.8, b"")))
                await wait_until_async(lambda: has_values(client, ns, {
                    "extruder.Prediction.InSpec": True,
                    "extruder.Prediction.Outputs.scrap_rate_pct": 1.5,
                    "extruder.Recommendation.State": "none",
                    "caps.Defects.cam-1.neck.Class": "scratch",
                    "caps.Defects.cam-1.neck.Confidence": 0.91,
                    "caps.Defects.cam-1.body.Class": "dent"}), 10, what="the new values")
                region = await client.nodes.objects.get_child(
                    [f"{ns}:EdgeAgent", f"{ns}:Pipelines", f"{ns}:caps", f"{ns}:Defects",
                     f"{ns}:cam-1", f"{ns}:neck"])
                assert (await region.get_child(f"{ns}:Class")).nodeid.Identifier == \
                    "caps.Defects.cam-1.neck.Class"
                seen = await read(client, ns, "caps.Defects.cam-1.neck.Time")
                assert abs(seen.timestamp() - (NOW + 5)) < 0.01

                snapshots.pop()  # a new configuration without the vision pipeline
                await wait_until_async(lambda: has_values(client, ns, {
                    "caps.State": "absent", "caps.Healthy": False}), 10,
                    what="caps marked absent")

            # The user whose password comes from the environment logs in too.
            scada = await secure_client(server.endpoint, certificates, "scada", "scada-secret-1")
            async with scada:
                ns = await scada.get_namespace_index(NAMESPACE_URI)
                assert await read(scada, ns, "extruder.ModelName") == "scrap-model"

    asyncio.run(scenario())


def test_writes_are_refused(certificates: dict[str, Path], monkeypatch: pytest.MonkeyPatch
                            ) -> None:
    monkeypatch.setenv("TEST_OPCUA_SCADA_PASSWORD", "scada-secret-1")

    async def scenario() -> None:
        async with serving(server_config(certificates),
                           [process_snapshot(2.5, RECOMMENDATION)]) as server:
            client = await secure_client(server.endpoint, certificates, "hmi", "line-3-hmi!")
            async with client:
                ns = await client.get_namespace_index(NAMESPACE_URI)
                for node_id in ("extruder.Prediction.Outputs.scrap_rate_pct",
                                "extruder.Recommendation.Setpoints.zone1_temp_c"):
                    node = client.get_node(ua.NodeId(node_id, ns))
                    with pytest.raises(ua.UaStatusCodeError) as refused:
                        await node.write_value(ua.Variant(99.0, ua.VariantType.Double))
                    assert refused.value.code == ua.StatusCodes.BadUserAccessDenied
                    assert await node.read_value() != 99.0
                    access = await node.read_attribute(ua.AttributeIds.AccessLevel)
                    assert not access.Value.Value & ua.AccessLevel.CurrentWrite.mask

    asyncio.run(scenario())


def test_anonymous_and_wrong_passwords_are_refused_unless_anonymous_is_configured(
    certificates: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TEST_OPCUA_SCADA_PASSWORD", "scada-secret-1")

    async def refused(server: OpcUaServer, user: str | None, password: str | None) -> str:
        client = await secure_client(server.endpoint, certificates, user, password)
        with pytest.raises(ua.UaError) as error:
            await client.connect()
        await client.disconnect()  # a half-open connection is closed either way
        return str(error.value)

    async def scenario() -> None:
        async with serving(server_config(certificates), [vision_snapshot(())]) as server:
            assert "Bad" in await refused(server, None, None)
            assert "BadUserAccessDenied" in await refused(server, "hmi", "guess")
            assert "BadUserAccessDenied" in await refused(server, "nobody", "line-3-hmi!")
            # No unsecured endpoint is offered at all.
            plain = Client(server.endpoint, timeout=10)
            with pytest.raises(ua.UaError):
                await plain.connect()
            await plain.disconnect()
        async with serving(server_config(certificates, anonymous=True),
                           [vision_snapshot(())]) as server:
            client = await secure_client(server.endpoint, certificates, None, None)
            async with client:
                ns = await client.get_namespace_index(NAMESPACE_URI)
                assert await read(client, ns, "caps.State") == "error"

    asyncio.run(scenario())


def test_only_trusted_client_certificates_connect_when_a_trust_folder_is_set(
    certificates: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TEST_OPCUA_SCADA_PASSWORD", "scada-secret-1")
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    shutil.copy(certificates["client_cert"], trusted / "hmi.pem")
    stranger_cert, stranger_key = write_app_certificate(tmp_path, "stranger", CLIENT_URI)
    stranger = {**certificates, "client_cert": stranger_cert, "client_key": stranger_key}

    async def scenario() -> None:
        config = server_config(certificates, trusted_clients=trusted)
        async with serving(config, [vision_snapshot(())]) as server:
            refused = await secure_client(server.endpoint, stranger, "hmi", "line-3-hmi!")
            with pytest.raises((ua.UaError, OSError, TimeoutError)):
                await refused.connect()
            await refused.disconnect()
            client = await secure_client(server.endpoint, certificates, "hmi", "line-3-hmi!")
            async with client:
                ns = await client.get_namespace_index(NAMESPACE_URI)
                assert await read(client, ns, "caps.State") == "error"

    asyncio.run(scenario())


def test_config_is_checked(certificates: dict[str, Path], monkeypatch: pytest.MonkeyPatch
                           ) -> None:
    with pytest.raises(ValidationError, match="no client could connect"):
        server_config(certificates, users=[])
    with pytest.raises(ValidationError, match="password_env or password_hash"):
        server_config(certificates, users=[{"name": "hmi"}])
    users = [{"name": "hmi", "password_hash": hash_password("line-3-hmi!")}]
    server = OpcUaServer(server_config(certificates, users=users, trusted_clients="missing"),
                         list)
    with pytest.raises(ValueError, match="trusted_clients: missing is not a folder"):
        asyncio.run(server.start())
    with pytest.raises(ValidationError, match="password_hash is not"):
        server_config(certificates, users=[{"name": "hmi", "password_hash": "plain"}])
    monkeypatch.delenv("TEST_OPCUA_SCADA_PASSWORD", raising=False)
    server = OpcUaServer(server_config(certificates), list)
    with pytest.raises(ValueError, match="TEST_OPCUA_SCADA_PASSWORD is not set"):
        asyncio.run(server.start())


def test_agent_serves_its_pipelines_when_configured_and_is_off_by_default(
    certificates: dict[str, Path], tmp_path: Path,
) -> None:
    port = free_port()
    values: dict[str, Any] = {
        "device_id": "gw-1", "data_dir": str(tmp_path / "gw-1"),
        "sources": [{"name": "line-1", "endpoint": "opc.tcp://127.0.0.1:9",
                     "nodes": {"zone2_temp_c": "ns=2;s=zone2_temp_c"}}],
        "pipelines": [{"name": "scrap", "source": "line-1", "model": "extruder-scrap"}],
        "ui": {"port": 0},
        "security": {"central_public_key": str(write_test_keys(tmp_path / "keys")[1])}}
    assert AgentConfig.model_validate(values).opcua_server is None
    values["opcua_server"] = server_config(
        certificates, port=port, users=[{"name": "hmi", "password_hash": hash_password("pw")}],
    ).model_dump(mode="json")
    agent = Agent(AgentConfig.model_validate(values), transport=MemoryTransport(MemoryBroker()))

    async def scenario() -> None:
        stop = asyncio.Event()
        running = asyncio.create_task(agent.run(stop))
        try:
            endpoint = f"opc.tcp://127.0.0.1:{port}/edge-agent"

            async def model_name() -> Any:
                client = await secure_client(endpoint, certificates, "hmi", "pw")
                try:
                    async with client:
                        ns = await client.get_namespace_index(NAMESPACE_URI)
                        return (await read(client, ns, "scrap.ModelName"),
                                await read(client, ns, "scrap.Healthy"))
                except (OSError, ua.UaError, TimeoutError):
                    return None  # not listening yet

            assert await wait_until_async(model_name, 30, interval_s=0.2,
                                          what="the agent's OPC-UA server") == (
                "extruder-scrap", False)  # no model installed, no PLC: not healthy
        finally:
            stop.set()
            await asyncio.wait_for(running, 30)

    asyncio.run(scenario())

"""The OPC-UA source against the real line simulator: browse paths, deadband, status codes,
server restarts with gap records, security, history and setpoint write-back."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, ua
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pydantic import ValidationError

from edge_agent.config import OpcUaSourceConfig
from edge_agent.kernel.contract import SourceGapPayload
from edge_agent.sources.opcua import OpcUaSource, SetpointWriteError
from tests.conftest import LineSimulatorProcess, free_port, start_line_simulator
from tests.edge_agent.sources.opcua_certs import write_app_certificate
from tests.helpers import wait_until_async

TAGS = ["zone1_temp_c", "zone2_temp_c", "melt_pressure_bar", "screw_speed_rpm"]
SIMULATOR_URI = "urn:edge-mlops:line-simulator:server"
CLIENT_URI = "urn:edge-mlops:edge-agent:test"


def config_for(endpoint: str, **overrides: Any) -> OpcUaSourceConfig:
    fields: dict[str, Any] = {
        "name": "line1", "endpoint": endpoint, "sampling_interval_ms": 100,
        "nodes": {tag: f"ns=2;s=line1.{tag}" for tag in TAGS}, "reconnect_max_backoff_s": 1.0,
    }
    return OpcUaSourceConfig(**(fields | overrides))


def source_for(endpoint: str, **overrides: Any) -> OpcUaSource:
    return OpcUaSource(config_for(endpoint, **overrides))


@contextlib.asynccontextmanager
async def running(source: OpcUaSource) -> AsyncIterator[OpcUaSource]:
    task = asyncio.create_task(source.run())
    try:
        yield source
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def write_string(endpoint: str, node_id: str, text: str) -> None:
    async with Client(endpoint) as client:
        await client.get_node(node_id).write_value(
            ua.DataValue(ua.Variant(text, ua.VariantType.String))
        )


@pytest.fixture(scope="module")
def shared_simulator() -> Iterator[LineSimulatorProcess]:
    """One simulator for the tests that only read from it or have their writes refused: none
    changes what it serves. Tests that write, stop or pause the server get their own."""
    simulator = start_line_simulator(free_port())
    yield simulator
    simulator.kill()


def test_source_reads_live_tags_with_timestamps(shared_simulator: LineSimulatorProcess) -> None:
    async def scenario() -> None:
        async with running(source_for(shared_simulator.endpoint)) as source:
            await wait_until_async(lambda: set(source.latest) == set(TAGS), 15, what="all tags")
            first = source.latest["zone2_temp_c"]
            assert first.good and 150 < first.value < 220
            await wait_until_async(
                lambda: source.latest["zone2_temp_c"].source_time > first.source_time, 10,
                what="a newer value")
            assert source.state.state == "connected"
            assert source.bad_tags == {}

    asyncio.run(scenario())


def test_source_time_is_the_servers_source_timestamp() -> None:
    simulator = start_line_simulator(free_port(), interval_s=1000)  # values hold still

    async def scenario() -> None:
        async with Client(simulator.endpoint) as client:
            served = await client.get_node("ns=2;s=line1.zone2_temp_c").read_data_value()
        await asyncio.sleep(0.3)  # so that the server's time and the arrival time differ
        async with running(source_for(simulator.endpoint)) as source:
            await wait_until_async(lambda: "zone2_temp_c" in source.latest, 15, what="a value")
            value = source.latest["zone2_temp_c"]
            assert served.SourceTimestamp is not None
            assert value.source_time == pytest.approx(served.SourceTimestamp.timestamp(), abs=1e-3)
            assert value.received_at - value.source_time > 0.2

    try:
        asyncio.run(scenario())
    finally:
        simulator.kill()


def test_nodes_by_browse_path_and_an_unresolvable_path_is_reported(
    shared_simulator: LineSimulatorProcess,
) -> None:
    nodes = {
        "zone2_temp_c": "/Objects/2:Line1/2:zone2_temp_c",
        "screw_speed_rpm": "ns=2;s=line1.screw_speed_rpm",
        "zone9_temp_c": "/Objects/2:Line1/2:zone9_temp_c",
    }

    async def scenario() -> None:
        async with running(source_for(shared_simulator.endpoint, nodes=nodes)) as source:
            await wait_until_async(
                lambda: {"zone2_temp_c", "screw_speed_rpm"} <= set(source.latest), 15,
                what="values by browse path and NodeId")
            assert source.latest["zone2_temp_c"].good
            assert source.state.state == "connected"
            assert "zone9_temp_c" in source.bad_tags
            assert "/Objects/2:Line1/2:zone9_temp_c" in source.bad_tags["zone9_temp_c"]
            assert "zone9_temp_c" in source.state.detail

    asyncio.run(scenario())


def test_deadband_larger_than_the_changes_suppresses_updates(
    shared_simulator: LineSimulatorProcess,
) -> None:
    async def scenario() -> None:
        plain = source_for(shared_simulator.endpoint)
        banded = source_for(shared_simulator.endpoint, deadband=1000.0)
        async with running(plain), running(banded):
            await wait_until_async(lambda: set(plain.latest) == set(TAGS) == set(banded.latest),
                                   15, what="first values")
            await wait_until_async(lambda: len(plain.history["zone2_temp_c"]) >= 5, 15,
                                   what="5 updates")
        plain_updates = sum(len(plain.history[tag]) for tag in TAGS)
        banded_updates = sum(len(banded.history[tag]) for tag in TAGS)
        assert banded_updates == len(TAGS), "only the initial value of each tag"
        assert plain_updates >= 4 * len(TAGS)

    asyncio.run(scenario())


def test_bad_status_is_stored_as_not_good_and_reported(
    line_simulator: LineSimulatorProcess,
) -> None:
    async def scenario() -> None:
        async with running(source_for(line_simulator.endpoint)) as source:
            await wait_until_async(lambda: set(source.latest) == set(TAGS), 15, what="all tags")
            await write_string(line_simulator.endpoint, "ns=2;s=line1.fault_tag", "zone2_temp_c")
            await wait_until_async(
                lambda: source.latest["zone2_temp_c"].status == "BadSensorFailure", 10,
                what="the fault")
            assert not source.latest["zone2_temp_c"].good
            assert source.bad_tags == {"zone2_temp_c": "BadSensorFailure"}
            assert "zone2_temp_c=BadSensorFailure" in source.state.detail
            assert source.latest["zone1_temp_c"].good

            await write_string(line_simulator.endpoint, "ns=2;s=line1.fault_tag", "")
            await wait_until_async(lambda: source.latest["zone2_temp_c"].good, 10, what="recovery")
            assert source.bad_tags == {}
            assert "BadSensorFailure" not in source.state.detail

    asyncio.run(scenario())


def test_source_reconnects_after_server_restart_and_records_one_gap(
    line_simulator: LineSimulatorProcess,
) -> None:
    gaps: list[SourceGapPayload] = []

    async def record(gap: SourceGapPayload) -> None:
        gaps.append(gap)

    async def scenario() -> None:
        source = OpcUaSource(config_for(line_simulator.endpoint), on_gap=record)
        async with running(source):
            await wait_until_async(lambda: set(source.latest) == set(TAGS), 15, what="all tags")
            killed_at = time.time()
            line_simulator.stop()
            await wait_until_async(lambda: source.state.state == "reconnecting", 15,
                                   what="loss detected")
            assert source.state.detail, "the reason is reported"
            assert not source.latest["zone1_temp_c"].good, "stale values are not good"
            await wait_until_async(lambda: source.reconnects >= 3, 15,
                                   what="several failed reconnection attempts")
            restarted = await asyncio.to_thread(start_line_simulator, line_simulator.port)
            back_at = time.time()
            try:
                seen_before = source.latest["zone1_temp_c"].received_at
                await wait_until_async(
                    lambda: source.latest["zone1_temp_c"].received_at > seen_before, 10,
                    what="values within 10 s of the server's return")
                assert source.state.state == "connected"
                await wait_until_async(lambda: source.bad_tags == {}, 5,
                                       what="all tags good again")
                assert source.state.detail == source.config.endpoint
                # Letting time pass is the check here: a second gap would show up by now.
                await asyncio.sleep(1.0)
            finally:
                restarted.kill()
        assert len(gaps) == 1
        gap = gaps[0]
        assert gap.source == "line1" and gap.reason
        assert gap.started_at <= killed_at + 0.5
        assert back_at <= gap.ended_at <= back_at + 10
        assert gap.duration_s == pytest.approx(gap.ended_at - gap.started_at)
        assert gap.duration_s >= back_at - killed_at - 0.5
        assert source.gaps == 1 and source.last_gap == gap
        assert source.reconnects >= 1

    asyncio.run(scenario())


def test_keepalives_confirm_a_value_that_does_not_change(
    shared_simulator: LineSimulatorProcess,
) -> None:
    """A setpoint nobody writes is reported once; the server's keepalives keep confirming it."""
    nodes = {"zone2_setpoint": "ns=2;s=line1.zone2_temp_c_sp"}

    async def scenario() -> None:
        async with running(source_for(shared_simulator.endpoint, nodes=nodes)) as source:
            await wait_until_async(lambda: "zone2_setpoint" in source.latest, 15,
                                   what="the setpoint's value")
            first = source.latest["zone2_setpoint"]
            await wait_until_async(lambda: source.confirmed_at > first.received_at + 2, 10,
                                   what="keepalives confirming the value for over 2 s")
            assert source.latest["zone2_setpoint"].received_at == first.received_at
            assert source.confirmed_at <= time.time()

    asyncio.run(scenario())


def test_history_keeps_only_the_configured_seconds(shared_simulator: LineSimulatorProcess) -> None:
    async def scenario() -> None:
        async with running(source_for(shared_simulator.endpoint, history_s=1.0)) as source:
            await wait_until_async(lambda: set(source.latest) == set(TAGS), 15, what="all tags")
            first = source.latest["zone2_temp_c"]
            # Values spanning over twice the history's length, and (a late sample on a busy
            # machine can leave a single one for a moment) at least two inside the window.
            await wait_until_async(
                lambda: source.latest["zone2_temp_c"].source_time > first.source_time + 2
                and len(source.history["zone2_temp_c"]) >= 2, 15,
                what="values spanning over twice the history's length, two in the window")
            window = source.history["zone2_temp_c"]
            assert window[-1].source_time - window[0].source_time <= 1.0
            assert window[-1] == source.latest["zone2_temp_c"]

    asyncio.run(scenario())


def test_setpoint_write_returns_the_previous_value(line_simulator: LineSimulatorProcess) -> None:
    setpoints = {"zone2_temp_c": "ns=2;s=line1.zone2_temp_c_sp",
                 "screw_speed_rpm": "/Objects/2:Line1/2:screw_speed_rpm_sp"}

    async def scenario() -> None:
        source = source_for(line_simulator.endpoint, setpoints=setpoints)
        async with running(source):
            await wait_until_async(lambda: source.state.state == "connected", 15, what="connection")
            initial = await source.write("zone2_temp_c", 190.0)
            assert initial == pytest.approx(187.56)  # the first row of line_history.csv
            assert await source.write("zone2_temp_c", 191.5) == pytest.approx(190.0)
            assert await source.write("screw_speed_rpm", 60.0) == pytest.approx(59.12)
            async with Client(line_simulator.endpoint) as client:
                node = client.get_node("ns=2;s=line1.zone2_temp_c_sp")
                assert await node.read_value() == pytest.approx(191.5)

    asyncio.run(scenario())


def test_refused_or_impossible_setpoint_writes_raise(
    shared_simulator: LineSimulatorProcess,
) -> None:
    setpoints = {"zone1_temp_c": "ns=2;s=line1.zone1_temp_c"}  # a measurement: read-only

    async def scenario() -> None:
        source = source_for(shared_simulator.endpoint, setpoints=setpoints)
        with pytest.raises(SetpointWriteError, match="not connected"):
            await source.write("zone1_temp_c", 1.0)
        async with running(source):
            await wait_until_async(lambda: source.state.state == "connected", 15, what="connection")
            with pytest.raises(SetpointWriteError, match=r"refused.*Bad"):
                await source.write("zone1_temp_c", 1.0)
            with pytest.raises(SetpointWriteError, match="no setpoint node"):
                await source.write("melt_pressure_bar", 1.0)

    asyncio.run(scenario())


@pytest.fixture(scope="module")
def secure_simulator(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A simulator with a certificate and one user, shared by the tests that only log in."""
    folder = tmp_path_factory.mktemp("secure-simulator")
    server_cert, server_key = write_app_certificate(folder, "simulator", SIMULATOR_URI,
                                                    server=True)
    client_cert, client_key = write_app_certificate(folder, "agent", CLIENT_URI)
    simulator = start_line_simulator(free_port(), extra_args=[
        "--certificate", str(server_cert), "--private-key", str(server_key),
        "--users", "operator:s3cret",
    ])
    yield simulator, {"security_policy": "Basic256Sha256", "certificate": client_cert,
                      "private_key": client_key, "server_certificate": server_cert}
    simulator.kill()


def test_secure_source_connects_with_the_right_credentials(
    secure_simulator: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    simulator, security = secure_simulator
    monkeypatch.setenv("LINE1_OPCUA_PASSWORD", "s3cret")
    source = source_for(simulator.endpoint, **security, username="operator",
                        password_env="LINE1_OPCUA_PASSWORD")

    async def scenario() -> None:
        async with running(source):
            await wait_until_async(lambda: set(source.latest) == set(TAGS), 20,
                                   what="all tags over Basic256Sha256")
            assert source.state.state == "connected"

    asyncio.run(scenario())


def test_secure_source_reports_wrong_password_as_failed(secure_simulator: Any) -> None:
    simulator, security = secure_simulator
    source = source_for(simulator.endpoint, **security, username="operator", password="wrong")

    async def scenario() -> None:
        async with running(source):
            await wait_until_async(lambda: source.state.state == "failed", 20, what="the refusal")
            assert "BadUserAccessDenied" in source.state.detail
            assert source.latest == {}

    asyncio.run(scenario())


def test_anonymous_client_is_refused_by_a_server_that_requires_users(
    secure_simulator: Any,
) -> None:
    simulator, security = secure_simulator
    source = source_for(simulator.endpoint, **security)

    async def scenario() -> None:
        async with running(source):
            await wait_until_async(lambda: source.state.state in ("failed", "reconnecting")
                        and source.state.detail != simulator.endpoint, 20, what="the refusal")
            assert "Bad" in source.state.detail or "Error" in source.state.detail

    asyncio.run(scenario())


def simulator_with_certificate(folder: Path, port: int) -> tuple[LineSimulatorProcess, bytes]:
    """The simulator on `port` with a certificate of its own; returns it with that one's DER."""
    folder.mkdir()
    cert, key = write_app_certificate(folder, "simulator", SIMULATOR_URI, server=True)
    simulator = start_line_simulator(port, extra_args=[
        "--certificate", str(cert), "--private-key", str(key)])
    der = x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(
        serialization.Encoding.DER)
    return simulator, der


def test_server_certificate_is_trusted_on_first_use_and_a_replaced_one_refused(
        tmp_path: Path) -> None:
    client_cert, client_key = write_app_certificate(tmp_path, "agent", CLIENT_URI)
    port = free_port()
    config = config_for(f"opc.tcp://127.0.0.1:{port}/line-1", security_policy="Basic256Sha256",
                        certificate=client_cert, private_key=client_key)
    trust_dir = tmp_path / "agent-data" / "opcua-trust"
    pinned = trust_dir / "line1.der"

    async def scenario(expected_state: str) -> str:
        source = OpcUaSource(config, trust_dir=trust_dir)
        async with running(source):
            if expected_state == "connected":
                await wait_until_async(lambda: set(source.latest) == set(TAGS), 20,
                                       what=lambda: f"all tags: {source.state}")
            else:
                await wait_until_async(lambda: source.state.state == expected_state, 20,
                                       what=lambda: f"the refusal: {source.state}")
            return source.state.detail

    simulator, first_der = simulator_with_certificate(tmp_path / "first", port)
    try:
        asyncio.run(scenario("connected"))
    finally:
        simulator.kill()  # the connection is closed either way; a graceful stop takes 1 s more
    assert pinned.read_bytes() == first_der

    simulator, second_der = simulator_with_certificate(tmp_path / "second", port)
    try:
        detail = asyncio.run(scenario("failed"))
        assert f"delete {pinned} to trust the new one" in detail
        assert hashlib.sha256(second_der).hexdigest() in detail
        assert pinned.read_bytes() == first_der

        pinned.unlink()  # the server's certificate was replaced on purpose
        asyncio.run(scenario("connected"))
        assert pinned.read_bytes() == second_der
    finally:
        simulator.kill()


def test_a_password_in_the_endpoint_is_neither_shown_nor_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    source = source_for(f"opc.tcp://operator:s3cret-9@127.0.0.1:{free_port()}/line-1")
    assert "s3cret-9" not in source.state.detail and "operator:***@" in source.state.detail
    assert "s3cret-9" not in source.config.summary()

    async def scenario() -> None:
        async with running(source):
            await wait_until_async(lambda: source.state.state == "reconnecting", 20,
                                   what=lambda: f"the refused connection: {source.state}")

    asyncio.run(scenario())
    assert "s3cret-9" not in caplog.text


def test_config_requires_certificate_and_key_for_a_security_policy(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="needs both certificate and private_key"):
        config_for("opc.tcp://plc:4840", security_policy="Basic256Sha256")
    with pytest.raises(ValidationError, match=r"does not exist"):
        config_for("opc.tcp://plc:4840", security_policy="Basic256Sha256",
                   certificate=tmp_path / "missing.pem", private_key=tmp_path / "missing-key.pem")
    cert, _ = write_app_certificate(tmp_path, "agent", CLIENT_URI)
    with pytest.raises(ValidationError, match="go together"):
        config_for("opc.tcp://plc:4840", certificate=cert)
    with pytest.raises(ValidationError, match="password or password_env"):
        config_for("opc.tcp://plc:4840", username="u", password="p", password_env="P")


def test_config_rejects_node_addresses_that_are_neither_node_ids_nor_paths() -> None:
    with pytest.raises(ValidationError, match=r"zone2_temp_c.*neither a NodeId"):
        config_for("opc.tcp://plc:4840", nodes={"zone2_temp_c": "line1.zone2_temp_c"})
    with pytest.raises(ValidationError, match="bad element"):
        config_for("opc.tcp://plc:4840", nodes={"zone2_temp_c": "/Objects/x:Line1"})
    config = config_for("opc.tcp://plc:4840", nodes={"a": "i=2258", "b": "/Objects/2:Line1/2:a"})
    assert config.reconnect_max_backoff_s == 1.0


def test_a_hung_server_is_detected_by_silence_and_the_session_rebuilt(
    line_simulator: LineSimulatorProcess,
) -> None:
    gaps: list[SourceGapPayload] = []

    async def record(gap: SourceGapPayload) -> None:
        gaps.append(gap)

    async def scenario() -> None:
        source = OpcUaSource(config_for(line_simulator.endpoint), on_gap=record)
        async with running(source):
            await wait_until_async(lambda: set(source.latest) == set(TAGS), 15, what="all tags")
            line_simulator.process.send_signal(signal.SIGSTOP)  # socket open, nothing answers
            try:
                await wait_until_async(lambda: source.state.state == "reconnecting", 8,
                                       what="silence detected")
            finally:
                line_simulator.process.send_signal(signal.SIGCONT)
            await wait_until_async(lambda: source.latest["zone1_temp_c"].good, 10,
                                   what="values again")
        assert len(gaps) == 1 and gaps[0].duration_s > 1

    asyncio.run(scenario())

"""Central diagnoses and restarts a running gateway over a real Mosquitto: the report names
versions, states and the configuration in force without one secret of it; a pipeline
restarts alone, an unknown one is refused with the names there are; the agent stops cleanly
when asked to restart, a bounded number of times."""

from __future__ import annotations

import asyncio
import json
import logging
import platform
from pathlib import Path
from typing import Any

import pytest

from edge_agent import __version__
from edge_agent.app import Agent
from edge_agent.cli import EXIT_RESTART
from edge_agent.config import AgentConfig
from edge_agent.fleet.diagnostics import AGENT_RESTARTS, AgentRestarts
from edge_agent.kernel.contract import DiagnoseRequest, DiagnosticReply, RestartCommand
from edge_agent.kernel.transport.memory import MemoryBroker, MemoryTransport
from tests.conftest import REPO, Mosquitto
from tests.edge_agent.fleet.diagnostics_parts import (
    BROKER_PASSWORD,
    CAMERA_PASSWORD,
    DEVICE,
    UI_TOKEN,
    Central,
    Gateway,
    gateway_config,
    running_gateway,
)
from tests.helpers import TEST_SIGNER, wait_until_async


async def ask(central: Central, command: Any) -> DiagnosticReply:
    sent = await central.send(command)
    await wait_until_async(lambda: central.replies(sent.command_id), 10,
                           what=f"a reply to {command.kind}")
    return central.replies(sent.command_id)[0]


def test_diagnosis_reports_versions_states_and_configuration_without_secrets(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    async def scenario() -> tuple[DiagnosticReply, list[bytes]]:
        async with running_gateway(tmp_path, mosquitto.port) as gateway:
            reply = await ask(gateway.central, DiagnoseRequest(device_id=DEVICE,
                                                               issued_by="alice"))
            return reply, gateway.central.raw

    reply, raw = asyncio.run(scenario())
    assert reply.ok and reply.action == "diagnose", reply
    for payload in raw:  # as it crossed the broker, every byte of it
        for secret in (BROKER_PASSWORD, CAMERA_PASSWORD, UI_TOKEN):
            assert secret.encode() not in payload
    report = reply.report
    assert report["agent_version"] == __version__
    assert report["python"] == platform.python_version()
    assert report["platform"] and "onnxruntime" in report["libraries"]
    assert report["config"] is None  # the local file only
    assert report["uptime_s"] >= 0
    assert set(report["sources"]) == {"line-1", "cam-1", "dock"}
    assert all(s["state"] in ("connecting", "connected", "reconnecting", "failed")
               for s in report["sources"].values())
    assert [p["name"] for p in report["pipelines"]] == ["scrap", "surface"]
    assert report["models"]["extruder-scrap"] == {"active": None, "sha256": None,
                                                  "installed": []}
    assert report["buffer"]["quota_bytes"] > 0 and report["uplink"]["connected"] is True
    effective = report["effective_config"]
    assert effective["broker"]["password"] == "***"
    assert effective["broker"]["username"] == DEVICE
    assert effective["ui"]["token"] == "***"
    dock = next(s for s in effective["sources"] if s["name"] == "dock")
    assert dock["url"].startswith("http://viewer:***@127.0.0.1:")
    assert effective["security"]["central_public_key"].endswith("signing.pub")


def test_restart_of_an_unknown_pipeline_is_refused_with_the_known_names(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    async def scenario() -> DiagnosticReply:
        async with running_gateway(tmp_path, mosquitto.port) as gateway:
            return await ask(gateway.central, RestartCommand(device_id=DEVICE,
                                                             pipeline="surfac"))

    reply = asyncio.run(scenario())
    assert not reply.ok and reply.action == "restart"
    assert "no pipeline 'surfac' on this gateway" in reply.detail
    assert "scrap, surface" in reply.detail


def test_restart_of_a_pipeline_replaces_its_task_and_only_its(tmp_path: Path,
                                                              mosquitto: Mosquitto) -> None:
    async def scenario() -> None:
        async with running_gateway(tmp_path, mosquitto.port) as gateway:
            workload = gateway.agent.workload
            before = {name: workload.task(name) for name in ("scrap", "surface")}
            reply = await ask(gateway.central, RestartCommand(device_id=DEVICE,
                                                              pipeline="surface"))
            assert reply.ok, reply
            assert reply.detail == "pipeline surface restarted with its source cam-1"
            after = workload.task("surface")
            assert after is not None and after is not before["surface"]
            assert before["surface"] is not None and before["surface"].done()
            assert not after.done()
            assert workload.task("scrap") is before["scrap"]
            assert not gateway.run.done()

    asyncio.run(scenario())


def test_agent_restart_answers_then_stops_the_agent_cleanly(tmp_path: Path,
                                                            mosquitto: Mosquitto) -> None:
    async def scenario() -> tuple[Gateway, DiagnosticReply]:
        async with running_gateway(tmp_path, mosquitto.port) as gateway:
            reply = await ask(gateway.central, RestartCommand(device_id=DEVICE,
                                                              issued_by="alice"))
            async with asyncio.timeout(15):
                await gateway.run  # returns by itself: nobody set stop
            assert not gateway.stop.is_set()
            await wait_until_async(lambda: not gateway.central.online, 10,
                                   what="the agent saying offline")
            return gateway, reply

    gateway, reply = asyncio.run(scenario())
    assert reply.ok and "started again" in reply.detail
    agent = gateway.agent
    assert agent.restart_reason is not None and "alice" in agent.restart_reason
    assert gateway.run.exception() is None
    assert not agent.buffer._thread.is_alive()  # closed: every record is on disk
    assert agent.logtail not in logging.getLogger().handlers


def test_agent_restarts_are_bounded_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "agent-restarts.json"
    for _ in range(AGENT_RESTARTS):
        assert AgentRestarts(path).allow()  # a new agent process each time
    assert not AgentRestarts(path).allow()
    assert len(json.loads(path.read_text())) == AGENT_RESTARTS


def test_agent_restart_over_the_bound_is_refused_with_the_reason(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    folder = tmp_path / "agent" / "diagnostics"
    folder.mkdir(parents=True)
    for _ in range(AGENT_RESTARTS):
        AgentRestarts(folder / "agent-restarts.json").allow()

    async def scenario() -> tuple[DiagnosticReply, bool]:
        async with running_gateway(tmp_path, mosquitto.port) as gateway:
            reply = await ask(gateway.central, RestartCommand(device_id=DEVICE))
            return reply, gateway.run.done()

    reply, stopped = asyncio.run(scenario())
    assert not reply.ok and not stopped
    assert f"restarted {AGENT_RESTARTS} times in the last 10 minutes" in reply.detail


def test_systemd_starts_the_agent_again_after_exit_75() -> None:
    settings: dict[str, str] = {}
    for text in (REPO / "deploy" / "systemd" / "edge-agent.service").read_text().splitlines():
        key, _, value = text.partition("=")
        if value and not text.startswith("#"):
            settings[key.strip()] = value.strip()
    assert settings["Restart"] in ("on-failure", "always")
    assert str(EXIT_RESTART) not in settings.get("RestartPreventExitStatus", "").split()
    assert str(EXIT_RESTART) not in settings.get("SuccessExitStatus", "").split()


def test_an_answer_that_cannot_be_sent_is_logged_never_buffered(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    agent = Agent(AgentConfig.model_validate(gateway_config(tmp_path, 1883)),
                  transport=MemoryTransport(MemoryBroker()))  # never connected

    async def scenario() -> int:
        try:
            await agent.diagnostics.on_diagnose_request(
                TEST_SIGNER.signed(DiagnoseRequest(device_id=DEVICE)))
            return (await agent.buffer.health()).depth
        finally:
            await agent.buffer.close()

    assert asyncio.run(scenario()) == 0
    assert any("diagnostic answer not sent" in r.getMessage() and "diagnostic_reply" in
               r.getMessage() for r in caplog.records)

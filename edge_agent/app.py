"""The agent process: wires sources, pipelines, buffer, uplink, deployer, status and web page."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Literal

from edge_agent import __version__, web
from edge_agent.buffer import Buffer
from edge_agent.config import AgentConfig, OpcUaSourceConfig
from edge_agent.deployment.checks import CommandWindow
from edge_agent.deployment.deployer import Deployer
from edge_agent.fleet.router import CommandRouter
from edge_agent.kernel import systemd
from edge_agent.kernel.contract import (
    RECORD_SOURCE_GAP,
    DeployCommand,
    DeviceStatus,
    RecommendationAnswerPayload,
    RollbackCommand,
    SourceGapPayload,
    Topics,
    encode,
)
from edge_agent.kernel.transport import NotConnected, Transport, Will
from edge_agent.kernel.transport.mqtt import MqttTransport
from edge_agent.lifecycle import ModelWatch
from edge_agent.metrics import AgentMetrics, AgentSnapshot
from edge_agent.model_store import ModelStore
from edge_agent.pipelines.base import Pipeline, PipelineContext
from edge_agent.pipelines.registry import build_pipeline
from edge_agent.recommendations import AnswerError
from edge_agent.sources.camera import CameraSource
from edge_agent.sources.opcua import OpcUaSource
from edge_agent.sources.opcua_trust import TRUST_FOLDER
from edge_agent.uplink import Uplink

log = logging.getLogger(__name__)

OFFLINE_PUBLISH_TIMEOUT_S = 3.0  # stopping must not hang on a broker that is gone


class Agent:
    def __init__(self, config: AgentConfig, transport: Transport | None = None) -> None:
        self.config = config
        self.device_id = config.device_id
        self.topics = Topics(config.broker.topic_prefix)
        self.buffer = Buffer(config.buffer_path, config.buffer.policy())
        self.store = ModelStore(config.model_store_path)
        offline = DeviceStatus(device_id=self.device_id, state="offline",
                               agent_version=__version__)
        self.transport: Transport = transport or MqttTransport(
            config.broker,
            client_id=self.device_id,
            will=Will(self.topics.status(self.device_id), encode(offline)),
            on_connected=self.publish_status,
        )
        self.sources: dict[str, OpcUaSource | CameraSource] = {
            s.name: OpcUaSource(s, on_gap=self._record_gap,
                                trust_dir=config.data_dir / TRUST_FOLDER)
            if isinstance(s, OpcUaSourceConfig)
            else CameraSource(s)
            for s in config.sources
        }
        self.watch = ModelWatch()
        context = PipelineContext(self.store, self.buffer, self.watch,
                                  config.monitoring_interval_s)
        self.pipelines: list[Pipeline] = [build_pipeline(p, self.sources[p.source], context)
                                          for p in config.pipelines]
        self.uplink = Uplink(self.device_id, self.topics, self.transport, self.buffer,
                             config.uplink)
        security = config.security
        self.deployer = Deployer(self.device_id, self.topics, self.transport, self.store,
                                 self.buffer, security.verifier(), self.watch,
                                 CommandWindow(security.command_max_age_s,
                                               security.command_clock_skew_s))
        self.router = CommandRouter(self.device_id, self.topics, self.transport)
        self.router.register(DeployCommand, self.deployer.handle)
        self.router.register(RollbackCommand, self.deployer.handle)
        self.metrics = AgentMetrics(self.metrics_snapshot)

    async def _record_gap(self, gap: SourceGapPayload) -> None:
        await self.buffer.append(RECORD_SOURCE_GAP, gap.model_dump())

    async def status(self, state: str = "online") -> DeviceStatus:
        return DeviceStatus(
            device_id=self.device_id,
            state=state,  # type: ignore[arg-type]
            agent_version=__version__,
            labels=self.config.labels,
            active_models=[m.ref for m in self.store.active_models()],
            sources={name: source.state for name, source in self.sources.items()},
            buffer=await self.buffer.health(),
            uplink=self.uplink.health(),
        )

    async def status_document(self) -> dict[str, Any]:
        """Everything the status page and `/api/status` show."""
        return {
            "device": (await self.status()).model_dump(mode="json"),
            "pipelines": [p.snapshot().document() for p in self.pipelines],
        }

    async def metrics_snapshot(self) -> AgentSnapshot:
        """The agent's state now for `/metrics`: device status (buffer and uplink health),
        pipelines and counters."""
        return AgentSnapshot(
            status=await self.status(),
            pipelines=[p.snapshot() for p in self.pipelines],
            resent_batches=self.uplink.stats.resent_batches,
            rejected_messages={"uplink": self.uplink.stats.rejected_messages,
                               "deployer": self.deployer.rejected_messages,
                               "commands": self.router.rejected_messages},
        )

    async def answer_recommendation(
        self, recommendation_id: str, decision: Literal["accepted", "rejected"], by: str,
        comment: str = "",
    ) -> RecommendationAnswerPayload:
        """The operator's answer, given to the board that holds the recommendation."""
        for pipeline in self.pipelines:
            board = pipeline.board
            if board is not None and board.knows(recommendation_id):
                return await board.answer(recommendation_id, decision, by, comment)
        raise AnswerError(f"no open recommendation {recommendation_id}; reload the page to see "
                          "the current ones")

    async def publish_status(self, state: str = "online") -> None:
        try:
            status = await self.status(state)
            await self.transport.publish(self.topics.status(self.device_id), encode(status),
                                         qos=1, retain=True)
        except NotConnected:
            log.debug("status not published: broker not connected")

    async def service_status(self) -> str:
        """One line for `systemctl status`: broker, sources and what waits in the buffer."""
        broker = "connected" if self.transport.connected else "not connected"
        sources = ", ".join(f"{name} {source.state.state}"
                            for name, source in self.sources.items()) or "none"
        depth = (await self.buffer.health()).depth
        return (f"broker {self.config.broker.host}:{self.config.broker.port} {broker}; "
                f"sources: {sources}; {depth} records waiting for central")

    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.status_interval_s)
            await self.publish_status()
            if systemd.enabled():
                systemd.notify_status(await self.service_status())

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set, then shut down cleanly."""
        log.info("agent starting device=%s broker=%s:%s data_dir=%s", self.device_id,
                 self.config.broker.host, self.config.broker.port, self.config.data_dir)
        server = None
        if self.config.ui.port:
            server = web.operator_server(self.status_document, self.metrics.exposition,
                                         agent=self, ui=self.config.ui)
            await server.start()
        await self.deployer.start(subscribe=False)
        await self.router.start()
        await self.transport.start()
        tasks = [asyncio.create_task(s.run(), name=f"source-{s.name}")
                 for s in self.sources.values()]
        tasks += [asyncio.create_task(p.run(), name=f"pipeline-{p.name}") for p in self.pipelines]
        tasks.append(asyncio.create_task(self.uplink.run(), name="uplink"))
        tasks.append(asyncio.create_task(self._status_loop(), name="status"))
        # Until READY, systemd's TimeoutStartSec covers a stalled startup; then the watchdog.
        watchdog = systemd.start_watchdog()
        if watchdog is not None:
            tasks.append(watchdog)
        systemd.notify_ready(f"started: {len(self.sources)} sources, "
                             f"{len(self.pipelines)} pipelines; broker connecting")
        stopped = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({stopped, *tasks}, return_when=asyncio.FIRST_COMPLETED)
        failure = next((t for t in done if t is not stopped and t.exception()), None)
        systemd.notify_stopping(f"stopping: {failure.exception()}" if failure else "stopping")
        if server is not None:
            await server.stop()
        await self._shutdown([*tasks, stopped])
        if failure is not None:
            raise failure.exception()  # type: ignore[misc]

    async def _shutdown(self, tasks: list[asyncio.Task[Any]]) -> None:
        log.info("agent stopping device=%s", self.device_id)
        # A clean disconnect suppresses the last will, so say offline ourselves.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(OFFLINE_PUBLISH_TIMEOUT_S):
                await self.publish_status("offline")
        await self.deployer.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.transport.stop()
        await self.buffer.close()
        log.info("agent stopped device=%s", self.device_id)

"""The agent process: wires sources, pipelines, buffer, uplink, deployer, status and web page."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Literal

from edge_agent import __version__, web
from edge_agent.buffer import Buffer
from edge_agent.config import AgentConfig
from edge_agent.deployment.checks import CommandWindow
from edge_agent.deployment.deployer import Deployer
from edge_agent.fleet.alerts import LineAlerts
from edge_agent.fleet.configs import ConfigManager
from edge_agent.fleet.diagnostics import DIAGNOSTICS_FOLDER, Diagnostics, request_window
from edge_agent.fleet.logtail import LogTail
from edge_agent.fleet.router import CommandRouter
from edge_agent.fleet.workload import Workload
from edge_agent.kernel import systemd
from edge_agent.kernel.contract import (
    AgentRollbackCommand,
    AgentUpdateCommand,
    ClockProbe,
    ConfigDeployCommand,
    ConfigRollbackCommand,
    DeployCommand,
    DeviceStatus,
    DiagnoseRequest,
    LogRequest,
    RecommendationAnswerPayload,
    RestartCommand,
    RollbackCommand,
    Topics,
    encode,
)
from edge_agent.kernel.transport import NotConnected, Transport, Will
from edge_agent.kernel.transport.mqtt import MqttTransport
from edge_agent.lifecycle import ModelWatch
from edge_agent.metrics import AgentMetrics, AgentSnapshot
from edge_agent.model_store import ModelStore
from edge_agent.opcua_server import OpcUaServer
from edge_agent.pipelines.base import Pipeline
from edge_agent.recommendations import AnswerError
from edge_agent.sources.camera import CameraSource
from edge_agent.sources.opcua import OpcUaSource
from edge_agent.sparkplug import EdgeNode
from edge_agent.updates.layout import ReleaseLayout
from edge_agent.updates.updater import AgentUpdater
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
        self.watch = ModelWatch()
        security = config.security
        verifier = security.verifier()
        window = CommandWindow(security.command_max_age_s, security.command_clock_skew_s)
        # The sources and pipelines come from the last good configuration central sent, or
        # from the local file; `config` stays the local file, `effective` what runs.
        self.configs = ConfigManager(config, self.topics, self.transport, self.buffer,
                                     verifier, window)
        self.workload = Workload(self.configs.effective, self.store, self.buffer, self.watch)
        self.configs.workload = self.workload
        self.configs.on_switched = self.publish_status
        self.uplink = Uplink(self.device_id, self.topics, self.transport, self.buffer,
                             config.uplink)
        self.deployer = Deployer(self.device_id, self.topics, self.transport, self.store,
                                 self.buffer, verifier, self.watch, window)
        self.router = CommandRouter(self.device_id, self.topics, self.transport)
        self.router.register(DeployCommand, self.deployer.handle)
        self.router.register(RollbackCommand, self.deployer.handle)
        self.router.register(ConfigDeployCommand, self.configs.handle)
        self.router.register(ConfigRollbackCommand, self.configs.handle)
        self.logtail = LogTail()  # what central reads with `central-sync device logs`
        self.line_alerts = LineAlerts(self.device_id, self.topics, self.transport)
        self.diagnostics = Diagnostics(self, self.device_id, self.topics, self.transport,
                                       self.logtail, verifier, request_window(security),
                                       config.data_dir / DIAGNOSTICS_FOLDER)
        self.router.register(LogRequest, self.diagnostics.on_log_request)
        self.router.register(DiagnoseRequest, self.diagnostics.on_diagnose_request)
        self.router.register(RestartCommand, self.diagnostics.on_restart)
        self.router.register(ClockProbe, self.diagnostics.on_clock_probe)
        # Agent releases from central, installed beside this one; a new one on trial must be
        # healthy_since_start in time.
        self.updater = AgentUpdater(self.device_id, self.topics, self.transport, self.buffer,
                                    self.deployer.fetcher, verifier,
                                    ReleaseLayout(config.data_dir), self.request_exit,
                                    self.healthy_since_start, window)
        self.router.register(AgentUpdateCommand, self.updater.handle)
        self.router.register(AgentRollbackCommand, self.updater.handle)
        self.restart_exit_code: int | None = None  # another than EXIT_RESTART (an update's)
        self.online_since: float | None = None  # status published online since this start
        self.restart_reason: str | None = None  # set when the agent is to be started again
        self._restart = asyncio.Event()
        self.metrics = AgentMetrics(self.metrics_snapshot)

    @property
    def effective(self) -> AgentConfig:
        """The configuration in force: the local file with central's sources and pipelines
        when a configuration from central is applied."""
        return self.configs.effective

    @property
    def sources(self) -> dict[str, OpcUaSource | CameraSource]:
        return self.workload.sources

    @property
    def pipelines(self) -> list[Pipeline]:
        return self.workload.pipelines

    async def status(self, state: str = "online") -> DeviceStatus:
        return DeviceStatus(
            device_id=self.device_id,
            state=state,  # type: ignore[arg-type]
            agent_version=__version__,
            labels=self.config.labels,
            active_models=[m.ref for m in self.store.active_models()],
            config=self.configs.current.ref if self.configs.current is not None else None,
            sources={name: source.state for name, source in self.sources.items()},
            buffer=await self.buffer.health(),
            uplink=self.uplink.health(),
        )

    async def status_document(self) -> dict[str, Any]:
        """Everything the status page and `/api/status` show."""
        return {
            "device": (await self.status()).model_dump(mode="json"),
            "pipelines": [p.snapshot().document() for p in self.pipelines],
            "alerts": self.line_alerts.document(),
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
                               "configs": self.configs.rejected_messages,
                               "diagnostics": self.diagnostics.rejected_messages,
                               "updates": self.updater.rejected_messages,
                               "commands": self.router.rejected_messages,
                               "alerts": self.line_alerts.rejected_messages},
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
            if state == "online" and self.online_since is None:
                self.online_since = status.sent_at
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

    def request_restart(self, reason: str) -> None:
        """Stop cleanly, as on `stop`, and have `edge-agent run` exit with EXIT_RESTART so
        that systemd (or the launcher) starts the agent again."""
        log.warning("agent restart requested device=%s reason=%s", self.device_id, reason)
        self.restart_reason = reason
        self._restart.set()

    def request_exit(self, code: int, reason: str) -> None:
        """`request_restart`, with `edge-agent run` exiting `code` (an agent update's: 75 to
        start the new release, 76 when a release on trial was not healthy in time)."""
        self.restart_exit_code = code
        self.request_restart(reason)

    def healthy_since_start(self) -> bool:
        """Connected, status published online, every pipeline running: what a new agent
        release on trial must reach to be confirmed."""
        return self.transport.connected and self.online_since is not None and all(
            (task := self.workload.task(p.name)) is not None and not task.done()
            for p in self.pipelines)

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set or a restart is requested, then shut down cleanly. The
        log tail keeps the agent's log lines meanwhile."""
        self.logtail.install()
        try:
            await self._serve(stop)
        finally:
            self.logtail.remove()

    async def _serve(self, stop: asyncio.Event) -> None:
        log.info("agent starting device=%s broker=%s:%s data_dir=%s", self.device_id,
                 self.config.broker.host, self.config.broker.port, self.config.data_dir)
        server = None
        if self.config.ui.port:
            server = web.operator_server(self.status_document, self.metrics.exposition,
                                         agent=self, ui=self.config.ui)
            await server.start()
        opcua = None
        if self.config.opcua_server is not None:  # off unless configured
            opcua = OpcUaServer(self.config.opcua_server,
                                lambda: [p.snapshot() for p in self.pipelines])
            await opcua.start()
        await self.deployer.start(subscribe=False)
        await self.router.start()
        await self.line_alerts.start()
        await self.transport.start()
        await self.workload.start()
        await self.configs.start()
        await self.updater.start()  # after the pipelines: a trial waits for them
        tasks = [asyncio.create_task(self.uplink.run(), name="uplink")]
        tasks.append(asyncio.create_task(self._status_loop(), name="status"))
        if self.config.sparkplug.enabled:
            node = EdgeNode(self.config.sparkplug, self.device_id, self.config.data_dir,
                            lambda: [p.snapshot() for p in self.pipelines], __version__)
            tasks.append(asyncio.create_task(node.run(), name="sparkplug"))
        # Until READY, systemd's TimeoutStartSec covers a stalled startup; then the watchdog.
        watchdog = systemd.start_watchdog()
        if watchdog is not None:
            tasks.append(watchdog)
        systemd.notify_ready(f"started: {len(self.sources)} sources, "
                             f"{len(self.pipelines)} pipelines; broker connecting")
        self.diagnostics.started()
        stopped = asyncio.create_task(stop.wait())
        restart = asyncio.create_task(self._restart.wait())
        done, _ = await asyncio.wait({stopped, restart, *tasks},
                                     return_when=asyncio.FIRST_COMPLETED)
        failure = next((t for t in done if t not in (stopped, restart) and t.exception()),
                       None)
        systemd.notify_stopping(f"stopping: {failure.exception()}" if failure else "stopping")
        if server is not None:
            await server.stop()
        if opcua is not None:
            await opcua.stop()
        await self._shutdown([*tasks, stopped, restart])
        if failure is not None:
            raise failure.exception()  # type: ignore[misc]

    async def _shutdown(self, tasks: list[asyncio.Task[Any]]) -> None:
        log.info("agent stopping device=%s", self.device_id)
        await self.diagnostics.stop()  # log follows end with their final lines
        # A clean disconnect suppresses the last will, so say offline ourselves.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(OFFLINE_PUBLISH_TIMEOUT_S):
                await self.publish_status("offline")
        await self.deployer.stop()
        await self.updater.stop()
        await self.configs.stop()
        await self.workload.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.transport.stop()
        await self.buffer.close()
        log.info("agent stopped device=%s", self.device_id)

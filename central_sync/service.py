"""The running central service: ingest of device messages, artifact chunk server, web page.

Every database call runs on one dedicated worker thread, never on the asyncio loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from pydantic import BaseModel

from central_sync.alerts.alerting import Alerting
from central_sync.artifact_server import SHORT_SHA256_CHARS, ArtifactChunkServer
from central_sync.config import CentralConfig
from central_sync.db import (
    CentralDB,
    DatabaseError,
    DeploymentEventRefused,
    Evaluation,
    Rollout,
)
from central_sync.diagnostics_inbox import DiagnosticsInbox
from central_sync.evaluation import EvaluationError, evaluate_model
from central_sync.rollouts import RolloutEngine, RolloutError, start_rollout
from edge_agent.kernel import systemd
from edge_agent.kernel.contract import (
    RECORD_DEFECT,
    RECORD_EVICTION,
    RECORD_MODEL_STATS,
    BatchAck,
    ChunkRequest,
    CompressedUplinkBatch,
    DeploymentEvent,
    DeviceStatus,
    RecordChunk,
    Rejection,
    Topics,
    UplinkBatch,
    chunked_batch_id,
    decode,
    encode,
    expand_uplink,
)
from edge_agent.kernel.signing import KeyFileError, Signer
from edge_agent.kernel.transport import NotConnected, Transport

if TYPE_CHECKING:
    from central_sync.web.models import ModelActions, RolloutRequest
    from edge_agent.kernel.httpserver import WebServer

log = logging.getLogger(__name__)

# Batches decoded but not yet stored: enough to overlap decoding with the one database
# thread, few enough that a slow database pushes back on the broker instead of piling up.
STORES_IN_FLIGHT = 4
# Records that the alert rules read: a batch with one of them has the rules evaluated soon.
ALERTING_RECORD_TYPES = frozenset({RECORD_DEFECT, RECORD_MODEL_STATS, RECORD_EVICTION})
# Unfinished large records are looked for this often (a share of their expiry, within bounds).
EXPIRY_CHECKS_PER_EXPIRY = 4
EXPIRY_CHECK_BOUNDS_S = (0.1, 60.0)

P = ParamSpec("P")
R = TypeVar("R")
MessageT = TypeVar("MessageT", bound=BaseModel)


class ServiceStartError(Exception):
    """The service cannot start (database or web port unusable); the message says why."""


@dataclass
class IngestStats:
    """Counters of what the service received, stored, answered and refused."""

    batches: int = 0
    records_acked: int = 0
    acks_unsent: int = 0
    store_failures: int = 0  # messages of any handler the database failed on
    statuses: int = 0
    deployment_events: int = 0
    chunk_requests: int = 0
    chunks_sent: int = 0
    chunks_shared: int = 0  # requested, already queued for another device of the wave
    chunk_failures: int = 0
    chunks_refused: int = 0  # requests refused: no open deployment here, or over the rate
    record_pieces_refused: int = 0  # pieces of large records over a limit or not adding up
    records_expired: int = 0  # large records dropped unfinished after their expiry
    diagnostic_replies: int = 0  # diagnose/restart/logs answers to central's requests
    log_lines_stored: int = 0
    clock_probes: int = 0
    clock_readings: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    last_rejection: str = ""
    database_errors: Counter[str] = field(default_factory=Counter)  # by handler (topic leaf)

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "rejected": dict(self.rejected),
                "database_errors": dict(self.database_errors)}


class CentralService:
    """Subscribes to every device's topics, stores what arrives, acks and serves chunks.

    Works over any Transport (MQTT or in-memory). `run()` runs until cancelled.
    """

    def __init__(self, config: CentralConfig, transport: Transport) -> None:
        self.config = config
        self.transport = transport
        self.topics = Topics(config.broker.topic_prefix)
        self.stats = IngestStats()
        self.db: CentralDB | None = None
        self._db_executor: ThreadPoolExecutor | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._standing: set[asyncio.Task[None]] = set()  # loops that run as long as the service
        self.chunks = ArtifactChunkServer(config, transport, self.topics, self.stats,
                                          self._reject, self._spawn)

        self._stores_in_flight = asyncio.Semaphore(STORES_IN_FLIGHT)
        self._web: WebServer | None = None
        self._started = False  # /healthz says "starting" until start() is done
        self.rollouts: RolloutEngine | None = None
        self.diagnostics: DiagnosticsInbox | None = None
        self.alerting: Alerting | None = None

    async def db_call(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Run a database call on the service's database thread."""
        loop = asyncio.get_running_loop()
        assert self._db_executor is not None, "service is not started"
        return await loop.run_in_executor(self._db_executor, lambda: fn(*args, **kwargs))

    async def start(self) -> None:
        # One thread: the repository has one connection, and calls on it are serialised anyway.
        self._db_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="central-db")
        try:
            self.db = await self.db_call(CentralDB, self.config.database_url)
        except (*DatabaseError, OSError) as exc:
            raise ServiceStartError(f"cannot open the database {self.config.database_name}: "
                                    f"{exc}; check database_url in the configuration") from None
        handlers = {
            "uplink": self._on_uplink,
            "status": self._on_status,
            "deployment": self._on_deployment_event,
            "chunk-request": self._on_chunk_request,
        }
        try:
            signer = self.config.signer()
        except KeyFileError as exc:
            raise ServiceStartError(str(exc)) from None
        self.diagnostics = DiagnosticsInbox(
            self.db, self.config.clock, signer, self.transport, self.topics, self.stats,
            db_call=self.db_call, decode=self._decode, reject=self._reject,
            failed=self._database_failed)
        handlers["diagnostics"] = self.diagnostics.on_message
        group = self.config.ingest_group
        for leaf, handler in handlers.items():
            topic_filter = self.topics.all_devices(leaf)
            if group:
                topic_filter = self.topics.shared(topic_filter, group)
            await self.transport.subscribe(topic_filter, handler, qos=1)
        await self.transport.start()
        self.rollouts = RolloutEngine(
            self.db, self.transport, signer, self.topics, holder=self.config.central_id,
            approval_required=self.config.models.require_approval)
        self._standing = {self._spawn(self.rollouts.run()),
                          self._spawn(self._expire_unfinished_records())}
        if self.config.alerts.enabled:
            self.alerting = Alerting(self.config, self.db, self.db_call, self.transport,
                                     self.topics)
            self._standing |= {self._spawn(loop) for loop in self.alerting.loops()}
        if self.config.web.port:
            from central_sync.web import OpenToTheNetwork, create_app, refuse_open_to_the_network
            from central_sync.web.devices import DeviceActions
            from edge_agent.kernel.httpserver import WebServer

            try:
                await self.db_call(refuse_open_to_the_network, self.db, self.config.web.host)
            except OpenToTheNetwork as exc:
                raise ServiceStartError(str(exc)) from None
            models = web_model_actions(self.config, signer)
            devices = DeviceActions(self.transport, self.topics, signer,
                                    self.config.clock.warn_offset_s)
            app = create_app(self.db, self.config.offline_after_s, health=self.health,
                             password_checks_at_once=self.config.web.password_checks_at_once,
                             model_actions=models, device_actions=devices,
                             alerts_config=self.config.alerts,
                             alerts_changed=self.alerting.poke if self.alerting else None)
            web = WebServer(app, self.config.web.host, self.config.web.port,
                            body_limits=models.body_limits)
            try:
                await web.start()
            except OSError as exc:
                raise ServiceStartError(str(exc)) from None
            self._web = web
        log.info("central started id=%s database=%s artifacts=%s web=%s", self.config.central_id,
                 self.config.database_name, self.config.artifact_dir,
                 self._web.url if self._web else "off")
        self._started = True

    async def stop(self) -> None:
        if self._web is not None:
            await self._web.stop()
            self._web = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.transport.stop()
        if self.db is not None:
            await self.db_call(self.db.close)
            self.db = None
        if self._db_executor is not None:
            self._db_executor.shutdown(wait=True)
            self._db_executor = None
        log.info("central stopped id=%s", self.config.central_id)

    async def run(self) -> None:
        """Start, serve until cancelled, then stop cleanly. Under systemd (Type=notify) it
        says when it is ready and feeds the watchdog from this loop."""
        try:
            await self.start()
            watchdog = systemd.start_watchdog()
            if watchdog is not None:
                self._tasks.add(watchdog)
            broker = f"{self.config.broker.host}:{self.config.broker.port}"
            systemd.notify_ready(f"serving: broker {broker}, web {self.web_url or 'off'}")
            await asyncio.Event().wait()
        finally:
            systemd.notify_stopping("stopping")
            await self.stop()

    def health(self) -> dict[str, Any]:
        step_failures = self.rollouts.step_failures.total() if self.rollouts else 0
        alerts = self.alerting.health() if self.alerting is not None else None
        return {"status": "ok" if self._started else "starting",
                "broker_connected": self.transport.connected, "ingest": self.stats.as_dict(),
                "rollout_step_failures": step_failures, "alerts": alerts}

    @property
    def web_url(self) -> str | None:
        return self._web.url if self._web else None

    # --- decoding -------------------------------------------------------------------------

    def _decode(self, topic: str, payload: bytes,
                expect: type[MessageT] | tuple[type[MessageT], ...]) -> MessageT | None:
        parsed = self.topics.parse_device_topic(topic)
        if parsed is None:
            return self._reject(topic, "unknown", "topic is not a device topic")
        device_id, leaf = parsed
        kinds = expect if isinstance(expect, tuple) else (expect,)
        message = decode(payload, expect=kinds, topic_device_id=device_id)
        if isinstance(message, Rejection):
            return self._reject(topic, leaf, message.reason)
        return message  # type: ignore[return-value]

    def _reject(self, topic: str, leaf: str, reason: str) -> None:
        self.stats.rejected[leaf] += 1
        self.stats.last_rejection = f"{topic}: {reason}"
        log.warning("message rejected topic=%s reason=%s", topic, reason)
        return None

    def _database_failed(self, topic: str, what: str, exc: Exception) -> None:
        """The one path of a database error in every handler: logged and counted by handler.
        The handler then returns without acking or answering, so the device sends the message
        again, and raises nothing into the transport."""
        device_id, leaf = self.topics.parse_device_topic(topic) or ("unknown", "unknown")
        self.stats.store_failures += 1
        self.stats.database_errors[leaf] += 1
        log.error("%s handler=%s topic=%s device=%s error=%s; not acked: the device sends it "
                  "again", what, leaf, topic, device_id, exc)

    # --- ingest ---------------------------------------------------------------------------

    async def _on_uplink(self, topic: str, payload: bytes) -> None:
        received = self._decode(topic, payload,
                                (UplinkBatch, CompressedUplinkBatch, RecordChunk))
        if received is None:
            return
        if isinstance(received, RecordChunk):
            await self._store_chunk_and_ack(topic, received)
            return
        batch = expand_uplink(received)
        if isinstance(batch, Rejection):
            self._reject(topic, "uplink", batch.reason)
            return
        # Decoding the next batch overlaps storing this one; the semaphore bounds the backlog.
        await self._stores_in_flight.acquire()
        self._spawn(self._store_and_ack(topic, batch))

    async def _store_chunk_and_ack(self, topic: str, chunk: RecordChunk) -> None:
        assert self.db is not None
        try:
            seqs = await self.db_call(self.db.store_record_chunk, chunk,
                                      self.config.ingest.pending_record_bytes_per_device)
        except DatabaseError as exc:
            self._database_failed(topic, f"record chunk not stored seq={chunk.seq} "
                                  f"index={chunk.index}", exc)
            return
        if isinstance(seqs, Rejection):
            self.stats.record_pieces_refused += 1
            self._reject(topic, "uplink", seqs.reason)
            return
        if seqs is not None:
            await self._ack(chunk.device_id, chunked_batch_id(chunk.seq), seqs)

    async def _expire_unfinished_records(self) -> None:
        """Drop large records whose pieces stopped coming; their devices send them again."""
        expiry_s = self.config.ingest.unfinished_record_expiry_s
        low, high = EXPIRY_CHECK_BOUNDS_S
        interval_s = min(max(expiry_s / EXPIRY_CHECKS_PER_EXPIRY, low), high)
        assert self.db is not None
        while True:
            await asyncio.sleep(interval_s)
            try:
                expired = await self.db_call(self.db.expire_record_assemblies,
                                             time.time() - expiry_s)
            except DatabaseError as exc:
                log.error("unfinished records not expired error=%s; tried again in %.0f s",
                          exc, interval_s)
                continue
            for record in expired:
                self.stats.records_expired += 1
                log.warning("unfinished record dropped device=%s seq=%d pieces=%d/%d "
                            "bytes=%d: no new piece for %.0f s (ingest.unfinished_record_"
                            "expiry_s)", record.device_id, record.seq, record.pieces,
                            record.count, record.bytes, expiry_s)

    async def _store_and_ack(self, topic: str, batch: UplinkBatch) -> None:
        assert self.db is not None
        try:
            seqs = await self.db_call(self.db.store_batch, batch)
        except DatabaseError as exc:
            self._database_failed(topic, f"batch not stored batch={batch.batch_id}", exc)
            return
        finally:
            self._stores_in_flight.release()
        self.stats.batches += 1
        if self.alerting is not None and any(r.type in ALERTING_RECORD_TYPES
                                           for r in batch.records):
            self.alerting.poke()
        device_id, batch_id = batch.device_id, batch.batch_id
        # Its records may be large: not kept while the ack waits for the broker's PUBACK,
        # which comes behind whatever the broker is sending meanwhile.
        del batch
        await self._ack(device_id, batch_id, seqs)

    async def _ack(self, device_id: str, batch_id: str, seqs: list[int]) -> None:
        ack = BatchAck(device_id=device_id, batch_id=batch_id, acked_seqs=seqs)
        try:
            await self.transport.publish(self.topics.ack(device_id), encode(ack), qos=1)
        except NotConnected as exc:
            self.stats.acks_unsent += 1
            log.warning("ack not sent, the device will resend device=%s batch=%s error=%s",
                        device_id, batch_id, exc)
            return
        self.stats.records_acked += len(seqs)
        log.debug("batch acked device=%s batch=%s seqs=%d..%d", device_id, batch_id,
                  seqs[0], seqs[-1])

    async def _on_status(self, topic: str, payload: bytes) -> None:
        if not payload:
            return  # a cleared retained message
        status = self._decode(topic, payload, DeviceStatus)
        if status is None:
            return
        assert self.db is not None
        try:
            await self.db_call(self.db.update_status, status)
        except DatabaseError as exc:
            # The next status (every few seconds, retained) brings the device up to date.
            self._database_failed(topic, f"status not stored state={status.state}", exc)
            return
        self.stats.statuses += 1
        log.info("device status device=%s state=%s", status.device_id, status.state)
        if self.alerting is not None:
            self.alerting.poke()
        if self.diagnostics is not None:
            await self.diagnostics.on_status(status)

    async def _on_deployment_event(self, topic: str, payload: bytes) -> None:
        event = self._decode(topic, payload, DeploymentEvent)
        if event is None:
            return
        assert self.db is not None
        try:
            recorded = await self.db_call(self.db.record_deployment_event, event)
        except DeploymentEventRefused as exc:  # another device's command, or none of central's
            self._reject(topic, "deployment", str(exc))
            return
        except DatabaseError as exc:
            self._database_failed(topic, f"deployment step not stored command={event.command_id}"
                                  f" step={event.step}", exc)
            return
        if recorded:
            self.stats.deployment_events += 1
            if self.alerting is not None:
                self.alerting.poke()
            log.info("deployment step device=%s model=%s version=%s command=%s step=%s %s",
                     event.device_id, event.model_name, event.version, event.command_id,
                     event.step, event.detail)

    # --- artifact chunks ------------------------------------------------------------------

    async def _on_chunk_request(self, topic: str, payload: bytes) -> None:
        request = self._decode(topic, payload, ChunkRequest)
        if request is None:
            return
        self.stats.chunk_requests += 1
        assert self.db is not None
        short = request.sha256[:SHORT_SHA256_CHARS]
        try:
            manifest = await self.db_call(self.db.get_model_by_sha256, request.sha256)
            deploying = await self.db_call(self.db.deployment_open_for, request.device_id,
                                           request.sha256)
            if manifest is None:  # an agent release's wheel, served like a model
                manifest = await self.db_call(self.db.get_agent_package_by_sha256,
                                              request.sha256)
                deploying = await self.db_call(self.db.agent_deployment_open_for,
                                               request.device_id, request.sha256)
        except DatabaseError as exc:
            self._database_failed(topic, f"chunk request not served sha256={short}", exc)
            return
        if manifest is None:
            self._reject(topic, "chunk-request", f"artifact {short} is not in the registry")
        elif not deploying:
            self.chunks.refuse(topic, f"artifact {short} refused: no deployment of it is open "
                               f"on device {request.device_id}")
        else:
            self.chunks.serve(topic, request, manifest)

    def idle(self) -> bool:
        """No store, ack or chunk transfer under way (the standing loops aside)."""
        return self._tasks <= self._standing

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run work beside message dispatch; stop() cancels and awaits what is left."""
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


def web_model_actions(config: CentralConfig, signer: Signer) -> ModelActions:
    """What the model pages need to publish, evaluate and start rollouts, from central's
    configuration: the web app sits beside rollouts, so their start is handed in here."""
    from central_sync.web.models import ModelActions, RolloutRefused

    def start(db: CentralDB, name: str, version: str, wanted: RolloutRequest,
              by: str) -> Rollout:
        try:
            return start_rollout(
                db, name, version, wanted.devices, wanted.target, by, canary=wanted.canary,
                waves=wanted.waves, success_ratio=wanted.success_ratio,
                wave_timeout_s=wanted.wave_timeout_s, canary_devices=wanted.canary_devices,
                offline_after_s=config.offline_after_s, signer=signer,
                approval_required=config.models.require_approval)
        except RolloutError as exc:
            raise RolloutRefused(str(exc)) from None

    def evaluate(db: CentralDB, name: str, version: str, dataset: str | None,
                 by: str) -> Evaluation:
        return evaluate_model(db, config.artifact_dir, name, version, dataset, by,
                              max_items=config.models.max_evaluation_items)

    return ModelActions(
        artifact_dir=config.artifact_dir, signer=signer, start_rollout=start, evaluate=evaluate,
        evaluation_errors=(EvaluationError,), require_approval=config.models.require_approval,
        chunk_size_bytes=config.chunk_size_bytes, max_upload_bytes=config.web.max_upload_bytes)

"""The edge node: births, data and deaths on `spBv1.0/<group>/...`, with seq, bdSeq and aliases.

Sparkplug B 3.0: NBIRTH carries bdSeq, which matches the NDEATH left as the MQTT will; every
later message of the session counts seq 0..255; metric aliases are fixed at birth and data
messages carry only aliases and changed values. A metric set that changes means a rebirth.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

from edge_agent.config.sparkplug import SparkplugConfig
from edge_agent.kernel.transport import NotConnected, Will
from edge_agent.kernel.transport.mqtt import MqttTransport
from edge_agent.pipelines.snapshot import PipelineSnapshot
from edge_agent.sparkplug.metrics import (
    DataType,
    Metric,
    decode_rebirth,
    encode,
    now_ms,
    pipeline_metrics,
)

log = logging.getLogger(__name__)

NAMESPACE = "spBv1.0"
REBIRTH = "Node Control/Rebirth"
BDSEQ_FILE = "sparkplug_bdseq"


def next_bdseq(data_dir: Path) -> int:
    """This start's birth/death sequence, 0..255, one more than the last start's (kept on disk)."""
    path = data_dir / BDSEQ_FILE
    try:
        previous = int(path.read_text().strip())
        current = (previous + 1) % 256
    except (OSError, ValueError):
        current = 0
    data_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{current}\n")
    return current


class EdgeNode:
    """Publishes each pipeline as a Sparkplug device and answers rebirth requests."""

    def __init__(self, config: SparkplugConfig, device_id: str, data_dir: Path,
                 snapshots: Callable[[], list[PipelineSnapshot]], version: str = "") -> None:
        self.config = config
        self.group = config.group_id
        self.node = config.edge_node_id or device_id
        self._snapshots = snapshots
        self._version = version
        self._data_dir = data_dir
        self.bdseq = -1  # each session (MQTT connection with its own will) takes the next
        self._seq = 0
        self._aliases: dict[tuple[str, str], int] = {}  # (device or "", metric) -> alias
        self._published: dict[str, dict[str, Metric]] = {}  # device -> metric name -> last sent
        self._birthed = False
        self._lock = asyncio.Lock()  # births and data must not interleave: seq order matters
        self._rebirth = asyncio.Event()
        self._session_over = False
        self._host_online = config.primary_host_id is None
        self._host_timestamp = -1
        self.transport: MqttTransport | None = None

    def topic(self, kind: str, device: str | None = None) -> str:
        base = f"{NAMESPACE}/{self.group}/{kind}/{self.node}"
        return base if device is None else f"{base}/{device}"

    def _alias(self, device: str, name: str) -> int:
        return self._aliases.setdefault((device, name), len(self._aliases) + 1)

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) % 256
        return self._seq

    def _node_metrics(self) -> list[Metric]:
        return [Metric("bdSeq", DataType.Int64, self.bdseq),
                Metric(REBIRTH, DataType.Boolean, False),
                Metric("Properties/Agent Version", DataType.String, self._version)]

    def _death_payload(self) -> bytes:
        bdseq = Metric("bdSeq", DataType.Int64, self.bdseq)
        return encode([(bdseq, self._alias("", "bdSeq"))], None, now_ms(), with_names=True)

    async def run(self) -> None:
        """Publish births and changes until cancelled, one session after another."""
        while True:
            await self._session()

    async def _session(self) -> None:
        """One MQTT connection with its bdSeq; ends on cancel or when the primary host leaves.
        A clean end sends NDEATH itself; a crash leaves it to the broker (the will)."""
        self.bdseq = next_bdseq(self._data_dir)
        self._birthed, self._session_over = False, False
        self.transport = transport = MqttTransport(
            self.config.broker, client_id=f"spb-{self.group}-{self.node}",
            will=Will(self.topic("NDEATH"), self._death_payload(), qos=1, retain=False),
            on_connected=self._on_connected, persistent_session=False)
        await transport.subscribe(self.topic("NCMD"), self._on_command)
        if self.config.primary_host_id is not None:
            await transport.subscribe(f"{NAMESPACE}/STATE/{self.config.primary_host_id}",
                                      self._on_state)
        await transport.start()
        connected_once = False
        try:
            while not self._session_over:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._rebirth.wait(), self.config.publish_interval_s)
                if transport.connected:
                    connected_once = True
                elif connected_once:
                    return  # the broker sent our will: the next connection takes a new bdSeq
                if self._session_over or not transport.connected or not self._host_online:
                    continue
                try:
                    await self._publish_due()
                except NotConnected:
                    continue  # the next round sees the connection gone
                except Exception:  # the SCADA feed must never take the agent down with it
                    log.exception("sparkplug publish failed node=%s; trying again", self.node)
        finally:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(3.0):
                    await transport.publish(self.topic("NDEATH"), self._death_payload())
            await transport.stop()

    async def _publish_due(self) -> None:
        if self._rebirth.is_set() or not self._birthed:
            self._rebirth.clear()
            await self._birth()
        else:
            await self._publish_changes()

    async def _publish(self, topic: str, payload: bytes) -> None:
        assert self.transport is not None
        await self.transport.publish(topic, payload)

    async def _on_connected(self) -> None:
        self._rebirth.set()  # every (re)connection starts with births

    async def _on_state(self, topic: str, payload: bytes) -> None:
        try:
            state = json.loads(payload)
            online, timestamp = bool(state["online"]), int(state["timestamp"])
        except (ValueError, KeyError, TypeError):
            log.warning("sparkplug STATE ignored topic=%s: not {online, timestamp} JSON", topic)
            return
        if timestamp < self._host_timestamp:
            return  # an older STATE than one already seen (the spec's ordering rule)
        self._host_timestamp = timestamp
        was_online, self._host_online = self._host_online, online
        log.info("sparkplug primary host %s node=%s", "online" if online else "offline",
                 self.node)
        if was_online and not online:
            self._session_over = True  # the spec: disconnect, then wait for it again
        self._rebirth.set()

    async def _on_command(self, topic: str, payload: bytes) -> None:
        if decode_rebirth(payload, self._alias("", REBIRTH)):
            log.info("sparkplug rebirth requested node=%s", self.node)
            self._rebirth.set()

    async def _birth(self) -> None:
        async with self._lock:
            self._seq = 0
            stamp = now_ms()
            node = [(m, self._alias("", m.name)) for m in self._node_metrics()]
            await self._publish(self.topic("NBIRTH"), encode(node, 0, stamp, True))
            self._published = {}
            for snapshot in self._snapshots():
                await self._device_birth(snapshot.name, pipeline_metrics(snapshot), stamp)
            self._birthed = True
        log.info("sparkplug born node=%s bdSeq=%d devices=%d", self.node, self.bdseq,
                 len(self._published))

    async def _device_birth(self, device: str, metrics: list[Metric], stamp: int) -> None:
        pairs = [(m, self._alias(device, m.name)) for m in metrics]
        await self._publish(self.topic("DBIRTH", device),
                                     encode(pairs, self._next_seq(), stamp, True))
        self._published[device] = {m.name: m for m in metrics}

    async def _publish_changes(self) -> None:
        current = {s.name: pipeline_metrics(s) for s in self._snapshots()}
        if any(device in self._published
               and {m.name for m in metrics} != set(self._published[device])
               for device, metrics in current.items()):
            await self._birth()  # a new metric (a new model output) needs a new birth
            return
        async with self._lock:
            stamp = now_ms()
            for device in [d for d in self._published if d not in current]:
                await self._publish(self.topic("DDEATH", device),
                                             encode([], self._next_seq(), stamp, False))
                del self._published[device]
            for device, metrics in current.items():
                if device not in self._published:
                    await self._device_birth(device, metrics, stamp)
                    continue
                changed = [m for m in metrics if self._published[device][m.name] != m]
                if not changed:
                    continue
                pairs = [(m, self._alias(device, m.name)) for m in changed]
                await self._publish(self.topic("DDATA", device),
                                             encode(pairs, self._next_seq(), stamp, False))
                self._published[device].update({m.name: m for m in changed})

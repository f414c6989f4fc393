"""OPC-UA tag source: a subscription to configured nodes, rebuilt whenever the session dies.

It keeps the latest value of every tag with its source timestamp and status, and reports its
own state (connecting, connected, reconnecting) with the reason.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from asyncua import Client, ua

from edge_agent.config import OpcUaSourceConfig
from edge_agent.contract import SourceState

log = logging.getLogger(__name__)

for _noisy in ("asyncua", "asyncua.client", "asyncua.common", "asyncua.uaprotocol"):
    logging.getLogger(_noisy).setLevel(logging.WARNING)


@dataclass(frozen=True)
class TagValue:
    value: float | None
    good: bool
    source_time: float
    received_at: float
    status: str = "Good"


class OpcUaSource:
    """Latest values of the configured tags, from one OPC-UA server."""

    def __init__(self, config: OpcUaSourceConfig) -> None:
        self.config = config
        self.name = config.name
        self.latest: dict[str, TagValue] = {}
        self.state = SourceState(state="connecting", detail=config.endpoint)
        self.reconnects = 0
        self._tag_by_node: dict[str, str] = {}

    async def run(self) -> None:
        """Connect, subscribe and watch the session; on any failure start over with backoff."""
        backoff_s = 0.5
        while True:
            client = Client(self.config.endpoint, timeout=4)
            try:
                await client.connect()
                await self._subscribe(client)
                self._set_state("connected", self.config.endpoint)
                backoff_s = 0.5
                while True:
                    await asyncio.sleep(1.0)
                    await client.check_connection()
            except asyncio.CancelledError:
                await self._disconnect_quietly(client)
                self._set_state("stopped", "")
                raise
            except Exception as exc:  # asyncua raises many types for a lost server
                await self._disconnect_quietly(client)
                reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                self._set_state("reconnecting", f"{reason}; retry in {backoff_s:.1f}s")
                self.reconnects += 1
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, self.config.reconnect_max_backoff_s)

    async def _subscribe(self, client: Client) -> None:
        nodes = []
        self._tag_by_node = {}
        for tag, node_id in self.config.nodes.items():
            node = client.get_node(node_id)
            self._tag_by_node[node.nodeid.to_string()] = tag
            nodes.append(node)
        subscription = await client.create_subscription(
            self.config.sampling_interval_ms, _Handler(self)
        )
        results = await subscription.subscribe_data_change(
            nodes, sampling_interval=self.config.sampling_interval_ms
        )
        if not isinstance(results, list):
            results = [results]
        for node, result in zip(nodes, results, strict=True):
            if isinstance(result, ua.StatusCode):
                tag = self._tag_by_node[node.nodeid.to_string()]
                raise ConnectionError(f"cannot subscribe to tag {tag} ({node.nodeid}): {result}")

    def on_value(self, node_id: str, data_value: ua.DataValue) -> None:
        tag = self._tag_by_node.get(node_id)
        if tag is None:
            return
        status = data_value.StatusCode or ua.StatusCode(ua.StatusCodes.Good)
        source_ts = data_value.SourceTimestamp or data_value.ServerTimestamp
        value = data_value.Value.Value if data_value.Value is not None else None
        numeric = float(value) if isinstance(value, int | float) else None
        self.latest[tag] = TagValue(
            value=numeric,
            good=status.is_good() and numeric is not None,
            source_time=source_ts.timestamp() if source_ts else time.time(),
            received_at=time.time(),
            status=status.name,
        )

    def _set_state(self, state: str, detail: str) -> None:
        if state != self.state.state:
            log.info("source state source=%s state=%s detail=%s", self.name, state, detail)
        self.state = SourceState(state=state, detail=detail)  # type: ignore[arg-type]

    @staticmethod
    async def _disconnect_quietly(client: Client) -> None:
        try:
            async with asyncio.timeout(2):
                await client.disconnect()
        except Exception as exc:  # the session is already gone; nothing more to do
            log.debug("disconnect after failure: %s", exc)


class _Handler:
    def __init__(self, source: OpcUaSource) -> None:
        self._source = source

    def datachange_notification(self, node: Any, value: Any, data: Any) -> None:
        try:
            self._source.on_value(node.nodeid.to_string(), data.monitored_item.Value)
        except (TypeError, ValueError, AttributeError) as exc:
            log.warning("unusable value source=%s node=%s error=%s", self._source.name,
                        node.nodeid.to_string(), exc)

"""The open alerts of the gateway's line, as central last sent them on the device's alerts
topic: kept for the operator page, refused when another device's or older than those held."""

from __future__ import annotations

import logging
import time

from edge_agent.kernel.contract import DeviceAlerts, Rejection, Topics, decode
from edge_agent.kernel.transport import Transport

log = logging.getLogger(__name__)

TRUSTED_AHEAD_S = 300.0


class LineAlerts:
    def __init__(self, device_id: str, topics: Topics, transport: Transport) -> None:
        self.device_id = device_id
        self._topics = topics
        self._transport = transport
        self.latest: DeviceAlerts | None = None
        self.rejected_messages = 0  # undecodable, another device's, or older than the latest

    async def start(self) -> None:
        await self._transport.subscribe(self._topics.alerts(self.device_id), self.on_message)

    async def on_message(self, topic: str, payload: bytes) -> None:
        if not payload:  # central cleared the retained message: nothing open any more
            self.latest = None
            return
        message = decode(payload, expect=(DeviceAlerts,), topic_device_id=self.device_id)
        if isinstance(message, Rejection):
            self.rejected_messages += 1
            log.warning("alerts rejected device=%s reason=%s", self.device_id, message.reason)
            return
        assert isinstance(message, DeviceAlerts)
        if self.latest is not None and message.sent_at < self.latest.sent_at <= \
                time.time() + TRUSTED_AHEAD_S:
            # A copy from before central's latest (two central processes handing over). One
            # held from far ahead of this clock is not trusted to judge: central's clock was
            # set back since, or this one is behind.
            self.rejected_messages += 1
            log.info("alerts ignored device=%s: sent %.3f, older than the %.3f shown",
                     self.device_id, message.sent_at, self.latest.sent_at)
            return
        if self.latest is None or message.alerts != self.latest.alerts:
            log.info("line alerts device=%s open=%d", self.device_id, len(message.alerts))
        self.latest = message

    def document(self) -> list[dict[str, object]]:
        """The open alerts for the page and `/api/status`, most severe and newest first."""
        if self.latest is None:
            return []
        return [a.model_dump(mode="json") for a in self.latest.alerts]

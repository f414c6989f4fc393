"""One subscription to the device's commands topic; each command goes to its handler.

Central sends every command for a device on one topic: model deployments, configurations,
agent updates, diagnostic requests and clock probes. The router decodes each once (bounded in
size, its device id checked against the topic) and hands it to the handler registered for its
type; the handler checks its signature and freshness before believing anything it says.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel

from edge_agent.kernel.contract import COMMAND_TYPES, Rejection, Topics, decode
from edge_agent.kernel.transport import Transport

log = logging.getLogger(__name__)

CommandHandler = Callable[[Any], Awaitable[None]]


class CommandRouter:
    def __init__(self, device_id: str, topics: Topics, transport: Transport) -> None:
        self.device_id = device_id
        self._topics = topics
        self._transport = transport
        self._handlers: dict[type[BaseModel], CommandHandler] = {}
        self.rejected_messages = 0  # undecodable, another device's, or with no handler here

    def register(self, kind: type[BaseModel], handler: CommandHandler) -> None:
        if kind not in COMMAND_TYPES:
            raise ValueError(f"{kind.__name__} is not a command of the contract")
        self._handlers[kind] = handler

    async def start(self) -> None:
        await self._transport.subscribe(self._topics.commands(self.device_id), self.on_message)

    async def on_message(self, topic: str, payload: bytes) -> None:
        message = decode(payload, expect=COMMAND_TYPES, topic_device_id=self.device_id)
        if isinstance(message, Rejection):
            self.rejected_messages += 1
            log.warning("command rejected device=%s reason=%s", self.device_id, message.reason)
            return
        handler = self._handlers.get(type(message))
        if handler is None:
            self.rejected_messages += 1
            log.warning("command ignored device=%s kind=%s: this agent does not carry it out",
                        self.device_id, getattr(message, "kind", "?"))
            return
        await handler(message)

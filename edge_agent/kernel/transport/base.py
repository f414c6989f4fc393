"""What the agent and central need from a message bus: the Transport interface."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

Handler = Callable[[str, bytes], Awaitable[None]]


class NotConnected(RuntimeError):
    """Raised when publishing while the broker connection is down."""



@dataclass
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


class Transport(Protocol):
    """What the agent and central need from a message bus."""

    @property
    def connected(self) -> bool: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def wait_connected(self, timeout_s: float | None = None) -> bool: ...

    async def subscribe(self, topic_filter: str, handler: Handler, qos: int = 1) -> None: ...

    async def unsubscribe(self, topic_filter: str) -> None: ...

    async def publish(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False
    ) -> None: ...

"""A gateway that speaks the diagnostics contract over a real broker, on a thread of its own:
it answers central's signed log, diagnose and restart requests and its clock probes (with a
clock skewed as the test says), and can send whatever a misbehaving gateway would."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine
from typing import Any

from pydantic import BaseModel

from edge_agent.kernel.contract import (
    COMMAND_TYPES,
    ClockProbe,
    ClockReply,
    DeviceStatus,
    DiagnoseRequest,
    DiagnosticReply,
    LogBatch,
    LogLine,
    LogRequest,
    RestartCommand,
    Topics,
    decode,
    encode,
)
from edge_agent.kernel.signing import SignatureError
from edge_agent.kernel.transport import BrokerConfig
from edge_agent.kernel.transport.mqtt import MqttTransport
from tests.helpers import TEST_SIGNER

TOPICS = Topics()
REPORT = {
    "agent_version": "1.4.2", "python": "3.11.9", "platform": "Linux-6.1-aarch64",
    "libraries": {"onnxruntime": "1.18.0"}, "uptime_s": 5321.5,
    "config": {"name": "line-3-vision", "version": 4, "sha256": "b" * 64},
    "effective_config": {"device_id": "gw-1", "broker": {"host": "mqtt.plant",
                                                         "password": "***"},
                         "sources": {"cam1": {"kind": "camera", "url": "rtsp://***@cam1/"}}},
    "sources": {"cam1": {"state": "connected", "detail": ""}},
    "pipelines": [{"name": "surface", "type": "vision", "model": "surface-defects",
                   "state": "running", "detail": ""}],
    "buffer": {"depth": 12, "bytes_used": 4096, "quota_bytes": 1048576},
}


def log_lines(count: int, text: str = "line", level: str = "INFO") -> list[LogLine]:
    now = time.time()
    return [LogLine(at=now + i / 1000, level=level, logger="edge_agent.app",
                    message=f"{text} {i}") for i in range(count)]


class FakeGateway:
    """`device_id` on the broker at `port`; `skew_s` is added to its clock."""

    def __init__(self, port: int, device_id: str = "gw-1", skew_s: float = 0.0,
                 tail: int = 3) -> None:
        self.device_id = device_id
        self.skew_s = skew_s
        self.tail = tail
        self.answer = True  # False: receive commands but say nothing
        self.received: list[BaseModel] = []
        self.forged: list[str] = []  # commands whose signature did not verify
        self.follows: list[LogRequest] = []
        self.follow_batches: list[list[LogLine]] = []  # sent after a follow's tail, then final
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.transport = MqttTransport(BrokerConfig(port=port), f"fake-{device_id}",
                                       persistent_session=False)
        self.call(self._start())

    def call(self, work: Coroutine[Any, Any, Any], timeout_s: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(work, self._loop).result(timeout_s)

    async def _start(self) -> None:
        await self.transport.subscribe(TOPICS.commands(self.device_id), self._on_command)
        await self.transport.start()
        assert await self.transport.wait_connected(10)

    def stop(self) -> None:
        self.call(self.transport.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def send(self, message: BaseModel, leaf: str = "diagnostics") -> None:
        self.call(self.transport.publish(TOPICS.device(self.device_id, leaf), encode(message)))

    def send_raw(self, payload: bytes, leaf: str = "diagnostics") -> None:
        self.call(self.transport.publish(TOPICS.device(self.device_id, leaf), payload))

    def status(self, state: str = "online") -> None:
        self.call(self.transport.publish(TOPICS.status(self.device_id), encode(DeviceStatus(
            device_id=self.device_id, state=state)), retain=True))

    def of_kind(self, kind: type[BaseModel]) -> list[Any]:
        return [m for m in list(self.received) if isinstance(m, kind)]

    async def _on_command(self, topic: str, payload: bytes) -> None:
        message = decode(payload, expect=COMMAND_TYPES, topic_device_id=self.device_id)
        assert isinstance(message, BaseModel), message
        self.received.append(message)
        if isinstance(message, ClockProbe):
            await self._publish(ClockReply(
                device_id=self.device_id, probe_id=message.probe_id,
                central_sent_at=message.central_sent_at, device_time=time.time() + self.skew_s))
            return
        try:
            TEST_SIGNER.own_keys().verify(message, "command")
        except SignatureError:
            self.forged.append(getattr(message, "command_id", "?"))
            return
        if self.answer:
            await self._answer(message)

    async def _answer(self, message: BaseModel) -> None:
        if isinstance(message, LogRequest):
            lines = log_lines(self.tail)[-message.lines:] if message.lines else []
            if message.follow_s:
                self.follows.append(message)
            await self._publish(LogBatch(device_id=self.device_id,
                                         request_id=message.command_id, lines=lines,
                                         final=not message.follow_s))
            if message.follow_s and self.follow_batches:
                for more in self.follow_batches:
                    await self._publish(LogBatch(device_id=self.device_id, dropped=7,
                                                 request_id=message.command_id, lines=more))
                await self._publish(LogBatch(device_id=self.device_id, final=True,
                                             request_id=message.command_id))
        elif isinstance(message, DiagnoseRequest):
            await self._publish(DiagnosticReply(
                device_id=self.device_id, request_id=message.command_id, action="diagnose",
                ok=True, report=REPORT))
        elif isinstance(message, RestartCommand):
            known = message.pipeline in (None, "surface")
            detail = (f"pipeline {message.pipeline} restarted" if message.pipeline else
                      "the agent restarts") if known else \
                f"no pipeline {message.pipeline} here; pipelines: surface"
            await self._publish(DiagnosticReply(
                device_id=self.device_id, request_id=message.command_id, action="restart",
                ok=known, detail=detail))

    def follow_lines(self, lines: list[LogLine], final: bool = False) -> None:
        """More lines for the newest follow, as the agent sends them while it lasts."""
        request = self.follows[-1]
        self.send(LogBatch(device_id=self.device_id, request_id=request.command_id,
                           lines=lines, final=final))

    async def _publish(self, message: BaseModel) -> None:
        await self.transport.publish(TOPICS.diagnostics(self.device_id), encode(message))

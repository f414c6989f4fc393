"""Run an ASGI app with uvicorn inside an asyncio program that handles signals itself."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

log = logging.getLogger(__name__)


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handling: the service's owner decides when to stop."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class WebServer:
    """Runs an ASGI app with uvicorn as a task of the current asyncio loop."""

    def __init__(self, app: Any, host: str, port: int, setting: str = "web.port") -> None:
        self.host = host
        self.port = port
        self._setting = setting
        self._server = _EmbeddedServer(uvicorn.Config(
            app, host=host, port=port, log_level="warning", lifespan="off"))
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    async def start(self) -> None:
        """Bind the port (raising OSError with a clear message if taken) and serve."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise OSError(f"web server cannot listen on {self.host}:{self.port}: "
                          f"{exc.strerror}; set {self._setting} to a free port, or 0 to turn it off"
                          ) from None
        sock.set_inheritable(True)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="web")
        while not self._server.started and not self._task.done():
            await asyncio.sleep(0.02)
        if self._task.done():
            self._task.result()
        log.info("web serving url=%s", self.url)

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        await asyncio.gather(self._task, return_exceptions=True)
        self._task = None

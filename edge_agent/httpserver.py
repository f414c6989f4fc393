"""Run an ASGI app with uvicorn inside an asyncio program that handles signals itself."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

import uvicorn

log = logging.getLogger(__name__)


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The host program owns SIGINT/SIGTERM and stops the server through `should_exit`.
        yield


async def serve(app: object, host: str, port: int, stop: asyncio.Event) -> None:
    """Serve `app` on host:port until `stop` is set."""
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            lifespan="off")
    server = _EmbeddedServer(config)
    serving = asyncio.create_task(server.serve())
    stopping = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if serving in done:
        stopping.cancel()
        if serving.exception() is not None:
            raise serving.exception()  # type: ignore[misc]
        if not server.started:
            raise OSError(f"web server could not listen on {host}:{port} (port in use?)")
        return
    server.should_exit = True
    await serving

"""Central's web app in real headless Chromium (Debian's, driven by Playwright), logged in."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from central_helpers import free_port

from central_sync.db import CentralDB
from central_sync.web import create_app
from edge_agent.kernel.httpserver import WebServer
from tests.helpers import CHROMIUM, playwright_or_skip


@contextlib.contextmanager
def logged_in_page(db: CentralDB, user: str, password: str, path: str,
                   viewport: tuple[int, int] = (1600, 900),
                   app: Any = None, server_url: str | None = None) -> Iterator[tuple[Any, Any]]:
    """(page, playwright.sync_api): central serving `db` (or `app`, an app made over it) on a
    free port, or the central already serving at `server_url`, logged in through the form and
    back on `path`, loaded. Skips when Chromium or Playwright is missing."""
    sync_api = playwright_or_skip()
    with contextlib.ExitStack() as stack:
        base = server_url or stack.enter_context(_serving(app or create_app(db, 120)))
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
            page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
            target = f"{base}{path}"
            page.goto(target)  # central sends a stranger to its login form
            page.fill("input[name=username]", user)
            page.fill("input[name=password]", password)
            page.click("button[type=submit]")
            page.wait_for_url(target)  # logged in, back on the page asked for, loaded
            yield page, sync_api
            browser.close()


@contextlib.contextmanager
def _serving(app: Any) -> Iterator[str]:
    """`app` served on a free port from a thread of its own; its base URL."""
    port, loop = free_port(), asyncio.new_event_loop()
    server = WebServer(app, "127.0.0.1", port)
    threading.Thread(target=loop.run_forever, daemon=True).start()
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)

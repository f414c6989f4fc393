"""The operator page on the screens gateways drive (1024x768 up to 1920x1080), measured in
Chromium: value pairs stay on one line, nothing is cut, no sideways scroll, big touch targets."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import pytest

from edge_agent import web
from edge_agent.app import Agent
from edge_agent.config import UiConfig
from edge_agent.kernel.contract import (
    DeviceAlerts,
    ModelRef,
    OperatorAlert,
    RecommendationPayload,
    SetpointChange,
    encode,
)
from edge_agent.kernel.httpserver import WebServer
from edge_agent.kernel.transport.memory import MemoryBroker, MemoryTransport
from edge_agent.pipelines.snapshot import RecentDefect
from tests.conftest import SAMPLE_DATA, free_port
from tests.edge_agent.test_operator_page import (
    FEATURES,
    PASSWORD,
    agent_config,
    fill_trend,
    process_pipeline,
    vision_pipeline,
)
from tests.helpers import CHROMIUM, playwright_or_skip

SCREENS = [(1024, 768), (1280, 1024), (1366, 768), (1920, 1080)]
TOUCH_MIN_PX = 48
SAME_LINE_PX = 4
LONG_LABELS = ["longitudinal_scratch_deep", "edge_crack_with_burr", "oil_stain_contamination",
               "surface_pit_cluster_large"]

# Every measurement the test makes, in the page: lists of what is wrong, empty when all is right.
MEASURE = """limits => {
  const problems = {pairs: [], overflow: [], small: [], scroll: []};
  const r = e => e.getBoundingClientRect();
  const name = e => e.tagName.toLowerCase() + (e.className ? '.' + e.className : '') +
    ' "' + (e.textContent || e.value || '').trim().slice(0, 40) + '"';
  for (const row of document.querySelectorAll('.changes li, .effect')) {
    const parts = row.querySelectorAll('.value, .arrow');
    const tops = [...parts].map(p => r(p).top);
    if (parts.length !== 3 || Math.max(...tops) - Math.min(...tops) > limits.same ||
        [...parts].some(p => p.getClientRects().length !== 1))
      problems.pairs.push(name(row) + ' tops ' + tops.map(Math.round));
  }
  for (const card of document.querySelectorAll(
      '.recommendation, .defects, .login main, .line-alert')) {
    const box = r(card);
    for (const e of card.querySelectorAll('*')) {
      const b = r(e);
      if (b.width === 0 && b.height === 0) continue;
      if (b.left < box.left - 0.5 || b.right > box.right + 0.5)
        problems.overflow.push(name(e) + ' leaves its card');
      const style = getComputedStyle(e);
      const clips = style.overflowX !== 'visible' || style.overflowY !== 'visible';
      if (e.children.length === 0 && (e.scrollWidth > e.clientWidth + 1 ||
          (clips && e.scrollHeight > e.clientHeight + 1)) && e.clientWidth > 0)
        problems.overflow.push(name(e) + ' cut: ' + e.scrollWidth + ' > ' + e.clientWidth);
    }
  }
  for (const label of document.querySelectorAll('.thumbs figcaption strong')) {
    if (label.scrollWidth > label.clientWidth + 1 && label.title !== label.textContent)
      problems.overflow.push(name(label) + ' shortened without its full name');
    // A label may wrap between its words (at _, - or a space), never inside one.
    const walker = document.createTreeWalker(label, NodeFilter.SHOW_TEXT);
    let before = null, top = null;
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      for (let i = 0; i < node.length; i++) {
        const range = document.createRange();
        range.setStart(node, i); range.setEnd(node, i + 1);
        const at = range.getClientRects()[0];
        if (!at) continue;
        if (top !== null && at.top > top + 2 && !' _-'.includes(before))
          problems.overflow.push(name(label) + ' breaks inside a word at ' + node.data[i]);
        before = node.data[i]; top = at.top;
      }
    }
  }
  for (const e of document.querySelectorAll('button, a[href], input:not([type=hidden])')) {
    const b = r(e);
    const tooSmall = e.tagName === 'INPUT' ? b.height < limits.touch :
      b.width < limits.touch || b.height < limits.touch;
    if (tooSmall) problems.small.push(name(e) + ' ' + Math.round(b.width) + 'x' +
      Math.round(b.height));
  }
  if (document.documentElement.scrollWidth > window.innerWidth)
    problems.scroll.push(document.documentElement.scrollWidth + ' > ' + window.innerWidth);
  return problems;
}"""


def busy_recommendation() -> RecommendationPayload:
    """Four changes with long names and units, as a real extruder's recommender offers."""
    return RecommendationPayload(
        pipeline="scrap", model=ModelRef(name="extruder-scrap", version="1.4.0", sha256="ab" * 32),
        target="scrap_rate_pct", unit="%", objective="minimise scrap_rate_pct",
        changes=[SetpointChange(tag="zone2_temp_c", current=182.2, proposed=188, unit="°C"),
                 SetpointChange(tag="screw_speed_rpm", current=61, proposed=58, unit="rpm"),
                 SetpointChange(tag="melt_pressure_bar", current=112.5, proposed=118.5,
                                unit="bar"),
                 SetpointChange(tag="die_adapter_zone4_temp_c", current=205.5, proposed=199,
                                unit="°C")],
        predicted_now=4.13, predicted_after=1.7, inputs={t: 1.0 for t in FEATURES},
        created_at=time.time() - 125, expires_at=time.time() + 600)


def add_long_named_defects(agent: Agent) -> None:
    pipeline = vision_pipeline(agent)
    image = cv2.imread(str(SAMPLE_DATA / "vision_samples" / "pit_0.png"))
    jpeg = cv2.imencode(".jpg", image)[1].tobytes()
    for number, label in enumerate(LONG_LABELS, 1):
        pipeline.recent_defects.appendleft(RecentDefect(
            number, time.time() - 60 * number, "frame", label, 0.91, jpeg))


@contextlib.contextmanager
def serving_page(agent: Agent) -> Iterator[str]:
    """The agent's page (with a login) on a free port from a loop of its own; its base URL."""
    ui = UiConfig(port=free_port(), password=PASSWORD)
    app = web.create_app(agent.status_document, agent=agent, ui=ui)
    loop = asyncio.new_event_loop()
    server = WebServer(app, "127.0.0.1", ui.port)
    threading.Thread(target=loop.run_forever, daemon=True).start()
    board = process_pipeline(agent).board
    asyncio.run_coroutine_threadsafe(board.offer(busy_recommendation()), loop).result(10)
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
    try:
        yield f"http://127.0.0.1:{ui.port}"
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
        asyncio.run_coroutine_threadsafe(agent.buffer.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = playwright_or_skip()
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield launched
        launched.close()


def measure(page: Any, shot: Path) -> dict[str, list[str]]:
    page.screenshot(path=str(shot), full_page=True)
    return page.evaluate(MEASURE, {"same": SAME_LINE_PX, "touch": TOUCH_MIN_PX})


def test_page_reads_right_on_every_common_screen(tmp_path: Path, browser: Any) -> None:
    agent = Agent(agent_config(tmp_path), transport=MemoryTransport(MemoryBroker()))
    fill_trend(process_pipeline(agent))
    add_long_named_defects(agent)
    found: dict[str, dict[str, list[str]]] = {}
    with serving_page(agent) as url:
        context = browser.new_context()
        page = context.new_page()
        for width, height in SCREENS:
            page.set_viewport_size({"width": width, "height": height})
            page.goto(url + "/login")
            found[f"login {width}x{height}"] = measure(page, tmp_path / f"login-{width}.png")
            if width == SCREENS[0][0]:
                page.fill("#secret", PASSWORD)
                with page.expect_navigation():
                    page.click("text=Log in")
            page.goto(url + "/")
            assert page.locator(".changes li").count() == 4
            assert page.locator(".thumbs figure").count() == len(LONG_LABELS)
            page.wait_for_function("() => [...document.images].every(i => i.complete)")
            found[f"page {width}x{height}"] = measure(page, tmp_path / f"page-{width}.png")
        context.close()
    wrong = {screen: {k: v for k, v in problems.items() if v}
             for screen, problems in found.items()}
    assert not {s: p for s, p in wrong.items() if p}, json.dumps(wrong, indent=1)


def receive_line_alerts(agent: Agent) -> None:
    """Three open alerts of the line, the longest summary the contract allows among them."""
    long_summary = ("defect-rate: surface_pit_cluster_large on camera cam-1 of gw-7 at 14.2 per "
                    "hour, 4.7 times the 7-day baseline of 3.0 per hour; check the die lip and "
                    "the cooling water temperature before the next coil change, then tell the "
                    "line lead on shift what was found and done")[:300]
    alerts = [OperatorAlert(alert_id="a1", rule="source-down", severity="critical",
                            summary="Camera cam-1 down on gw-7", fired_at=time.time() - 90,
                            devices=["gw-7"]),
              OperatorAlert(alert_id="a2", rule="defect-rate", severity="warning",
                            summary=long_summary, fired_at=time.time() - 4000, acked=True,
                            devices=["gw-7", "gw-8"]),
              OperatorAlert(alert_id="a3", rule="buffer-filling", severity="info",
                            summary="Buffer of gw-8 84 % full", fired_at=time.time() - 600,
                            devices=["gw-8"])]
    received = agent.line_alerts.on_message("", encode(DeviceAlerts(device_id="gw-7",
                                                                    alerts=alerts)))
    with ThreadPoolExecutor(1) as pool:  # Playwright's sync API holds this thread's loop
        pool.submit(asyncio.run, received).result(10)


@pytest.mark.parametrize(("width", "height"), [(1366, 768), (1024, 768)])
def test_alert_band_reads_right_with_the_page(tmp_path: Path, browser: Any, width: int,
                                              height: int) -> None:
    agent = Agent(agent_config(tmp_path), transport=MemoryTransport(MemoryBroker()))
    fill_trend(process_pipeline(agent))
    add_long_named_defects(agent)
    receive_line_alerts(agent)
    with serving_page(agent) as url:
        context = browser.new_context(viewport={"width": width, "height": height})
        page = context.new_page()
        page.goto(url + "/login")
        page.fill("#secret", PASSWORD)
        with page.expect_navigation():
            page.click("text=Log in")
        assert page.locator(".line-alert").count() == 3
        assert page.locator(".changes li").count() == 4
        band, top = page.evaluate("""() => [
            document.querySelector('.alerts').getBoundingClientRect().top,
            document.querySelector('.grid').getBoundingClientRect().top]""")
        assert band < top, "the alerts are not above the rest of the page"
        colours = page.evaluate("""() => [...document.querySelectorAll('.line-alert')].map(
            e => getComputedStyle(e).borderLeftColor)""")
        assert len(set(colours)) == 3, f"severities are not told apart by colour: {colours}"
        page.wait_for_function("() => [...document.images].every(i => i.complete)")
        problems = measure(page, tmp_path / f"alerts-{width}.png")
        context.close()
    assert not {k: v for k, v in problems.items() if v}, json.dumps(problems, indent=1)

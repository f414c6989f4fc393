"""The operator page: what it says, who may use it, and a real Chromium answering a
recommendation that then travels to the broker."""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest
from pydantic import ValidationError

from edge_agent import web
from edge_agent.app import Agent
from edge_agent.config import AgentConfig, UiConfig
from edge_agent.kernel.contract import (
    RECORD_RECOMMENDATION_ANSWER,
    BatchAck,
    ModelRef,
    RecommendationPayload,
    SetpointChange,
    Topics,
    UplinkBatch,
    decode,
    encode,
    expand_uplink,
)
from edge_agent.kernel.transport.memory import MemoryBroker, MemoryTransport
from edge_agent.pipelines.process import ProcessPipeline
from edge_agent.pipelines.snapshot import RecentDefect, TrendPoint
from edge_agent.pipelines.vision import VisionPipeline
from edge_agent.recommendations import RecommendationBoard
from tests.conftest import SAMPLE_DATA, Mosquitto, free_port, wait_for_port
from tests.edge_agent.pipelines.test_vision_pipeline import GREY, RED, frames, run_frames
from tests.edge_agent.pipelines.test_vision_pipeline import setup as vision_setup
from tests.helpers import CHROMIUM, playwright_or_skip, wait_until, write_test_keys

FEATURES = ["zone1_temp_c", "zone2_temp_c", "zone3_temp_c", "melt_pressure_bar",
            "screw_speed_rpm", "line_speed_m_min"]
TOKEN, PASSWORD = "tok-123-456-789", "pass word of the line"


def agent_config(tmp_path: Path, broker_port: int = 1883, ui_port: int = 0,
                 **ui: Any) -> AgentConfig:
    return AgentConfig.model_validate({
        "device_id": "gw-7",
        "data_dir": str(tmp_path / "agent"),
        "broker": {"port": broker_port},
        "sources": [
            {"name": "line-1", "endpoint": "opc.tcp://127.0.0.1:9/line-1",
             "nodes": {tag: f"ns=2;s={tag}" for tag in FEATURES},
             "reconnect_max_backoff_s": 1},
            {"type": "camera", "name": "cam-1", "url": str(SAMPLE_DATA / "surface_line.mp4"),
             "max_fps": 2}],
        "pipelines": [
            {"name": "scrap", "source": "line-1", "model": "extruder-scrap"},
            {"type": "vision", "name": "surface", "source": "cam-1", "model": "surface-defects",
             "defects": {"classes": ["scratch", "pit", "stain"]}}],
        "uplink": {"ack_timeout_s": 2},
        "ui": {"port": ui_port, **ui},
        "security": {"central_public_key": str(write_test_keys(tmp_path / "keys")[1])},
    })


def recommendation(expires_in_s: float = 600) -> RecommendationPayload:
    return RecommendationPayload(
        pipeline="scrap", model=ModelRef(name="extruder-scrap", version="1.4.0", sha256="ab" * 32),
        target="scrap_rate_pct", unit="%", objective="minimise scrap_rate_pct",
        changes=[SetpointChange(tag="zone2_temp_c", current=182.2, proposed=188, unit="°C"),
                 SetpointChange(tag="screw_speed_rpm", current=61, proposed=58, unit="rpm")],
        predicted_now=4.13, predicted_after=1.7, inputs={t: 1.0 for t in FEATURES},
        created_at=time.time() - 125, expires_at=time.time() + expires_in_s)


def process_pipeline(agent: Agent) -> ProcessPipeline:
    pipeline = next(p for p in agent.pipelines if isinstance(p, ProcessPipeline))
    if pipeline.board is None:
        pipeline.board = RecommendationBoard(pipeline.name, agent.buffer)
    return pipeline


def vision_pipeline(agent: Agent) -> VisionPipeline:
    return next(p for p in agent.pipelines if isinstance(p, VisionPipeline))


def fill_trend(pipeline: ProcessPipeline, minutes: int = 60) -> None:
    """An hour of plausible predictions, one every 5 s."""
    now = time.time()
    for i in range(minutes * 12):
        wave = math.sin(i / 40)
        inputs = {"zone1_temp_c": 175 + wave, "zone2_temp_c": 182 + 2 * wave,
                  "zone3_temp_c": 190 + wave, "melt_pressure_bar": 110 + 4 * math.cos(i / 30),
                  "screw_speed_rpm": 61 + math.sin(i / 25), "line_speed_m_min": 12.0}
        pipeline.trend.append(TrendPoint(now - (minutes * 60) + i * 5, inputs,
                                         {"scrap_rate_pct": 3.5 + 0.8 * wave}))


def add_defect_pictures(pipeline: VisionPipeline, count: int = 4) -> None:
    for number, name in enumerate(["pit_0", "scratch_0", "stain_0", "pit_1"][:count], 1):
        image = cv2.imread(str(SAMPLE_DATA / "vision_samples" / f"{name}.png"))
        ok, jpeg = cv2.imencode(".jpg", image)
        assert ok
        pipeline.recent_defects.appendleft(RecentDefect(
            number, time.time() - 60 * (count - number), "frame", name.split("_")[0], 0.91,
            jpeg.tobytes()))


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    made = Agent(agent_config(tmp_path), transport=MemoryTransport(MemoryBroker()))
    yield made
    asyncio.run(made.buffer.close())


@asynccontextmanager
async def client(agent: Agent, **ui: Any) -> AsyncIterator[httpx.AsyncClient]:
    ui.setdefault("allowed_hosts", ["gw-7.local"])
    app = web.create_app(agent.status_document, agent.metrics.exposition, agent=agent,
                         ui=UiConfig(**ui))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://gw-7.local") as made:
        yield made


async def buffered(agent: Agent, record_type: str) -> list[dict[str, Any]]:
    return [json.loads(r.payload_json) for r in await agent.buffer.next_batch(1000)
            if r.type == record_type]


# --- what the page says ----------------------------------------------------------------------


def test_tags_and_values_read_like_the_line_talks() -> None:
    assert web.tag_words("zone2_temp_c", {}) == ("Zone 2 temperature", "°C")
    assert web.tag_words("screw_speed_rpm", {}) == ("Screw speed", "rpm")
    assert web.tag_words("scrap_rate_pct", {"scrap_rate_pct": "Scrap"}) == ("Scrap", "%")
    assert [web.number(v) for v in (182.2, 186.5, 188.0, 61.0, 4.13, 0.256, None)] == \
        ["182.2", "186.5", "188", "61", "4.1", "0.26", "–"]
    assert [web.duration(s) for s in (45, 125, 7300)] == ["45 s", "2 min", "2 h 1 min"]


def test_page_shows_the_open_recommendation_trend_defects_and_health(agent: Agent) -> None:
    pipeline = process_pipeline(agent)
    fill_trend(pipeline)
    add_defect_pictures(vision_pipeline(agent))

    async def scenario() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        await pipeline.board.offer(recommendation())
        async with client(agent) as http:
            return (await http.get("/"), await http.get("/live"),
                    await http.get("/defects/surface/2.jpg"))

    page, live, picture = asyncio.run(scenario())
    assert page.status_code == 200
    text = page.text
    for words in ("Zone 2 temperature", "182.2 °C", "188 °C", "Screw speed", "61 rpm", "58 rpm",
                  "Predicted scrap rate", "4.1 %", "1.7 %", "extruder-scrap 1.4.0",
                  "offered 2 min ago", "expires in 10 min", ">Accept<", ">Reject<",
                  "<polyline", "Predicted scrap rate", "Latest defects", "/defects/surface/2.jpg",
                  "Waiting", "Not connected to central", 'value="operator"', "/static/live.js"):
        assert words in text, words
    assert '<main id="live"' in text and "<html" not in live.text and ">Accept<" in live.text
    assert picture.headers["content-type"] == "image/jpeg"
    assert picture.content[:2] == b"\xff\xd8"


def test_status_api_carries_the_open_recommendation_and_defects(agent: Agent) -> None:
    add_defect_pictures(vision_pipeline(agent), 1)

    async def scenario() -> dict[str, Any]:
        await process_pipeline(agent).board.offer(recommendation())
        async with client(agent) as http:
            return (await http.get("/api/status")).json()

    pipelines = {p["name"]: p for p in asyncio.run(scenario())["pipelines"]}
    assert pipelines["scrap"]["recommendation"]["changes"][0]["proposed"] == 188
    assert pipelines["surface"]["recent_defects"][0]["label"] == "pit"
    assert "thumbnail_jpeg" not in pipelines["surface"]["recent_defects"][0]


def test_vision_pipeline_keeps_the_latest_defects_with_a_small_picture(tmp_path: Path) -> None:
    pipeline, buffer = vision_setup(tmp_path)
    run_frames(pipeline, frames(GREY, RED, RED))
    asyncio.run(buffer.close())
    [defect] = pipeline.recent_defects
    assert (defect.number, defect.label, defect.roi) == (1, "scratch", "frame")
    image = cv2.imdecode(np.frombuffer(defect.thumbnail_jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and max(image.shape[:2]) <= 320


# --- answering -------------------------------------------------------------------------------


def test_accept_button_answers_as_the_remembered_operator(agent: Agent) -> None:
    board = process_pipeline(agent).board
    offered = recommendation()

    async def scenario() -> tuple[httpx.Response, httpx.Response, list[dict[str, Any]]]:
        await board.offer(offered)
        async with client(agent) as http:
            named = await http.post("/operator", data={"name": "Anna K."})
            answered = await http.post(f"/recommendations/{offered.id}/answer",
                                       data={"decision": "accepted"})
            page = await http.get("/")
        return named, answered, (await buffered(agent, RECORD_RECOMMENDATION_ANSWER)), page

    named, answered, answers, page = asyncio.run(scenario())
    assert named.status_code == 303 and "samesite=strict" in named.headers["set-cookie"].lower()
    assert answered.status_code == 303 and answered.headers["location"] == "/"
    assert board.open is None
    assert [(a["id"], a["decision"], a["by"]) for a in answers] == \
        [(offered.id, "accepted", "Anna K.")]
    assert "Last one accepted by Anna K." in page.text and 'value="Anna K."' in page.text


def test_json_answer_then_a_second_answer_is_refused_with_the_reason(agent: Agent) -> None:
    board = process_pipeline(agent).board
    offered = recommendation()

    async def scenario() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        await board.offer(offered)
        async with client(agent) as http:
            url = f"/api/recommendations/{offered.id}/answer"
            return (await http.post(url, json={"decision": "rejected", "by": "Ben"}),
                    await http.post(url, json={"decision": "accepted", "by": "Cleo"}),
                    await http.post(f"/recommendations/{offered.id}/answer",
                                    data={"decision": "accepted"}))

    first, second, form = asyncio.run(scenario())
    assert first.status_code == 200 and first.json()["decision"] == "rejected"
    assert second.status_code == 409
    assert second.json()["detail"] == f"recommendation {offered.id} was already rejected by Ben"
    assert form.status_code == 409 and "already rejected by Ben" in form.text


def test_a_post_from_another_site_is_refused(agent: Agent) -> None:
    board = process_pipeline(agent).board
    offered = recommendation()

    async def scenario() -> list[int]:
        await board.offer(offered)
        async with client(agent) as http:
            url = f"/recommendations/{offered.id}/answer"
            return [(await http.post(url, data={"decision": "accepted"}, headers=h)).status_code
                    for h in ({"Origin": "http://evil.example"},
                              {"Sec-Fetch-Site": "cross-site"}, {"Origin": "null"})]

    assert asyncio.run(scenario()) == [403, 403, 403]
    assert board.open is not None


# --- who may use it --------------------------------------------------------------------------


def test_page_reachable_from_other_machines_needs_a_token_or_password(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"set ui\.token \(or ui\.password\)"):
        UiConfig(host="0.0.0.0")
    with pytest.raises(ValidationError, match=r"ui\.host '192\.168\.1\.5'"):
        agent_config(tmp_path, ui_port=8080, host="192.168.1.5")
    UiConfig(host="0.0.0.0", token="s3cret-s3cret")
    UiConfig(host="0.0.0.0", password="s3cret-s3cret")
    UiConfig(host="0.0.0.0", port=0)
    UiConfig(host="::1")
    UiConfig(host="localhost")


def test_with_a_token_every_request_but_healthz_needs_a_login(agent: Agent) -> None:
    board = process_pipeline(agent).board
    offered = recommendation()

    async def scenario() -> dict[str, Any]:
        await board.offer(offered)
        seen: dict[str, Any] = {}
        async with client(agent, token=TOKEN, password=PASSWORD) as http:
            for path in ("/healthz", "/", "/live", "/api/status", "/metrics", "/login",
                         "/static/operator.css"):
                seen[path] = (await http.get(path)).status_code
            seen["redirect"] = (await http.get("/")).headers.get("location")
            seen["answer"] = (await http.post(f"/api/recommendations/{offered.id}/answer",
                                              json={"decision": "accepted", "by": "x"})
                              ).status_code
            seen["bearer"] = (await http.get(
                "/api/status", headers={"Authorization": f"Bearer {TOKEN}"})).status_code
            seen["wrong bearer"] = (await http.get(
                "/api/status", headers={"Authorization": f"Bearer {TOKEN[:-1]}"})).status_code
            seen["wrong login"] = (await http.post("/login", data={"secret": "nope"})
                                   ).status_code
            login = await http.post("/login", data={"secret": PASSWORD})
            seen["login"], seen["cookie"] = login.status_code, login.headers["set-cookie"]
            seen["after login"] = (await http.get("/")).status_code
            seen["answer after login"] = (await http.post(
                f"/recommendations/{offered.id}/answer", data={"decision": "accepted"})
                                          ).status_code
            http.cookies.clear()
            http.cookies.set(web.SESSION_COOKIE, "abc.def")
            seen["forged"] = (await http.get("/api/status")).status_code
        return seen

    seen = asyncio.run(scenario())
    assert (seen["/healthz"], seen["/login"], seen["/static/operator.css"]) == (200, 200, 200)
    assert seen["/"] == 303 and seen["redirect"] == "/login"
    assert (seen["/live"], seen["/api/status"], seen["/metrics"], seen["answer"]) == \
        (401, 401, 401, 401)
    assert (seen["bearer"], seen["wrong bearer"], seen["wrong login"]) == (200, 401, 401)
    assert seen["login"] == 303
    assert {"httponly", "samesite=strict"} <= {p.strip().lower()
                                               for p in seen["cookie"].split(";")}
    assert TOKEN not in seen["cookie"] and "pass" not in seen["cookie"]
    assert (seen["after login"], seen["answer after login"], seen["forged"]) == (200, 303, 401)
    assert board.open is None and board.recent[0].answer.decision == "accepted"


# --- a real browser ----------------------------------------------------------------------------


@contextmanager
def running(agent: Agent) -> Iterator[asyncio.AbstractEventLoop]:
    """The agent's run() in a thread of its own (Playwright's sync API wants this one)."""
    started = threading.Event()
    holder: dict[str, Any] = {}

    async def main() -> None:
        holder["loop"], holder["stop"] = asyncio.get_running_loop(), asyncio.Event()
        started.set()
        await agent.run(holder["stop"])

    thread = threading.Thread(target=asyncio.run, args=(main(),), name="agent", daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        wait_for_port(agent.config.ui.port)
        yield holder["loop"]
    finally:
        holder["loop"].call_soon_threadsafe(holder["stop"].set)
        thread.join(30)
        assert not thread.is_alive(), "the agent did not stop within 30 s of being asked"


@contextmanager
def central_stand_in(port: int, topics: Topics, device_id: str) -> Iterator[list[UplinkBatch]]:
    """Subscribes to the device's uplink like central does and acks every batch."""
    import paho.mqtt.client as mqtt

    batches: list[UplinkBatch] = []

    def on_message(client: mqtt.Client, _: Any, message: mqtt.MQTTMessage) -> None:
        batch = expand_uplink(decode(message.payload))
        if isinstance(batch, UplinkBatch):
            batches.append(batch)
            ack = BatchAck(device_id=device_id, batch_id=batch.batch_id,
                           acked_seqs=[r.seq for r in batch.records])
            client.publish(topics.ack(device_id), encode(ack), qos=1)

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="central-stand-in")
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.subscribe(topics.uplink(device_id), qos=1)
    client.loop_start()
    try:
        yield batches
    finally:
        client.loop_stop()
        client.disconnect()


@pytest.mark.slow
def test_operator_accepts_in_chromium_and_the_answer_is_uplinked(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    sync_api = playwright_or_skip()
    agent = Agent(agent_config(tmp_path, mosquitto.port, free_port(), refresh_s=1))
    pipeline = process_pipeline(agent)
    fill_trend(pipeline)
    add_defect_pictures(vision_pipeline(agent))
    offered = recommendation()
    shots = tmp_path / "screenshots"
    url = f"http://127.0.0.1:{agent.config.ui.port}/"

    with central_stand_in(mosquitto.port, agent.topics, agent.device_id) as batches, \
            running(agent) as loop, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        page = browser.new_page(viewport={"width": 1920, "height": 1080})
        page.goto(url)
        page.fill("#operator-name", "Anna")
        with page.expect_navigation():  # the form posts, the gateway sends the page back
            page.click("text=Save")
        sync_api.expect(page.locator("#operator-name")).to_have_value("Anna")
        sync_api.expect(page.locator("h2", has_text="No recommendation")).to_be_visible()
        # Offered after the page loaded: the live part shows it without a reload.
        asyncio.run_coroutine_threadsafe(pipeline.board.offer(offered), loop).result(10)
        accept = page.get_by_role("button", name="Accept")
        sync_api.expect(accept).to_be_visible(timeout=20_000)  # the live part polls every 1 s
        page.screenshot(path=str(shots / "open.png"))
        shutil.copy(shots / "open.png", "/tmp/operator_page.png")
        size = page.evaluate("() => [document.documentElement.scrollWidth, "
                             "parseFloat(getComputedStyle(document.querySelector("
                             "'.changes')).fontSize)]")
        with page.expect_navigation():
            accept.click()
        sync_api.expect(page.get_by_text("Last one accepted by Anna")).to_be_visible()
        page.screenshot(path=str(shots / "answered.png"))
        shutil.copy(shots / "answered.png", "/tmp/operator_page_answered.png")
        browser.close()

        assert size[0] <= 1920, "the page is wider than the screen"
        assert size[1] >= 28, "recommendation text is smaller than 28 px"
        answer = board_answer = pipeline.board.recent[0].answer
        assert (board_answer.id, board_answer.decision, board_answer.by) == \
            (offered.id, "accepted", "Anna")

        def uplinked() -> list[dict[str, Any]]:
            return [r.payload for b in list(batches) for r in b.records
                    if r.type == RECORD_RECOMMENDATION_ANSWER]

        [sent] = wait_until(uplinked, what="the answer in an uplink batch")  # type: ignore[misc]
        assert (sent["id"], sent["decision"], sent["by"], sent["at"]) == \
            (offered.id, "accepted", "Anna", answer.at)

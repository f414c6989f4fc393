"""The operator page against a hostile browser or network: names it answers to (DNS
rebinding), framing, security headers, logins (length, throttling, sessions that logout ends),
bodies refused before they are read, TLS; over real HTTP to the running agent, and Chromium."""

from __future__ import annotations

import asyncio
import select
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from edge_agent import web
from edge_agent.app import Agent
from edge_agent.config import AgentConfig, UiConfig
from edge_agent.kernel.transport.memory import MemoryBroker, MemoryTransport
from edge_agent.web.access import (
    BACKOFF_FIRST_S,
    BACKOFF_MAX_S,
    FREE_FAILURES_OVERALL,
    FREE_FAILURES_PER_CLIENT,
    LoginThrottle,
)
from tests.conftest import free_port
from tests.edge_agent.kernel.test_httpserver import self_signed_certificate
from tests.edge_agent.test_operator_page import (
    CHROMIUM,
    PASSWORD,
    agent_config,
    client,
    process_pipeline,
    recommendation,
    running,
)
from tests.helpers import playwright_or_skip, wait_until

FOREIGN = "rebind.attacker.example"
RESPONSE_WAIT_S = 10.0


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    made = Agent(agent_config(tmp_path), transport=MemoryTransport(MemoryBroker()))
    yield made
    asyncio.run(made.buffer.close())


@contextmanager
def page_of(tmp_path: Path, **ui: Any) -> Iterator[tuple[Agent, str, asyncio.AbstractEventLoop]]:
    """A running agent with its page on a free port: (agent, base URL, its loop)."""
    agent = Agent(agent_config(tmp_path, ui_port=free_port(), **ui),
                  transport=MemoryTransport(MemoryBroker()))
    with running(agent) as loop:
        scheme = "https" if "tls_cert_file" in ui else "http"
        yield agent, f"{scheme}://127.0.0.1:{agent.config.ui.port}", loop


def offer(agent: Agent, loop: asyncio.AbstractEventLoop) -> str:
    offered = recommendation()
    board = process_pipeline(agent).board
    asyncio.run_coroutine_threadsafe(board.offer(offered), loop).result(10)
    return offered.id


# --- names, origins, headers ----------------------------------------------------------------


def test_an_answer_under_a_foreign_host_name_is_refused(tmp_path: Path) -> None:
    with page_of(tmp_path) as (agent, url, loop):
        rec_id = offer(agent, loop)
        port = agent.config.ui.port
        foreign = {"Host": f"{FOREIGN}:{port}", "Origin": f"http://{FOREIGN}:{port}"}
        with httpx.Client(base_url=url) as http:
            answer = http.post(f"/recommendations/{rec_id}/answer",
                               data={"decision": "accepted"}, headers=foreign)
            read = http.get("/api/status", headers={"Host": FOREIGN})
            own_names = [http.get("/api/status", headers={"Host": f"{name}:{port}"}).status_code
                         for name in ("127.0.0.1", "localhost", "[::1]")]
        assert answer.status_code == 400
        assert f"does not answer to the name '{FOREIGN}'" in answer.json()["detail"]
        assert "ui.allowed_hosts" in answer.json()["detail"]
        assert read.status_code == 400
        assert own_names == [200, 200, 200]
        assert process_pipeline(agent).board.open is not None


def test_the_page_answers_to_its_configured_names_and_the_address_it_listens_on(
        agent: Agent) -> None:
    async def status_code(base_url: str, **ui: Any) -> int:
        async with client(agent, **ui) as http:
            http.base_url = httpx.URL(base_url)
            return (await http.get("/healthz")).status_code

    async def scenario() -> list[int]:
        return [await status_code("http://gw-7.local", allowed_hosts=[]),
                await status_code("http://gw-7.local"),
                await status_code("http://GW-7.local.:8080"),
                await status_code("http://10.1.2.3:8080", allowed_hosts=[]),  # arrived on it
                await status_code("http://gw-7.plant", host="gw-7.plant",
                                  password=PASSWORD, allowed_hosts=[])]

    assert asyncio.run(scenario()) == [400, 200, 200, 200, 200]


def test_every_response_carries_the_security_headers_and_no_docs_are_served(
        tmp_path: Path) -> None:
    with page_of(tmp_path) as (_, url, _loop), httpx.Client(base_url=url) as http:
        responses = {path: http.get(path) for path in (
            "/", "/live", "/api/status", "/healthz", "/static/live.js", "/login", "/no-such",
            "/docs", "/redoc", "/openapi.json")}
        responses["foreign"] = http.get("/", headers={"Host": FOREIGN})
        responses["forged"] = http.post("/operator", headers={"Origin": "http://x.example"})
    for path, response in responses.items():
        csp = response.headers.get("content-security-policy", "")
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp, path
        assert response.headers.get("x-frame-options") == "DENY", path
        assert response.headers.get("x-content-type-options") == "nosniff", path
    assert [responses[p].status_code for p in ("/docs", "/redoc", "/openapi.json")] == \
        [404, 404, 404]


# --- logins ------------------------------------------------------------------------------------


def test_a_short_token_or_password_is_refused_with_what_to_do() -> None:
    for field in ("password", "token"):
        with pytest.raises(ValidationError, match=rf"ui\.{field} has 4 characters; it must have "
                                                  r"at least 12 .*openssl rand"):
            UiConfig(host="0.0.0.0", **{field: "1234"})
    UiConfig(host="0.0.0.0", password="a" * 12)


def test_automatic_write_back_needs_a_login_on_the_page(tmp_path: Path) -> None:
    def config(**ui: Any) -> Any:
        made = agent_config(tmp_path, ui_port=8080, **ui).model_dump()
        made["sources"][0]["allow_insecure_write"] = True  # the channel is not what is tested
        made["pipelines"][0]["recommend"] = {
            "controls": {"zone2_temp_c": {"min": 170, "max": 195, "step": 0.5,
                                          "max_change": 3}},
            "objective": {"type": "minimise", "output": "scrap_rate_pct"}, "mode": "auto"}
        return AgentConfig.model_validate(made)

    with pytest.raises(ValidationError, match=r"pipeline 'scrap' writes accepted "
                       r"recommendations to the PLC \(recommend\.mode: auto\).*set ui\.password"):
        config()
    assert config(password=PASSWORD).ui.login_required
    assert config(port=0).ui.port == 0


def test_wrong_passwords_make_the_address_wait_even_for_the_right_one(tmp_path: Path) -> None:
    with page_of(tmp_path, password=PASSWORD) as (_, url, _loop), \
            httpx.Client(base_url=url) as http:
        wrong = [http.post("/login", data={"secret": f"guess-{n:04d}"}).status_code
                 for n in range(FREE_FAILURES_PER_CLIENT)]
        right = http.post("/login", data={"secret": PASSWORD})
        bearer = http.get("/api/status", headers={"Authorization": f"Bearer {PASSWORD}"})
    assert wrong == [401] * FREE_FAILURES_PER_CLIENT
    assert right.status_code == 429 and "set-cookie" not in right.headers
    assert int(right.headers["retry-after"]) >= 1
    assert "Too many wrong tokens or passwords: wait" in right.text
    assert bearer.status_code == 429


def test_login_back_off_doubles_per_address_and_holds_everyone_under_a_wide_attack() -> None:
    now = [1000.0]
    throttle = LoginThrottle(clock=lambda: now[0])
    for _ in range(FREE_FAILURES_PER_CLIENT):
        assert throttle.wait_s("10.0.0.9") == 0
        throttle.failed("10.0.0.9")
    assert throttle.wait_s("10.0.0.9") == BACKOFF_FIRST_S
    assert throttle.wait_s("10.0.0.8") == 0  # another address is not held by this one
    throttle.failed("10.0.0.9")
    assert throttle.wait_s("10.0.0.9") == 2 * BACKOFF_FIRST_S
    for _ in range(20):
        throttle.failed("10.0.0.9")
    assert throttle.wait_s("10.0.0.9") == BACKOFF_MAX_S
    now[0] += BACKOFF_MAX_S
    throttle.succeeded("10.0.0.9")
    assert throttle.wait_s("10.0.0.9") == 0

    spread = LoginThrottle(clock=lambda: now[0])
    for n in range(FREE_FAILURES_OVERALL):  # one wrong secret from each of many addresses
        assert spread.wait_s(f"10.1.{n // 250}.{n % 250}") == 0
        spread.failed(f"10.1.{n // 250}.{n % 250}")
    assert spread.wait_s("10.9.9.9") == BACKOFF_FIRST_S


def test_logout_ends_the_session_for_every_copy_of_its_cookie(tmp_path: Path) -> None:
    with page_of(tmp_path, password=PASSWORD) as (_, url, _loop), \
            httpx.Client(base_url=url) as http:
        assert http.post("/login", data={"secret": PASSWORD}).status_code == 303
        copied = http.cookies[web.SESSION_COOKIE]
        before = http.get("/api/status").status_code
        logout = http.post("/logout", headers={"Origin": url})
        http.cookies.clear()
        http.cookies.set(web.SESSION_COOKIE, copied)
        after = http.get("/api/status").status_code
    assert (before, logout.status_code, after) == (200, 303, 401)


# --- bodies, TLS -------------------------------------------------------------------------------


def raw_request(port: int, head: str, chunks: int = 0) -> bytes:
    """Send a request's head, then `chunks` chunks of 64 KiB unless the answer comes first."""
    with socket.create_connection(("127.0.0.1", port), timeout=RESPONSE_WAIT_S) as sock:
        sock.sendall(head.encode())
        for _ in range(chunks):
            try:
                sock.sendall(f"{65536:x}\r\n".encode() + b"s" * 65536 + b"\r\n")
            except ConnectionError:
                break
            if _readable(sock):
                break
        response = b""
        while chunk := sock.recv(65536):  # the server closes after refusing
            response += chunk
        return response


def _readable(sock: socket.socket) -> bool:
    return bool(select.select([sock], [], [], 0.05)[0])


def test_a_huge_login_body_is_refused_before_it_is_read(tmp_path: Path) -> None:
    with page_of(tmp_path, password=PASSWORD) as (agent, _, _loop):
        port = agent.config.ui.port
        declared = raw_request(port, f"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                     f"Content-Length: {300 * 1024 * 1024}\r\n\r\n")
        streamed = raw_request(port, "POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                     "Transfer-Encoding: chunked\r\n\r\n", chunks=64)
    limit = f"at most {web.PAGE_MAX_BODY_BYTES} bytes".encode()
    assert declared.startswith(b"HTTP/1.1 413") and limit in declared, declared[:300]
    assert streamed.startswith(b"HTTP/1.1 413") and limit in streamed, streamed[:300]


def test_the_page_over_tls_sets_secure_cookies(tmp_path: Path) -> None:
    cert_file, key_file = self_signed_certificate(tmp_path / "tls")
    with page_of(tmp_path, password=PASSWORD, tls_cert_file=str(cert_file),
                 tls_key_file=str(key_file)) as (_, url, _loop), \
            httpx.Client(base_url=url, verify=ssl.create_default_context(
                cafile=str(cert_file))) as http:
        login = http.post("/login", data={"secret": PASSWORD})
        page = http.get("/")
    assert url.startswith("https://")
    assert login.status_code == 303
    assert "secure" in {p.strip().lower() for p in login.headers["set-cookie"].split(";")}
    assert page.status_code == 200 and "Strict-Transport-Security" in page.headers


# --- a real browser ------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_page_works_under_its_policy_without_a_violation(tmp_path: Path) -> None:
    sync_api = playwright_or_skip()
    with page_of(tmp_path, refresh_s=1) as (agent, url, loop), \
            sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        page = browser.new_page()
        console: list[str] = []
        page.on("console", lambda message: console.append(message.text))
        page.goto(url + "/")
        offer(agent, loop)  # after loading: the script's refresh must bring it in
        accept = page.get_by_role("button", name="Accept")
        sync_api.expect(accept).to_be_visible(timeout=20_000)
        styled = page.evaluate("() => getComputedStyle(document.querySelector('.accept'))"
                               ".cursor")
        with page.expect_navigation():
            accept.click()
        sync_api.expect(page.get_by_text("Last one accepted by operator")).to_be_visible()
        browser.close()
    assert not [m for m in console if "Content Security Policy" in m], console
    assert styled == "pointer", "the stylesheet did not apply"


@contextmanager
def another_site(html: str) -> Iterator[str]:
    """A page of another origin (another port), served from this machine like the gateway's,
    so that only the page's own headers decide whether it may be framed."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = html.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="another-site")
    thread.start()
    try:
        yield f"http://localhost:{server.server_address[1]}/prize"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.mark.slow
def test_another_site_cannot_frame_the_page(tmp_path: Path) -> None:
    sync_api = playwright_or_skip()
    with page_of(tmp_path) as (_, url, _loop), sync_api.sync_playwright() as playwright, \
            another_site(f'<h1>Win a prize</h1><iframe src="{url}/" width="800" height="600">'
                         '</iframe>') as attacker:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        page = browser.new_page()
        page.goto(attacker)  # its load waits for the frame's
        frame = page.frames[1]
        heading = page.frame_locator("iframe").locator("h1", has_text="Gateway")
        wait_until(lambda: frame.url.startswith("chrome-error://") or heading.count(),
                   20, what="the frame refused or showing the page")
        framed_url, framed = frame.url, heading.count()
        browser.close()
    assert framed_url.startswith("chrome-error://"), f"the page loaded in the frame: {framed_url}"
    assert framed == 0

"""sd_notify: the real agent under a fake systemd (a unix datagram socket in NOTIFY_SOCKET)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.kernel import systemd
from tests.conftest import Mosquitto
from tests.helpers import wait_until, wait_until_async

BIN = Path(sys.executable).parent


class FakeSystemd:
    """The receiving end of NOTIFY_SOCKET; each datagram is kept with its arrival time."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._closed.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def texts(self) -> list[str]:
        return [text for _, text in list(self.messages)]

    def wait_for(self, predicate, timeout_s: float, what: str) -> list[str]:
        """The datagrams received, once `predicate` holds for them."""
        def matching() -> list[str] | None:
            texts = self.texts()
            return texts if predicate(texts) else None

        return wait_until(matching, timeout_s,
                          what=lambda: f"{what}; received {self.texts()}")

    def pings_after(self, moment: float) -> int:
        return sum(at >= moment and text == "WATCHDOG=1" for at, text in list(self.messages))

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=2)
        self.sock.close()


@pytest.fixture
def fake_systemd(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSystemd]:
    # A short folder: unix socket paths are limited to 107 bytes, pytest's tmp_path is long.
    with tempfile.TemporaryDirectory(prefix="sd-") as folder:
        path = os.path.join(folder, "notify")
        receiver = FakeSystemd(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        monkeypatch.delenv("WATCHDOG_USEC", raising=False)
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
        yield receiver
        receiver.close()


def _count(texts: list[str], field: str) -> int:
    return sum(field in text.split("\n") for text in texts)


def test_agent_says_ready_pings_the_watchdog_and_says_stopping_on_sigterm(
        tmp_path: Path, mosquitto: Mosquitto, fake_systemd: FakeSystemd) -> None:
    config = tmp_path / "edge-agent.yaml"
    config.write_text(
        "device_id: gw-systemd\n"
        "data_dir: state\n"
        f"broker: {{host: 127.0.0.1, port: {mosquitto.port}}}\n"
        "ui: {port: 0}\n"
        "security: {verify_signatures: false}\n"
        "status_interval_s: 0.3\n")
    env = {**os.environ, "WATCHDOG_USEC": "400000"}  # pings every 0.2 s
    log = (tmp_path / "agent.log").open("wb")
    agent = subprocess.Popen([str(BIN / "edge-agent"), "run", "-c", str(config)],
                             stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        texts = fake_systemd.wait_for(lambda t: _count(t, "READY=1"), 30, "READY=1")
        assert "READY=1" in texts[0].split("\n"), texts  # nothing before READY
        texts = fake_systemd.wait_for(lambda t: _count(t, "WATCHDOG=1") >= 5, 10,
                                      "five watchdog pings")
        assert _count(texts, "READY=1") == 1
        fake_systemd.wait_for(
            lambda t: any(f"broker 127.0.0.1:{mosquitto.port} connected" in x for x in t), 15,
            "a STATUS line saying the broker is connected")
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=30) == 0, (tmp_path / "agent.log").read_text()
        texts = fake_systemd.wait_for(lambda t: _count(t, "STOPPING=1"), 5, "STOPPING=1")
        stopping_at = next(i for i, t in enumerate(texts) if "STOPPING=1" in t.split("\n"))
        assert _count(texts[:stopping_at], "WATCHDOG=1") >= 5
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()


def test_a_stalled_event_loop_sends_no_watchdog_pings(fake_systemd: FakeSystemd,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "100000")  # pings every 0.05 s

    async def ping_then_stall() -> tuple[float, float]:
        watchdog = systemd.start_watchdog()
        assert watchdog is not None
        await wait_until_async(lambda: fake_systemd.pings_after(0) >= 5, 5,
                               what="five pings before the stall")
        stalled_from = time.monotonic()
        time.sleep(0.6)  # the thing under test: a blocking call, as a hung inference would be
        stalled_until = time.monotonic()
        await wait_until_async(lambda: fake_systemd.pings_after(stalled_until), 5,
                               what="a ping once the loop runs again")
        watchdog.cancel()
        return stalled_from, stalled_until

    stalled_from, stalled_until = asyncio.run(ping_then_stall())
    pings = [at for at, text in fake_systemd.messages if text == "WATCHDOG=1"]
    before = [at for at in pings if at < stalled_from]
    during = [at for at in pings if stalled_from + 0.05 < at < stalled_until]
    after = [at for at in pings if at >= stalled_until]
    assert len(before) >= 5 and after, pings
    assert during == [], "pings went on while the loop was blocked"


def test_status_lines_are_one_line_and_abstract_socket_names_work(
        monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"edge-agent-test-{os.getpid()}-{time.monotonic_ns()}"
    receiver = FakeSystemd("\0" + name)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.notify_status("broker down\nretrying")
        assert systemd.notify_ready("started")
        assert systemd.notify_stopping()
        texts = receiver.wait_for(lambda t: len(t) == 3, 2, "three datagrams")
        assert texts == ["STATUS=broker down retrying", "READY=1\nSTATUS=started", "STOPPING=1"]
    finally:
        receiver.close()


def test_outside_systemd_nothing_is_sent_and_no_watchdog_runs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    assert not systemd.enabled()
    assert systemd.notify_ready() is False
    assert systemd.watchdog_interval_s() is None

    async def start() -> asyncio.Task[None] | None:
        return systemd.start_watchdog()

    assert asyncio.run(start()) is None


def test_watchdog_is_only_for_the_process_named_by_watchdog_pid(
        fake_systemd: FakeSystemd, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert systemd.watchdog_interval_s() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert systemd.watchdog_interval_s() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert systemd.watchdog_interval_s() is None
    monkeypatch.setenv("WATCHDOG_USEC", "0")
    monkeypatch.delenv("WATCHDOG_PID")
    assert systemd.watchdog_interval_s() is None


def test_a_vanished_notify_socket_is_logged_not_raised(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    assert systemd.notify("WATCHDOG=1") is False
    assert "sd_notify failed" in caplog.text

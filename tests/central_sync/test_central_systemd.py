"""central-sync serve under a fake systemd: READY once serving, watchdog pings from its loop,
STOPPING on SIGTERM (deploy/systemd/central-sync.service is Type=notify)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from central_helpers import write_config

from tests.conftest import Mosquitto
from tests.edge_agent.kernel.test_systemd_notify import FakeSystemd, _count, fake_systemd  # noqa: F401

BIN = Path(sys.executable).parent


def test_serve_says_ready_feeds_the_watchdog_and_says_stopping(
        tmp_path: Path, mosquitto: Mosquitto, fake_systemd: FakeSystemd) -> None:  # noqa: F811
    config = write_config(tmp_path, broker_port=mosquitto.port)
    env = {**os.environ, "WATCHDOG_USEC": "400000"}  # a ping every 0.2 s
    log = (tmp_path / "central.log").open("ab")
    central = subprocess.Popen([str(BIN / "central-sync"), "serve", "-c", str(config)],
                               stdout=log, stderr=log, env=env)
    try:
        texts = fake_systemd.wait_for(
            lambda t: _count(t, "READY=1") == 1 and _count(t, "WATCHDOG=1") >= 5, 30,
            "READY=1 and five watchdog pings")
        first_ready = next(i for i, t in enumerate(texts) if "READY=1" in t.split("\n"))
        assert f"STATUS=serving: broker 127.0.0.1:{mosquitto.port}" in texts[first_ready]
        central.send_signal(signal.SIGTERM)
        assert central.wait(timeout=20) == 0
    finally:
        if central.poll() is None:
            central.kill()
            central.wait()
    assert "STOPPING=1" in fake_systemd.texts()[-1].split("\n")

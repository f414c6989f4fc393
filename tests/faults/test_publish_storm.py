"""The MQTT transport under concurrent QoS 1 publishes: its event loop must never freeze.

Central acks several batches at once and the agent publishes uplink batches and status
together, so broker PUBACKs arrive on paho's network thread while the loop thread is inside
`publish()`. The storm runs in a child process: a frozen loop cannot be recovered in-process.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Mosquitto
from tests.helpers import REPO

pytestmark = pytest.mark.slow

PUBLISHES = 3000
FROZEN_AFTER_S = 3.0

STORM = """
import asyncio, faulthandler, os, sys, threading, time
from edge_agent.kernel.transport import BrokerConfig
from edge_agent.kernel.transport.mqtt import MqttTransport

PORT, TOTAL, FROZEN_AFTER_S = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])

async def main():
    transport = MqttTransport(BrokerConfig(host="127.0.0.1", port=PORT), client_id="storm",
                              persistent_session=False)
    await transport.start()
    assert await transport.wait_connected(10), "no broker"
    done = 0
    beat = time.monotonic()

    def watchdog():
        while True:
            time.sleep(0.2)
            if time.monotonic() - beat > FROZEN_AFTER_S:
                print(f"FROZEN after {done} publishes", flush=True)
                faulthandler.dump_traceback(all_threads=True)
                os._exit(3)

    threading.Thread(target=watchdog, daemon=True).start()

    async def publisher():
        nonlocal done, beat
        while done < TOTAL:
            await transport.publish("storm/test", b"x" * 200, qos=1)
            done += 1
            beat = time.monotonic()

    await asyncio.gather(*(publisher() for _ in range(20)))
    print(f"OK: {done} publishes", flush=True)
    await transport.stop()

asyncio.run(main())
"""


def test_concurrent_qos1_publishes_never_freeze_the_loop(mosquitto: Mosquitto,
                                                         tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", STORM, str(mosquitto.port), str(PUBLISHES), str(FROZEN_AFTER_S)],
        capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    assert result.stdout.startswith("OK:"), result.stdout

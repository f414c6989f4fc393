"""Someone hammers central's login from many addresses while a gateway sends: a real
`central-sync serve` process on real Mosquitto keeps acking the gateway's batches within a bound,
and its memory stays under a stated ceiling (each Argon2 check costs 64 MiB)."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import httpx
import pytest
from central_helpers import free_port, make_batch, write_config

from central_sync.cli import main
from edge_agent.kernel.contract import BatchAck, Topics, decode, encode
from edge_agent.kernel.transport import BrokerConfig
from edge_agent.kernel.transport.mqtt import MqttTransport
from tests.benchmarks.procstats import proc_peak_rss_mb
from tests.helpers import REPO, wait_until

PASSWORD = "correct horse battery"
PARALLEL = 32  # attackers' connections at once
BATCHES = 40  # the gateway's uplink batches sent, one after another, during the flood
ACK_BOUND_S = 3.0  # each batch is acked within this, flood or not
# Central idles near 120 MiB; two password checks at once (the default) add 2 x 64 MiB.
RSS_CEILING_MB = 400
TOPICS = Topics()


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as reply:
            health = json.loads(reply.read())
    except OSError:
        return False
    return health["status"] == "ok" and health["broker_connected"]


async def _hammer(port: int, until: asyncio.Event) -> Counter[int]:
    """Wrong passwords for ever new names from ever new addresses (so no back-off applies:
    only the bound on checks at once protects central), until `until` is set."""
    codes: Counter[int] = Counter()
    count = iter(range(10**9))

    async def attacker(client: httpx.AsyncClient) -> None:
        while not until.is_set():
            i = next(count)
            reply = await client.post(
                "/login", data={"username": f"guess-{i}", "password": "not the password"},
                headers={"X-Forwarded-For": f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}"})
            codes[reply.status_code] += 1

    limits = httpx.Limits(max_connections=PARALLEL)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits,
                                 timeout=30) as client:
        await asyncio.gather(*(attacker(client) for _ in range(PARALLEL)))
    return codes


async def _send_batches(broker_port: int, first_seq: int) -> list[float]:
    """The gateway: each batch waits for its ack before the next; returns each ack's delay."""
    acks: asyncio.Queue[BatchAck] = asyncio.Queue()

    async def on_ack(_topic: str, payload: bytes) -> None:
        message = decode(payload, expect=(BatchAck,))
        if isinstance(message, BatchAck):
            acks.put_nowait(message)

    gateway = MqttTransport(BrokerConfig(port=broker_port), client_id="gw-1")
    await gateway.subscribe(TOPICS.ack("gw-1"), on_ack)
    await gateway.start()
    assert await gateway.wait_connected(10)
    delays = []
    for i in range(BATCHES):
        batch = make_batch("gw-1", range(first_seq + i * 10, first_seq + i * 10 + 10))
        sent = time.monotonic()
        await gateway.publish(TOPICS.uplink("gw-1"), encode(batch))
        while (await asyncio.wait_for(acks.get(), 30)).batch_id != batch.batch_id:
            pass  # an ack of an earlier batch, resent by the broker
        delays.append(time.monotonic() - sent)
    await gateway.stop()
    return delays


@pytest.mark.slow
def test_a_login_flood_neither_stalls_ingest_nor_grows_central(
        tmp_path: Path, mosquitto, monkeypatch: pytest.MonkeyPatch) -> None:
    web_port = free_port()
    config = write_config(tmp_path, broker_port=mosquitto.port, web_port=web_port)
    monkeypatch.setenv("FLOOD_ADMIN_PASSWORD", PASSWORD)
    assert main(["users", "add", "root", "--role", "admin", "--password-env",
                 "FLOOD_ADMIN_PASSWORD", "-c", str(config)]) == 0
    log = (tmp_path / "central.log").open("w")
    central = subprocess.Popen(
        [sys.executable, "-m", "central_sync.cli", "serve", "-c", str(config)],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        wait_until(lambda: _healthy(web_port), timeout_s=30, what="central serving")

        async def scenario() -> tuple[list[float], list[float], Counter[int]]:
            calm = await _send_batches(mosquitto.port, first_seq=1)
            done = asyncio.Event()
            hammer = asyncio.create_task(_hammer(web_port, done))
            await asyncio.sleep(0)  # the flood starts first
            try:
                delays = await _send_batches(mosquitto.port, first_seq=10 * BATCHES + 1)
            finally:
                done.set()
            return calm, delays, await hammer

        calm, delays, codes = asyncio.run(scenario())
        peak_mb = proc_peak_rss_mb(central.pid)
    finally:
        central.terminate()
        central.wait(timeout=20)
        log.close()
    print(f"login flood: {sum(codes.values())} attempts {dict(codes)}; ack delay median/max "
          f"{statistics.median(delays):.3f}/{max(delays):.3f} s (without the flood "
          f"{statistics.median(calm):.3f}/{max(calm):.3f} s); central peak RSS {peak_mb:.0f} MiB")
    assert set(codes) <= {303, 429, 503}, codes
    assert codes[503] > 0, "the flood never met the bound on password checks at once"
    assert len(delays) == BATCHES and max(delays) < ACK_BOUND_S, delays
    assert peak_mb < RSS_CEILING_MB

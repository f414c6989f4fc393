"""A flood of large messages from one gateway, against a real `central-sync serve` process and a
real Mosquitto: central's memory stays under a stated ceiling, a normal gateway's records are
still stored and acked, and every message of the flood is stored in the end (the broker holds
what central has not acknowledged yet)."""

from __future__ import annotations

import os
import queue
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from edge_agent.kernel.contract import BatchAck, Topics, UplinkBatch, UplinkRecord, decode, encode
from tests.benchmarks.procstats import proc_peak_rss_mb
from tests.conftest import Mosquitto
from tests.helpers import REPO, wait_until

BIN = Path(sys.executable).parent
TOPICS = Topics()
FLOOD_MESSAGES = 300
FLOOD_MESSAGE_BYTES = 1024 * 1024
NORMAL_BATCHES = 20
# Central's peak RSS may grow this much over its RSS once started and connected: at most
# broker.receive_maximum (20) messages wait, and a few more are decoded and stored. Measured:
# +44 MiB (114 -> 158 MiB); before the inbox was bounded and messages acked once handled,
# the same flood took central from 114 to 379 MiB.
RSS_GROWTH_CEILING_MB = 100


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {pid}")


@pytest.fixture
def central(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[subprocess.Popen]:
    config = tmp_path / "central.yaml"
    config.write_text(
        "central_id: central\n"
        f"broker: {{host: 127.0.0.1, port: {mosquitto.port}, protocol: '5'}}\n"
        "database_url: sqlite:///central.db\n"
        "artifact_dir: artifacts\n"
        "web: {port: 0}\n"
        "signing_key_path: keys/signing.key\n")
    keys = subprocess.run([str(BIN / "central-sync"), "keys", "init", "-c", str(config)],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert keys.returncode == 0, keys.stdout + keys.stderr
    log = tmp_path / "central.log"
    with log.open("wb") as out:
        process = subprocess.Popen([str(BIN / "central-sync"), "serve", "-c", str(config)],
                                   stdout=out, stderr=out, cwd=REPO,
                                   env={**os.environ, "PYTHONFAULTHANDLER": "1"})
    try:
        wait_until(lambda: "mqtt connected" in log.read_text(), 30,
                   what="central connected to the broker")
        process.log = log  # type: ignore[attr-defined]
        process.database = tmp_path / "central.db"  # type: ignore[attr-defined]
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _gateway(port: int, device_id: str) -> tuple[paho.Client, queue.Queue[BatchAck]]:
    acks: queue.Queue[BatchAck] = queue.Queue()
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=device_id,
                         protocol=MQTTProtocolVersion.MQTTv311)
    client.on_message = lambda _c, _u, message: acks.put(
        decode(bytes(message.payload), expect=(BatchAck,)))
    client.connect("127.0.0.1", port)
    client.subscribe(TOPICS.ack(device_id), qos=1)
    client.loop_start()
    return client, acks


def _batch(device_id: str, seq: int, payload: dict) -> bytes:
    return encode(UplinkBatch(device_id=device_id, records=[UplinkRecord(
        seq=seq, type="flood" if "blob" in payload else "note", created_at=1.7e9 + seq,
        payload=payload)]))


def _stored(database: Path, device_id: str) -> int:
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10) as db:
        return db.execute("SELECT COUNT(*) FROM records WHERE device_id = ?",
                          (device_id,)).fetchone()[0]


@pytest.mark.slow
def test_a_flood_of_large_messages_leaves_central_bounded_and_ingest_going_on(
    mosquitto: Mosquitto, central: subprocess.Popen
) -> None:
    idle_rss_mb = _rss_mb(central.pid)
    flooder, flood_acks = _gateway(mosquitto.port, "gw-flood")
    normal, normal_acks = _gateway(mosquitto.port, "gw-normal")
    blob = {"blob": "x" * FLOOD_MESSAGE_BYTES}
    started = time.monotonic()
    try:
        sent = [flooder.publish(TOPICS.uplink("gw-flood"), _batch("gw-flood", seq, blob), qos=1)
                for seq in range(1, FLOOD_MESSAGES + 1)]
        for seq in range(1, NORMAL_BATCHES + 1):
            normal.publish(TOPICS.uplink("gw-normal"), _batch("gw-normal", seq, {"n": seq}),
                           qos=1).wait_for_publish(10)
        normal_done: list[float] = []

        def normal_acked() -> bool:
            while not normal_acks.empty():
                ack = normal_acks.get()
                assert isinstance(ack, BatchAck)
                normal_done.append(time.monotonic())
            return len(normal_done) == NORMAL_BATCHES

        wait_until(normal_acked, 50, what="every batch of the normal gateway acked")
        for info in sent:
            info.wait_for_publish(30)
        wait_until(lambda: flood_acks.qsize() == FLOOD_MESSAGES, 50,
                   what="every flood message acked")
        elapsed_s = time.monotonic() - started
        peak_mb = proc_peak_rss_mb(central.pid)
    finally:
        for client in (flooder, normal):
            client.loop_stop()
            client.disconnect()
    print(f"\ncentral RSS: idle {idle_rss_mb:.0f} MiB, peak {peak_mb:.0f} MiB during "
          f"{FLOOD_MESSAGES} x {FLOOD_MESSAGE_BYTES // 1024} KiB; normal gateway's "
          f"{NORMAL_BATCHES} batches acked after {normal_done[-1] - started:.1f} s, "
          f"all in {elapsed_s:.1f} s")
    assert central.poll() is None, central.log.read_text()[-4000:]  # type: ignore[attr-defined]
    assert peak_mb - idle_rss_mb < RSS_GROWTH_CEILING_MB, \
        f"central grew from {idle_rss_mb:.0f} to {peak_mb:.0f} MiB"
    assert _stored(central.database, "gw-normal") == NORMAL_BATCHES  # type: ignore[attr-defined]
    assert _stored(central.database, "gw-flood") == FLOOD_MESSAGES  # type: ignore[attr-defined]

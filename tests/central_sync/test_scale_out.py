"""Scale-out: two central-sync processes share ingest through an MQTT shared subscription and
one PostgreSQL database; killing one mid-stream loses nothing and doubles nothing."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from central_helpers import free_port, prediction_payload

from central_sync.db import CentralDB
from edge_agent.buffer import Buffer, BufferPolicy
from edge_agent.config import UplinkConfig
from edge_agent.kernel.contract import Topics
from edge_agent.kernel.transport import BrokerConfig
from edge_agent.kernel.transport.mqtt import MqttTransport
from edge_agent.uplink import Uplink
from tests.central_sync.alerts.alert_receivers import WebhookReceiver
from tests.central_sync.fake_gateway import FakeGateway
from tests.conftest import Mosquitto, postgres_database
from tests.helpers import REPO, wait_until, wait_until_async, write_test_keys

DEVICES = ["gw-1", "gw-2", "gw-3"]
RECORDS = 400


def start_central(folder: Path, name: str, broker_port: int, database_url: str,
                  web_port: int, extra: str = "") -> subprocess.Popen:
    folder.mkdir(parents=True)
    write_test_keys(folder / "keys")
    config = folder / "central-sync.yaml"
    config.write_text(
        f"central_id: {name}\n"
        f"broker:\n  port: {broker_port}\n"
        f"database_url: {database_url}\n"
        "ingest_group: central\n"
        "artifact_dir: artifacts\n"
        "signing_key_path: keys/signing.key\n"
        f"web:\n  port: {web_port}\n" + extra)
    log = (folder / "central.log").open("w")
    return subprocess.Popen([sys.executable, "-m", "central_sync.cli", "serve", "-c", str(config)],
                            stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(REPO)})


def health(web_port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/healthz", timeout=5) as reply:
        return json.loads(reply.read())


def ingest_stats(web_port: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/healthz", timeout=1) as reply:
            health = json.loads(reply.read())
    except OSError:
        return None
    return health["ingest"] if health["status"] == "ok" and health["broker_connected"] else None


async def stream(broker_port: int, folder: Path, centrals: list[subprocess.Popen],
                 ports: list[int]) -> dict[str, int]:
    """Every device drains its buffer; central A is killed once a quarter is acked."""
    uplinks, buffers, transports = [], [], []
    for device in DEVICES:
        buffer = Buffer(folder / f"{device}.db", BufferPolicy(quota_bytes=10**8))
        for _ in range(RECORDS):
            await buffer.append("prediction", prediction_payload())
        transport = MqttTransport(BrokerConfig(port=broker_port), client_id=device)
        uplink = Uplink(device, Topics(), transport, buffer,
                        UplinkConfig(batch_size=10, ack_timeout_s=2.0, max_in_flight=2))
        uplinks.append(uplink)
        buffers.append(buffer)
        transports.append(transport)
        await transport.start()
    tasks = [asyncio.create_task(uplink.run()) for uplink in uplinks]

    def acked() -> int:
        return sum(u.stats.acked_records for u in uplinks)

    async def depths() -> list[int]:
        return [(await b.health()).depth for b in buffers]

    try:
        await wait_until_async(lambda: acked() >= len(DEVICES) * RECORDS // 4, 60,
                               what="a quarter of the records acked", interval_s=0.01)
        stats = [ingest_stats(port) for port in ports]
        assert all(s and s["batches"] > 0 for s in stats), stats  # both were working
        centrals[0].kill()  # kill -9, mid-stream
        killed_at = {"acked": acked(), "b_batches": stats[1]["batches"]}

        async def drained() -> bool:
            return not any(await depths())

        await wait_until_async(drained, 60, interval_s=0.05,
                               what=lambda: f"every buffer drained (acked {acked()})")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for transport, buffer in zip(transports, buffers, strict=True):
            await transport.stop()
            await buffer.close()
    return killed_at


@pytest.mark.slow
def test_two_centrals_share_ingest_and_one_killed_mid_stream_loses_nothing(
        mosquitto: Mosquitto, tmp_path: Path) -> None:
    with postgres_database() as url:
        ports = [free_port(), free_port()]
        centrals = [start_central(tmp_path / name, name, mosquitto.port, url, port)
                    for name, port in zip(("central-a", "central-b"), ports, strict=True)]
        try:
            for port in ports:
                wait_until(lambda port=port: ingest_stats(port), 30,
                           what=f"central on port {port}")
            killed_at = asyncio.run(stream(mosquitto.port, tmp_path, centrals, ports))
            after = wait_until(lambda: ingest_stats(ports[1]), 5, what="central-b")
        finally:
            for process in centrals:
                process.kill()
                process.wait(10)
        assert 0 < killed_at["acked"] < len(DEVICES) * RECORDS
        assert after["batches"] > killed_at["b_batches"]  # b took over the rest
        db = CentralDB(url)
        try:
            for device in DEVICES:
                seqs = [r["seq"] for r in db._db.query(
                    "SELECT seq FROM records WHERE device_id = ? ORDER BY seq", (device,))]
                assert seqs == list(range(1, RECORDS + 1)), device  # all, each once
            assert len(db.recent_predictions(10_000)) == len(DEVICES) * RECORDS
        finally:
            db.close()


@pytest.mark.slow
def test_of_two_centrals_one_fires_each_alert_once_and_the_other_resolves_it_after_a_kill(
        mosquitto: Mosquitto, tmp_path: Path) -> None:
    webhook = WebhookReceiver().start()
    alerts = {"evaluate_interval_s": 1, "routes": [
        {"name": "hook", "kind": "webhook", "url": webhook.url}],
        "rules": [{"name": "gateway-offline", "kind": "gateway_offline", "for_s": 1,
                   "resolve_after_s": 10}]}
    extra = f"alerts: {json.dumps(alerts)}\n"
    gateway = FakeGateway(mosquitto.port, "gw-1")
    with postgres_database() as url:
        ports = [free_port(), free_port()]
        names = ["central-a", "central-b"]
        centrals = [start_central(tmp_path / name, name, mosquitto.port, url, port, extra)
                    for name, port in zip(names, ports, strict=True)]
        db = CentralDB(url)
        try:
            for port in ports:
                wait_until(lambda port=port: ingest_stats(port), 30,
                           what=f"central on port {port}")

            def told(event: str) -> list[dict]:
                return [r.json() for r in list(webhook.received) if r.json()["event"] == event]

            gateway.status("offline")  # as the broker's last will says it
            wait_until(lambda: told("fired"), 30, what="the offline alert")
            leading = [health(port)["alerts"]["leading"] for port in ports]
            assert sorted(leading) == [False, True], leading  # one evaluates and delivers
            leader = next(db._db.query("SELECT holder FROM leases WHERE name = 'alerts'"))
            # Back online while both run (a status queued for a process that is already dead
            # would wait for it at the broker), then the leader dies before the alert has been
            # clear for resolve_after_s: the other process resolves it once the lease is free.
            gateway.status("online")
            wait_until(lambda: next(db._db.query(
                "SELECT state FROM devices WHERE device_id = 'gw-1'"))["state"] == "online",
                10, what="the gateway online in the database")
            centrals[names.index(leader["holder"])].kill()
            wait_until(lambda: told("resolved"), 60, what="resolved by the other central")
            assert len(told("fired")) == len(told("resolved")) == 1
            assert len(db.list_alerts()) == 1
            assert told("resolved")[0]["central_id"] != leader["holder"]
        finally:
            db.close()
            gateway.stop()
            webhook.stop()
            for process in centrals:
                process.kill()
                process.wait(10)

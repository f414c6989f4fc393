"""Central never shows a camera's password, even from an older agent that still sends its URL
with the password in its status, or from a status stored before central redacted them."""

from __future__ import annotations

import json
from collections.abc import Iterator

import paho.mqtt.client as paho
import pytest
from central_helpers import run
from fastapi.testclient import TestClient

from central_sync.accounts import hash_password
from central_sync.config import CentralConfig
from central_sync.db import CentralDB
from central_sync.service import CentralService
from central_sync.web import create_app
from edge_agent.kernel.contract import DeviceStatus, SourceState, Topics, encode
from edge_agent.kernel.transport import BrokerConfig
from edge_agent.kernel.transport.mqtt import MqttTransport
from tests.helpers import wait_until_async

PASSWORD = "correct horse battery"
CAMERA_URL = "rtsp://admin:Secret-77@10.1.2.3:554/stream1?token=t0ken-9"


@pytest.fixture
def old_agent(mosquitto) -> Iterator[paho.Client]:
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="gw-old")
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    yield client
    client.loop_stop()
    client.disconnect()


def pages(db: CentralDB, device_id: str) -> str:
    db.add_user("otto", hash_password(PASSWORD), "viewer", by="admin")
    client = TestClient(create_app(db, offline_after_s=120))
    client.post("/login", data={"username": "otto", "password": PASSWORD})
    device = client.get(f"/devices/{device_id}")
    assert device.status_code == 200
    return client.get("/fleet").text + device.text


def assert_redacted(text: str) -> None:
    assert "Secret-77" not in text and "t0ken-9" not in text
    assert "rtsp://admin:***@10.1.2.3:554/stream1?token=***" in text


def test_a_status_from_an_older_agent_is_stored_and_shown_without_the_password(
        central_config: CentralConfig, mosquitto, old_agent: paho.Client, db: CentralDB) -> None:
    config = CentralConfig.model_validate({
        **central_config.model_dump(), "broker": BrokerConfig(port=mosquitto.port).model_dump()})
    # What an older agent sends: its status with the camera URL as configured.
    sent = json.loads(encode(DeviceStatus(device_id="gw-old", state="online",
                                          agent_version="0.9.0")))
    sent["sources"] = {"strip": {"state": "connected", "detail": f"{CAMERA_URL} 1920x1080"}}

    async def scenario() -> None:
        service = CentralService(config, MqttTransport(config.broker, config.central_id))
        await service.start()
        try:
            assert await service.transport.wait_connected(10)
            old_agent.publish(Topics().status("gw-old"), json.dumps(sent).encode(), qos=1,
                              retain=True)
            await wait_until_async(lambda: service.stats.statuses, what="the status stored")
        finally:
            await service.stop()

    run(scenario())
    [device] = db.list_devices()
    assert_redacted(device.status.model_dump_json())
    assert_redacted(pages(db, "gw-old"))


def test_a_status_stored_with_a_password_is_shown_without_it(db: CentralDB) -> None:
    # As stored by a central that did not redact yet: the row holds the password.
    stored = DeviceStatus.model_construct(
        device_id="gw-old", state="online", agent_version="0.9.0", labels=[], active_models=[],
        sources={"strip": SourceState.model_construct(state="connected", detail=CAMERA_URL)},
        buffer=None, uplink=None)
    db.update_status(stored)
    assert_redacted(pages(db, "gw-old"))

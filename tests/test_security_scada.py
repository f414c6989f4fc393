"""A SCADA reader (`central-sync device add-reader`) against a real Mosquitto started from the
shipped configuration with the password file and ACL central-sync writes: it reads central's
alerts and nothing else, and publishes nothing."""

from __future__ import annotations

import asyncio

import pytest

from central_sync.alert_rules import AlertMessage
from central_sync.alerts.channels import publish_scada
from edge_agent.kernel.contract import Topics
from edge_agent.kernel.transport import BrokerConfig
from edge_agent.kernel.transport.mqtt import MqttTransport
from tests import test_security
from tests.helpers import wait_until
from tests.test_security import SecurePlant, central_password, password_of

# The shipped broker with central's accounts, as test_security.py starts it.
initialised = test_security.initialised
plant = test_security.plant

pytestmark = pytest.mark.slow
ALERT_ID = "a18f0c2d3e4f5a6b7"
OPEN_TOPIC = f"edge-mlops/alerts/open/{ALERT_ID}"
EVENTS_TOPIC = "edge-mlops/alerts/events"


def alert(event: str = "fired") -> AlertMessage:
    resolved = event == "resolved"
    return AlertMessage(
        event=event, alert_id=ALERT_ID, rule="source-down", kind="source_down",  # type: ignore[arg-type]
        severity="critical", state="resolved" if resolved else "firing",
        summary="Camera cam-2 on gw-a is down", devices=["gw-a"],
        labels={"line": "line-3", "source": "cam-2"}, value=1.0, threshold=1.0,
        fired_at=1_796_000_000.0, resolved_at=1_796_000_600.0 if resolved else None,
        central_id="central", sent_at=1_796_000_700.0)


def publish_as_central(plant: SecurePlant, *messages: AlertMessage) -> None:
    """Central's own SCADA publisher, over central's broker login and transport."""
    async def publish() -> None:
        central = MqttTransport(BrokerConfig(port=plant.plain_port, username="central",
                                             password=central_password(plant)), "central")
        await central.start()
        assert await central.wait_connected(10), "central could not log in"
        try:
            for message in messages:
                await publish_scada(message, central.publish, Topics())
        finally:
            await central.stop()

    asyncio.run(publish())


def add_reader(plant: SecurePlant, name: str) -> str:
    plant.ok("device", "add-reader", name)
    return (plant.root / "bundles" / f"{name}.mqtt-password").read_text().strip()


def test_a_scada_reader_receives_the_open_alerts_central_keeps_retained(
        plant: SecurePlant) -> None:
    password = add_reader(plant, "scada-1")
    publish_as_central(plant, alert())  # before the SCADA host connects: retained

    reader = plant.probe("scada-1", password)
    assert reader.connect(), reader.connack
    assert reader.subscribe("edge-mlops/alerts/#") == ["Granted QoS 1"]
    wait_until(lambda: reader.messages, 10, what="the retained open alert")
    [(topic, payload)] = reader.messages
    assert topic == OPEN_TOPIC and AlertMessage.model_validate_json(payload) == alert()

    publish_as_central(plant, alert("resolved"))
    wait_until(lambda: len(reader.messages) == 3, 10, what="the alert's resolution")
    received = dict(reader.messages[1:])
    assert received[OPEN_TOPIC] == b""  # the retained alert cleared
    assert AlertMessage.model_validate_json(received[EVENTS_TOPIC]).state == "resolved"
    reader.close()


@pytest.mark.parametrize("v5", [True, False], ids=["mqtt5", "mqtt311"])
def test_a_scada_reader_can_neither_publish_nor_read_device_topics(plant: SecurePlant,
                                                                   v5: bool) -> None:
    device = plant.probe("gw-a", password_of(plant.add_device("gw-a", "line-3")), v5=v5)
    reader = plant.probe("scada-1", add_reader(plant, "scada-1"), v5=v5)
    central = plant.probe("central", central_password(plant), port=plant.plain_port,
                          use_tls=False, v5=v5)
    for client in (device, reader, central):
        assert client.connect(), client.connack
    publish_as_central(plant, alert())
    central.subscribe("edge-mlops/#")
    device.subscribe("edge-mlops/devices/gw-a/commands")
    for topic_filter in ("edge-mlops/devices/gw-a/commands", "edge-mlops/devices/gw-a/uplink",
                         "edge-mlops/devices/+/#", "edge-mlops/artifacts/+", "edge-mlops/#",
                         "#", "$SYS/#"):
        reader.subscribe(topic_filter)

    # What it may not do: clear or forge an alert, speak as a device or as central.
    forged = {
        OPEN_TOPIC: b"",
        "edge-mlops/alerts/open/forged": b"forged-alert",
        EVENTS_TOPIC: b"forged-event",
        "edge-mlops/devices/gw-a/uplink": b"forged-uplink",
        "edge-mlops/devices/gw-a/status": b"forged-status",
        "edge-mlops/devices/gw-a/commands": b"forged-command",
        "edge-mlops/devices/gw-a/alerts": b"forged-operator-alert",
        "edge-mlops/artifacts/" + "0" * 64: b"forged-artifact",
    }
    for topic, payload in forged.items():
        acks = reader.publish(topic, payload)
        if v5:  # MQTT 5 says so; MQTT 3.1.1 drops it silently
            assert acks == ["Not authorized"], (topic, acks)
    # What it may not read: the device's uplink and status, central's commands to it.
    device.publish("edge-mlops/devices/gw-a/uplink", b"device-uplink")
    device.publish("edge-mlops/devices/gw-a/status", b"device-status")
    central.publish("edge-mlops/devices/gw-a/commands", b"central-command")
    central.publish("edge-mlops/devices/gw-a/alerts", b"central-operator-alert")
    central.publish("edge-mlops/artifacts/" + "1" * 64, b"central-artifact")
    publish_as_central(plant, alert("resolved"))  # last: what the reader may read

    wait_until(lambda: any(t == EVENTS_TOPIC for t, _ in reader.messages)
               and (("edge-mlops/devices/gw-a/commands", b"central-command")
                    in device.messages)
               and any(t == EVENTS_TOPIC for t, _ in central.messages), 10,
               what="the allowed messages delivered")
    seen_by_central = {payload for _topic, payload in central.messages}
    assert not seen_by_central & set(forged.values()) - {b""}, central.messages
    assert b"forged-command" not in {p for _t, p in device.messages}, device.messages
    read = {topic for topic, _payload in reader.messages}
    assert all(topic.startswith("edge-mlops/alerts/") for topic in read), reader.messages
    assert {p for _t, p in reader.messages}.isdisjoint(
        {b"device-uplink", b"device-status", b"central-command", b"central-operator-alert",
         b"central-artifact"})
    for client in (device, reader, central):
        client.close()


def test_the_reader_cannot_clear_an_open_alert(plant: SecurePlant) -> None:
    password = add_reader(plant, "scada-1")
    publish_as_central(plant, alert())
    attacker = plant.probe("scada-1", password)
    assert attacker.connect(), attacker.connack
    assert attacker.publish(OPEN_TOPIC, b"") == ["Not authorized"]
    attacker.publish(OPEN_TOPIC, b"forged")
    attacker.close()

    later = plant.probe("scada-1", password)
    assert later.connect(), later.connack
    later.subscribe("edge-mlops/alerts/open/+")
    wait_until(lambda: later.messages, 10, what="the open alert still retained")
    assert later.messages == [(OPEN_TOPIC, alert().model_dump_json().encode())]
    later.close()


def test_a_readers_password_rotates_and_its_removal_drops_it(plant: SecurePlant) -> None:
    old = add_reader(plant, "scada-1")
    plant.ok("device", "rotate", "scada-1")
    new = (plant.root / "bundles" / "scada-1.mqtt-password").read_text().strip()
    assert new != old
    assert not plant.probe("scada-1", old).connect()
    connected = plant.probe("scada-1", new)
    assert connected.connect(), connected.connack

    plant.ok("device", "remove", "scada-1")
    assert connected.dropped.wait(10), "the removed reader kept its connection"
    assert not plant.probe("scada-1", new).connect()
    assert "scada-1" not in (plant.root / "acl").read_text()
    assert not (plant.root / "bundles" / "scada-1.mqtt-password").exists()


"""The operator alerts central sends each gateway: the open operator alerts of its line,
published retained only when they change, received by the agent's own code over Mosquitto."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

from central_sync.alerts.device_alerts import (
    REFRESH_S,
    UNASSIGNED,
    DeviceAlertPublisher,
    device_alert_messages,
    devices_by_line,
    publish_device_alerts,
)
from central_sync.db import CentralDB
from central_sync.db.alerts import Alert
from edge_agent.fleet.alerts import LineAlerts
from edge_agent.kernel.contract import MAX_OPERATOR_ALERTS, DeviceStatus, Topics
from edge_agent.kernel.transport import BrokerConfig
from edge_agent.kernel.transport.memory import MemoryBroker, MemoryTransport
from edge_agent.kernel.transport.mqtt import MqttTransport
from tests.conftest import Mosquitto
from tests.helpers import wait_until_async

T0 = 1_800_000_000.0
TOPICS = Topics("plant")
LINES = {"line-3": ["gw-1", "gw-2"], "line-4": ["gw-9"], UNASSIGNED: ["gw-0"]}


def alert(number: int, devices: tuple[str, ...] = ("gw-1",), severity: str = "critical",
          operator: bool = True, **fields) -> Alert:
    made = Alert(alert_id=f"a{number}", rule="source-down", kind="source_down",
                 group_key=f"device={devices[0]}/source=cam{number}", severity=severity,
                 state="firing", summary=f"camera cam{number} down", devices=devices,
                 labels={}, operator=operator, value=1.0, threshold=1.0, started_at=T0,
                 fired_at=T0 + number, resolved_at=None, updated_at=T0, acked_by=None,
                 acked_at=None, ack_reason=None)
    return replace(made, **fields)


def shown(messages, device: str) -> list[str]:
    return [a.alert_id for a in messages[device].alerts]


def test_devices_are_grouped_by_their_first_line_label() -> None:
    assert devices_by_line({"gw-2": ["line-3"], "gw-1": ["hall-a", "line-3", "line-9"],
                            "gw-9": ["line-4"], "gw-0": ["hall-a"]}, "line") == LINES


def test_an_alert_goes_to_every_gateway_of_its_line_and_only_operator_alerts_do() -> None:
    messages = device_alert_messages(
        [alert(1), alert(2, operator=False),
         alert(3, ("gw-0",)),  # a gateway on no line: only it sees its alert
         alert(4, ("gw-1", "gw-9"), labels={"line": "line-3"}, severity="warning"),
         replace(alert(5), state="resolved")], LINES, now=T0 + 10)
    assert shown(messages, "gw-1") == shown(messages, "gw-2") == ["a1", "a4"]
    assert shown(messages, "gw-9") == ["a4"]  # it is concerned, though on another line
    assert shown(messages, "gw-0") == ["a3"]
    assert messages["gw-2"].device_id == "gw-2" and messages["gw-2"].sent_at == T0 + 10
    assert messages["gw-2"].alerts[1].devices == ["gw-1", "gw-9"]


def test_most_severe_then_newest_first_at_most_fifty_summaries_clipped() -> None:
    many = [alert(n, severity="warning") for n in range(1, 60)]
    many.append(alert(100, severity="critical", summary="x" * 400,
                      acked_by="anna", acked_at=T0, ack_reason="on it"))
    message = device_alert_messages(many, {"line-3": ["gw-1"]})["gw-1"]
    assert len(message.alerts) == MAX_OPERATOR_ALERTS
    first = message.alerts[0]
    assert (first.alert_id, first.acked, len(first.summary)) == ("a100", True, 300)
    assert first.summary.endswith("…")
    assert [a.alert_id for a in message.alerts[1:3]] == ["a59", "a58"]


# --- over Mosquitto -----------------------------------------------------------------------------


class Received:
    """Every message on the devices' alerts topics, as a SCADA client would see them."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []

    async def __call__(self, topic: str, payload: bytes) -> None:
        self.messages.append((topic, payload))


def transport(mosquitto: Mosquitto, client_id: str) -> MqttTransport:
    return MqttTransport(BrokerConfig(port=mosquitto.port, topic_prefix="plant"), client_id,
                         persistent_session=False)


def provision(db: CentralDB) -> None:
    for device, labels in (("gw-1", ["line-3"]), ("gw-2", ["line-3"]), ("gw-9", ["line-4"])):
        db.add_broker_account(device, "device", labels, "x", "test")
        db.update_status(DeviceStatus(device_id=device, state="online", sent_at=time.time()))


def test_gateways_receive_their_lines_alerts_retained_and_only_changes(
        db: CentralDB, mosquitto: Mosquitto) -> None:
    provision(db)
    central = transport(mosquitto, "central")
    publisher = DeviceAlertPublisher(db, central, TOPICS, "line")
    links = {d: transport(mosquitto, d) for d in ("gw-1", "gw-9")}
    agents = {d: LineAlerts(d, TOPICS, link) for d, link in links.items()}
    watcher, seen = transport(mosquitto, "scada"), Received()

    async def scenario() -> None:
        await watcher.subscribe("plant/devices/+/alerts", seen)
        for client in (central, watcher):
            await client.start()
            assert await client.wait_connected(10)
        fired = db.fire_alert("source-down", "device=gw-1/source=cam1", kind="source_down",
                              severity="critical", summary="camera cam1 down on gw-1",
                              devices=["gw-1"], operator=True)
        db.fire_alert("drift", "device=gw-1/model=m", kind="drift", severity="warning",
                      summary="not for operators", devices=["gw-1"])
        assert fired is not None
        await publisher([fired])
        # The agents start afterwards: the broker kept each one's message for it.
        for device, line_alerts in agents.items():
            await line_alerts.start()
            await links[device].start()
        await wait_until_async(lambda: agents["gw-1"].latest is not None
                               and agents["gw-9"].latest is not None, 10,
                               what="the retained alerts at the agents")
        assert [a["summary"] for a in agents["gw-1"].document()] == ["camera cam1 down on gw-1"]
        assert agents["gw-9"].document() == []  # another line: its topic says none is open
        await wait_until_async(lambda: len(seen.messages) == 3, 10, what="one per gateway")

        await publisher([])  # nothing changed: nothing sent
        db.ack_alert(fired.alert_id, "anna", "camera cable replaced, watching")
        await publisher([])
        await wait_until_async(lambda: agents["gw-1"].document()[:1] and
                               agents["gw-1"].document()[0]["acked"], 10,
                               what="the acknowledgement at gw-1")
        db.resolve_alert(fired.alert_id)
        await publisher([fired])
        await wait_until_async(lambda: agents["gw-1"].document() == [], 10,
                               what="the band cleared at gw-1")
        def sent_to(device: str) -> int:
            return [t for t, _ in seen.messages].count(TOPICS.alerts(device))

        # fired, acked, resolved to the line's gateways; one "none open" to the other line's
        await wait_until_async(lambda: (sent_to("gw-1"), sent_to("gw-2")) == (3, 3), 10,
                               what="three messages to each gateway of the line")
        assert sent_to("gw-9") == 1
        for client in (central, watcher, *links.values()):
            await client.stop()

    asyncio.run(scenario())


def test_a_failed_publish_is_retried_and_a_removed_device_is_cleared(
        mosquitto: Mosquitto) -> None:
    central = transport(mosquitto, "central")
    first = device_alert_messages([alert(1)], {"line-3": ["gw-1", "gw-2"]}, now=T0)

    async def scenario() -> tuple[list[tuple[str, bytes]], set[str]]:
        await central.start()
        assert await central.wait_connected(10)
        mosquitto.stop()
        await wait_until_async(lambda: not central.connected, 10, what="the broker gone")
        held = await publish_device_alerts(central, TOPICS, first, {})
        failed = set(held)
        mosquitto.start()
        assert await central.wait_connected(15)
        held = await publish_device_alerts(central, TOPICS, first, held)
        assert set(held) == {"gw-1", "gw-2"}
        # gw-2 is no longer provisioned: its retained alerts are cleared.
        later = device_alert_messages([alert(1)], {"line-3": ["gw-1"]}, now=T0 + 1)
        held = await publish_device_alerts(central, TOPICS, later, held)
        assert set(held) == {"gw-1"}
        late, retained = transport(mosquitto, "late"), Received()
        await late.subscribe(TOPICS.alerts("gw-2"), retained)
        await late.start()
        assert await late.wait_connected(10)

        async def marker_back() -> bool:
            # A retained message comes before any later one on its topic: the marker, sent
            # (again) until the subscription is in place, arrives first if none is retained.
            if not retained.messages:
                await central.publish(TOPICS.alerts("gw-2"), b"marker", qos=1)
            return bool(retained.messages)

        await wait_until_async(marker_back, 10, what="the marker on gw-2's topic",
                               interval_s=0.2)
        await late.stop()
        await central.stop()
        return retained.messages, failed

    retained, failed = asyncio.run(scenario())
    assert failed == set(), "a publish that failed counted as held"
    assert retained[0] == ("plant/devices/gw-2/alerts", b"marker"), retained


def test_after_a_gap_every_gateway_is_published_again(db: CentralDB) -> None:
    """Another central process may have led meanwhile: what this one sent last is not what
    the topics hold, so it sends all again (and now and then anyway)."""
    provision(db)
    broker = MemoryBroker()
    central, watcher, seen = MemoryTransport(broker), MemoryTransport(broker), Received()
    publisher = DeviceAlertPublisher(db, central, TOPICS, "line", evaluate_interval_s=10)

    async def scenario() -> list[int]:
        await watcher.subscribe("plant/devices/+/alerts", seen)
        for client in (central, watcher):
            await client.start()
        counts = []
        for gap_s in (0, 0, 25, 0):
            publisher._last_call -= gap_s  # as if the last round were that long ago
            await publisher([])
            counts.append(len(seen.messages))
        publisher._last_refresh -= REFRESH_S + 1
        await publisher([])
        counts.append(len(seen.messages))
        return counts

    assert asyncio.run(scenario()) == [3, 3, 6, 6, 9]

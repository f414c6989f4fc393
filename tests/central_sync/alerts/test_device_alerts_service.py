"""Inside the running central service, over Mosquitto: a source down on one gateway fires the
operator alert, every gateway of its line shows it, and it clears when the source is back."""

from __future__ import annotations

from central_helpers import run

from central_sync.config import CentralConfig
from central_sync.service import CentralService
from edge_agent.fleet.alerts import LineAlerts
from edge_agent.kernel.contract import DeviceStatus, SourceState, Topics, encode
from edge_agent.kernel.transport import BrokerConfig
from edge_agent.kernel.transport.mqtt import MqttTransport
from tests.conftest import Mosquitto
from tests.helpers import wait_until_async

TOPICS = Topics()


def test_a_source_down_shows_on_every_gateway_of_its_line_until_it_is_back(
        central_config: CentralConfig, mosquitto: Mosquitto) -> None:
    config = CentralConfig.model_validate({
        **central_config.model_dump(), "broker": {"port": mosquitto.port},
        "alerts": {"evaluate_interval_s": 0.5, "rules": [
            {"name": "source-down", "kind": "source_down", "severity": "critical",
             "for_s": 0, "resolve_after_s": 0, "operator": True}]}})

    def link(client_id: str) -> MqttTransport:
        return MqttTransport(BrokerConfig(port=mosquitto.port), client_id,
                             persistent_session=False)

    async def scenario() -> None:
        service = CentralService(config, link("central"))
        await service.start()
        assert service.db is not None
        for device, labels in (("gw-1", ["line-3"]), ("gw-2", ["line-3"]), ("gw-9", ["line-4"])):
            await service.db_call(service.db.add_broker_account, device, "device", labels, "x",
                                  "test")
        links = {d: link(d) for d in ("gw-1", "gw-2", "gw-9")}
        seen = {d: LineAlerts(d, TOPICS, t) for d, t in links.items()}
        for device, line_alerts in seen.items():
            await line_alerts.start()
            await links[device].start()
            assert await links[device].wait_connected(10)

        async def report(device: str, state: str) -> None:
            status = DeviceStatus(device_id=device, state="online",
                                  sources={"cam-1": SourceState(state=state)})  # type: ignore[arg-type]
            await links[device].publish(TOPICS.status(device), encode(status), retain=True)

        try:
            for device in links:
                await report(device, "connected")
            await report("gw-1", "failed")
            await wait_until_async(lambda: seen["gw-1"].document() and seen["gw-2"].document(),
                                   20, what="the source-down alert at both gateways of line-3")
            [shown] = seen["gw-2"].document()
            assert shown["severity"] == "critical" and "gw-1" in shown["summary"]
            assert seen["gw-9"].document() == []  # another line
            await report("gw-1", "connected")
            await wait_until_async(lambda: not seen["gw-1"].document()
                                   and not seen["gw-2"].document(), 20,
                                   what="the alert cleared at both gateways")
        finally:
            for transport in links.values():
                await transport.stop()
            await service.stop()

    run(scenario(), 90)

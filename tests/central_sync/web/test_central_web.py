"""Central's web app served by uvicorn inside the service: JSON API and the fleet page."""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.request
from typing import Any

import pytest
from central_helpers import free_port, make_batch, prediction_payload, run

from central_sync.config import CentralConfig
from central_sync.service import CentralService, ServiceStartError
from edge_agent.kernel.contract import DeviceStatus, Topics, UplinkBatch, UplinkRecord, encode
from edge_agent.kernel.transport.memory import MemoryBroker, MemoryTransport
from tests.helpers import wait_until_async

TOPICS = Topics()


async def _get(url: str) -> tuple[int, str, str]:
    def fetch() -> tuple[int, str, str]:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers["content-type"], response.read().decode()

    return await asyncio.to_thread(fetch)


async def _get_json(url: str) -> Any:
    return json.loads((await _get(url))[2])


def test_api_and_fleet_page_show_devices_predictions_and_models(
    central_config: CentralConfig,
) -> None:
    config = CentralConfig.model_validate(
        {**central_config.model_dump(), "web": {"host": "127.0.0.1", "port": free_port()}})

    async def scenario() -> None:
        broker = MemoryBroker()
        service = CentralService(config, MemoryTransport(broker))
        await service.start()
        base = service.web_url
        assert base == f"http://127.0.0.1:{config.web.port}/"
        device = MemoryTransport(broker)
        await device.start()
        await device.publish(TOPICS.status("gw-1"), encode(DeviceStatus(
            device_id="gw-1", state="online", buffer={"depth": 17, "bytes_used": 1,
                                                      "quota_bytes": 10})))
        await device.publish(TOPICS.uplink("gw-1"), encode(make_batch("gw-1", range(1, 4))))
        # Batches are stored beside dispatch; wait for this one rather than race it.
        await wait_until_async(lambda: service.stats.records_acked == 3, what="the batch stored")

        health = await _get_json(base + "healthz")
        assert health["status"] == "ok"
        assert health["ingest"]["records_acked"] == 3
        [dev] = await _get_json(base + "api/devices")
        assert (dev["device_id"], dev["state"], dev["records"], dev["buffer_depth"]) == (
            "gw-1", "online", 3, 17)
        predictions = await _get_json(base + "api/predictions?limit=2&device_id=gw-1")
        assert [p["seq"] for p in predictions] == [3, 2]
        assert await _get_json(base + "api/predictions?device_id=nobody") == []
        assert await _get_json(base + "api/models") == []
        status, content_type, page = await _get(base)  # the plant overview: log in first
        assert status == 200 and content_type.startswith("text/html")
        assert "<h1>Log in</h1>" in page
        await service.stop()
        assert service.web_url is None

    run(scenario())


def test_web_port_in_use_is_a_clear_error(central_config: CentralConfig) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = CentralConfig.model_validate(
            {**central_config.model_dump(), "web": {"host": "127.0.0.1", "port": port}})

        async def scenario() -> None:
            service = CentralService(config, MemoryTransport(MemoryBroker()))
            with pytest.raises(ServiceStartError, match=f"cannot listen on 127.0.0.1:{port}"):
                await service.start()
            await service.stop()

        run(scenario())


def test_defect_records_are_listed_without_images_and_their_evidence_is_served(
    central_config: CentralConfig,
) -> None:
    import base64
    import urllib.error

    config = CentralConfig.model_validate(
        {**central_config.model_dump(), "web": {"host": "127.0.0.1", "port": free_port()}})
    jpeg = b"\xff\xd8\xff\xe0fake-jpeg"
    defect = {"label": "scratch", "confidence": 0.97, "camera": "cam1",
              "images": {"frame": {"jpeg_b64": base64.b64encode(jpeg).decode(), "width": 8,
                                   "height": 8}}}
    batch = UplinkBatch(device_id="gw-1", records=[
        UplinkRecord(seq=1, type="defect", created_at=1.0, payload=defect),
        UplinkRecord(seq=2, type="prediction", created_at=2.0, payload=prediction_payload())])

    async def scenario() -> None:
        broker = MemoryBroker()
        service = CentralService(config, MemoryTransport(broker))
        await service.start()
        device = MemoryTransport(broker)
        await device.start()
        await device.publish(TOPICS.uplink("gw-1"), encode(batch))
        await wait_until_async(lambda: service.stats.records_acked == 2, what="the batch stored")
        base = service.web_url
        [row] = await _get_json(base + "api/records?type=defect")
        assert (row["seq"], row["payload"]["label"], row["images"]) == (1, "scratch", ["frame"])
        assert "images" not in row["payload"]
        image = await asyncio.to_thread(
            lambda: urllib.request.urlopen(base + "api/records/gw-1/1/images/frame").read())
        assert image == jpeg
        with pytest.raises(urllib.error.HTTPError) as missing:
            await asyncio.to_thread(
                lambda: urllib.request.urlopen(base + "api/records/gw-1/1/images/annotated"))
        assert missing.value.code == 404
        await service.stop()

    run(scenario())

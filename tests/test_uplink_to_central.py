"""The agent's uplink against the real central service over the in-memory broker."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from central_sync.config import CentralConfig
from central_sync.service import CentralService
from edge_agent.buffer import Buffer, BufferPolicy
from edge_agent.config import UplinkConfig
from edge_agent.kernel.contract import Topics
from edge_agent.kernel.transport.memory import MemoryBroker, MemoryTransport
from edge_agent.uplink import Uplink
from tests.helpers import db_rows, wait_until_async, write_test_keys


def test_small_and_oversized_records_all_arrive_exactly_once(tmp_path: Path) -> None:
    async def scenario() -> None:
        config = CentralConfig.model_validate({
            "database_url": f"sqlite:///{tmp_path}/central.db",
            "artifact_dir": str(tmp_path / "artifacts"), "web": {"port": 0},
            "signing_key_path": str(write_test_keys(tmp_path / "keys")[0])})
        broker = MemoryBroker()
        central = CentralService(config, MemoryTransport(broker))
        await central.start()
        buffer = Buffer(tmp_path / "buffer.db", BufferPolicy(quota_bytes=10**8))
        device = MemoryTransport(broker)
        await device.start()
        uplink = Uplink("gw1", Topics(), device, buffer,
                        UplinkConfig(batch_size=50, batch_max_bytes=16 * 1024, compress=True))
        expected = {}
        for i in range(120):
            body = {"i": i, "evidence": "x" * (100_000 if i % 40 == 7 else 10)}
            seq = await buffer.append("defect", body)
            expected[seq] = body
        task = asyncio.create_task(uplink.run())

        async def drained() -> bool:
            return (await buffer.health()).depth == 0

        await wait_until_async(drained, what="every record acked and out of the buffer")
        rows = await central.db_call(db_rows, central.db, "SELECT seq, payload FROM records")
        assert {r["seq"]: json.loads(r["payload"]) for r in rows} == expected
        assert uplink.stats.acked_records == 120
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await buffer.close()
        await central.stop()

    asyncio.run(scenario())

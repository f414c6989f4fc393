"""The standing watch: the active version judged one window at a time after probation, each
window reported through the buffer, an alert once per run of breaching windows."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np

from edge_agent.buffer import Buffer
from edge_agent.deployment.deployer import Deployer
from edge_agent.kernel.contract import ModelWatchPayload, Topics
from edge_agent.kernel.transport.memory import MemoryBroker, MemoryTransport
from edge_agent.model_store import ModelStore
from tests.helpers import (
    SAMPLE_METADATA,
    SAMPLE_MODEL,
    TEST_VERIFIER,
    manifest_for,
    wait_until_async,
)

MODEL = "extruder-scrap"


async def reports(buffer: Buffer) -> list[ModelWatchPayload]:
    return [ModelWatchPayload.model_validate_json(r.payload_json)
            for r in await buffer.next_batch(1000) if r.type == "model_watch"]


def test_watch_follows_the_active_version_from_the_start_and_judges_each_window(
        tmp_path: Path) -> None:
    async def scenario() -> None:
        metadata = {**json.loads(SAMPLE_METADATA.read_text()),
                    "probation": {"min_answers": 2, "max_rejection_rate": 0.5},
                    "watch": {"interval_s": 0.2, "breaches": 2}}
        manifest = manifest_for(SAMPLE_MODEL, metadata=metadata)
        store = ModelStore(tmp_path / "models")
        store.install(manifest, SAMPLE_MODEL)
        store.activate(MODEL, "1.0.0")  # active before the agent starts, e.g. after a restart
        buffer = Buffer(tmp_path / "buffer.db", 10**7)
        transport = MemoryTransport(MemoryBroker())
        await transport.start()
        deployer = Deployer("gw1", Topics(), transport, store, buffer, TEST_VERIFIER)
        await deployer.start()
        watch = deployer.watch
        output = {"scrap_rate_pct": np.asarray([[2.0]])}

        async def window_with(rejected: int, accepted: int) -> ModelWatchPayload:
            """Fill the next window, then wait for its report."""
            seen = len(await reports(buffer))
            await wait_until_async(lambda: watch._windows.get(MODEL), what="a window open")
            for _ in range(3):
                watch.observe(MODEL, manifest.sha256, output, 1.0)
            watch.observe(MODEL, "b" * 64, output, 1.0)  # another version's: not counted
            for verdict in [True] * rejected + [False] * accepted:
                watch.observe_answer(MODEL, manifest.sha256, rejected=verdict)
            done = await wait_until_async(
                lambda: _after(reports(buffer), seen), 5, what="the window's report")
            return done

        first = await window_with(rejected=2, accepted=0)
        assert first.model == manifest.ref and first.inferences == 3
        assert (first.answers, first.rejected, first.consecutive, first.alert) == (2, 2, 1, False)
        assert first.breaches == ["operators rejected 2 of 2 recommendations (100%), above "
                                  "the 50% allowed"]
        second = await window_with(rejected=3, accepted=1)
        assert (second.consecutive, second.alert) == (2, True)  # sustained: raised once
        third = await window_with(rejected=2, accepted=0)
        assert (third.consecutive, third.alert) == (3, False)
        healthy = await window_with(rejected=1, accepted=3)
        assert (healthy.breaches, healthy.consecutive, healthy.alert) == ([], 0, False)
        assert store.active(MODEL).manifest.version == "1.0.0"  # reported, never rolled back
        await deployer.stop()
        assert not deployer.standing.following(MODEL)
        await buffer.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


async def _after(found: object, seen: int) -> ModelWatchPayload | None:
    records = await found  # type: ignore[misc]
    return records[seen] if len(records) > seen else None

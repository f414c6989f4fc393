"""The Sparkplug B edge node against a real Mosquitto, as a SCADA host's consumer sees it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edge_agent.config.sparkplug import SparkplugConfig
from edge_agent.kernel.transport import BrokerConfig
from edge_agent.pipelines.snapshot import (
    PipelineSnapshot,
    ProcessDetails,
    RecentDefect,
    TrendPoint,
    VisionDetails,
)
from edge_agent.sparkplug import EdgeNode
from tests.edge_agent.sparkplug.consumer import Consumer, Message, rebirth_command

pytestmark = pytest.mark.timeout(90)

MODEL = {"name": "scrap", "version": "3", "sha256": "0" * 64}


def process_snapshot(inferences: int, scrap: float | None) -> PipelineSnapshot:
    prediction = None if scrap is None else {"model": MODEL, "outputs": {"scrap_pct": scrap}}
    trend = () if scrap is None else (TrendPoint(1_700_000_000.5, {}, {"scrap_pct": scrap}),)
    return PipelineSnapshot(
        name="extruder", type="process", model="scrap", state="running", detail="",
        inferences=inferences,
        process=ProcessDetails(last_prediction=prediction, recommends=False,
                               open_recommendation=None, answered=(), search="", last_write=None,
                               writes_this_hour=0, trend=trend))


def vision_snapshot(defects: int) -> PipelineSnapshot:
    recent = tuple(RecentDefect(n, 1_700_000_100.0 + n, "weld", "crack", 0.75, b"")
                   for n in range(defects, 0, -1))
    return PipelineSnapshot(
        name="weld-cam", type="vision", model="cracks", state="waiting", detail="no camera",
        inferences=10 * defects,
        vision=VisionDetails(camera="cam1", defects=defects, samples=1, last_result=None,
                             recent_defects=recent))


def config(port: int) -> SparkplugConfig:
    return SparkplugConfig(enabled=True, group_id="plant1", publish_interval_s=0.1,
                           broker=BrokerConfig(port=port, keepalive_s=5))


def assert_seq_follows(messages: list[Message]) -> None:
    seqs = [m.seq for m in messages]
    assert seqs == [(seqs[0] + i) % 256 for i in range(len(seqs))], seqs


@pytest.fixture
def consumer(mosquitto):
    scada = Consumer(mosquitto.port)
    yield scada
    scada.close()


async def _next(consumer: Consumer, kind: str | None = None) -> Message:
    return await asyncio.to_thread(consumer.next, kind)


def test_births_data_rebirth_and_death(mosquitto, consumer, tmp_path: Path) -> None:
    asyncio.run(_births_data_rebirth_and_death(mosquitto, consumer, tmp_path))


async def _births_data_rebirth_and_death(mosquitto, consumer, tmp_path: Path) -> None:
    pipelines = [process_snapshot(0, None), vision_snapshot(0)]
    node = EdgeNode(config(mosquitto.port), "gw-1", tmp_path, lambda: list(pipelines), "1.2.3")
    task = asyncio.create_task(node.run())
    try:
        nbirth = await _next(consumer)
        assert nbirth.topic == "spBv1.0/plant1/NBIRTH/gw-1" and nbirth.seq == 0
        node_metrics = nbirth.by_name()
        assert node_metrics["bdSeq"].datatype == "Int64" and node_metrics["bdSeq"].value == 0
        rebirth = node_metrics["Node Control/Rebirth"]
        assert rebirth.datatype == "Boolean" and rebirth.value is False
        assert node_metrics["Properties/Agent Version"].value == "1.2.3"

        births = [await _next(consumer), await _next(consumer)]
        assert {m.topic for m in births} == {"spBv1.0/plant1/DBIRTH/gw-1/extruder",
                                             "spBv1.0/plant1/DBIRTH/gw-1/weld-cam"}
        assert_seq_follows([nbirth, *births])
        extruder = next(m for m in births if m.device == "extruder").by_name()
        assert extruder["Model"].datatype == "String" and extruder["Model"].value == "scrap"
        assert extruder["Health/Running"].value is True
        assert extruder["Inferences"].datatype == "Int64" and extruder["Inferences"].value == 0
        assert extruder["Prediction/Time"].datatype == "DateTime"
        assert extruder["Prediction/Time"].is_null
        weld = next(m for m in births if m.device == "weld-cam").by_name()
        assert weld["Health/State"].value == "waiting" and weld["Health/Running"].value is False
        assert weld["Defects"].value == 0 and weld["Last Defect/Label"].is_null
        aliases = [m.alias for m in [*nbirth.metrics, *births[0].metrics, *births[1].metrics]]
        assert None not in aliases and len(set(aliases)) == len(aliases)

        pipelines[1] = vision_snapshot(2)  # two defects: a data message with aliases only
        ddata = await _next(consumer)
        assert ddata.topic == "spBv1.0/plant1/DDATA/gw-1/weld-cam"
        assert_seq_follows([births[1], ddata])
        assert all(m.name is None for m in ddata.metrics)
        by_alias = {m.alias: m for m in ddata.metrics}
        assert by_alias[weld["Defects"].alias].value == 2
        assert by_alias[weld["Last Defect/Label"].alias].value == "crack"
        confidence = by_alias[weld["Last Defect/Confidence"].alias]
        assert confidence.datatype == "Float" and confidence.value == pytest.approx(0.75)
        assert by_alias[weld["Last Defect/Time"].alias].value == 1_700_000_102_000

        pipelines[0] = process_snapshot(1, 2.5)  # a first prediction adds a metric: rebirth
        reborn = await _next(consumer)
        assert reborn.kind == "NBIRTH" and reborn.seq == 0
        assert reborn.by_name()["bdSeq"].value == 0  # same MQTT session, same bdSeq
        rebirths = {m.device: m for m in [await _next(consumer), await _next(consumer)]}
        extruder = rebirths["extruder"].by_name()
        assert extruder["Prediction/scrap_pct"].datatype == "Double"
        assert extruder["Prediction/scrap_pct"].value == 2.5
        assert extruder["Prediction/Model"].value == "scrap:3"
        assert extruder["Prediction/Time"].value == 1_700_000_000_500
        assert rebirths["weld-cam"].by_name()["Defects"].value == 2

        consumer.send("spBv1.0/plant1/NCMD/gw-1", rebirth_command())
        assert (await _next(consumer)).kind == "NCMD"  # the consumer sees its own command
        commanded = await _next(consumer)
        assert commanded.kind == "NBIRTH" and commanded.seq == 0
        again = [await _next(consumer), await _next(consumer)]
        assert {m.kind for m in again} == {"DBIRTH"}
        assert_seq_follows([commanded, *again])

        pipelines.pop(1)  # a pipeline removed: its device dies
        ddeath = await _next(consumer)
        assert ddeath.topic == "spBv1.0/plant1/DDEATH/gw-1/weld-cam"
        assert_seq_follows([again[-1], ddeath])
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    ndeath = await _next(consumer)
    assert ndeath.topic == "spBv1.0/plant1/NDEATH/gw-1" and ndeath.seq is None
    assert ndeath.by_name()["bdSeq"].value == 0


NODE_SCRIPT = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    from edge_agent.config.sparkplug import SparkplugConfig
    from edge_agent.kernel.transport import BrokerConfig
    from edge_agent.sparkplug import EdgeNode
    from tests.edge_agent.sparkplug.test_edge_node import vision_snapshot

    config = SparkplugConfig(enabled=True, group_id="plant1", edge_node_id="line-7",
                             broker=BrokerConfig(port=int(sys.argv[1]), keepalive_s=5))
    node = EdgeNode(config, "gw-1", Path(sys.argv[2]), lambda: [vision_snapshot(1)])
    asyncio.run(node.run())
""")


def test_kill_9_leaves_the_will_ndeath_and_a_restart_counts_bdseq_up(
        mosquitto, consumer, tmp_path: Path) -> None:
    script = tmp_path / "node.py"
    script.write_text(NODE_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[3])}
    bdseqs = []
    for _ in range(2):
        process = subprocess.Popen([sys.executable, str(script), str(mosquitto.port),
                                    str(tmp_path / "data")], env=env)
        try:
            nbirth = consumer.next("NBIRTH")
            assert nbirth.topic == "spBv1.0/plant1/NBIRTH/line-7"
            dbirth = consumer.next("DBIRTH")
            assert dbirth.device == "weld-cam" and dbirth.seq == 1
            assert dbirth.by_name()["Defects"].value == 1
            os.kill(process.pid, signal.SIGKILL)
            ndeath = consumer.next("NDEATH")
        finally:
            process.kill()
            process.wait(10)
        assert ndeath.topic == "spBv1.0/plant1/NDEATH/line-7"
        assert ndeath.by_name()["bdSeq"].value == nbirth.by_name()["bdSeq"].value
        bdseqs.append(nbirth.by_name()["bdSeq"].value)
    assert bdseqs == [0, 1]


def _state(online: bool, timestamp: int) -> bytes:
    return json.dumps({"online": online, "timestamp": timestamp}).encode()


def test_births_wait_for_the_primary_host_and_end_when_it_leaves(
        mosquitto, consumer, tmp_path: Path) -> None:
    async def scenario() -> None:
        settings = config(mosquitto.port).model_copy(update={"primary_host_id": "scada-1"})
        node = EdgeNode(settings, "gw-1", tmp_path, lambda: [vision_snapshot(1)])
        task = asyncio.create_task(node.run())
        try:
            await asyncio.sleep(1.0)  # long enough for births that wrongly did not wait
            assert consumer.messages.empty(), "born before the primary host was online"
            consumer.send("spBv1.0/STATE/scada-1", _state(True, 1000), retain=True)
            assert (await _next(consumer)).kind == "STATE"
            nbirth = await _next(consumer)
            assert nbirth.kind == "NBIRTH" and nbirth.by_name()["bdSeq"].value == 0
            assert (await _next(consumer)).kind == "DBIRTH"

            consumer.send("spBv1.0/STATE/scada-1", _state(False, 2000), retain=True)
            assert (await _next(consumer)).kind == "STATE"
            ndeath = await _next(consumer)
            assert ndeath.kind == "NDEATH" and ndeath.by_name()["bdSeq"].value == 0

            consumer.send("spBv1.0/STATE/scada-1", _state(True, 3000), retain=True)
            assert (await _next(consumer)).kind == "STATE"
            nbirth = await _next(consumer)
            assert nbirth.kind == "NBIRTH" and nbirth.by_name()["bdSeq"].value == 1
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())


def test_a_lost_connection_ends_the_session_and_the_next_birth_counts_bdseq_up(
        mosquitto, consumer, tmp_path: Path) -> None:
    async def scenario() -> None:
        node = EdgeNode(config(mosquitto.port), "gw-1", tmp_path, lambda: [vision_snapshot(1)])
        task = asyncio.create_task(node.run())
        try:
            first = await _next(consumer, "NBIRTH")
            assert first.by_name()["bdSeq"].value == 0
            await asyncio.to_thread(mosquitto.stop)
            await asyncio.to_thread(mosquitto.start)
            # The consumer reconnects too and may miss the birth: ask again until it sees one.
            deadline = asyncio.get_running_loop().time() + 30
            while True:
                assert asyncio.get_running_loop().time() < deadline, "no birth after restart"
                with contextlib.suppress(Exception):
                    consumer.send("spBv1.0/plant1/NCMD/gw-1", rebirth_command())
                with contextlib.suppress(AssertionError):
                    again = await asyncio.to_thread(consumer.next, "NBIRTH", 1.0)
                    break
            assert again.by_name()["bdSeq"].value == 1 and again.seq == 0
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())

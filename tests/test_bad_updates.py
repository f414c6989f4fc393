"""Bad updates over a real Mosquitto: each is refused (or rolled back) and 1.0.0 keeps serving.

A real `CentralService` publishes and serves 1.0.0 to a gateway built from the agent's own
parts (transport, buffer, model store, deployer, process pipeline). Then each case sends one
bad update: forged, tampered, replayed or broken manifests and commands, bad chunks from a
rogue sender on the artifact topic, and models that fail their checks or misbehave in use.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from central_sync.config import CentralConfig
from central_sync.deployments import deploy_and_wait
from central_sync.registry import artifact_path, publish_model
from central_sync.service import CentralService
from edge_agent.buffer import Buffer
from edge_agent.config import ProcessPipelineConfig
from edge_agent.deployment import transfer
from edge_agent.deployment.deployer import Deployer
from edge_agent.deployment.transfer import ChunkFile
from edge_agent.kernel.contract import (
    ArtifactChunk,
    ChunkRequest,
    DeployCommand,
    DeploymentEvent,
    ModelManifest,
    RollbackCommand,
    Topics,
    decode,
    encode,
)
from edge_agent.kernel.signing import Signer
from edge_agent.kernel.transport import BrokerConfig
from edge_agent.kernel.transport.mqtt import MqttTransport
from edge_agent.lifecycle import ModelWatch
from edge_agent.model_store import ModelStore
from edge_agent.pipelines.process import ProcessPipeline
from edge_agent.sources.opcua import TagValue
from tests.conftest import Mosquitto
from tests.helpers import (
    SAMPLE_METADATA,
    SAMPLE_MODEL,
    TEST_SIGNER,
    TEST_VERIFIER,
    manifest_for,
    wait_until_async,
    write_test_keys,
)

TOPICS = Topics()
DEVICE = "gw1"
MODEL = "extruder-scrap"
FEATURES = ["zone1_temp_c", "zone2_temp_c", "zone3_temp_c", "melt_pressure_bar",
            "screw_speed_rpm", "ambient_humidity_pct"]
TYPICAL = [178.0, 184.0, 190.0, 150.0, 60.0, 45.0]
NO_PROBATION = {"probation": {"duration_s": 0}}


def metadata(**extra: object) -> dict:
    return {**json.loads(SAMPLE_METADATA.read_text()), **extra}


@dataclass
class Plant:
    """Central, the gateway's parts, and an observer/rogue client, all on one Mosquitto."""

    tmp: Path
    config: CentralConfig
    central: CentralService
    gateway: MqttTransport
    store: ModelStore
    buffer: Buffer
    deployer: Deployer
    pipeline: ProcessPipeline
    observer: MqttTransport
    cli: MqttTransport
    latest: dict[str, TagValue]
    variant: Path
    events: list[DeploymentEvent] = field(default_factory=list)
    requested: list[int] = field(default_factory=list)  # chunk indices asked for
    rogue_chunks: dict[str, Callable[[int], list[ArtifactChunk | bytes]]] = field(
        default_factory=dict)

    async def publish(self, file: Path, version: str, meta: dict,
                      chunk_size_bytes: int = 16 * 1024) -> ModelManifest:
        assert self.central.db is not None
        return await asyncio.to_thread(
            publish_model, self.central.db, self.config.artifact_dir, file, MODEL, version,
            metadata=meta, chunk_size_bytes=chunk_size_bytes, signer=TEST_SIGNER)

    async def deploy(self, version: str) -> DeploymentEvent | None:
        assert self.central.db is not None
        _, final = await deploy_and_wait(self.central.db, self.cli, TEST_SIGNER, MODEL,
                                         version, DEVICE, "test", timeout_s=30,
                                         approval_required=False)
        return final

    async def send(self, command: DeployCommand | RollbackCommand) -> None:
        """Send a command past central, recorded as central records what it issues: central
        takes a device's steps, and serves it chunks, only for commands issued to it."""
        db = self.central.db
        assert db is not None
        if await asyncio.to_thread(db.get_deployment, command.command_id) is None:
            record = (db.create_deployment if isinstance(command, DeployCommand)
                      else db.record_rollback_command)
            await asyncio.to_thread(record, command)  # type: ignore[arg-type]
        await self.observer.publish(TOPICS.commands(DEVICE), encode(command))

    async def final_event(self, command_id: str, timeout_s: float = 30,
                          steps: tuple[str, ...] = ("activated", "failed", "rolled_back"),
                          ) -> DeploymentEvent:
        return await wait_until_async(
            lambda: next((e for e in self.events if e.command_id == command_id
                          and e.step in steps), None), timeout_s,
            what=lambda: f"a final event ({', '.join(steps)}) for {command_id}; events seen: "
                         f"{self.events}")

    async def serving(self) -> str:
        """The version the pipeline predicts with now (it must make a prediction)."""
        now = time.time()
        for tag, value in zip(FEATURES, TYPICAL, strict=True):
            self.latest[tag] = TagValue(value, True, now, now)
        payload = await self.pipeline.tick()
        assert payload is not None, self.pipeline.status
        return payload["model"]["version"]

    async def on_event(self, _topic: str, payload: bytes) -> None:
        event = decode(payload, expect=(DeploymentEvent,))
        if isinstance(event, DeploymentEvent):
            self.events.append(event)

    async def on_chunk_request(self, _topic: str, payload: bytes) -> None:
        request = decode(payload, expect=(ChunkRequest,))
        if isinstance(request, ChunkRequest):
            self.requested += request.indices
        if isinstance(request, ChunkRequest) and request.sha256 in self.rogue_chunks:
            for index in request.indices:
                for chunk in self.rogue_chunks[request.sha256](index):
                    raw = chunk if isinstance(chunk, bytes) else encode(chunk)
                    await self.observer.publish(TOPICS.artifact(request.sha256), raw)


async def start_plant(tmp: Path, mosquitto: Mosquitto) -> Plant:
    broker = BrokerConfig(port=mosquitto.port)
    config = CentralConfig(database_url=f"sqlite:///{tmp / 'central.db'}",
                           artifact_dir=tmp / "artifacts", web={"port": 0}, broker=broker,
                           signing_key_path=write_test_keys(tmp / "keys")[0])
    central = CentralService(config, MqttTransport(broker, "central"))
    await central.start()
    gateway = MqttTransport(broker, DEVICE)
    store = ModelStore(tmp / "gw" / "models")
    buffer = Buffer(tmp / "gw" / "buffer.db", 10**8)
    watch = ModelWatch()
    deployer = Deployer(DEVICE, TOPICS, gateway, store, buffer, TEST_VERIFIER, watch)
    latest: dict[str, TagValue] = {}
    pipeline = ProcessPipeline(
        ProcessPipelineConfig(name="scrap", source="line1", model=MODEL, features=FEATURES),
        latest, store, buffer, watch)
    observer = MqttTransport(broker, "observer")
    cli = MqttTransport(broker, "cli")
    plant = Plant(tmp, config, central, gateway, store, buffer, deployer, pipeline, observer,
                  cli, latest, variant_model(tmp / "variant.onnx"))
    await observer.start()
    await cli.start()
    await observer.subscribe(TOPICS.deployment(DEVICE), plant.on_event)
    await observer.subscribe(TOPICS.all_devices("chunk-request"), plant.on_chunk_request)
    await deployer.start()
    await gateway.start()
    for transport in (gateway, observer, cli):
        assert await transport.wait_connected(10)
    await plant.publish(SAMPLE_MODEL, "1.0.0", metadata(**NO_PROBATION))
    final = await plant.deploy("1.0.0")
    assert final is not None and final.step == "activated", plant.events
    return plant


async def stop_plant(plant: Plant) -> None:
    await plant.deployer.stop()
    for transport in (plant.gateway, plant.observer, plant.cli):
        await transport.stop()
    await plant.central.stop()
    await plant.buffer.close()


def with_plant(tmp_path: Path, mosquitto: Mosquitto,
               scenario: Callable[[Plant], Awaitable[None]]) -> None:
    async def main() -> None:
        plant = await start_plant(tmp_path, mosquitto)
        try:
            await scenario(plant)
        finally:
            await stop_plant(plant)

    asyncio.run(asyncio.wait_for(main(), 90))


def command_for(manifest: ModelManifest, device_id: str = DEVICE,
                signer: Signer = TEST_SIGNER) -> DeployCommand:
    return signer.signed(DeployCommand(device_id=device_id, manifest=manifest))


def chunks_of(data: bytes, manifest: ModelManifest) -> Callable[[int], list[ArtifactChunk]]:
    size = manifest.chunk_size_bytes

    def build(index: int) -> list[ArtifactChunk]:
        return [ArtifactChunk.build(manifest.sha256, index, manifest.chunk_count,
                                    data[index * size:(index + 1) * size])]

    return build


def variant_model(path: Path) -> Path:
    """The sample model with other bytes (a metadata entry): central has never seen it, so
    only the rogue sender answers for its chunks."""
    model = onnx.load(SAMPLE_MODEL)
    entry = model.metadata_props.add()
    entry.key, entry.value = "variant", path.name
    onnx.save(model, path)
    return path


def nan_model(path: Path) -> Path:
    """features [N,6] -> scrap_rate_pct [N,1] = sum(x / x): 6 for typical inputs, NaN for 0."""
    graph = helper.make_graph(
        [helper.make_node("Div", ["features", "features"], ["ratio"]),
         helper.make_node("ReduceSum", ["ratio", "axes"], ["scrap_rate_pct"], keepdims=1)],
        "nan-on-zero",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, 6])],
        [helper.make_tensor_value_info("scrap_rate_pct", TensorProto.FLOAT, [None, 1])],
        initializer=[helper.make_tensor("axes", TensorProto.INT64, [1], [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


# --- the cases: each returns the command id whose failure is expected (None: ignored) ---------

Case = Callable[[Plant], Awaitable[tuple[str | None, str]]]


async def corrupted_chunk(plant: Plant) -> tuple[str | None, str]:
    manifest = manifest_for(plant.variant, version="1.1.0")
    good = chunks_of(plant.variant.read_bytes(), manifest)

    def corrupt(index: int) -> list[ArtifactChunk]:
        chunk = good(index)[0]
        data = bytearray(base64.b64decode(chunk.data_b64))
        data[0] ^= 0xFF
        bad = chunk.model_copy(update={"data_b64": base64.b64encode(data).decode()})
        return [bad, bad, bad]

    plant.rogue_chunks[manifest.sha256] = corrupt
    command = command_for(manifest)
    await plant.send(command)
    return command.command_id, "hash mismatch"


async def truncated_transfer(plant: Plant) -> tuple[str | None, str]:
    manifest = manifest_for(plant.variant, version="1.1.0")
    good = chunks_of(plant.variant.read_bytes(), manifest)

    def truncate(index: int) -> list[ArtifactChunk]:
        data = base64.b64decode(good(index)[0].data_b64)[:100]
        return [ArtifactChunk.build(manifest.sha256, index, manifest.chunk_count, data)] * 3

    plant.rogue_chunks[manifest.sha256] = truncate
    command = command_for(manifest)
    await plant.send(command)
    return command.command_id, "expected"


async def wrong_whole_file_hash(plant: Plant) -> tuple[str | None, str]:
    manifest = await plant.publish(SAMPLE_MODEL, "1.1.0", metadata())
    stored = artifact_path(plant.config.artifact_dir, manifest.sha256)
    data = bytearray(stored.read_bytes())
    data[-10] ^= 0xFF
    stored.write_bytes(bytes(data))  # central's copy rotted on disk after publishing
    final = await plant.deploy("1.1.0")
    assert final is not None
    return final.command_id, "sha256"


async def wrong_size(plant: Plant) -> tuple[str | None, str]:
    honest = manifest_for(plant.variant, version="1.1.0")
    manifest = TEST_SIGNER.signed(honest.model_copy(
        update={"size_bytes": honest.size_bytes + 20000}))
    real = chunks_of(plant.variant.read_bytes(), honest)

    def serve(index: int) -> list[ArtifactChunk]:
        if index >= honest.chunk_count:
            return []  # there are no such bytes
        return [real(index)[0].model_copy(update={"count": manifest.chunk_count})] * 3

    plant.rogue_chunks[manifest.sha256] = serve
    command = command_for(manifest)
    await plant.send(command)
    return command.command_id, "expected"

async def bad_signature(plant: Plant) -> tuple[str | None, str]:
    manifest = manifest_for(SAMPLE_MODEL, version="1.1.0")
    raw = bytearray(base64.b64decode(manifest.signature))
    raw[5] ^= 0x01
    forged = manifest.model_copy(update={"signature": base64.b64encode(raw).decode()})
    command = command_for(forged)
    await plant.send(command)
    return command.command_id, "signature does not match"


async def wrong_key(plant: Plant) -> tuple[str | None, str]:
    stranger = Signer.generate()
    manifest = stranger.signed(manifest_for(SAMPLE_MODEL, version="1.1.0"))
    command = command_for(manifest, signer=stranger)
    await plant.send(command)
    return command.command_id, f"signed by key {stranger.key_id}"


async def unsigned_manifest(plant: Plant) -> tuple[str | None, str]:
    manifest = manifest_for(SAMPLE_MODEL, version="1.1.0").model_copy(
        update={"signature": "", "key_id": ""})
    command = command_for(manifest)
    await plant.send(command)
    return command.command_id, "manifest is unsigned"


async def unsigned_command(plant: Plant) -> tuple[str | None, str]:
    command = DeployCommand(device_id=DEVICE, manifest=manifest_for(SAMPLE_MODEL,
                                                                    version="1.1.0"))
    await plant.send(command)
    return command.command_id, "deploy command is unsigned"


async def older_version(plant: Plant) -> tuple[str | None, str]:
    command = command_for(manifest_for(SAMPLE_MODEL, version="0.9.0"))
    await plant.send(command)
    return command.command_id, "older than 1.0.0"


async def replayed_command(plant: Plant) -> tuple[str | None, str]:
    first = command_for(manifest_for(plant.variant, version="1.0.1", metadata=metadata(
        **NO_PROBATION)))
    plant.rogue_chunks[first.manifest.sha256] = chunks_of(plant.variant.read_bytes(),
                                                          first.manifest)
    await plant.send(first)
    assert (await plant.final_event(first.command_id)).step == "activated"
    rollback = TEST_SIGNER.signed(RollbackCommand(device_id=DEVICE, model_name=MODEL))
    await plant.send(rollback)
    assert (await plant.final_event(rollback.command_id)).step == "rolled_back"
    events_before, refused_before = len(plant.events), plant.deployer.rejected_messages
    await plant.send(first)  # replayed by someone who recorded it
    await wait_until_async(lambda: plant.deployer.rejected_messages > refused_before, 10,
                           what="the replayed command ignored")
    assert not [e for e in plant.events[events_before:] if e.command_id == first.command_id]
    return None, ""


async def command_from_the_future(plant: Plant) -> tuple[str | None, str]:
    command = TEST_SIGNER.signed(DeployCommand(
        device_id=DEVICE, manifest=manifest_for(SAMPLE_MODEL, version="1.1.0"),
        issued_at=time.time() + 3 * 3600))  # signed now, dated for later: a held-back copy
    await plant.send(command)
    return command.command_id, "in the future by this gateway's clock"


async def command_for_another_device(plant: Plant) -> tuple[str | None, str]:
    command = command_for(manifest_for(SAMPLE_MODEL, version="1.1.0"), device_id="gw2")
    await plant.send(command)  # gw2's signed command, relayed to gw1's topic
    return None, ""


async def manifest_of_another_model(plant: Plant) -> tuple[str | None, str]:
    other = manifest_for(SAMPLE_MODEL, name="surface-defects", version="1.1.0")
    relabelled = other.model_copy(update={"name": MODEL})  # signature was for surface-defects
    command = command_for(relabelled)
    await plant.send(command)
    return command.command_id, "signature does not match"


async def chunk_out_of_range_and_path_like_ids(plant: Plant) -> tuple[str | None, str]:
    manifest = manifest_for(plant.variant, version="1.1.0", metadata=metadata(**NO_PROBATION))
    good = chunks_of(plant.variant.read_bytes(), manifest)

    def hostile(index: int) -> list[ArtifactChunk | bytes]:
        beyond = good(index)[0].model_copy(update={"index": manifest.chunk_count + 5,
                                                   "count": manifest.chunk_count + 6})
        path_like = json.loads(encode(good(index)[0]))
        path_like["sha256"] = "../" + manifest.sha256[3:]
        return [beyond, json.dumps(path_like).encode(), *good(index)]

    plant.rogue_chunks[manifest.sha256] = hostile
    # Raw JSON: names the contract refuses before anything touches the disk.
    for name in ("../../etc/passwd", "a/b"):
        body = json.loads(encode(command_for(manifest)))
        body["manifest"]["name"] = name
        await plant.observer.publish(TOPICS.commands(DEVICE), json.dumps(body).encode())
    command = command_for(manifest)
    await plant.send(command)
    # The hostile messages are ignored; the real chunks complete the transfer.
    assert (await plant.final_event(command.command_id)).step == "activated"
    assert not list((plant.tmp / "gw").rglob("passwd"))
    assert plant.deployer.rejected_messages >= 2 + 2 * manifest.chunk_count
    rollback = TEST_SIGNER.signed(RollbackCommand(device_id=DEVICE, model_name=MODEL,
                                                  to_version="1.0.0"))
    await plant.send(rollback)
    await plant.final_event(rollback.command_id)
    return None, ""

async def inputs_not_matching_manifest(plant: Plant) -> tuple[str | None, str]:
    honest = manifest_for(plant.variant, version="1.1.0")
    spec = honest.inputs[0].model_copy(update={"shape": [None, 7]})
    manifest = TEST_SIGNER.signed(honest.model_copy(update={"inputs": [spec]}))
    plant.rogue_chunks[manifest.sha256] = chunks_of(plant.variant.read_bytes(), manifest)
    command = command_for(manifest)
    await plant.send(command)
    return command.command_id, "?x6 in the model, manifest says ?x7"


async def failing_golden_check(plant: Plant) -> tuple[str | None, str]:
    # Central refuses to publish a wrong golden output (and serves chunks only of what it
    # published), so this one comes signed but unpublished, its chunks served past central
    # (as from a registry whose copy differs from what the gateway's runtime computes).
    meta = metadata()
    meta["golden"] = {**meta["golden"], "output": [[999.0]]}
    manifest = manifest_for(SAMPLE_MODEL, version="1.1.0", metadata=meta)
    plant.rogue_chunks[manifest.sha256] = chunks_of(SAMPLE_MODEL.read_bytes(), manifest)
    command = command_for(manifest)
    await plant.send(command)
    return command.command_id, "golden input gives"

async def too_slow_for_budget(plant: Plant) -> tuple[str | None, str]:
    await plant.publish(SAMPLE_MODEL, "1.1.0", metadata(latency_budget_ms=0.0001))
    final = await plant.deploy("1.1.0")
    assert final is not None
    return final.command_id, "over the budget"


CASES: dict[str, Case] = {
    "corrupted chunk": corrupted_chunk,
    "truncated transfer": truncated_transfer,
    "wrong whole-file hash": wrong_whole_file_hash,
    "wrong size": wrong_size,
    "bad signature": bad_signature,
    "wrong key": wrong_key,
    "unsigned manifest": unsigned_manifest,
    "unsigned command": unsigned_command,
    "older version": older_version,
    "replayed command": replayed_command,
    "command from the future": command_from_the_future,
    "command for another device": command_for_another_device,
    "manifest of another model": manifest_of_another_model,
    "chunk out of range, path-like ids": chunk_out_of_range_and_path_like_ids,
    "inputs not matching manifest": inputs_not_matching_manifest,
    "failing golden check": failing_golden_check,
    "too slow for its budget": too_slow_for_budget,
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_bad_update_is_refused_and_the_active_version_keeps_serving(
    case: str, tmp_path: Path, mosquitto: Mosquitto
) -> None:
    async def scenario(plant: Plant) -> None:
        assert await plant.serving() == "1.0.0"
        refused_before = plant.deployer.rejected_messages
        command_id, reason = await CASES[case](plant)
        if command_id is not None:
            final = await plant.final_event(command_id)
            assert final.step == "failed", final
            assert reason in final.detail, final.detail
        else:
            await wait_until_async(lambda: plant.deployer.rejected_messages > refused_before, 10,
                                   what="the command refused")
        assert plant.store.active(MODEL).manifest.version == "1.0.0"
        assert await plant.serving() == "1.0.0"

    with_plant(tmp_path, mosquitto, scenario)


def test_version_emitting_nan_after_activation_is_rolled_back(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    async def scenario(plant: Plant) -> None:
        meta = metadata(probation={"duration_s": 30, "min_observations": 3})
        meta["golden"] = {"input": [TYPICAL], "output": [[6.0]], "tolerance": 1e-4}
        await plant.publish(nan_model(tmp_path / "nan.onnx"), "1.1.0", meta)
        assert await plant.serving() == "1.0.0"
        final = await plant.deploy("1.1.0")
        assert final is not None and final.step == "activated", plant.events
        assert await plant.serving() == "1.1.0"
        now = time.time()
        for tag in FEATURES:  # the line stops: all zeros, 0/0 = NaN
            plant.latest[tag] = TagValue(0.0, True, now, now)
        await plant.pipeline.tick()
        rolled = await plant.final_event(final.command_id,
                                         steps=("confirmed", "rolled_back", "failed"))
        assert rolled.step == "rolled_back", rolled
        assert "NaN" in rolled.detail and "1.0.0 serving again" in rolled.detail
        assert plant.store.active(MODEL).manifest.version == "1.0.0"
        assert await plant.serving() == "1.0.0"

    with_plant(tmp_path, mosquitto, scenario)


def test_agent_stopped_mid_transfer_resumes_with_only_the_missing_chunks(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    async def scenario(plant: Plant) -> None:
        manifest = await plant.publish(plant.variant, "1.1.0", metadata(**NO_PROBATION),
                                       chunk_size_bytes=1024)
        part = plant.store.download_path(manifest.sha256)
        task = asyncio.create_task(plant.deploy("1.1.0"))
        await wait_until_async(
            lambda: part.exists() and len(ChunkFile(part, manifest).received) >= 3, 30,
            what="three chunks on disk", interval_s=0.001)
        await plant.deployer.stop()  # the agent dies mid-transfer
        # Time for the chunks still on their way to arrive: that they land nowhere is the check.
        await asyncio.sleep(0.5)
        have = ChunkFile(part, manifest).received
        assert 0 < len(have) < manifest.chunk_count
        plant.requested.clear()
        restarted = Deployer(DEVICE, TOPICS, plant.gateway, plant.store, plant.buffer,
                             TEST_VERIFIER)
        command = TEST_SIGNER.signed(DeployCommand(device_id=DEVICE, manifest=manifest))
        assert await restarted.deploy(command)
        task.cancel()
        assert plant.requested and not have & set(plant.requested)
        assert set(plant.requested) == set(range(manifest.chunk_count)) - have
        assert plant.store.active(MODEL).manifest.version == "1.1.0"

    with_plant(tmp_path, mosquitto, scenario)


def test_transfer_interrupted_by_a_broker_outage_resumes_with_only_the_missing_chunks(
    tmp_path: Path, mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Chunks asked for before the outage never come: asked again when overdue, after 1 s here.
    monkeypatch.setattr(transfer, "CHUNK_WAIT_S", 1.0)

    async def scenario(plant: Plant) -> None:
        manifest = await plant.publish(plant.variant, "1.1.0", metadata(**NO_PROBATION),
                                       chunk_size_bytes=1024)
        command = TEST_SIGNER.signed(DeployCommand(device_id=DEVICE, manifest=manifest))
        part = plant.store.download_path(manifest.sha256)
        await plant.send(command)
        await wait_until_async(
            lambda: part.exists() and len(ChunkFile(part, manifest).received) >= 3, 30,
            what="three chunks on disk", interval_s=0.001)
        mosquitto.stop()
        have = ChunkFile(part, manifest).received
        plant.requested.clear()
        await wait_until_async(lambda: not plant.gateway.connected, 20,
                               what="the gateway noticing that the broker is gone")
        mosquitto.start()
        final = await plant.final_event(command.command_id, timeout_s=60)
        assert final.step == "activated", plant.events
        assert plant.requested and not have & set(plant.requested)
        assert plant.store.active(MODEL).manifest.version == "1.1.0"

    with_plant(tmp_path, mosquitto, scenario)

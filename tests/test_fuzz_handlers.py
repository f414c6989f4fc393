"""Random bytes and mutated contract messages at every topic handler of the agent and central.

Every payload is published on a MemoryBroker, so it reaches the handler through the same
subscription and dispatch as in production. No handler may raise; central may store only what
the contract accepts; the agent may install, activate or forget nothing because of it.
"""

from __future__ import annotations

import asyncio
import copy
import gc
import hashlib
import json
import logging
import math
import re
import sqlite3
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

import edge_agent.deployment.transfer as transfer_module
from central_sync.config import CentralConfig
from central_sync.db import CentralDB
from central_sync.deployments import deploy_and_wait
from central_sync.registry import publish_model
from central_sync.service import CentralService
from edge_agent.buffer import Buffer
from edge_agent.config import UplinkConfig
from edge_agent.deployment.deployer import Deployer
from edge_agent.kernel.contract import (
    ID_PATTERN,
    MAX_RECORD_BYTES,
    MAX_SEQ,
    ArtifactChunk,
    BatchAck,
    BufferHealth,
    ChunkRequest,
    ClockProbe,
    CompressedUplinkBatch,
    DeployCommand,
    DeploymentEvent,
    DeviceStatus,
    ModelManifest,
    ModelRef,
    ModelStatsPayload,
    RecordChunk,
    RollbackCommand,
    SourceState,
    Topics,
    UplinkBatch,
    UplinkHealth,
    UplinkRecord,
    decode,
    encode,
    encode_uplink_batch,
    expand_uplink,
    split_record,
)
from edge_agent.kernel.transport.memory import MemoryBroker, MemoryTransport
from edge_agent.model_store import ModelStore
from edge_agent.uplink import Uplink
from tests.central_sync.review_helpers import defect_payload
from tests.helpers import (
    SAMPLE_METADATA,
    SAMPLE_MODEL,
    TEST_SIGNER,
    TEST_VERIFIER,
    db_rows,
    manifest_for,
    wait_until_async,
    write_test_keys,
)

T = TypeVar("T")
TOPICS = Topics()
AGENT = "gw1"
DEVICE = "gw-1"
EXAMPLES = 300  # per topic
# The world under test lives across examples, so a shrunk example would run against a world
# an earlier one changed: no shrinking, the payload reported is the first that failed.
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                phases=[Phase.generate],
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.large_base_example])
DEEPLY_NESTED = b"[" * 100_000 + b"]" * 100_000

# --- payload strategies ----------------------------------------------------------------------

EXTREME_NUMBERS: list[Any] = [
    0, -1, 2**31, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**400, 1e308, -1e308, 5e-324,
    float("inf"), float("-inf"), float("nan"),
]
NASTY_STRINGS = [
    "", " ", "../../etc/passwd", "/etc/passwd", "..\\..\\boot.ini", "a\x00b", "\ud800",
    "gw1\n", "1.0.0\n", "\u202e\u0000\ufeff", "🙂" * 64, "x" * 70_000, "NaN", "1e999", "{}",
]
WRONG_SCHEMA_VERSIONS: list[Any] = [0, 2, -1, "1", None, 1.5, 2**64, [1]]
SPLICE = "\x00splice\x00"  # a placeholder, replaced in the JSON text by raw text

json_leaves = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=24),
    st.sampled_from(EXTREME_NUMBERS), st.sampled_from(NASTY_STRINGS),
)
json_values = st.recursive(
    json_leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12,
)


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The path of every node of a JSON document, the root's () first."""
    found = [path]
    if isinstance(value, dict):
        for key, child in value.items():
            found += _paths(child, (*path, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += _paths(child, (*path, index))
    return found


def _node(doc: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        doc = doc[step]
    return doc


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    _node(doc, path[:-1])[path[-1]] = value
    return doc


def _drop(doc: Any, path: tuple[Any, ...]) -> Any:
    if not path:
        return {}
    del _node(doc, path[:-1])[path[-1]]
    return doc


def _same_type(draw: st.DrawFn, value: Any) -> Any:
    """Another value of the same JSON type: what a message still valid in shape may carry."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return draw(st.integers() | st.sampled_from(
            [n for n in EXTREME_NUMBERS if isinstance(n, int)]))
    if isinstance(value, float):
        return draw(st.floats() | st.sampled_from(EXTREME_NUMBERS))
    if isinstance(value, str):
        return draw(st.text(max_size=40) | st.sampled_from(NASTY_STRINGS))
    if isinstance(value, list):
        return draw(st.sampled_from([[], value[:1], value * 3, value[::-1]]))
    return draw(json_values)


@st.composite
def mutated(draw: st.DrawFn, messages: list[BaseModel]) -> bytes:
    """A valid message's JSON, changed one to three times, then perhaps cut or bit-flipped."""
    doc: Any = json.loads(encode(draw(st.sampled_from(messages))))
    for _ in range(draw(st.integers(1, 3))):
        change = draw(st.sampled_from(["number", "number", "same-type", "same-type", "replace",
                                       "drop", "add", "extreme", "deep", "schema"]))
        paths = _paths(doc)
        numbers = [p for p in paths if type(_node(doc, p)) in (int, float)]
        if change == "number" and numbers:  # NaN, infinities, huge and negative numbers
            path = draw(st.sampled_from(numbers))
            doc = _set(doc, path, draw(st.sampled_from(EXTREME_NUMBERS)))
            continue
        path = draw(st.sampled_from(paths))
        if change in ("same-type", "number"):
            doc = _set(doc, path, _same_type(draw, _node(doc, path)))
        elif change == "replace":
            doc = _set(doc, path, draw(json_values))
        elif change == "drop":
            doc = _drop(doc, path)
        elif change == "add":
            target = _node(doc, path)
            if isinstance(target, dict):
                target[draw(st.text(max_size=12))] = draw(json_values)
            elif isinstance(target, list):
                target.extend(draw(st.lists(json_values, min_size=1, max_size=3)))
            else:
                doc = _set(doc, path, [target, draw(json_values)])
        elif change == "extreme":
            doc = _set(doc, path, draw(st.sampled_from(EXTREME_NUMBERS + NASTY_STRINGS)))
        elif change == "deep":
            doc = _set(doc, path, SPLICE)
        elif isinstance(doc, dict):
            doc["schema_version"] = copy.deepcopy(draw(st.sampled_from(WRONG_SCHEMA_VERSIONS)))
    text = json.dumps(doc, ensure_ascii=draw(st.booleans()))
    depth = draw(st.sampled_from([64, 1000, 100_000]))
    text = text.replace(json.dumps(SPLICE), "[" * depth + "]" * depth)
    raw = text.encode("utf-8", "surrogatepass")
    damage = draw(st.sampled_from(["none", "none", "none", "truncate", "flip"]))
    if damage == "truncate" and raw:
        raw = raw[:draw(st.integers(0, len(raw) - 1))]
    elif damage == "flip" and raw:
        flipped = bytearray(raw)
        for _ in range(draw(st.integers(1, 4))):
            flipped[draw(st.integers(0, len(raw) - 1))] ^= draw(st.integers(1, 255))
        raw = bytes(flipped)
    return raw


def payloads(messages: list[BaseModel]) -> st.SearchStrategy[bytes]:
    """Random bytes, or (three times as often) a mutated valid message."""
    return st.one_of(st.binary(max_size=300), *[mutated(messages)] * 3)


def spliced(message: BaseModel, path: tuple[Any, ...], json_text: str) -> bytes:
    """The message's JSON with the value at `path` replaced by raw JSON text, e.g. NaN."""
    doc = _set(json.loads(encode(message)), path, SPLICE)
    return json.dumps(doc).replace(json.dumps(SPLICE), json_text).encode()


# --- a world driven from synchronous code ----------------------------------------------------


class _Loop:
    """An event loop that lives across hypothesis examples; unhandled task errors are kept."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.unhandled: list[dict[str, Any]] = []
        self.loop.set_exception_handler(lambda _loop, context: self.unhandled.append(context))

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = 30.0) -> T:
        return self.loop.run_until_complete(asyncio.wait_for(coro, timeout_s))

    def unhandled_errors(self) -> list[str]:
        gc.collect()  # a task that failed unobserved reports it when it is collected
        return [f"{c['message']}: {c.get('exception')!r}" for c in self.unhandled]

    def close(self) -> None:
        self.loop.close()


def _errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Every ERROR logged: a handler that raised ("handler failed ...") or a failed store."""
    return [f"{r.name}: {r.getMessage()} {r.exc_info[1]!r}" if r.exc_info else
            f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]


# --- the agent -------------------------------------------------------------------------------

FAKE_SHA = hashlib.sha256(b"an artifact nobody serves").hexdigest()
TARGET_CHUNKS = 1024
TARGET_CHUNK_BYTES = 64
PREFILLED = 20  # records in the buffer before fuzzing
BATCH = 5  # the uplink sends one batch of this many, then waits for its ack


def _target_manifest() -> ModelManifest:
    """A signed manifest whose artifact never arrives: its transfer stays open for fuzzing."""
    base = manifest_for(SAMPLE_MODEL)
    return TEST_SIGNER.signed(base.model_copy(update={
        "name": "fuzz-target", "sha256": FAKE_SHA, "metadata": {},
        "size_bytes": TARGET_CHUNKS * TARGET_CHUNK_BYTES,
        "chunk_size_bytes": TARGET_CHUNK_BYTES}))


def _chunk(index: int, data: bytes = b"\x01" * TARGET_CHUNK_BYTES,
           sha256: str = FAKE_SHA, count: int = TARGET_CHUNKS) -> ArtifactChunk:
    return ArtifactChunk.build(sha256, index, count, data)


class AgentWorld:
    """A gateway's deployer and uplink on a MemoryBroker, with one model active, a prefilled
    buffer and one artifact transfer open."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.loop = _Loop()
        self.sent_seqs: set[int] = set()
        self.sent_batches: list[UplinkBatch] = []
        self.chunk_requests: list[ChunkRequest] = []
        self.loop.run(self._start())

    async def _start(self) -> None:
        self.store = ModelStore(self.tmp_path / "models")
        self.active = manifest_for(SAMPLE_MODEL)
        self.store.install(self.active, SAMPLE_MODEL)
        self.store.activate(self.active.name, self.active.version)
        self.buffer = Buffer(self.tmp_path / "buffer.db", 10**8)
        for i in range(PREFILLED):
            await self.buffer.append("prediction", {"i": i})
        broker = MemoryBroker()
        self.central = MemoryTransport(broker)
        await self.central.start()
        await self.central.subscribe(TOPICS.uplink(AGENT), self._on_uplink)
        await self.central.subscribe(TOPICS.chunk_request(AGENT), self._on_chunk_request)
        self.device = MemoryTransport(broker)
        await self.device.start()
        self.deployer = Deployer(AGENT, TOPICS, self.device, self.store, self.buffer,
                                 TEST_VERIFIER)
        await self.deployer.start()
        self.uplink = Uplink(AGENT, TOPICS, self.device, self.buffer,
                             UplinkConfig(batch_size=BATCH, ack_timeout_s=3600, max_in_flight=1))
        self.uplink_task = asyncio.create_task(self.uplink.run())
        await wait_until_async(lambda: self.sent_seqs, what="the first batch")
        command = TEST_SIGNER.signed(DeployCommand(device_id=AGENT, manifest=_target_manifest()))
        await self.central.publish(TOPICS.commands(AGENT), encode(command))
        await wait_until_async(lambda: self.chunk_requests,
                               what="a chunk request for the open transfer")

    async def _on_uplink(self, topic: str, payload: bytes) -> None:
        message = decode(payload, expect=(UplinkBatch, RecordChunk))
        if isinstance(message, UplinkBatch):
            self.sent_batches.append(message)
            self.sent_seqs |= {r.seq for r in message.records}
        elif isinstance(message, RecordChunk):
            self.sent_seqs.add(message.seq)

    async def _on_chunk_request(self, topic: str, payload: bytes) -> None:
        request = decode(payload, expect=(ChunkRequest,))
        if isinstance(request, ChunkRequest):
            self.chunk_requests.append(request)

    def deliver(self, topic: str, payload: bytes) -> None:
        async def publish() -> None:
            await self.central.publish(topic, payload)
            await asyncio.sleep(0)  # let what the handler started take a step

        self.loop.run(publish())

    def buffered_seqs(self) -> set[int]:
        with sqlite3.connect(self.tmp_path / "buffer.db") as db:
            return {seq for (seq,) in db.execute("SELECT seq FROM records")}

    def received_chunks(self) -> set[int]:
        transfer = self.deployer.fetcher.transfers.get(FAKE_SHA)
        return set(transfer.chunks.received) if transfer else set()

    def close(self) -> None:
        async def stop() -> None:
            self.uplink_task.cancel()
            await asyncio.gather(self.uplink_task, return_exceptions=True)
            await self.deployer.stop()
            await self.buffer.close()

        self.loop.run(stop())
        self.loop.close()


def _agent_messages(leaf: str) -> list[BaseModel]:
    """Valid messages of each kind the agent's topic `leaf` carries."""
    if leaf == "ack":
        return [BatchAck(device_id=AGENT, batch_id="forged", acked_seqs=list(range(1, 31))),
                BatchAck(device_id=AGENT, batch_id="record-7", acked_seqs=[7, 2**62])]
    if leaf == "commands":
        newer = manifest_for(SAMPLE_MODEL, version="2.0.0").model_copy(
            update={"sha256": hashlib.sha256(b"2.0.0").hexdigest()})
        return [
            TEST_SIGNER.signed(DeployCommand(device_id=AGENT, manifest=TEST_SIGNER.signed(newer))),
            DeployCommand(device_id=AGENT, manifest=newer),
            TEST_SIGNER.signed(DeployCommand(device_id="gw2", manifest=manifest_for(SAMPLE_MODEL))),
            TEST_SIGNER.signed(RollbackCommand(device_id=AGENT, model_name="extruder-scrap")),
            TEST_SIGNER.signed(RollbackCommand(device_id=AGENT, model_name="extruder-scrap",
                                               to_version="1.0.0")),
            RollbackCommand(device_id=AGENT, model_name="extruder-scrap", to_version="0.9.0"),
        ]
    return [_chunk(3), _chunk(TARGET_CHUNKS - 1, b"\x02" * TARGET_CHUNK_BYTES),
            _chunk(5, b"short"), _chunk(0, count=7), _chunk(1, sha256="e" * 64)]


def _agent_regressions(leaf: str) -> list[bytes]:
    """Payloads for `leaf` that once crashed a handler or deleted buffered records."""
    if leaf != "ack":
        return [DEEPLY_NESTED]
    return [DEEPLY_NESTED, *(encode(m) for m in _agent_messages("ack")),
            encode(BatchAck(device_id=AGENT, batch_id="forged", acked_seqs=[2**63]))]


def _agent_topic(leaf: str) -> str:
    return TOPICS.artifact(FAKE_SHA) if leaf == "artifacts" else TOPICS.device(AGENT, leaf)


@pytest.fixture
def agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    # Fuzzed chunks must neither end the open transfer nor let it stall during the test.
    monkeypatch.setattr(transfer_module, "MAX_CHUNK_REFUSALS", 10**9)
    monkeypatch.setattr(transfer_module, "STALL_TIMEOUT_S", 3600.0)
    world = AgentWorld(tmp_path)
    yield world
    world.close()


@pytest.mark.parametrize("leaf", ["commands", "artifacts", "ack"])
def test_agent_handlers_survive_fuzzing_and_change_nothing(
    agent: AgentWorld, leaf: str, caplog: pytest.LogCaptureFixture, tmp_path: Path,
) -> None:
    topic, messages = _agent_topic(leaf), _agent_messages(leaf)
    beside_store = sorted(p.name for p in tmp_path.iterdir())
    never_sent = set(range(1, PREFILLED + 1)) - agent.sent_seqs
    assert never_sent, "the uplink must hold records back for this test to mean anything"

    def deliver_and_check(payload: bytes) -> None:
        agent.deliver(topic, payload)
        assert _errors(caplog) == []
        # Nothing installed, activated or rolled back; nothing written beside the store.
        assert agent.store.versions("extruder-scrap") == ["1.0.0"]
        assert agent.store.versions("fuzz-target") == []
        assert [m.ref for m in agent.store.active_models()] == [agent.active.ref]
        assert sorted(p.name for p in tmp_path.iterdir()) == beside_store
        # A forged ack may drop records that were sent (acks are not authenticated), never
        # one the uplink has not sent yet.
        assert never_sent - agent.sent_seqs <= agent.buffered_seqs()

    for known in _agent_regressions(leaf):
        deliver_and_check(known)
    FUZZ(given(payload=payloads(messages))(deliver_and_check))()

    handler = agent.uplink.stats if leaf == "ack" else agent.deployer
    assert handler.rejected_messages > 0
    for task in agent.deployer._active.values():
        assert task.cancelled() or not task.done() or task.exception() is None
    assert agent.loop.unhandled_errors() == []


def test_agent_fuzz_path_reaches_the_handlers(agent: AgentWorld) -> None:
    """The same delivery path acts on valid messages, so the fuzz test cannot pass vacuously."""
    assert agent.chunk_requests[0].sha256 == FAKE_SHA  # the command topic reached the deployer
    agent.deliver(_agent_topic("artifacts"), encode(_chunk(1000)))
    assert 1000 in agent.received_chunks()
    [batch] = agent.sent_batches
    agent.deliver(_agent_topic("ack"), encode(BatchAck(
        device_id=AGENT, batch_id=batch.batch_id, acked_seqs=[r.seq for r in batch.records])))
    assert agent.uplink.stats.acked_records == BATCH
    buffered = agent.buffered_seqs()
    assert buffered.isdisjoint(range(1, BATCH + 1))
    assert set(range(BATCH + 1, PREFILLED + 1)) <= buffered


# --- central ---------------------------------------------------------------------------------


def _central_messages(leaf: str, ref: ModelRef, command_id: str) -> list[BaseModel]:
    """Valid messages of each kind central's topic `leaf` carries, from device gw-1."""
    if leaf == "status":
        return [
            DeviceStatus(device_id=DEVICE, state="online", agent_version="1.2.0",
                         labels=["line-3"], active_models=[ref],
                         sources={"opcua": SourceState(state="connected", detail="ok")},
                         buffer=BufferHealth(depth=3, oldest_age_s=1.5, bytes_used=10,
                                             quota_bytes=100, evicted_by_kind={"sample": 1}),
                         uplink=UplinkHealth(connected=True, acked_records=4,
                                             records_per_s=2.0, round_trip_ms=12.0)),
            DeviceStatus(device_id=DEVICE, state="offline"),
        ]
    if leaf == "deployment":
        return [
            DeploymentEvent(device_id=DEVICE, command_id=command_id, model_name=ref.name,
                            version=ref.version, step="downloading", progress=0.5),
            DeploymentEvent(device_id=DEVICE, command_id="other", model_name=ref.name,
                            version=ref.version, step="failed", detail="refused"),
        ]
    if leaf == "chunk-request":
        return [ChunkRequest(device_id=DEVICE, sha256=ref.sha256, indices=[0, 1]),
                ChunkRequest(device_id=DEVICE, sha256="d" * 64, indices=[0])]
    prediction = {"pipeline": "scrap", "model": ref.model_dump(), "inputs": {"t": 1.0},
                  "outputs": {"y": 2.0}, "latency_ms": 1.0}
    records = [
        UplinkRecord(seq=1, type="prediction", created_at=1.7e9, payload=prediction),
        UplinkRecord(seq=2, type="defect", created_at=1.7e9, payload={
            **defect_payload(2, camera="cam1"), "model": ref.model_dump(),
            "images": {"frame": {"jpeg_b64": "AAAA", "width": 4, "height": 3}}}),
        UplinkRecord(seq=3, type="eviction", created_at=1.7e9,
                     payload={"ranges": [[10, 12, "sample"]], "by_kind": {"sample": 3}}),
        UplinkRecord(seq=4, type="deployment_event", created_at=1.7e9, payload=DeploymentEvent(
            device_id=DEVICE, command_id=command_id, model_name=ref.name,
            version=ref.version, step="received").model_dump(mode="json")),
        UplinkRecord(seq=5, type="model_stats", created_at=1.7e9, payload={
            "pipeline": "scrap", "model": ref.model_dump(), "started_at": 1.0, "ended_at": 2.0,
            "predictions": 3, "latency_ms": {"edges": [0.0, 1.0], "counts": [3]}}),
        UplinkRecord(seq=6, type="source_gap", created_at=1.7e9, payload={"source": "opcua"}),
    ]
    # One batch per record type keeps each message small, so mutations reach every field.
    batches = [UplinkBatch(device_id=DEVICE, records=[record]) for record in records]
    rows = [(r.seq, r.type, r.created_at, json.dumps(r.payload)) for r in records]
    packed = decode(encode_uplink_batch(DEVICE, rows, batch_id="zipped", compress=True)[1])
    assert isinstance(packed, CompressedUplinkBatch)
    pieces = split_record(DEVICE, 9, "sample", 1.7e9, json.dumps({"image": "x" * 150}), 100)
    return [*batches, packed, *pieces]


def _central_regressions(leaf: str) -> list[bytes]:
    """Payloads for `leaf` that once crashed a handler or were stored as garbage."""
    ref = ModelRef(name="extruder-scrap", version="1.0.0", sha256="a" * 64)
    first = _central_messages(leaf, ref, "regression")[0]
    if leaf == "status":
        return [DEEPLY_NESTED, spliced(first, ("uplink", "records_per_s"), "Infinity")]
    if leaf == "deployment":
        return [DEEPLY_NESTED, spliced(first, ("at",), "NaN")]
    if leaf == "chunk-request":
        return [DEEPLY_NESTED, spliced(first, ("indices", 0), str(10**400))]
    prediction, defect, eviction, *_, piece = _central_messages(leaf, ref, "regression")
    return [
        DEEPLY_NESTED,
        spliced(piece, ("seq",), str(2**64)),
        spliced(piece, ("created_at",), "1e400"),
        spliced(prediction, ("records", 0, "created_at"), "NaN"),
        spliced(prediction, ("records", 0, "payload", "latency_ms"), "Infinity"),
        spliced(defect, ("records", 0, "payload", "confidence"), str(10**400)),
        spliced(eviction, ("records", 0, "payload", "ranges", 0, 0), "-1"),
        spliced(eviction, ("records", 0, "payload", "ranges", 0, 1), str(2**64)),
    ]


class Oracle:
    """What the contract says central may store, from the same payloads it was sent."""

    def __init__(self) -> None:
        self.must_store: set[tuple[str, int]] = set()  # every seq of a valid batch
        self.may_store: set[tuple[str, int]] = set()  # a valid piece of a chunked record
        self.statuses: set[str] = set()

    def saw(self, topic: str, payload: bytes) -> None:
        parsed = TOPICS.parse_device_topic(topic)
        assert parsed is not None
        device_id, leaf = parsed
        message = decode(payload, topic_device_id=device_id)
        if leaf == "uplink" and isinstance(message, UplinkBatch | CompressedUplinkBatch):
            batch = expand_uplink(message)
            if isinstance(batch, UplinkBatch):
                self.must_store |= {(device_id, r.seq) for r in batch.records}
        elif leaf == "uplink" and isinstance(message, RecordChunk):
            self.may_store.add((device_id, message.seq))
        elif leaf == "status" and isinstance(message, DeviceStatus):
            self.statuses.add(device_id)


class CentralWorld:
    """Central's service and a `deploy --wait` follower on a MemoryBroker, with one model
    published and one deployment being followed."""

    def __init__(self, tmp_path: Path, database_url: str) -> None:
        self.config = CentralConfig.model_validate({
            "database_url": database_url, "artifact_dir": str(tmp_path / "artifacts"),
            "chunk_size_bytes": 1024, "web": {"port": 0},
            "signing_key_path": str(write_test_keys(tmp_path / "keys")[0])})
        db = CentralDB(database_url)
        try:
            self.manifest = publish_model(db, self.config.artifact_dir, SAMPLE_MODEL,
                                          "extruder-scrap", "1.0.0", metadata=SAMPLE_METADATA,
                                          chunk_size_bytes=1024, signer=TEST_SIGNER)
        finally:
            db.close()
        self.loop = _Loop()
        self.oracle = Oracle()
        self.acks: list[BatchAck] = []
        self.chunks: list[ArtifactChunk] = []
        self.commands: list[DeployCommand] = []
        self.loop.run(self._start())

    async def _start(self) -> None:
        broker = MemoryBroker()
        self.service = CentralService(self.config, MemoryTransport(broker))
        await self.service.start()
        self.device = MemoryTransport(broker)
        await self.device.start()
        await self.device.subscribe(TOPICS.ack(DEVICE), self._collect(BatchAck, self.acks))
        await self.device.subscribe(TOPICS.artifact(self.manifest.sha256),
                                    self._collect(ArtifactChunk, self.chunks))
        # Central also probes the device's clock on its status: not collected.
        await self.device.subscribe(TOPICS.commands(DEVICE),
                                    self._collect(DeployCommand, self.commands, (ClockProbe,)))
        cli = MemoryTransport(broker)
        await cli.start()
        assert self.service.db is not None
        self.follower = asyncio.create_task(deploy_and_wait(
            self.service.db, cli, TEST_SIGNER, self.manifest.name, self.manifest.version,
            DEVICE, "fuzz", timeout_s=3600, approval_required=False))
        await wait_until_async(lambda: self.commands, what="the followed deployment's command")

    @staticmethod
    def _collect(kind: type[BaseModel], into: list[Any],
                 ignored: tuple[type[BaseModel], ...] = ()) -> Any:
        async def handler(topic: str, payload: bytes) -> None:
            message = decode(payload, expect=(kind, *ignored))
            assert isinstance(message, (kind, *ignored)), message
            if isinstance(message, kind):
                into.append(message)
        return handler

    def deliver(self, topic: str, payload: bytes) -> None:
        self.oracle.saw(topic, payload)
        self.loop.run(self.device.publish(topic, payload))

    def settle(self) -> None:
        """Wait until every store and chunk send central started has finished."""
        async def idle() -> None:
            await wait_until_async(self.service.idle,
                                   what="central's stores and chunk sends")
        self.loop.run(idle())

    def rows(self, sql: str) -> list[dict[str, Any]]:
        assert self.service.db is not None
        db = self.service.db
        return self.loop.run(self.service.db_call(db_rows, db, sql))

    def close(self) -> None:
        async def stop() -> None:
            self.follower.cancel()
            await asyncio.gather(self.follower, return_exceptions=True)
            await self.service.stop()

        self.loop.run(stop())
        self.loop.close()


@pytest.fixture
def central(tmp_path: Path, database_url: str) -> Any:
    world = CentralWorld(tmp_path, database_url)
    yield world
    world.close()


def _assert_only_valid_rows(central: CentralWorld) -> None:
    """Every row central keeps of what devices sent reads back as a contract value."""
    def device_id(value: str) -> str:
        assert re.fullmatch(ID_PATTERN, value), value
        return value

    for row in central.rows("SELECT * FROM devices"):
        if row["status"]:
            status = DeviceStatus.model_validate_json(row["status"])
            assert status.device_id == device_id(row["device_id"])
        for ref in json.loads(row["active_models"]):
            ModelRef.model_validate(ref)
        DeviceStatus(device_id=row["device_id"], state="online",
                     labels=json.loads(row["reported_labels"]))
    for row in central.rows("SELECT * FROM records"):
        assert math.isfinite(row["created_at"]), row
        UplinkBatch(device_id=row["device_id"], records=[UplinkRecord(
            seq=row["seq"], type=row["type"], created_at=row["created_at"],
            payload=json.loads(row["payload"]))])
    for row in central.rows("SELECT * FROM record_assemblies"):
        device_id(row["device_id"])
        assert 0 <= row["pieces"] < row["count"], row
        assert row["bytes"] <= row["reserved_bytes"] <= MAX_RECORD_BYTES, row
    for row in central.rows("SELECT r.device_id, r.seq, r.idx, a.count FROM record_parts r "
                            "JOIN record_assemblies a USING (device_id, seq)"):
        assert 0 <= row["idx"] < row["count"], row
    for row in central.rows("SELECT * FROM deployment_events"):
        assert math.isfinite(row["at"]), row
        DeploymentEvent(device_id=row["device_id"], command_id=row["command_id"],
                        model_name="any", version="1.0.0", step=row["step"],
                        detail=row["detail"], progress=row["progress"], at=row["at"])
    for row in central.rows("SELECT * FROM deployments"):
        DeploymentEvent(device_id=row["device_id"], command_id=row["command_id"],
                        model_name=row["model_name"], version=row["version"],
                        step="received" if row["state"] == "issued" else row["state"],
                        at=row["updated_at"])
    for row in central.rows("SELECT * FROM gaps"):
        assert 1 <= row["first_seq"] <= row["last_seq"] <= MAX_SEQ, row
    for row in central.rows("SELECT * FROM defects"):
        assert math.isfinite(row["confidence"]), row
    for row in central.rows("SELECT * FROM model_stats"):
        ModelStatsPayload.model_validate_json(row["payload"])


@pytest.mark.parametrize("leaf", ["uplink", "status", "deployment", "chunk-request"])
def test_central_handlers_survive_fuzzing_and_store_only_valid_rows(
    central: CentralWorld, leaf: str, caplog: pytest.LogCaptureFixture,
) -> None:
    topic = TOPICS.device(DEVICE, leaf)
    messages = _central_messages(leaf, central.manifest.ref, central.commands[0].command_id)

    def deliver_and_check(payload: bytes) -> None:
        central.deliver(topic, payload)
        assert _errors(caplog) == []

    for known in _central_regressions(leaf):
        deliver_and_check(known)
        central.settle()
        _assert_only_valid_rows(central)  # before a later message overwrites what it left
    FUZZ(given(payload=payloads(messages))(deliver_and_check))()
    central.settle()

    assert _errors(caplog) == []
    assert sum(central.service.stats.rejected.values()) > 0
    _assert_only_valid_rows(central)
    stored = {(r["device_id"], r["seq"])
              for r in central.rows("SELECT device_id, seq FROM records")}
    oracle = central.oracle
    assert oracle.must_store <= stored <= oracle.must_store | oracle.may_store
    devices = {r["device_id"] for r in central.rows("SELECT device_id FROM devices")}
    assert oracle.statuses <= devices <= {DEVICE}
    assert not central.follower.done(), "a fuzzed event ended the followed deployment"
    assert central.loop.unhandled_errors() == []


def test_central_fuzz_path_reaches_the_handlers(central: CentralWorld) -> None:
    """The same delivery path acts on valid messages, so the fuzz test cannot pass vacuously."""
    command_id = central.commands[0].command_id
    for leaf, message in [
        ("uplink", UplinkBatch(device_id=DEVICE, records=[
            r for m in _central_messages("uplink", central.manifest.ref, command_id)
            if isinstance(m, UplinkBatch) for r in m.records])),
        ("status", _central_messages("status", central.manifest.ref, command_id)[0]),
        ("chunk-request", ChunkRequest(device_id=DEVICE, sha256=central.manifest.sha256,
                                       indices=[0, 1])),
        ("deployment", DeploymentEvent(device_id=DEVICE, command_id=command_id,
                                       model_name=central.manifest.name,
                                       version=central.manifest.version, step="activated")),
    ]:
        central.deliver(TOPICS.device(DEVICE, leaf), encode(message))
    central.settle()
    assert [a.acked_seqs for a in central.acks] == [[1, 2, 3, 4, 5, 6]]
    assert central.rows("SELECT state FROM devices") == [{"state": "online"}]
    assert sorted(c.index for c in central.chunks) == [0, 1]
    _, final = central.loop.run(central.follower)
    assert final is not None and final.step == "activated"
    assert central.rows(f"SELECT state FROM deployments WHERE command_id = '{command_id}'") \
        == [{"state": "activated"}]

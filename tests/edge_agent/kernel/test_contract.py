"""The wire contract: round trips, rejections with reasons, topics, and a light import."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edge_agent.kernel import contract
from edge_agent.kernel.contract import (
    ArtifactChunk,
    BatchAck,
    ChunkRequest,
    DeployCommand,
    DeploymentEvent,
    DeviceStatus,
    Rejection,
    RollbackCommand,
    Topics,
    UplinkBatch,
    UplinkRecord,
    decode,
    encode,
)
from tests.helpers import SAMPLE_MODEL, manifest_for

SHA = "ab" * 32


def every_message() -> list:
    manifest = manifest_for(SAMPLE_MODEL)
    return [
        DeviceStatus(device_id="gw1", state="online"),
        UplinkBatch(device_id="gw1", records=[
            UplinkRecord(seq=1, type="prediction", created_at=1.0, payload={"x": 1})]),
        BatchAck(device_id="gw1", batch_id="b1", acked_seqs=[1, 2]),
        DeployCommand(device_id="gw1", manifest=manifest),
        RollbackCommand(device_id="gw1", model_name="extruder-scrap"),
        ChunkRequest(device_id="gw1", sha256=SHA, indices=[0, 3]),
        ArtifactChunk.build(SHA, 0, 2, b"data"),
        DeploymentEvent(device_id="gw1", command_id="c1", model_name="m", version="1.0.0",
                        step="activated"),
    ]


@pytest.mark.parametrize("message", every_message(), ids=lambda m: m.kind)
def test_every_message_round_trips_with_its_schema_version(message) -> None:
    payload = encode(message)
    assert json.loads(payload)["schema_version"] == contract.SCHEMA_VERSION
    assert decode(payload) == message


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"kind": "device_status"}', "schema_version None is not supported"),
        (b'{"schema_version": 2, "kind": "device_status"}', "schema_version 2 is not supported"),
        (b'{"schema_version": 1, "kind": "teleport"}', "invalid"),
        (b'{"schema_version": 1, "kind": "device_status", "device_id": "a/b", "state": "online"}',
         "device_id"),
        (b'{"schema_version": 1, "kind": "batch_ack", "device_id": "gw1", "batch_id": "b",'
         b' "acked_seqs": [], "surprise": 1}', "surprise"),
    ],
)
def test_malformed_payloads_are_rejected_with_a_reason(payload: bytes, reason: str) -> None:
    result = decode(payload)
    assert isinstance(result, Rejection)
    assert not result
    assert reason in result.reason


def test_oversized_payload_is_rejected_without_parsing() -> None:
    result = decode(b" " * (contract.MAX_PAYLOAD_BYTES + 1))
    assert isinstance(result, Rejection) and "exceeds" in result.reason


def test_unexpected_kind_is_rejected() -> None:
    payload = encode(DeviceStatus(device_id="gw1", state="online"))
    result = decode(payload, expect=(UplinkBatch,))
    assert isinstance(result, Rejection) and "expected UplinkBatch" in result.reason


def test_device_cannot_speak_for_another_device() -> None:
    payload = encode(DeviceStatus(device_id="gw2", state="online"))
    result = decode(payload, topic_device_id="gw1")
    assert isinstance(result, Rejection) and "does not match" in result.reason


def test_corrupt_chunk_is_detected_by_its_hash() -> None:
    chunk = ArtifactChunk.build(SHA, 0, 1, b"good bytes")
    other = ArtifactChunk.build(SHA, 0, 1, b"bad")
    tampered = chunk.model_copy(update={"data_b64": other.data_b64})
    with pytest.raises(ValueError, match="corrupt"):
        tampered.data()


def test_chunk_index_must_be_below_count() -> None:
    payload = json.loads(encode(ArtifactChunk.build(SHA, 0, 1, b"x")))
    payload["index"] = 5
    result = decode(json.dumps(payload))
    assert isinstance(result, Rejection) and "not below count" in result.reason


def test_topics_are_built_and_parsed_under_a_prefix() -> None:
    topics = Topics("plant-7")
    assert topics.uplink("gw1") == "plant-7/devices/gw1/uplink"
    assert topics.all_devices("status") == "plant-7/devices/+/status"
    assert topics.parse_device_topic("plant-7/devices/gw1/ack") == ("gw1", "ack")
    assert topics.parse_device_topic("other/devices/gw1/ack") is None
    assert topics.artifact(SHA) == f"plant-7/artifacts/{SHA}"
    with pytest.raises(ValueError, match="device id"):
        topics.status("gw/1")
    with pytest.raises(ValueError, match="prefix"):
        Topics("a/#")


def test_markdown_documents_every_topic_and_message() -> None:
    text = contract.contract_markdown("edge-mlops")
    for spec in contract.DEVICE_TOPICS:
        assert f"edge-mlops/devices/{{device_id}}/{spec.leaf}" in text
    for message in every_message():
        assert type(message).__name__ in text


def _third_party_modules_after(statement: str) -> set[str]:
    """Top-level packages outside the standard library (and the project) loaded by `statement`,
    in a fresh interpreter."""
    code = (
        "import sys\nbefore = set(sys.modules)  # the interpreter's and site's own\n"
        f"{statement}\n"
        "tops = {name.split('.')[0] for name in set(sys.modules) - before}\n"
        "print(' '.join(sorted(t for t in tops if t not in sys.stdlib_module_names\n"
        "                      and not t.startswith('_') and t != 'cython_runtime')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    return set(result.stdout.split()) - {"edge_agent", "__main__"}


def test_contract_imports_only_pydantic_and_the_standard_library() -> None:
    loaded = _third_party_modules_after("import edge_agent.kernel.contract")
    assert loaded <= {"pydantic", "pydantic_core", "typing_extensions", "annotated_types",
                      "typing_inspection"}, loaded


def test_broker_config_imports_without_paho() -> None:
    loaded = _third_party_modules_after(
        "from edge_agent.kernel.transport import BrokerConfig, Transport")
    assert "paho" not in loaded, loaded


def test_fast_batch_encoding_decodes_to_the_same_batch() -> None:
    rows = [(1, "prediction", 1.5, '{"a":1}'), (2, "eviction", 2.25, '{"ranges":[]}')]
    batch_id, payload = contract.encode_uplink_batch("gw1", rows, batch_id="b1")
    decoded = decode(payload, expect=(UplinkBatch,), topic_device_id="gw1")
    assert isinstance(decoded, UplinkBatch) and batch_id == "b1"
    assert [(r.seq, r.type, r.created_at, r.payload) for r in decoded.records] == [
        (1, "prediction", 1.5, {"a": 1}), (2, "eviction", 2.25, {"ranges": []})]


def test_compressed_batch_expands_to_the_batch() -> None:
    rows = [(i, "prediction", float(i), '{"value":1.0}') for i in range(1, 500)]
    _, plain = contract.encode_uplink_batch("gw1", rows, batch_id="b7")
    _, packed = contract.encode_uplink_batch("gw1", rows, batch_id="b7", compress=True)
    assert len(packed) < len(plain) / 5
    message = decode(packed, topic_device_id="gw1")
    assert isinstance(message, contract.CompressedUplinkBatch)
    expanded, original = contract.expand_uplink(message), decode(plain)
    assert expanded.batch_id == original.batch_id and expanded.records == original.records


def test_compressed_batch_that_expands_too_far_is_rejected() -> None:
    import base64
    import zlib

    bomb = zlib.compress(b" " * (contract.MAX_PAYLOAD_BYTES * 4 + 10), 9)
    message = contract.CompressedUplinkBatch(device_id="gw1", batch_id="b",
                                             data_b64=base64.b64encode(bomb).decode())
    result = contract.expand_uplink(message)
    assert isinstance(result, Rejection) and "expands beyond" in result.reason


def test_compressed_batch_for_another_device_is_rejected() -> None:
    _, packed = contract.encode_uplink_batch("gw2", [(1, "prediction", 1.0, "{}")],
                                             batch_id="b", compress=True)
    outer = json.loads(packed)
    outer["device_id"] = "gw1"
    message = decode(json.dumps(outer), topic_device_id="gw1")
    result = contract.expand_uplink(message)
    assert isinstance(result, Rejection) and "does not match" in result.reason


def test_large_record_is_split_and_joined_back() -> None:
    payload_json = json.dumps({"image": "x" * 10_000, "label": "scratch"})
    pieces = contract.split_record("gw1", 9, "defect", 5.0, payload_json, 1024)
    assert len(pieces) == -(-len(payload_json) // 1024)
    assert all(len(encode(p)) < 2048 for p in pieces)
    decoded = [decode(encode(p), topic_device_id="gw1") for p in pieces]
    record = contract.join_record(decoded)
    assert record == UplinkRecord(seq=9, type="defect", created_at=5.0,
                                  payload=json.loads(payload_json))
    assert contract.chunked_batch_id(9) == "record-9"


def test_joined_record_with_a_wrong_piece_is_rejected() -> None:
    pieces = contract.split_record("gw1", 3, "defect", 1.0, json.dumps({"a": "b" * 100}), 40)
    forged = pieces[1].model_copy(update={"data_b64": pieces[0].data_b64})
    result = contract.join_record([pieces[0], forged, *pieces[2:]])
    assert isinstance(result, Rejection) and "does not match its sha256" in result.reason


@pytest.mark.parametrize("message", [
    {"kind": "device_status", "device_id": "gw1\n", "state": "online"},
    {"kind": "device_status", "device_id": "gw1", "state": "online", "labels": ["line-3\n"]},
    {"kind": "deployment_event", "device_id": "gw1\n", "command_id": "c1",
     "model_name": "m", "version": "1.0.0", "step": "failed"},
    {"kind": "deployment_event", "device_id": "gw1", "command_id": "c1",
     "model_name": "m\n", "version": "1.0.0\n", "step": "failed"},
])
def test_ids_with_a_trailing_line_break_are_refused_on_the_wire(message: dict) -> None:
    """A trailing line break would pass a Python `re.match(...$)` and break Mosquitto's files."""
    assert isinstance(decode(json.dumps(message)), Rejection)
    assert not isinstance(decode(json.dumps({
        k: v.strip() if isinstance(v, str) else [x.strip() for x in v] if isinstance(v, list)
        else v for k, v in message.items()})), Rejection)

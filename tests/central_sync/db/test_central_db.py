"""The repository layer: schema, idempotent ingest, projection, models, deployments, audit."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from central_helpers import make_batch, prediction_payload

from central_sync.db import (
    MIGRATIONS,
    CentralDB,
    DatabaseError,
    DeploymentEventRefused,
    ModelVersionExists,
)
from central_sync.db.broker_accounts import UnknownAccount
from central_sync.db.schema import migrations_for
from edge_agent.kernel.contract import (
    DeployCommand,
    DeploymentEvent,
    DeviceStatus,
    ModelManifest,
    ModelRef,
    Rejection,
    RollbackCommand,
    TensorSpec,
    UplinkBatch,
    UplinkRecord,
)


def manifest(version: str = "1.0.0", sha: str = "a") -> ModelManifest:
    spec = TensorSpec(name="x", dtype="float32", shape=[None, 3])
    return ModelManifest(name="scrap-model", version=version, kind="process", sha256=sha * 64,
                         size_bytes=100, chunk_size_bytes=1024, inputs=[spec], outputs=[spec])


def test_schema_is_versioned_and_reopening_does_not_migrate_again(database_url: str) -> None:
    first = CentralDB(database_url)
    migrations = migrations_for(first._db)
    assert first.schema_version() == migrations[-1][0] == MIGRATIONS[-1][0]
    first.close()
    again = CentralDB(database_url)
    rows = list(again._db.query("SELECT version FROM schema_migrations ORDER BY version"))
    assert [r["version"] for r in rows] == [m[0] for m in migrations]
    if again.dialect == "sqlite":
        assert next(again._db.query("PRAGMA journal_mode"))["journal_mode"] == "wal"
    again.close()


def test_batch_stored_twice_is_kept_once_and_all_seqs_returned(db: CentralDB) -> None:
    batch = make_batch("gw-1", range(1, 4))
    assert db.store_batch(batch) == [1, 2, 3]
    assert db.store_batch(batch) == [1, 2, 3]
    overlapping = make_batch("gw-1", [3, 4])
    assert db.store_batch(overlapping) == [3, 4]
    assert db.count_records() == 4
    assert db.count_records("gw-1") == 4
    assert len(db.recent_predictions(100)) == 4


def test_same_seq_from_two_devices_are_two_records(db: CentralDB) -> None:
    db.store_batch(make_batch("gw-1", [1]))
    db.store_batch(make_batch("gw-2", [1]))
    assert db.count_records() == 2
    assert db.count_records("gw-2") == 1


def test_batch_updates_device_last_seq_and_last_seen(db: CentralDB) -> None:
    db.store_batch(make_batch("gw-1", [5, 6]), received_at=1000.0)
    db.store_batch(make_batch("gw-1", [2]), received_at=2000.0)
    [device] = db.list_devices()
    assert (device.device_id, device.last_seq, device.last_seen) == ("gw-1", 6, 2000.0)
    assert device.records == 3


def test_prediction_records_are_projected_with_lineage(db: CentralDB) -> None:
    db.store_batch(make_batch("gw-1", [7]))
    [row] = db.recent_predictions(10, device_id="gw-1")
    assert row["pipeline"] == "scrap"
    assert (row["model_name"], row["model_version"], row["model_sha256"]) == (
        "scrap-model", "1.0.0", "a" * 64)
    assert row["outputs"] == {"scrap_rate_pct": 4.2}
    assert row["inputs"] == {"zone2_temp_c": 182.0}
    assert row["latency_ms"] == 1.5


def test_other_record_types_go_only_to_records(db: CentralDB) -> None:
    db.store_batch(make_batch("gw-1", [1, 2], record_type="deployment_event"))
    assert db.count_records() == 2
    assert db.recent_predictions(10) == []


def test_malformed_prediction_payload_is_stored_but_not_projected(db: CentralDB) -> None:
    batch = UplinkBatch(device_id="gw-1", records=[
        UplinkRecord(seq=1, type="prediction", created_at=1.0, payload={"model": "oops"}),
        UplinkRecord(seq=2, type="prediction", created_at=2.0, payload=prediction_payload()),
    ])
    assert db.store_batch(batch) == [1, 2]
    assert db.count_records() == 2
    assert [p["seq"] for p in db.recent_predictions(10)] == [2]


def test_stats_with_an_infinite_number_are_stored_as_records_but_not_projected(
        db: CentralDB) -> None:
    """JSON has no Infinity: 1e400 parses as one, and the stored text would hold null there,
    which the stats model then refuses when a page reads it."""
    stats = {"pipeline": "scrap", "model": {"name": "m", "version": "1.0.0", "sha256": "a" * 64},
             "started_at": 1.0, "ended_at": 2.0, "predictions": 3,
             "latency_ms": {"edges": [0.0, 1.0], "counts": [3]}}
    broken = {**stats, "latency_ms": {"edges": [-1e400, 1.0], "counts": [3]}}
    batch = UplinkBatch.model_validate_json(json.dumps({
        "device_id": "gw-1", "records": [
            {"seq": 1, "type": "model_stats", "created_at": 1.0, "payload": stats},
            {"seq": 2, "type": "model_stats", "created_at": 2.0, "payload": broken}],
    }).replace("-Infinity", "-1e400"))
    assert db.store_batch(batch) == [1, 2]
    assert db.count_records() == 2
    assert [s.predictions for _, s in db.model_stats("m")] == [3]


def test_recent_predictions_newest_first_and_limited(db: CentralDB) -> None:
    db.store_batch(make_batch("gw-1", range(1, 11)))
    rows = db.recent_predictions(3)
    assert [r["seq"] for r in rows] == [10, 9, 8]


def test_online_status_stores_models_and_offline_will_keeps_them(db: CentralDB) -> None:
    ref = ModelRef(name="scrap-model", version="1.0.0", sha256="a" * 64)
    online = DeviceStatus(device_id="gw-1", state="online", agent_version="0.1.0",
                          active_models=[ref], buffer={"depth": 12, "bytes_used": 10,
                                                       "quota_bytes": 100})
    db.update_status(online, received_at=100.0)
    db.update_status(DeviceStatus(device_id="gw-1", state="offline"), received_at=200.0)
    [device] = db.list_devices()
    assert device.state == "offline"
    assert device.state_at == 200.0
    assert device.last_seen == 100.0
    assert device.agent_version == "0.1.0"
    assert device.active_models == [ref]
    assert device.buffer_depth == 12


def test_presence_turns_offline_after_silence(db: CentralDB) -> None:
    db.update_status(DeviceStatus(device_id="gw-1", state="online"), received_at=100.0)
    [device] = db.list_devices()
    assert device.presence(now=150.0, offline_after_s=120) == "online"
    assert device.presence(now=300.0, offline_after_s=120) == "offline"


def test_model_versions_are_immutable(db: CentralDB) -> None:
    db.add_model(manifest(), "alice")
    assert db.add_model(manifest(), "bob").sha256 == "a" * 64
    with pytest.raises(ModelVersionExists, match=r"1\.0\.0 already exists .* publish 1\.0\.1"):
        db.add_model(manifest(sha="b"), "bob")
    with pytest.raises(DatabaseError, match="immutable"):
        db._db.execute("UPDATE models SET sha256 = 'x'")
    [only] = db.list_models()
    assert only.published_by == "alice"
    assert db.get_model_by_sha256("a" * 64) == manifest().model_copy(
        update={"published_at": only.manifest.published_at})
    assert db.get_model("scrap-model", "9.9.9") is None


def test_publish_and_deploy_are_audited(db: CentralDB) -> None:
    db.add_model(manifest(), "alice")
    command = DeployCommand(device_id="gw-1", manifest=manifest(), issued_by="bob")
    db.create_deployment(command)
    actions = {(a["action"], a["actor"]) for a in db.list_audit()}
    assert actions == {("model.publish", "alice"), ("model.deploy", "bob")}
    assert db.get_deployment(command.command_id)["state"] == "issued"


def _event(command_id: str, step: str, at: float) -> DeploymentEvent:
    return DeploymentEvent(device_id="gw-1", command_id=command_id, model_name="scrap-model",
                           version="1.0.0", step=step, at=at)


def test_deployment_events_move_state_forward_only_and_are_idempotent(db: CentralDB) -> None:
    command = DeployCommand(device_id="gw-1", manifest=manifest(), issued_by="bob")
    db.create_deployment(command)
    cid = command.command_id
    assert db.record_deployment_event(_event(cid, "downloading", 10.0))
    assert db.record_deployment_event(_event(cid, "activated", 30.0))
    assert not db.record_deployment_event(_event(cid, "activated", 30.0))
    assert db.record_deployment_event(_event(cid, "verifying", 20.0))  # arrived late
    assert db.get_deployment(cid)["state"] == "activated"
    assert [e["step"] for e in db.deployment_events(cid)] == [
        "downloading", "verifying", "activated"]


def test_deployment_event_for_a_command_central_never_issued_is_refused(db: CentralDB) -> None:
    with pytest.raises(DeploymentEventRefused, match="central issued no command of that id"):
        db.record_deployment_event(_event("elsewhere", "failed", 5.0))
    assert db.get_deployment("elsewhere") is None
    assert db.deployment_events("elsewhere") == []


def test_deployment_event_from_another_device_changes_nothing(db: CentralDB) -> None:
    command = DeployCommand(device_id="gw-1", manifest=manifest(), issued_by="bob")
    db.create_deployment(command)
    forged = _event(command.command_id, "failed", 5.0).model_copy(update={"device_id": "gw-2"})
    with pytest.raises(DeploymentEventRefused, match="issued to gw-1"):
        db.record_deployment_event(forged)
    record = UplinkRecord(seq=1, type="deployment_event", created_at=5.0,
                          payload=forged.model_dump(mode="json"))
    db.store_batch(UplinkBatch(device_id="gw-2", records=[record]))  # through the buffer too
    assert db.count_records("gw-2") == 1, "the rest of the batch is stored"
    assert db.get_deployment(command.command_id)["state"] == "issued"
    assert db.deployment_events(command.command_id) == []


def test_a_rollback_sent_to_a_device_accepts_that_device_s_steps(db: CentralDB) -> None:
    command = RollbackCommand(device_id="gw-1", model_name="scrap-model", issued_by="rollout r1")
    db.record_rollback_command(command)
    assert db.record_deployment_event(_event(command.command_id, "rolled_back", 5.0))
    assert db.get_deployment(command.command_id)["state"] == "rolled_back"
    assert ("rollout r1", "model.rollback") in {(a["actor"], a["action"])
                                                for a in db.list_audit()}


def test_deployment_events_in_uplink_records_are_applied_once(db: CentralDB) -> None:
    command = DeployCommand(device_id="gw-1", manifest=manifest(), issued_by="bob")
    db.create_deployment(command)
    event = _event(command.command_id, "activated", 40.0)
    record = UplinkRecord(seq=7, type="deployment_event", created_at=40.0,
                          payload=event.model_dump(mode="json"))
    batch = UplinkBatch(device_id="gw-1", records=[record])
    db.store_batch(batch)
    db.store_batch(batch)
    assert not db.record_deployment_event(event), "the live copy is now a duplicate"
    assert db.get_deployment(command.command_id)["state"] == "activated"
    assert [e["step"] for e in db.deployment_events(command.command_id)] == ["activated"]


def test_deployment_event_record_naming_another_device_is_not_applied(db: CentralDB) -> None:
    event = _event("cmd-x", "activated", 40.0)
    record = UplinkRecord(seq=1, type="deployment_event", created_at=40.0,
                          payload=event.model_dump(mode="json"))
    db.store_batch(UplinkBatch(device_id="gw-2", records=[record]))
    assert db.get_deployment("cmd-x") is None
    assert db.count_records("gw-2") == 1


def test_eviction_reports_become_gaps_not_loss(db: CentralDB) -> None:
    db.store_batch(make_batch("gw-1", [1, 2, 6]))
    report = UplinkRecord(seq=7, type="eviction", created_at=50.0, payload={
        "ranges": [[3, 4, "prediction"], [5, 5, "metric"]],
        "by_kind": {"prediction": 2, "metric": 1}})
    batch = UplinkBatch(device_id="gw-1", records=[report])
    db.store_batch(batch)
    db.store_batch(batch)
    assert [(g["first_seq"], g["last_seq"], g["kind"]) for g in db.gaps("gw-1")] == [
        (3, 4, "prediction"), (5, 5, "metric")]
    assert db.seq_accounting("gw-1") == {"last_seq": 7, "stored": 4, "evicted": 3,
                                         "outstanding": 0}
    assert db.list_devices()[0].evicted == 3


def test_unreadable_eviction_report_is_stored_without_gaps(db: CentralDB) -> None:
    record = UplinkRecord(seq=1, type="eviction", created_at=1.0, payload={"ranges": "all"})
    db.store_batch(UplinkBatch(device_id="gw-1", records=[record]))
    assert db.gaps("gw-1") == []
    assert db.count_records("gw-1") == 1


def test_database_of_schema_1_is_migrated_keeping_its_rows(tmp_path: Path) -> None:
    from sqlite_utils import Database

    from central_sync.db.connection import open_connection
    from central_sync.db.schema import apply_migrations

    path = tmp_path / "old.db"
    old = Database(path)
    with old.atomic():
        old.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, "
                    "description TEXT NOT NULL, applied_at REAL NOT NULL)")
        for sql in MIGRATIONS[0][2]:
            old.execute(sql)
        old.execute("INSERT INTO schema_migrations VALUES (1, 'initial schema', 0)")
        old.execute("INSERT INTO records VALUES ('gw-1', 7, 'prediction', 1.0, 2.0, '{}')")
        old.execute("INSERT INTO predictions VALUES ('gw-1', 7, 1.0, 'p', 'm', '1.0.0', 'a', "
                    "'{}', '{}', 0.5)")
    assert apply_migrations(open_connection(path)) == MIGRATIONS[-1][0]
    assert "gaps" in old.table_names()
    assert [tuple(r) for r in old.execute("SELECT device_id, seq, type FROM records")] == [
        ("gw-1", 7, "prediction")]
    assert [tuple(r) for r in old.execute("SELECT seq, latency_ms FROM predictions")] == [(7, 0.5)]
    old.close()


def test_large_record_is_stored_once_all_its_chunks_arrived(db: CentralDB) -> None:
    from edge_agent.kernel.contract import split_record

    payload = prediction_payload()
    text = json.dumps({**payload, "pipeline": "p" * 3000})
    pieces = split_record("gw-1", 4, "prediction", 9.0, text, 500)
    assert db.store_record_chunk(pieces[2], NO_LIMIT) is None
    assert db.store_record_chunk(pieces[0], NO_LIMIT) is None
    assert db.store_record_chunk(pieces[0], NO_LIMIT) is None, "a repeated piece changes nothing"
    for piece in pieces[1:-1]:
        assert db.store_record_chunk(piece, NO_LIMIT) is None
    assert db.store_record_chunk(pieces[-1], NO_LIMIT) == [4]
    assert db.count_records("gw-1") == 1
    assert db.recent_predictions(5)[0]["pipeline"] == "p" * 3000
    assert db.store_record_chunk(pieces[1], NO_LIMIT) == [4], "a resend after the ack is acked"
    assert list(db._db.query("SELECT * FROM record_parts")) == []
    assert list(db._db.query("SELECT * FROM record_assemblies")) == []


NO_LIMIT = 1 << 40


def _pieces(seq: int, size: int, piece_bytes: int) -> list:
    from edge_agent.kernel.contract import split_record

    return split_record("gw-1", seq, "sample", 9.0, json.dumps({"image": "x" * size}),
                        piece_bytes)


def test_pieces_of_a_new_record_beyond_the_devices_pending_limit_are_refused(
    db: CentralDB,
) -> None:
    first, second = _pieces(1, 5000, 1000), _pieces(2, 5000, 1000)
    reserved = first[0].count * first[0].piece_bytes  # about 5000 bytes
    limit = 8 * 1000  # room for one record, not two
    assert db.store_record_chunk(first[0], limit) is None
    refused = db.store_record_chunk(second[0], limit)
    assert isinstance(refused, Rejection)
    assert "pending_record_bytes_per_device" in refused.reason
    assert db.pending_record_bytes("gw-1") == reserved, "the refused piece reserved nothing"
    for piece in first[1:-1]:
        assert db.store_record_chunk(piece, limit) is None, "the started record goes on"
    assert db.store_record_chunk(first[-1], limit) == [1]
    assert db.pending_record_bytes("gw-1") == 0
    for piece in second[:-1]:
        assert db.store_record_chunk(piece, limit) is None, "room again once it is stored"
    assert db.store_record_chunk(second[-1], limit) == [2]
    assert db.count_records("gw-1") == 2


def test_unfinished_records_expire_and_only_they(db: CentralDB) -> None:
    idle, active = _pieces(1, 3000, 1000), _pieces(2, 3000, 1000)
    assert db.store_record_chunk(idle[0], NO_LIMIT, received_at=100.0) is None
    assert db.store_record_chunk(idle[1], NO_LIMIT, received_at=110.0) is None
    assert db.store_record_chunk(active[0], NO_LIMIT, received_at=100.0) is None
    assert db.store_record_chunk(active[1], NO_LIMIT, received_at=300.0) is None
    expired = db.expire_record_assemblies(idle_since=200.0)
    assert [(r.device_id, r.seq, r.pieces, r.count) for r in expired] == [
        ("gw-1", 1, 2, len(idle))]
    rows = list(db._db.query("SELECT DISTINCT seq FROM record_parts"))
    assert [row["seq"] for row in rows] == [2], "the expired record's pieces are gone"
    for piece in active[2:]:
        db.store_record_chunk(piece, NO_LIMIT)
    assert db.count_records("gw-1") == 1


def test_a_piece_larger_than_its_record_reserved_is_refused_past_the_limit(
    db: CentralDB,
) -> None:
    """A first piece of a few bytes cannot reserve little, then grow the record unbounded."""
    from edge_agent.kernel.contract import RecordChunk

    small = _pieces(1, 10, 4)[0]
    grown = RecordChunk.model_validate({**small.model_dump(), "index": 1,
                                        "data_b64": base64.b64encode(b"y" * 1500).decode()})
    assert db.store_record_chunk(small, 5000) is None
    refused = db.store_record_chunk(grown, 5000)
    assert isinstance(refused, Rejection)


def test_sqlite_style_sql_is_rewritten_for_postgresql() -> None:
    from central_sync.db.connection import to_postgres

    assert to_postgres("INSERT OR IGNORE INTO gaps (a, b) VALUES (?, ?)") == \
        "INSERT INTO gaps (a, b) VALUES (%s, %s) ON CONFLICT DO NOTHING"
    assert to_postgres("SELECT 1 WHERE x LIKE '10%' AND y = ?") == \
        "SELECT 1 WHERE x LIKE '10%%' AND y = %s"


def test_urls_name_the_database_and_hide_passwords() -> None:
    from central_sync.db.connection import DatabaseUrlError, open_connection, redact

    assert redact("postgresql://central:s3cret@db:5432/plant") == \
        "postgresql://central:***@db:5432/plant"
    with pytest.raises(DatabaseUrlError, match="neither sqlite:///PATH nor postgresql://"):
        open_connection("mysql://root@db/plant")


def test_postgresql_connection_lost_is_reopened_on_the_next_call() -> None:
    import psycopg

    from tests.conftest import postgres_database

    with postgres_database() as url:
        db = CentralDB(url)
        db.store_batch(make_batch("gw-1", [1]))
        with psycopg.connect(url, autocommit=True) as other:  # as a server restart would
            other.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                          "datname = current_database() AND pid <> pg_backend_pid()")
        with pytest.raises(DatabaseError):
            db.store_batch(make_batch("gw-1", [2]))  # not acked: the device sends it again
        assert db.store_batch(make_batch("gw-1", [2])) == [2]
        assert db.count_records("gw-1") == 2
        db.close()


def test_groups_come_from_provisioning_never_from_what_a_device_reports(db: CentralDB) -> None:
    db.add_broker_account("gw-1", "device", ["line-3", "oven"], "x", by="ann")
    db.add_broker_account("gw-2", "device", ["line-3"], "x", by="ann")
    db.add_broker_account("gw-3", "device", ["line-30"], "x", by="ann")
    db.add_broker_account("gw-0", "device", [], "x", by="ann")  # provisioned without labels
    db.add_broker_account("gw-old", "device", ["line-3"], "x", by="ann")
    db.revoke_broker_account("gw-old", by="ann")
    db.update_status(DeviceStatus(device_id="gw-0", state="online", labels=["line-3"]))
    db.update_status(DeviceStatus(device_id="gw-9", state="online", labels=["line-3"]))
    db.update_status(DeviceStatus(device_id="gw-1", state="online", labels=["line-3"]))
    assert db.devices_labelled("line-3") == ["gw-1", "gw-2"]
    assert db.devices_labelled("oven") == ["gw-1"]
    assert db.devices_labelled("line") == []
    fleet = {d.device_id: d for d in db.list_devices()}
    assert (fleet["gw-0"].labels, fleet["gw-0"].reported_labels) == ((), ("line-3",))
    assert fleet["gw-0"].unconfirmed_labels == ("line-3",)
    assert (fleet["gw-9"].labels, fleet["gw-9"].unconfirmed_labels) == ((), ("line-3",))
    assert fleet["gw-1"].labels == ("line-3", "oven") and fleet["gw-1"].unconfirmed_labels == ()


def test_a_device_s_groups_change_only_by_an_audited_label_command(db: CentralDB) -> None:
    db.add_broker_account("gw-1", "device", ["line-3"], "x", by="ann")
    assert db.set_device_labels("gw-1", ["line-4", "oven"], by="bob") == ("line-3",)
    assert db.devices_labelled("line-3") == [] and db.devices_labelled("line-4") == ["gw-1"]
    assert ("bob", "device.labels", "gw-1", "labels=line-4,oven before=line-3") in {
        (a["actor"], a["action"], a["subject"], a["detail"]) for a in db.list_audit()}
    with pytest.raises(UnknownAccount, match="not a provisioned device"):
        db.set_device_labels("gw-9", ["line-3"], by="bob")


def test_records_are_listed_without_their_images_which_are_served_apart(db: CentralDB) -> None:
    defect = {"label": "scratch", "confidence": 0.97,
              "images": {"frame": {"jpeg_b64": "AAAA", "width": 4, "height": 3},
                         "annotated": {"jpeg_b64": "BBBB", "width": 4, "height": 3}}}
    db.store_batch(UplinkBatch(device_id="gw-1", records=[
        UplinkRecord(seq=1, type="defect", created_at=10.0, payload=defect),
        UplinkRecord(seq=2, type="defect", created_at=20.0, payload={"label": "pit"}),
        UplinkRecord(seq=3, type="sample", created_at=30.0, payload={"label": "ok"})]))
    newest, first = db.recent_records("defect")
    assert newest["payload"] == {"label": "pit"} and newest["images"] == []
    assert first["payload"] == {"label": "scratch", "confidence": 0.97}
    assert sorted(first["images"]) == ["annotated", "frame"]
    assert db.record_image("gw-1", 1, "annotated") == "BBBB"
    assert db.record_image("gw-1", 1, "thumbnail") is None
    assert db.record_image("gw-1", 2, "frame") is None


def test_a_lease_has_one_holder_until_it_runs_out(db: CentralDB) -> None:
    assert db.hold_lease("rollouts", "central-a", 10, now=100.0)
    assert not db.hold_lease("rollouts", "central-b", 10, now=105.0)
    assert db.hold_lease("rollouts", "central-a", 10, now=108.0)  # renewed to 118
    assert not db.hold_lease("rollouts", "central-b", 10, now=117.0)
    assert db.hold_lease("rollouts", "central-b", 10, now=118.5)  # a stopped, b takes over
    assert not db.hold_lease("rollouts", "central-a", 10, now=119.0)
    assert db.hold_lease("other-job", "central-a", 10, now=119.0)

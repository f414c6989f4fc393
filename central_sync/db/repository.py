"""CentralDB: every query and write of central-sync, over SQLite (WAL mode) or PostgreSQL.

The SQL is kept plain and shared; the few statements that differ (JSON functions) are chosen
by the connection's dialect.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

from central_sync.db.accounts import AccountQueries
from central_sync.db.agent_releases import AgentReleaseQueries
from central_sync.db.alert_deliveries import AlertDeliveryQueries
from central_sync.db.alert_facts import AlertFactQueries
from central_sync.db.alerts import AlertQueries
from central_sync.db.audit import AuditQueries
from central_sync.db.broker_accounts import BrokerAccountQueries
from central_sync.db.configs import ConfigQueries
from central_sync.db.connection import open_connection, serialised
from central_sync.db.datasets import DatasetQueries
from central_sync.db.diagnostics import DiagnosticQueries
from central_sync.db.model_states import ModelStateQueries
from central_sync.db.overview import OverviewQueries
from central_sync.db.record_parts import RecordPartQueries
from central_sync.db.review import ReviewQueries
from central_sync.db.rollouts import RolloutQueries
from central_sync.db.rows import (
    DEFECT_INSERT,
    DEPLOYMENT_ISSUED,
    MODEL_STATS_INSERT,
    PREDICTION_INSERT,
    ROLLBACK_TO_PREVIOUS,
    SAMPLE_INSERT,
    DeploymentEventRefused,
    DeviceSummary,
    ModelVersionExists,
    PublishedModel,
    device_summary,
    rows_for_batch,
    version_exists_message,
)
from central_sync.db.samples import SampleQueries
from central_sync.db.schema import apply_migrations
from edge_agent.kernel.contract import (
    DeployCommand,
    DeploymentEvent,
    DeviceStatus,
    ModelManifest,
    ModelStatsPayload,
    RollbackCommand,
    UplinkBatch,
)

log = logging.getLogger(__name__)

# A deployment in one of these states no longer fetches its artifact.
CLOSED_DEPLOYMENT_STATES = frozenset({"activated", "confirmed", "failed", "rolled_back"})


class CentralDB(AuditQueries, ReviewQueries, SampleQueries, RolloutQueries, AccountQueries,
                BrokerAccountQueries, RecordPartQueries, ModelStateQueries, DatasetQueries,
                DiagnosticQueries, ConfigQueries, AgentReleaseQueries, AlertQueries,
                AlertFactQueries, AlertDeliveryQueries, OverviewQueries):
    """Central's database. Thread-safe: calls are serialised on one connection.

    Callers on an asyncio loop run these methods in a worker thread, never on the loop.
    """

    def __init__(self, target: str | Path, busy_timeout_ms: int = 5000) -> None:
        """`target`: a SQLite file path or sqlite:///PATH, or postgresql://USER@HOST/DB."""
        self._db = open_connection(target, busy_timeout_ms)
        self.name = self._db.name
        self.dialect = self._db.dialect
        self._lock = threading.RLock()
        with self._lock:
            apply_migrations(self._db)
            self._chain_unchained_audit()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- schema ---------------------------------------------------------------------------

    @serialised
    def schema_version(self) -> int:
        row = next(self._db.query("SELECT MAX(version) AS v FROM schema_migrations"))
        return row["v"] or 0

    # --- ingest ---------------------------------------------------------------------------

    @serialised
    def store_batch(self, batch: UplinkBatch, received_at: float | None = None) -> list[int]:
        return self._store_batch_unlocked(batch, received_at)

    def _store_batch_unlocked(self, batch: UplinkBatch,
                              received_at: float | None = None) -> list[int]:
        """Store a batch idempotently on (device_id, seq), in one transaction.

        Returns every seq of the batch that is now stored, duplicates included: all of them
        may be acknowledged.
        """
        received_at = time.time() if received_at is None else received_at
        rows = rows_for_batch(batch, received_at)
        max_seq = max(record.seq for record in batch.records)
        with self._db.atomic():
            inserted = self._db.executemany(
                "INSERT OR IGNORE INTO records (device_id, seq, type, created_at, received_at, "
                "payload) VALUES (?, ?, ?, ?, ?, ?)", rows.records)
            self._db.executemany(PREDICTION_INSERT[self.dialect], rows.predictions)
            self._db.executemany(DEFECT_INSERT, rows.defects)
            self._db.executemany(SAMPLE_INSERT, rows.samples)
            self._db.executemany(MODEL_STATS_INSERT, rows.model_stats)
            self._db.executemany(
                "INSERT OR IGNORE INTO gaps (device_id, first_seq, last_seq, kind, reason, "
                "reported_seq) VALUES (?, ?, ?, ?, ?, ?)", rows.gaps)
            # Steps that went through the buffer while the live topic was unavailable.
            for event in rows.deployment_events:
                try:
                    self._apply_deployment_event(event)
                except DeploymentEventRefused as exc:  # the rest of the batch is stored
                    log.warning("deployment event refused device=%s command=%s reason=%s "
                                "(uplink)", exc.device_id, exc.command_id, exc.reason)
            device = self._device_row(batch.device_id)
            self._flag_suspect_records(batch, device, received_at)
            if device is None:
                self._db.execute(
                    "INSERT INTO devices (device_id, state, last_seen, last_seq) "
                    "VALUES (?, 'unknown', ?, ?)", (batch.device_id, received_at, max_seq))
            else:
                self._db.execute(
                    "UPDATE devices SET last_seen = ?, last_seq = ? WHERE device_id = ?",
                    (received_at, max(device["last_seq"], max_seq), batch.device_id))
        seqs = sorted({record.seq for record in batch.records})
        log.debug("batch stored device=%s batch=%s records=%d new=%d", batch.device_id,
                  batch.batch_id, len(seqs), inserted)
        return seqs

    @serialised
    def update_status(self, status: DeviceStatus, received_at: float | None = None) -> None:
        """Apply a status message. The offline form (often the broker's last will) only
        changes the state: the last online status, models and last_seen are kept."""
        received_at = time.time() if received_at is None else received_at
        with self._db.atomic():
            if self._device_row(status.device_id) is None:
                self._db.execute(
                    "INSERT INTO devices (device_id, state, state_at) VALUES (?, ?, ?)",
                    (status.device_id, status.state, received_at))
            if status.state == "offline":
                self._db.execute(
                    "UPDATE devices SET state = ?, state_at = ? WHERE device_id = ?",
                    (status.state, received_at, status.device_id))
                return
            self._db.execute(
                "UPDATE devices SET state = ?, state_at = ?, last_seen = ?, status = ?, "
                "agent_version = ?, active_models = ?, reported_labels = ? WHERE device_id = ?",
                (status.state, received_at, received_at, status.model_dump_json(),
                 status.agent_version,
                 json.dumps([m.model_dump() for m in status.active_models]),
                 json.dumps(status.labels), status.device_id))

    def _device_row(self, device_id: str) -> dict[str, Any] | None:
        return next(self._db.query(
            "SELECT * FROM devices WHERE device_id = ?", (device_id,)), None)

    # --- models ---------------------------------------------------------------------------

    @serialised
    def add_model(self, manifest: ModelManifest, published_by: str) -> ModelManifest:
        """Record a new model version and its audit entry; returns the stored manifest.

        Publishing the same bytes again is a no-op returning the existing manifest; other
        bytes under an existing name@version raise ModelVersionExists.
        """
        with self._db.atomic():
            existing = self._model(manifest.name, manifest.version)
            if existing is not None:
                if existing.sha256 != manifest.sha256:
                    raise ModelVersionExists(version_exists_message(existing))
                return existing
            self._db.execute(
                "INSERT INTO models (name, version, kind, sha256, size_bytes, manifest, "
                "published_at, published_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (manifest.name, manifest.version, manifest.kind, manifest.sha256,
                 manifest.size_bytes, manifest.model_dump_json(), manifest.published_at,
                 published_by))
            self._set_published_unlocked(manifest.name, manifest.version, published_by)
            self._audit(published_by, "model.publish", f"{manifest.name}@{manifest.version}",
                        f"sha256={manifest.sha256} size_bytes={manifest.size_bytes}")
        return manifest

    @serialised
    def get_model(self, name: str, version: str) -> ModelManifest | None:
        return self._model(name, version)

    def _model(self, name: str, version: str) -> ModelManifest | None:
        row = next(self._db.query(
            "SELECT manifest FROM models WHERE name = ? AND version = ?", (name, version)), None)
        return ModelManifest.model_validate_json(row["manifest"]) if row else None

    @serialised
    def get_model_by_sha256(self, sha256: str) -> ModelManifest | None:
        """Any manifest of this artifact; every manifest of one artifact shares its chunking."""
        row = next(self._db.query(
            "SELECT manifest FROM models WHERE sha256 = ? ORDER BY published_at LIMIT 1",
            (sha256,)), None)
        return ModelManifest.model_validate_json(row["manifest"]) if row else None

    @serialised
    def list_models(self) -> list[PublishedModel]:
        return [
            PublishedModel(ModelManifest.model_validate_json(row["manifest"]),
                           row["published_by"])
            for row in self._db.query(
                "SELECT manifest, published_by FROM models ORDER BY name, published_at")
        ]

    # --- deployments ----------------------------------------------------------------------

    @serialised
    def create_deployment(self, command: DeployCommand) -> None:
        manifest = command.manifest
        with self._db.atomic():
            self._db.execute(
                "INSERT INTO deployments (command_id, device_id, model_name, version, issued_at, "
                "issued_by, state, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (command.command_id, command.device_id, manifest.name, manifest.version,
                 command.issued_at, command.issued_by, DEPLOYMENT_ISSUED, command.issued_at))
            self._audit(command.issued_by, "model.deploy", f"{manifest.name}@{manifest.version}",
                        f"device={command.device_id} command={command.command_id}")

    @serialised
    def mark_deployment(self, command_id: str, state: str, detail: str) -> None:
        """Set a deployment's state from central's side (e.g. the command could not be sent)."""
        self._db.execute(
            "UPDATE deployments SET state = ?, detail = ?, updated_at = ? WHERE command_id = ?",
            (state, detail, time.time(), command_id))

    @serialised
    def record_rollback_command(self, command: RollbackCommand) -> None:
        """Record a rollback sent to a device, so that its steps are accepted from it."""
        with self._db.atomic():
            self._db.execute(
                "INSERT INTO deployments (command_id, device_id, model_name, version, issued_at, "
                "issued_by, state, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (command.command_id, command.device_id, command.model_name,
                 command.to_version or ROLLBACK_TO_PREVIOUS, command.issued_at,
                 command.issued_by, DEPLOYMENT_ISSUED, command.issued_at))
            self._audit(command.issued_by, "model.rollback", command.model_name,
                        f"device={command.device_id} command={command.command_id}")

    @serialised
    def record_deployment_event(self, event: DeploymentEvent) -> bool:
        """Store a device's deployment step and move the deployment's state on.

        Idempotent on (command_id, step, at); an event older than the state already shown does
        not move it back. Returns False when the event was a duplicate. Raises
        DeploymentEventRefused, changing nothing, unless the command was issued to the device
        that sent the step.
        """
        with self._db.atomic():
            return self._apply_deployment_event(event)

    def _apply_deployment_event(self, event: DeploymentEvent) -> bool:
        """record_deployment_event's work, inside the caller's transaction."""
        issued = next(self._db.query(
            "SELECT device_id, kind FROM deployments WHERE command_id = ?",
            (event.command_id,)), None)
        if issued is None:
            raise DeploymentEventRefused(event.device_id, event.command_id,
                                         "central issued no command of that id")
        if issued["device_id"] != event.device_id:
            raise DeploymentEventRefused(event.device_id, event.command_id,
                                         f"the command was issued to {issued['device_id']}")
        if issued["kind"] != event.subject:  # a model's step cannot move a config's state
            raise DeploymentEventRefused(event.device_id, event.command_id,
                                         f"the command deploys a {issued['kind']}, the step "
                                         f"is of a {event.subject}")
        inserted = self._db.execute(
            "INSERT OR IGNORE INTO deployment_events (command_id, device_id, step, detail, "
            "progress, at) VALUES (?, ?, ?, ?, ?, ?)",
            (event.command_id, event.device_id, event.step, event.detail, event.progress,
             event.at))
        if not inserted:
            return False
        self._db.execute(
            "UPDATE deployments SET state = ?, detail = ?, updated_at = ? "
            "WHERE command_id = ? AND (state = ? OR updated_at <= ?)",
            (event.step, event.detail, event.at, event.command_id, DEPLOYMENT_ISSUED, event.at))
        return True

    @serialised
    def deployment_open_for(self, device_id: str, sha256: str) -> bool:
        """Whether a deployment of the artifact `sha256` to `device_id` is still under way:
        only then may the device fetch its chunks."""
        closed = sorted(CLOSED_DEPLOYMENT_STATES)
        marks = ", ".join("?" * len(closed))
        return next(self._db.query(
            "SELECT 1 AS found FROM deployments d JOIN models m ON m.name = d.model_name "
            f"AND m.version = d.version WHERE d.kind = 'model' AND d.device_id = ? "
            "AND m.sha256 = ? "
            f"AND d.state NOT IN ({marks}) LIMIT 1", (device_id, sha256, *closed)),
            None) is not None

    @serialised
    def get_deployment(self, command_id: str) -> dict[str, Any] | None:
        return next(self._db.query(
            "SELECT * FROM deployments WHERE command_id = ?", (command_id,)), None)

    @serialised
    def list_deployments(self, device_id: str | None = None, limit: int = 50) -> list[dict]:
        where, params = _device_filter(device_id)
        return list(self._db.query(
            f"SELECT * FROM deployments{where} ORDER BY updated_at DESC LIMIT ?",
            (*params, limit)))

    @serialised
    def deployment_events(self, command_id: str) -> list[dict[str, Any]]:
        return list(self._db.query(
            "SELECT * FROM deployment_events WHERE command_id = ? ORDER BY at", (command_id,)))

    # --- queries --------------------------------------------------------------------------

    @serialised
    def list_devices(self) -> list[DeviceSummary]:
        rows = self._db.query(
            "SELECT d.*, (SELECT COUNT(*) FROM records r WHERE r.device_id = d.device_id) "
            "AS records, (SELECT CAST(COALESCE(SUM(g.last_seq - g.first_seq + 1), 0) AS BIGINT) "
            "FROM gaps g WHERE g.device_id = d.device_id) AS evicted, b.labels AS labels "
            "FROM devices d LEFT JOIN broker_accounts b ON b.username = d.device_id AND "
            "b.kind = 'device' AND b.revoked_at IS NULL ORDER BY d.device_id")
        return [device_summary(row) for row in rows]

    @serialised
    def gaps(self, device_id: str) -> list[dict[str, Any]]:
        """Seq ranges the device evicted under its disk quota (recorded, not lost)."""
        return list(self._db.query(
            "SELECT first_seq, last_seq, kind, reason, reported_seq FROM gaps "
            "WHERE device_id = ? ORDER BY first_seq", (device_id,)))

    @serialised
    def seq_accounting(self, device_id: str) -> dict[str, int]:
        """Of the seqs 1..last_seq a device used: stored, evicted, and not (yet) received."""
        last_seq = next(self._db.query(
            "SELECT COALESCE(MAX(last_seq), 0) AS n FROM devices WHERE device_id = ?",
            (device_id,)))["n"]
        stored = next(self._db.query(
            "SELECT COUNT(*) AS n FROM records WHERE device_id = ?", (device_id,)))["n"]
        evicted = next(self._db.query(
            "SELECT CAST(COALESCE(SUM(last_seq - first_seq + 1), 0) AS BIGINT) AS n FROM gaps "
            "WHERE device_id = ?", (device_id,)))["n"]
        return {"last_seq": last_seq, "stored": stored, "evicted": evicted,
                "outstanding": max(0, last_seq - stored - evicted)}

    @serialised
    def recent_predictions(self, limit: int = 50, device_id: str | None = None) -> list[dict]:
        where, params = _device_filter(device_id)
        rows = self._db.query(
            f"SELECT * FROM predictions{where} ORDER BY created_at DESC, seq DESC LIMIT ?",
            (*params, limit))
        return [{**row, "outputs": json.loads(row["outputs"]), "inputs": json.loads(row["inputs"])}
                for row in rows]

    @serialised
    def recent_records(self, record_type: str, limit: int = 50,
                       device_id: str | None = None) -> list[dict[str, Any]]:
        """The newest records of one type, their payloads without embedded images."""
        where, params = _device_filter(device_id)
        where = f"{where} AND type = ?" if where else " WHERE type = ?"
        columns = _RECORD_WITHOUT_IMAGES[self.dialect]
        rows = self._db.query(
            f"SELECT device_id, seq, type, created_at, received_at, {columns} "
            f"FROM records{where} ORDER BY created_at DESC, seq DESC LIMIT ?",
            (*params, record_type, limit))
        return [{**row, "payload": json.loads(row["payload"]),
                 "images": json.loads(row["images"])} for row in rows]

    @serialised
    def record_image(self, device_id: str, seq: int, name: str) -> str | None:
        """A record's embedded image (base64 JPEG), e.g. a defect's evidence."""
        row = next(self._db.query(
            f"SELECT {_IMAGE_OF_RECORD[self.dialect]} AS jpeg FROM records "
            "WHERE device_id = ? AND seq = ?", (name, device_id, seq)), None)
        return row["jpeg"] if row else None

    @serialised
    def count_records(self, device_id: str | None = None) -> int:
        where, params = _device_filter(device_id)
        return next(self._db.query(f"SELECT COUNT(*) AS n FROM records{where}", params))["n"]

    @serialised
    def model_stats(self, model_name: str, version: str | None = None,
                    since: float | None = None) -> list[tuple[str, ModelStatsPayload]]:
        """The intervals a model's devices reported, oldest first, as (device_id, stats)."""
        where, params = " WHERE model_name = ?", [model_name]
        if version:
            where, params = where + " AND model_version = ?", [*params, version]
        if since is not None:
            where, params = where + " AND ended_at >= ?", [*params, since]
        return [(row["device_id"], ModelStatsPayload.model_validate_json(row["payload"]))
                for row in self._db.query(
                    f"SELECT device_id, payload FROM model_stats{where} ORDER BY ended_at",
                    params)]


# The statements that differ between SQLite and PostgreSQL: JSON functions.
_RECORD_WITHOUT_IMAGES = {
    "sqlite": "json_remove(payload, '$.images') AS payload, "
              "(SELECT json_group_array(key) FROM json_each(payload, '$.images')) AS images",
    "postgresql": "(CAST(payload AS jsonb) - 'images')::text AS payload, "
                  "(SELECT COALESCE(json_agg(k), '[]')::text FROM jsonb_object_keys("
                  "CASE WHEN jsonb_typeof(CAST(payload AS jsonb) -> 'images') = 'object' "
                  "THEN CAST(payload AS jsonb) -> 'images' ELSE '{}' END) AS k) AS images",
}
_IMAGE_OF_RECORD = {
    "sqlite": "json_extract(payload, '$.images.' || ? || '.jpeg_b64')",
    "postgresql": "CAST(payload AS jsonb) -> 'images' -> CAST(? AS text) ->> 'jpeg_b64'",
}

def _device_filter(device_id: str | None) -> tuple[str, tuple[Any, ...]]:
    return (" WHERE device_id = ?", (device_id,)) if device_id else ("", ())

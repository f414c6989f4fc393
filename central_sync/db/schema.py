"""Central's database schema as numbered migrations, applied once each, in order.

SQLite and PostgreSQL each have their list; the numbers mean the same schema on both (the
PostgreSQL list starts at version 5, when PostgreSQL support came, with that whole schema).
"""

from __future__ import annotations

import logging
import time

from central_sync.db.connection import Connection
from central_sync.db.schema_fleet import POSTGRES_FLEET_MIGRATIONS, SQLITE_FLEET_MIGRATIONS

log = logging.getLogger(__name__)

# Same on both databases (partial indexes included).
SAMPLE_QUEUE_INDEXES = (
    "CREATE INDEX samples_label ON samples (label)",
    "CREATE INDEX samples_awaiting ON samples (confidence) WHERE true_label IS NULL",
    "CREATE INDEX samples_labelled ON samples (confidence) WHERE true_label IS NOT NULL",
    "CREATE INDEX samples_camera ON samples (camera)",
    "CREATE INDEX samples_model_version ON samples (model_version)",
)

# Append new migrations, never edit applied ones: databases in the field already ran them.
MIGRATIONS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (1, "initial schema", (
        """CREATE TABLE devices (
            device_id TEXT PRIMARY KEY, state TEXT NOT NULL, state_at REAL, last_seen REAL,
            status TEXT, agent_version TEXT NOT NULL DEFAULT '',
            active_models TEXT NOT NULL DEFAULT '[]', last_seq INTEGER NOT NULL DEFAULT 0)""",
        """CREATE TABLE records (
            device_id TEXT NOT NULL, seq INTEGER NOT NULL, type TEXT NOT NULL,
            created_at REAL NOT NULL, received_at REAL NOT NULL, payload TEXT NOT NULL,
            PRIMARY KEY (device_id, seq))""",
        "CREATE INDEX records_type ON records (type, created_at)",
        """CREATE TABLE predictions (
            device_id TEXT NOT NULL, seq INTEGER NOT NULL, created_at REAL NOT NULL,
            pipeline TEXT, model_name TEXT, model_version TEXT, model_sha256 TEXT,
            outputs TEXT NOT NULL, inputs TEXT NOT NULL, latency_ms REAL,
            PRIMARY KEY (device_id, seq))""",
        "CREATE INDEX predictions_created_at ON predictions (created_at)",
        """CREATE TABLE models (
            name TEXT NOT NULL, version TEXT NOT NULL, kind TEXT NOT NULL,
            sha256 TEXT NOT NULL, size_bytes INTEGER NOT NULL, manifest TEXT NOT NULL,
            published_at REAL NOT NULL, published_by TEXT NOT NULL,
            PRIMARY KEY (name, version))""",
        "CREATE INDEX models_sha256 ON models (sha256)",
        """CREATE TRIGGER models_are_immutable BEFORE UPDATE ON models
            BEGIN SELECT RAISE(ABORT, 'published model versions are immutable'); END""",
        """CREATE TABLE deployments (
            command_id TEXT PRIMARY KEY, device_id TEXT NOT NULL, model_name TEXT NOT NULL,
            version TEXT NOT NULL, issued_at REAL, issued_by TEXT NOT NULL DEFAULT '',
            state TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '', updated_at REAL NOT NULL)""",
        "CREATE INDEX deployments_device ON deployments (device_id, updated_at)",
        """CREATE TABLE deployment_events (
            command_id TEXT NOT NULL, device_id TEXT NOT NULL, step TEXT NOT NULL,
            detail TEXT NOT NULL DEFAULT '', progress REAL, at REAL NOT NULL,
            UNIQUE (command_id, step, at))""",
        """CREATE TABLE audit_log (
            at REAL NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
            subject TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '')""",
        "CREATE INDEX audit_log_at ON audit_log (at)",
    )),
    (2, "gaps: seqs a device evicted under its disk quota", (
        """CREATE TABLE gaps (
            device_id TEXT NOT NULL, first_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL,
            kind TEXT NOT NULL, reason TEXT NOT NULL, reported_seq INTEGER NOT NULL,
            PRIMARY KEY (device_id, first_seq))""",
    )),
    (3, "record_parts: chunks of large records until the last one arrives", (
        """CREATE TABLE record_parts (
            device_id TEXT NOT NULL, seq INTEGER NOT NULL, idx INTEGER NOT NULL,
            count INTEGER NOT NULL, chunk TEXT NOT NULL, received_at REAL NOT NULL,
            PRIMARY KEY (device_id, seq, idx))""",
    )),
    # Ingest writes every record once and looks it up only by (device_id, seq): clustering the
    # rows on that key saves one B-tree per insert, and the unused type index another.
    (4, "records and predictions clustered on (device_id, seq); records_type index dropped", (
        """CREATE TABLE records_v4 (
            device_id TEXT NOT NULL, seq INTEGER NOT NULL, type TEXT NOT NULL,
            created_at REAL NOT NULL, received_at REAL NOT NULL, payload TEXT NOT NULL,
            PRIMARY KEY (device_id, seq)) WITHOUT ROWID""",
        "INSERT INTO records_v4 SELECT device_id, seq, type, created_at, received_at, payload "
        "FROM records",
        "DROP TABLE records",
        "ALTER TABLE records_v4 RENAME TO records",
        """CREATE TABLE predictions_v4 (
            device_id TEXT NOT NULL, seq INTEGER NOT NULL, created_at REAL NOT NULL,
            pipeline TEXT, model_name TEXT, model_version TEXT, model_sha256 TEXT,
            outputs TEXT NOT NULL, inputs TEXT NOT NULL, latency_ms REAL,
            PRIMARY KEY (device_id, seq)) WITHOUT ROWID""",
        "INSERT INTO predictions_v4 SELECT device_id, seq, created_at, pipeline, model_name, "
        "model_version, model_sha256, outputs, inputs, latency_ms FROM predictions",
        "DROP TABLE predictions",
        "ALTER TABLE predictions_v4 RENAME TO predictions",
        "CREATE INDEX predictions_created_at ON predictions (created_at)",
    )),
    (5, "rollouts: staged deployments in waves; device labels", (
        "ALTER TABLE devices ADD COLUMN labels TEXT NOT NULL DEFAULT '[]'",
        """CREATE TABLE rollouts (
            rollout_id TEXT PRIMARY KEY, model_name TEXT NOT NULL, version TEXT NOT NULL,
            target TEXT NOT NULL, canary INTEGER NOT NULL, waves INTEGER NOT NULL,
            success_ratio REAL NOT NULL,
            wave_timeout_s REAL NOT NULL, state TEXT NOT NULL, current_wave INTEGER NOT NULL,
            wave_started_at REAL, detail TEXT NOT NULL DEFAULT '', created_at REAL NOT NULL,
            created_by TEXT NOT NULL, updated_at REAL NOT NULL)""",
        """CREATE TABLE rollout_devices (
            rollout_id TEXT NOT NULL, device_id TEXT NOT NULL, wave INTEGER NOT NULL,
            command_id TEXT, state TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '',
            updated_at REAL NOT NULL, PRIMARY KEY (rollout_id, device_id))""",
    )),
    (6, "leases: which central-sync process runs a job that only one may run", (
        """CREATE TABLE leases (
            name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_at REAL NOT NULL)""",
    )),
    (7, "accounts, sessions, and the defects projection with labels for review", (
        """CREATE TABLE users (
            username TEXT PRIMARY KEY, password_hash TEXT NOT NULL, role TEXT NOT NULL,
            created_at REAL NOT NULL, disabled INTEGER NOT NULL DEFAULT 0)""",
        """CREATE TABLE sessions (
            token_sha256 TEXT PRIMARY KEY, username TEXT NOT NULL, csrf TEXT NOT NULL,
            created_at REAL NOT NULL, expires_at REAL NOT NULL)""",
        """CREATE TABLE defects (
            device_id TEXT NOT NULL, seq INTEGER NOT NULL, created_at REAL NOT NULL,
            pipeline TEXT NOT NULL, camera TEXT NOT NULL, roi TEXT NOT NULL,
            label TEXT NOT NULL, confidence REAL NOT NULL, model_name TEXT NOT NULL,
            model_version TEXT NOT NULL, verdict TEXT, true_label TEXT, labelled_by TEXT,
            labelled_at REAL, PRIMARY KEY (device_id, seq))""",
        "CREATE INDEX defects_newest ON defects (created_at, device_id, seq)",
        "CREATE INDEX defects_label ON defects (label, created_at)",
        "CREATE INDEX defects_camera ON defects (camera, created_at)",
        "INSERT INTO defects (device_id, seq, created_at, pipeline, camera, roi, label, "
        "confidence, model_name, model_version) SELECT device_id, seq, created_at, "
        "COALESCE(json_extract(payload, '$.pipeline'), ''), "
        "COALESCE(json_extract(payload, '$.camera'), ''), "
        "COALESCE(json_extract(payload, '$.roi'), ''), "
        "COALESCE(json_extract(payload, '$.label'), ''), "
        "COALESCE(json_extract(payload, '$.confidence'), 0), "
        "COALESCE(json_extract(payload, '$.model.name'), ''), "
        "COALESCE(json_extract(payload, '$.model.version'), '') "
        "FROM records WHERE type = 'defect'",
    )),
    (8, "model_stats: per-interval statistics of each model on each device", (
        """CREATE TABLE model_stats (
            device_id TEXT NOT NULL, seq INTEGER NOT NULL, model_name TEXT NOT NULL,
            model_version TEXT NOT NULL, pipeline TEXT NOT NULL, started_at REAL NOT NULL,
            ended_at REAL NOT NULL, payload TEXT NOT NULL, PRIMARY KEY (device_id, seq))""",
        "CREATE INDEX model_stats_model ON model_stats (model_name, model_version, ended_at)",
    )),
    (9, "broker_accounts: central's and each provisioned device's Mosquitto login", (
        """CREATE TABLE broker_accounts (
            username TEXT PRIMARY KEY, kind TEXT NOT NULL, labels TEXT NOT NULL DEFAULT '[]',
            password_hash TEXT NOT NULL, created_at REAL NOT NULL, rotated_at REAL NOT NULL,
            revoked_at REAL)""",
    )),
    # Tokens made before version 10 are the sessions valid longer than a browser's (12 h).
    (10, "login_failures: login back-off per account and address; sessions.kind", (
        "ALTER TABLE sessions ADD COLUMN kind TEXT NOT NULL DEFAULT 'browser'",
        "UPDATE sessions SET kind = 'api' WHERE expires_at - created_at > 43201",
        """CREATE TABLE login_failures (
            subject TEXT PRIMARY KEY, failures INTEGER NOT NULL, last_failed_at REAL NOT NULL,
            locked_until REAL NOT NULL)""",
    )),
    # Pieces kept as bytes, and each record's count and size kept beside them, so that a new
    # piece costs the same whatever came before it. Partial records of version 3 are dropped:
    # their devices send them again.
    (11, "record_assemblies: large records being received, counted without reading pieces", (
        "DROP TABLE record_parts",
        """CREATE TABLE record_assemblies (
            device_id TEXT NOT NULL, seq INTEGER NOT NULL, type TEXT NOT NULL,
            created_at REAL NOT NULL, payload_sha256 TEXT NOT NULL, count INTEGER NOT NULL,
            pieces INTEGER NOT NULL, bytes INTEGER NOT NULL, reserved_bytes INTEGER NOT NULL,
            started_at REAL NOT NULL, last_at REAL NOT NULL, PRIMARY KEY (device_id, seq))""",
        "CREATE INDEX record_assemblies_last_at ON record_assemblies (last_at)",
        """CREATE TABLE record_parts (
            device_id TEXT NOT NULL, seq INTEGER NOT NULL, idx INTEGER NOT NULL,
            data BLOB NOT NULL, PRIMARY KEY (device_id, seq, idx))""",
    )),
    # What a device says of its groups is kept for display only; its trusted groups are its
    # broker account's labels (provisioning). A device never provisioned is in no group.
    (12, "devices.labels renamed reported_labels: shown, never used to select devices", (
        "ALTER TABLE devices RENAME COLUMN labels TO reported_labels",
    )),
    # The loop from labels to an approved version: samples to label beside defects, frozen
    # dataset versions with their images, evaluations, each version's review state, and the
    # audit log chained by hash. Versions published before approvals existed are approved on
    # upgrade, so that a running fleet keeps its rollbacks and redeploys.
    (13, "samples, datasets, evaluations, model review states; audit log hash chain", (
        """CREATE TABLE samples (
            device_id TEXT NOT NULL, seq INTEGER NOT NULL, created_at REAL NOT NULL,
            pipeline TEXT NOT NULL, camera TEXT NOT NULL, roi TEXT NOT NULL,
            label TEXT NOT NULL, confidence REAL NOT NULL, reason TEXT NOT NULL,
            model_name TEXT NOT NULL, model_version TEXT NOT NULL, true_label TEXT,
            labelled_by TEXT, labelled_at REAL, PRIMARY KEY (device_id, seq))""",
        "CREATE INDEX samples_queue ON samples (true_label, confidence)",
        "CREATE INDEX samples_newest ON samples (created_at, device_id, seq)",
        "INSERT INTO samples (device_id, seq, created_at, pipeline, camera, roi, label, "
        "confidence, reason, model_name, model_version) SELECT device_id, seq, created_at, "
        "COALESCE(json_extract(payload, '$.pipeline'), ''), "
        "COALESCE(json_extract(payload, '$.camera'), ''), "
        "COALESCE(json_extract(payload, '$.roi'), ''), "
        "COALESCE(json_extract(payload, '$.label'), ''), "
        "COALESCE(json_extract(payload, '$.confidence'), 0), "
        "COALESCE(json_extract(payload, '$.reason'), ''), "
        "COALESCE(json_extract(payload, '$.model.name'), ''), "
        "COALESCE(json_extract(payload, '$.model.version'), '') "
        "FROM records WHERE type = 'sample'",
        """CREATE TABLE datasets (
            name TEXT NOT NULL, version INTEGER NOT NULL, dataset_id TEXT NOT NULL,
            kind TEXT NOT NULL, manifest TEXT NOT NULL, items INTEGER NOT NULL,
            created_at REAL NOT NULL, created_by TEXT NOT NULL, PRIMARY KEY (name, version))""",
        "CREATE INDEX datasets_id ON datasets (dataset_id)",
        """CREATE TRIGGER datasets_are_immutable BEFORE UPDATE ON datasets
            BEGIN SELECT RAISE(ABORT, 'dataset versions are immutable'); END""",
        """CREATE TABLE dataset_images (
            sha256 TEXT PRIMARY KEY, data BLOB NOT NULL, width INTEGER NOT NULL,
            height INTEGER NOT NULL, created_at REAL NOT NULL)""",
        """CREATE TABLE evaluations (
            evaluation_id TEXT PRIMARY KEY, model_name TEXT NOT NULL, version TEXT NOT NULL,
            dataset TEXT NOT NULL, dataset_id TEXT NOT NULL, baseline_version TEXT NOT NULL,
            report TEXT NOT NULL, created_at REAL NOT NULL, created_by TEXT NOT NULL)""",
        "CREATE INDEX evaluations_model ON evaluations (model_name, version, created_at)",
        """CREATE TABLE model_states (
            model_name TEXT NOT NULL, version TEXT NOT NULL, state TEXT NOT NULL,
            evaluation_id TEXT, approved_by TEXT, approved_at REAL,
            reason TEXT NOT NULL DEFAULT '', updated_at REAL NOT NULL,
            updated_by TEXT NOT NULL, PRIMARY KEY (model_name, version))""",
        "INSERT INTO model_states (model_name, version, state, approved_by, approved_at, "
        "reason, updated_at, updated_by) SELECT name, version, 'approved', 'central', "
        "published_at, 'published before approvals: approved on upgrade', published_at, "
        "'central' FROM models",
        "ALTER TABLE audit_log ADD COLUMN seq INTEGER",
        "ALTER TABLE audit_log ADD COLUMN prev_hash TEXT",
        "ALTER TABLE audit_log ADD COLUMN entry_hash TEXT",
        "CREATE UNIQUE INDEX audit_log_seq ON audit_log (seq)",
    )),
    # The sample queue counts each class on every page, walks the samples awaiting review and
    # the labelled ones by confidence, and fills its filter menus one value at a time.
    (14, "indexes of the sample queue", SAMPLE_QUEUE_INDEXES),
)


# Timestamps are DOUBLE PRECISION (PostgreSQL's REAL is 4 bytes); seqs BIGINT.
POSTGRES_MIGRATIONS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (5, "schema of version 5 (devices, records, predictions, models, deployments, audit, gaps, "
        "record parts, rollouts)", (
        """CREATE TABLE devices (
            device_id TEXT PRIMARY KEY, state TEXT NOT NULL, state_at DOUBLE PRECISION,
            last_seen DOUBLE PRECISION, status TEXT, agent_version TEXT NOT NULL DEFAULT '',
            active_models TEXT NOT NULL DEFAULT '[]', last_seq BIGINT NOT NULL DEFAULT 0,
            labels TEXT NOT NULL DEFAULT '[]')""",
        """CREATE TABLE records (
            device_id TEXT NOT NULL, seq BIGINT NOT NULL, type TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL, received_at DOUBLE PRECISION NOT NULL,
            payload TEXT NOT NULL, PRIMARY KEY (device_id, seq))""",
        """CREATE TABLE predictions (
            device_id TEXT NOT NULL, seq BIGINT NOT NULL, created_at DOUBLE PRECISION NOT NULL,
            pipeline TEXT, model_name TEXT, model_version TEXT, model_sha256 TEXT,
            outputs TEXT NOT NULL, inputs TEXT NOT NULL, latency_ms DOUBLE PRECISION,
            PRIMARY KEY (device_id, seq))""",
        "CREATE INDEX predictions_created_at ON predictions (created_at)",
        """CREATE TABLE models (
            name TEXT NOT NULL, version TEXT NOT NULL, kind TEXT NOT NULL,
            sha256 TEXT NOT NULL, size_bytes BIGINT NOT NULL, manifest TEXT NOT NULL,
            published_at DOUBLE PRECISION NOT NULL, published_by TEXT NOT NULL,
            PRIMARY KEY (name, version))""",
        "CREATE INDEX models_sha256 ON models (sha256)",
        """CREATE FUNCTION models_are_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION 'published model versions are immutable'; END $$""",
        """CREATE TRIGGER models_are_immutable BEFORE UPDATE ON models
            FOR EACH ROW EXECUTE FUNCTION models_are_immutable()""",
        """CREATE TABLE deployments (
            command_id TEXT PRIMARY KEY, device_id TEXT NOT NULL, model_name TEXT NOT NULL,
            version TEXT NOT NULL, issued_at DOUBLE PRECISION, issued_by TEXT NOT NULL DEFAULT '',
            state TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '',
            updated_at DOUBLE PRECISION NOT NULL)""",
        "CREATE INDEX deployments_device ON deployments (device_id, updated_at)",
        """CREATE TABLE deployment_events (
            command_id TEXT NOT NULL, device_id TEXT NOT NULL, step TEXT NOT NULL,
            detail TEXT NOT NULL DEFAULT '', progress DOUBLE PRECISION,
            at DOUBLE PRECISION NOT NULL, UNIQUE (command_id, step, at))""",
        """CREATE TABLE audit_log (
            at DOUBLE PRECISION NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
            subject TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '')""",
        "CREATE INDEX audit_log_at ON audit_log (at)",
        """CREATE TABLE gaps (
            device_id TEXT NOT NULL, first_seq BIGINT NOT NULL, last_seq BIGINT NOT NULL,
            kind TEXT NOT NULL, reason TEXT NOT NULL, reported_seq BIGINT NOT NULL,
            PRIMARY KEY (device_id, first_seq))""",
        """CREATE TABLE record_parts (
            device_id TEXT NOT NULL, seq BIGINT NOT NULL, idx INTEGER NOT NULL,
            count INTEGER NOT NULL, chunk TEXT NOT NULL, received_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (device_id, seq, idx))""",
        """CREATE TABLE rollouts (
            rollout_id TEXT PRIMARY KEY, model_name TEXT NOT NULL, version TEXT NOT NULL,
            target TEXT NOT NULL, canary INTEGER NOT NULL, waves INTEGER NOT NULL,
            success_ratio DOUBLE PRECISION NOT NULL, wave_timeout_s DOUBLE PRECISION NOT NULL,
            state TEXT NOT NULL, current_wave INTEGER NOT NULL,
            wave_started_at DOUBLE PRECISION, detail TEXT NOT NULL DEFAULT '',
            created_at DOUBLE PRECISION NOT NULL, created_by TEXT NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL)""",
        """CREATE TABLE rollout_devices (
            rollout_id TEXT NOT NULL, device_id TEXT NOT NULL, wave INTEGER NOT NULL,
            command_id TEXT, state TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '',
            updated_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (rollout_id, device_id))""",
    )),
    (6, "leases: which central-sync process runs a job that only one may run", (
        """CREATE TABLE leases (
            name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_at DOUBLE PRECISION NOT NULL)""",
    )),
    (7, "accounts, sessions, and the defects projection with labels for review", (
        """CREATE TABLE users (
            username TEXT PRIMARY KEY, password_hash TEXT NOT NULL, role TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL, disabled INTEGER NOT NULL DEFAULT 0)""",
        """CREATE TABLE sessions (
            token_sha256 TEXT PRIMARY KEY, username TEXT NOT NULL, csrf TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL, expires_at DOUBLE PRECISION NOT NULL)""",
        """CREATE TABLE defects (
            device_id TEXT NOT NULL, seq BIGINT NOT NULL, created_at DOUBLE PRECISION NOT NULL,
            pipeline TEXT NOT NULL, camera TEXT NOT NULL, roi TEXT NOT NULL,
            label TEXT NOT NULL, confidence DOUBLE PRECISION NOT NULL,
            model_name TEXT NOT NULL, model_version TEXT NOT NULL, verdict TEXT,
            true_label TEXT, labelled_by TEXT, labelled_at DOUBLE PRECISION,
            PRIMARY KEY (device_id, seq))""",
        "CREATE INDEX defects_newest ON defects (created_at, device_id, seq)",
        "CREATE INDEX defects_label ON defects (label, created_at)",
        "CREATE INDEX defects_camera ON defects (camera, created_at)",
        "INSERT INTO defects (device_id, seq, created_at, pipeline, camera, roi, label, "
        "confidence, model_name, model_version) SELECT device_id, seq, created_at, "
        "COALESCE(CAST(payload AS jsonb) ->> 'pipeline', ''), "
        "COALESCE(CAST(payload AS jsonb) ->> 'camera', ''), "
        "COALESCE(CAST(payload AS jsonb) ->> 'roi', ''), "
        "COALESCE(CAST(payload AS jsonb) ->> 'label', ''), "
        "COALESCE(CAST(CAST(payload AS jsonb) ->> 'confidence' AS DOUBLE PRECISION), 0), "
        "COALESCE(CAST(payload AS jsonb) -> 'model' ->> 'name', ''), "
        "COALESCE(CAST(payload AS jsonb) -> 'model' ->> 'version', '') "
        "FROM records WHERE type = 'defect'",
    )),
    (8, "model_stats: per-interval statistics of each model on each device", (
        """CREATE TABLE model_stats (
            device_id TEXT NOT NULL, seq BIGINT NOT NULL, model_name TEXT NOT NULL,
            model_version TEXT NOT NULL, pipeline TEXT NOT NULL,
            started_at DOUBLE PRECISION NOT NULL, ended_at DOUBLE PRECISION NOT NULL,
            payload TEXT NOT NULL, PRIMARY KEY (device_id, seq))""",
        "CREATE INDEX model_stats_model ON model_stats (model_name, model_version, ended_at)",
    )),
    (9, "broker_accounts: central's and each provisioned device's Mosquitto login", (
        """CREATE TABLE broker_accounts (
            username TEXT PRIMARY KEY, kind TEXT NOT NULL, labels TEXT NOT NULL DEFAULT '[]',
            password_hash TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL,
            rotated_at DOUBLE PRECISION NOT NULL, revoked_at DOUBLE PRECISION)""",
    )),
    (10, "login_failures: login back-off per account and address; sessions.kind", (
        "ALTER TABLE sessions ADD COLUMN kind TEXT NOT NULL DEFAULT 'browser'",
        "UPDATE sessions SET kind = 'api' WHERE expires_at - created_at > 43201",
        """CREATE TABLE login_failures (
            subject TEXT PRIMARY KEY, failures INTEGER NOT NULL,
            last_failed_at DOUBLE PRECISION NOT NULL, locked_until DOUBLE PRECISION NOT NULL)""",
    )),
    (11, "record_assemblies: large records being received, counted without reading pieces", (
        "DROP TABLE record_parts",
        """CREATE TABLE record_assemblies (
            device_id TEXT NOT NULL, seq BIGINT NOT NULL, type TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL, payload_sha256 TEXT NOT NULL,
            count INTEGER NOT NULL, pieces INTEGER NOT NULL, bytes BIGINT NOT NULL,
            reserved_bytes BIGINT NOT NULL, started_at DOUBLE PRECISION NOT NULL,
            last_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (device_id, seq))""",
        "CREATE INDEX record_assemblies_last_at ON record_assemblies (last_at)",
        """CREATE TABLE record_parts (
            device_id TEXT NOT NULL, seq BIGINT NOT NULL, idx INTEGER NOT NULL,
            data BYTEA NOT NULL, PRIMARY KEY (device_id, seq, idx))""",
    )),
    (12, "devices.labels renamed reported_labels: shown, never used to select devices", (
        "ALTER TABLE devices RENAME COLUMN labels TO reported_labels",
    )),
    (13, "samples, datasets, evaluations, model review states; audit log hash chain", (
        """CREATE TABLE samples (
            device_id TEXT NOT NULL, seq BIGINT NOT NULL, created_at DOUBLE PRECISION NOT NULL,
            pipeline TEXT NOT NULL, camera TEXT NOT NULL, roi TEXT NOT NULL,
            label TEXT NOT NULL, confidence DOUBLE PRECISION NOT NULL, reason TEXT NOT NULL,
            model_name TEXT NOT NULL, model_version TEXT NOT NULL, true_label TEXT,
            labelled_by TEXT, labelled_at DOUBLE PRECISION, PRIMARY KEY (device_id, seq))""",
        "CREATE INDEX samples_queue ON samples (true_label, confidence)",
        "CREATE INDEX samples_newest ON samples (created_at, device_id, seq)",
        "INSERT INTO samples (device_id, seq, created_at, pipeline, camera, roi, label, "
        "confidence, reason, model_name, model_version) SELECT device_id, seq, created_at, "
        "COALESCE(CAST(payload AS jsonb) ->> 'pipeline', ''), "
        "COALESCE(CAST(payload AS jsonb) ->> 'camera', ''), "
        "COALESCE(CAST(payload AS jsonb) ->> 'roi', ''), "
        "COALESCE(CAST(payload AS jsonb) ->> 'label', ''), "
        "COALESCE(CAST(CAST(payload AS jsonb) ->> 'confidence' AS DOUBLE PRECISION), 0), "
        "COALESCE(CAST(payload AS jsonb) ->> 'reason', ''), "
        "COALESCE(CAST(payload AS jsonb) -> 'model' ->> 'name', ''), "
        "COALESCE(CAST(payload AS jsonb) -> 'model' ->> 'version', '') "
        "FROM records WHERE type = 'sample'",
        """CREATE TABLE datasets (
            name TEXT NOT NULL, version INTEGER NOT NULL, dataset_id TEXT NOT NULL,
            kind TEXT NOT NULL, manifest TEXT NOT NULL, items INTEGER NOT NULL,
            created_at DOUBLE PRECISION NOT NULL, created_by TEXT NOT NULL,
            PRIMARY KEY (name, version))""",
        "CREATE INDEX datasets_id ON datasets (dataset_id)",
        """CREATE FUNCTION datasets_are_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION 'dataset versions are immutable'; END $$""",
        """CREATE TRIGGER datasets_are_immutable BEFORE UPDATE ON datasets
            FOR EACH ROW EXECUTE FUNCTION datasets_are_immutable()""",
        """CREATE TABLE dataset_images (
            sha256 TEXT PRIMARY KEY, data BYTEA NOT NULL, width INTEGER NOT NULL,
            height INTEGER NOT NULL, created_at DOUBLE PRECISION NOT NULL)""",
        """CREATE TABLE evaluations (
            evaluation_id TEXT PRIMARY KEY, model_name TEXT NOT NULL, version TEXT NOT NULL,
            dataset TEXT NOT NULL, dataset_id TEXT NOT NULL, baseline_version TEXT NOT NULL,
            report TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL,
            created_by TEXT NOT NULL)""",
        "CREATE INDEX evaluations_model ON evaluations (model_name, version, created_at)",
        """CREATE TABLE model_states (
            model_name TEXT NOT NULL, version TEXT NOT NULL, state TEXT NOT NULL,
            evaluation_id TEXT, approved_by TEXT, approved_at DOUBLE PRECISION,
            reason TEXT NOT NULL DEFAULT '', updated_at DOUBLE PRECISION NOT NULL,
            updated_by TEXT NOT NULL, PRIMARY KEY (model_name, version))""",
        "INSERT INTO model_states (model_name, version, state, approved_by, approved_at, "
        "reason, updated_at, updated_by) SELECT name, version, 'approved', 'central', "
        "published_at, 'published before approvals: approved on upgrade', published_at, "
        "'central' FROM models",
        "ALTER TABLE audit_log ADD COLUMN seq BIGINT",
        "ALTER TABLE audit_log ADD COLUMN prev_hash TEXT",
        "ALTER TABLE audit_log ADD COLUMN entry_hash TEXT",
        "CREATE UNIQUE INDEX audit_log_seq ON audit_log (seq)",
    )),
    (14, "indexes of the sample queue", SAMPLE_QUEUE_INDEXES),
)

# From 15 on, the migrations live in schema_fleet.py.
MIGRATIONS += SQLITE_FLEET_MIGRATIONS
POSTGRES_MIGRATIONS += POSTGRES_FLEET_MIGRATIONS


MIGRATION_LOCK_KEY = 0x65646765  # any constant: one migration at a time per database


def migrations_for(db: Connection) -> tuple[tuple[int, str, tuple[str, ...]], ...]:
    return POSTGRES_MIGRATIONS if db.dialect == "postgresql" else MIGRATIONS


def apply_migrations(db: Connection) -> int:
    """Bring the schema up to date in one transaction; returns the schema version."""
    migrations = migrations_for(db)
    with db.atomic():
        if db.dialect == "postgresql":  # central processes starting together migrate in turn
            db.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK_KEY,))
        db.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
            "description TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)")
        applied = {row["version"] for row in db.query("SELECT version FROM schema_migrations")}
        for version, description, statements in migrations:
            if version in applied:
                continue
            for sql in statements:
                db.execute(sql)
            db.execute(
                "INSERT INTO schema_migrations (version, description, applied_at) "
                "VALUES (?, ?, ?)", (version, description, time.time()))
            log.info("schema migrated db=%s version=%d (%s)", db.name, version, description)
    return max(version for version, _, _ in migrations)

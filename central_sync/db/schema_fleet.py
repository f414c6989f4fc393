"""Migrations from 15 on: running the fleet from central (configurations, diagnostics, agent
releases, alerts). Appended to the lists in `schema.py`; each entry is (version, description,
statements), with one list per dialect."""

from __future__ import annotations


def _configs(real: str, immutable: tuple[str, ...]) -> tuple[str, ...]:
    """Migration 15 in one dialect: `real` a timestamp's type, `immutable` the statements that
    refuse any change to a published version (a trigger; PostgreSQL's needs its function)."""
    return (
        f"""CREATE TABLE configs (
            name TEXT NOT NULL, version INTEGER NOT NULL, sha256 TEXT NOT NULL,
            body TEXT NOT NULL, document TEXT NOT NULL, probation_s {real} NOT NULL,
            notes TEXT NOT NULL DEFAULT '', published_at {real} NOT NULL,
            published_by TEXT NOT NULL, PRIMARY KEY (name, version))""",
        *immutable,
        "ALTER TABLE deployments ADD COLUMN kind TEXT NOT NULL DEFAULT 'model'",
        "ALTER TABLE rollouts ADD COLUMN kind TEXT NOT NULL DEFAULT 'model'",
    )


_CONFIGS = "configs: signed configuration versions; deployments and rollouts have a kind " \
    "(model, config, agent)"
_SQLITE_CONFIGS_IMMUTABLE = (
    """CREATE TRIGGER configs_are_immutable BEFORE UPDATE ON configs
        BEGIN SELECT RAISE(ABORT, 'published configuration versions are immutable'); END""",
)
_POSTGRES_CONFIGS_IMMUTABLE = (
    """CREATE FUNCTION configs_are_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'published configuration versions are immutable'; END $$""",
    """CREATE TRIGGER configs_are_immutable BEFORE UPDATE ON configs
        FOR EACH ROW EXECUTE FUNCTION configs_are_immutable()""",
)


def _diagnostics(real: str, seq: str, log_id: str) -> tuple[str, ...]:
    """Migration 16 in one dialect: `real` a timestamp's type, `seq` a record seq's, `log_id`
    the log lines' own key (they arrive in order; the newest are kept)."""
    return (
        f"""CREATE TABLE diagnostic_requests (
            request_id TEXT PRIMARY KEY, device_id TEXT NOT NULL, action TEXT NOT NULL,
            issued_at {real} NOT NULL, issued_by TEXT NOT NULL DEFAULT '',
            follow_until {real}, answered_at {real}, ok INTEGER,
            detail TEXT NOT NULL DEFAULT '')""",
        "CREATE INDEX diagnostic_requests_device ON diagnostic_requests (device_id, issued_at)",
        f"""CREATE TABLE device_logs (
            id {log_id}, device_id TEXT NOT NULL, at {real} NOT NULL, level TEXT NOT NULL,
            logger TEXT NOT NULL DEFAULT '', message TEXT NOT NULL, request_id TEXT NOT NULL,
            received_at {real} NOT NULL, line_key TEXT NOT NULL,
            UNIQUE (device_id, line_key))""",
        "CREATE INDEX device_logs_newest ON device_logs (device_id, at, id)",
        f"""CREATE TABLE device_diagnoses (
            device_id TEXT PRIMARY KEY, request_id TEXT NOT NULL, at {real} NOT NULL,
            ok INTEGER NOT NULL, detail TEXT NOT NULL DEFAULT '', report TEXT NOT NULL)""",
        f"ALTER TABLE devices ADD COLUMN clock_offset_s {real}",
        f"ALTER TABLE devices ADD COLUMN clock_rtt_ms {real}",
        f"ALTER TABLE devices ADD COLUMN clock_measured_at {real}",
        f"""CREATE TABLE suspect_records (
            device_id TEXT NOT NULL, seq {seq} NOT NULL, reason TEXT NOT NULL,
            PRIMARY KEY (device_id, seq))""",
    )


_DIAGNOSTICS = "diagnostics: requests to gateways, their log lines and newest diagnosis, " \
    "each gateway's clock offset, and records whose times are suspect"

def _agent_packages(real: str, immutable: tuple[str, ...]) -> tuple[str, ...]:
    """Migration 17 in one dialect: `real` a timestamp's type, `immutable` the statements that
    refuse any change to a published release."""
    return (
        f"""CREATE TABLE agent_packages (
            version TEXT PRIMARY KEY, sha256 TEXT NOT NULL, size_bytes BIGINT NOT NULL,
            filename TEXT NOT NULL, package TEXT NOT NULL, published_at {real} NOT NULL,
            published_by TEXT NOT NULL)""",
        "CREATE INDEX agent_packages_sha256 ON agent_packages (sha256)",
        *immutable,
    )


_AGENT_PACKAGES = "agent_packages: signed agent releases (the wheel and its dependency list)"
_SQLITE_AGENT_IMMUTABLE = (
    """CREATE TRIGGER agent_packages_are_immutable BEFORE UPDATE ON agent_packages
        BEGIN SELECT RAISE(ABORT, 'published agent releases are immutable'); END""",
)
_POSTGRES_AGENT_IMMUTABLE = (
    """CREATE FUNCTION agent_packages_are_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'published agent releases are immutable'; END $$""",
    """CREATE TRIGGER agent_packages_are_immutable BEFORE UPDATE ON agent_packages
        FOR EACH ROW EXECUTE FUNCTION agent_packages_are_immutable()""",
)

def _alerts(real: str) -> tuple[str, ...]:
    """Migration 18 in one dialect: `real` a timestamp's type."""
    return (
        f"""CREATE TABLE alerts (
            alert_id TEXT PRIMARY KEY, rule TEXT NOT NULL, kind TEXT NOT NULL,
            group_key TEXT NOT NULL, severity TEXT NOT NULL, state TEXT NOT NULL,
            summary TEXT NOT NULL, devices TEXT NOT NULL DEFAULT '[]',
            labels TEXT NOT NULL DEFAULT '{{}}', operator INTEGER NOT NULL DEFAULT 0,
            value {real}, threshold {real}, started_at {real} NOT NULL,
            fired_at {real} NOT NULL, resolved_at {real}, updated_at {real} NOT NULL,
            acked_by TEXT, acked_at {real}, ack_reason TEXT)""",
        # One open alert per rule and group, whichever central process fires it.
        "CREATE UNIQUE INDEX alerts_one_open ON alerts (rule, group_key) "
        "WHERE state = 'firing'",
        "CREATE INDEX alerts_newest ON alerts (fired_at)",
        f"""CREATE TABLE alert_conditions (
            rule TEXT NOT NULL, group_key TEXT NOT NULL, breach_since {real},
            clear_since {real}, PRIMARY KEY (rule, group_key))""",
        f"""CREATE TABLE alert_events (
            alert_id TEXT NOT NULL, at {real} NOT NULL, event TEXT NOT NULL,
            actor TEXT NOT NULL DEFAULT '', detail TEXT NOT NULL DEFAULT '')""",
        "CREATE INDEX alert_events_alert ON alert_events (alert_id, at)",
        f"""CREATE TABLE alert_silences (
            rule TEXT NOT NULL, group_key TEXT NOT NULL, until {real} NOT NULL,
            reason TEXT NOT NULL, created_by TEXT NOT NULL, created_at {real} NOT NULL,
            PRIMARY KEY (rule, group_key))""",
        f"""CREATE TABLE alert_notifications (
            notification_id TEXT PRIMARY KEY, alert_id TEXT NOT NULL, event TEXT NOT NULL,
            route TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at {real} NOT NULL, created_at {real} NOT NULL,
            delivered_at {real}, last_error TEXT NOT NULL DEFAULT '', payload TEXT NOT NULL)""",
        "CREATE INDEX alert_notifications_due ON alert_notifications (state, next_attempt_at)",
        "CREATE INDEX alert_notifications_alert ON alert_notifications (alert_id)",
        f"""CREATE TABLE alert_attempts (
            notification_id TEXT NOT NULL, at {real} NOT NULL, ok INTEGER NOT NULL,
            duration_ms {real}, detail TEXT NOT NULL DEFAULT '')""",
        "CREATE INDEX alert_attempts_notification ON alert_attempts (notification_id, at)",
        f"""CREATE TABLE alert_observations (
            key TEXT PRIMARY KEY, value {real} NOT NULL, changed_at {real} NOT NULL)""",
    )


_ALERTS = "alerts: open and past alerts, the conditions held towards them, silences, " \
    "notifications with every delivery attempt"

# Migration 4 rebuilt `records` without its index by type: the plant overview reads the
# recommendation records of the last day, which must not scan every record ever stored.
_RECORDS_BY_TYPE = "records by type and time: a day of one kind is read without a scan"
_RECORDS_BY_TYPE_INDEX = ("CREATE INDEX records_type_time ON records (type, created_at)",)

SQLITE_FLEET_MIGRATIONS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (15, _CONFIGS, _configs("REAL", _SQLITE_CONFIGS_IMMUTABLE)),
    (16, _DIAGNOSTICS, _diagnostics("REAL", "INTEGER", "INTEGER PRIMARY KEY")),
    (17, _AGENT_PACKAGES, _agent_packages("REAL", _SQLITE_AGENT_IMMUTABLE)),
    (18, _ALERTS, _alerts("REAL")),
    (19, _RECORDS_BY_TYPE, _RECORDS_BY_TYPE_INDEX),
)

POSTGRES_FLEET_MIGRATIONS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (15, _CONFIGS, _configs("DOUBLE PRECISION", _POSTGRES_CONFIGS_IMMUTABLE)),
    (16, _DIAGNOSTICS, _diagnostics("DOUBLE PRECISION", "BIGINT", "BIGSERIAL PRIMARY KEY")),
    (17, _AGENT_PACKAGES, _agent_packages("DOUBLE PRECISION", _POSTGRES_AGENT_IMMUTABLE)),
    (18, _ALERTS, _alerts("DOUBLE PRECISION")),
    (19, _RECORDS_BY_TYPE, _RECORDS_BY_TYPE_INDEX),
)

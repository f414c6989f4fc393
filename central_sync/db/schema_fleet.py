"""Migrations from 15 on: running the fleet from central (configurations, diagnostics, agent
releases). Appended to the lists in `schema.py`; each entry is (version, description,
statements), with one list per dialect."""

from __future__ import annotations


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

SQLITE_FLEET_MIGRATIONS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (16, _DIAGNOSTICS, _diagnostics("REAL", "INTEGER", "INTEGER PRIMARY KEY")),
)

POSTGRES_FLEET_MIGRATIONS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (16, _DIAGNOSTICS, _diagnostics("DOUBLE PRECISION", "BIGINT", "BIGSERIAL PRIMARY KEY")),
)

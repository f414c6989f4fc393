"""Migrations from 15 on: running the fleet from central (configurations, diagnostics, agent
releases). Appended to the lists in `schema.py`; each entry is (version, description,
statements), with one list per dialect."""

from __future__ import annotations

SQLITE_FLEET_MIGRATIONS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
)

POSTGRES_FLEET_MIGRATIONS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
)

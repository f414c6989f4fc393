"""Staged rollouts as central stores them: rollouts, their devices wave by wave, and the
lease that lets one central process drive them (part of CentralDB)."""

from __future__ import annotations

import time
from collections.abc import Callable

from central_sync.db.connection import Connection, serialised
from central_sync.db.rows import Rollout, RolloutDevice


class RolloutQueries:
    """Rollouts and leases; mixed into CentralDB, whose connection and lock it uses."""

    _db: Connection
    _audit: Callable[[str, str, str, str], None]  # CentralDB's: actor, action, subject, detail
    dialect: str

    @serialised
    def create_rollout(self, rollout: Rollout, plan: list[list[str]]) -> None:
        """Record a rollout and its devices, wave by wave, with its audit entry."""
        with self._db.atomic():
            self._db.execute(
                "INSERT INTO rollouts (rollout_id, kind, model_name, version, target, canary, "
                "waves, success_ratio, wave_timeout_s, state, current_wave, wave_started_at, "
                "detail, created_at, created_by, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, "
                "?, ?, ?, ?, ?, ?, ?)",
                (rollout.rollout_id, rollout.kind, rollout.model_name, rollout.version,
                 rollout.target, rollout.canary, rollout.waves, rollout.success_ratio,
                 rollout.wave_timeout_s, rollout.state,
                 rollout.current_wave, rollout.wave_started_at, rollout.detail,
                 rollout.created_at, rollout.created_by, rollout.updated_at))
            self._db.executemany(
                "INSERT INTO rollout_devices (rollout_id, device_id, wave, state, updated_at) "
                "VALUES (?, ?, ?, 'pending', ?)",
                [(rollout.rollout_id, device, wave, rollout.created_at)
                 for wave, devices in enumerate(plan) for device in devices])
            self._audit(rollout.created_by, "rollout.start", rollout.ref,
                        f"rollout={rollout.rollout_id} kind={rollout.kind} "
                        f"target={rollout.target} waves="
                        + " | ".join(",".join(w) for w in plan))

    @serialised
    def get_rollout(self, rollout_id: str) -> Rollout | None:
        row = next(self._db.query("SELECT * FROM rollouts WHERE rollout_id = ?",
                                  (rollout_id,)), None)
        return Rollout(**row) if row else None

    @serialised
    def list_rollouts(self, states: tuple[str, ...] | None = None,
                      limit: int = 50) -> list[Rollout]:
        where, params = "", ()
        if states:
            where = f" WHERE state IN ({', '.join('?' * len(states))})"
            params = states
        return [Rollout(**row) for row in self._db.query(
            f"SELECT * FROM rollouts{where} ORDER BY created_at DESC LIMIT ?",
            (*params, limit))]

    @serialised
    def rollout_devices(self, rollout_id: str) -> list[RolloutDevice]:
        return [RolloutDevice(**row) for row in self._db.query(
            "SELECT * FROM rollout_devices WHERE rollout_id = ? ORDER BY wave, device_id",
            (rollout_id,))]

    @serialised
    def update_rollout(self, rollout_id: str, actor: str, state: str, detail: str,
                       current_wave: int | None = None,
                       wave_started_at: float | None = None) -> None:
        """Move a rollout on; every change of state is in the audit log."""
        with self._db.atomic():
            before = next(self._db.query(
                "SELECT state, current_wave FROM rollouts WHERE rollout_id = ?", (rollout_id,)))
            self._db.execute(
                "UPDATE rollouts SET state = ?, detail = ?, current_wave = COALESCE(?, "
                "current_wave), wave_started_at = COALESCE(?, wave_started_at), updated_at = ? "
                "WHERE rollout_id = ?",
                (state, detail, current_wave, wave_started_at, time.time(), rollout_id))
            if before["state"] != state or (current_wave is not None
                                            and current_wave != before["current_wave"]):
                self._audit(actor, f"rollout.{state}", rollout_id, detail)

    @serialised
    def update_rollout_device(self, rollout_id: str, device_id: str, state: str,
                              detail: str = "", command_id: str | None = None) -> None:
        self._db.execute(
            "UPDATE rollout_devices SET state = ?, detail = ?, command_id = COALESCE(?, "
            "command_id), updated_at = ? WHERE rollout_id = ? AND device_id = ?",
            (state, detail, command_id, time.time(), rollout_id, device_id))

    @serialised
    def hold_lease(self, name: str, holder: str, ttl_s: float,
                   now: float | None = None) -> bool:
        """Take or renew the lease `name` for `ttl_s`: True while `holder` has it, False while
        another holder's lease has not run out."""
        now = time.time() if now is None else now
        with self._db.atomic():
            self._db.execute("INSERT OR IGNORE INTO leases (name, holder, expires_at) "
                             "VALUES (?, ?, ?)", (name, holder, now + ttl_s))
            return self._db.execute(
                "UPDATE leases SET holder = ?, expires_at = ? WHERE name = ? AND "
                "(holder = ? OR expires_at < ?)", (holder, now + ttl_s, name, holder, now)) == 1

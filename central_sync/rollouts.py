"""Staged rollouts: a canary, then waves; halt and roll back a wave that fails.

A rollout's group is the devices provisioning gave its label; its canary is drawn at random
among the healthy ones, or named. What a device reports of itself chooses neither.

A rollout lives in the database, so `central-sync rollout ...` commands and a restarted
`central-sync serve` see the same state. The `RolloutEngine` in `serve` drives every active
rollout: it sends the current wave's deploy commands, follows each device's deployment until
its probation confirms the version (or it fails or rolls back), moves to the next wave once the
wave's success ratio is reached, and halts the rollout (rolling back the wave's successes) once
that ratio can no longer be reached or the wave times out.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import re
import time
import uuid
from collections import Counter
from collections.abc import Collection, Sequence

from central_sync.config import CentralConfig
from central_sync.db import (
    ROLLOUT_ACTIVE_STATES,
    CentralDB,
    Rollout,
    RolloutDevice,
)
from central_sync.rollout_kinds import ROLLOUT_KINDS, RolloutKind
from edge_agent.kernel.contract import Command, Topics, encode
from edge_agent.kernel.signing import Signer
from edge_agent.kernel.transport import NotConnected, Transport

log = logging.getLogger(__name__)

ENGINE = "central"  # the actor of automatic steps in the audit log
SUCCEEDED_STEPS = {"confirmed"}
FAILED_STEPS = {"failed", "rolled_back"}
TERMINAL_ROLLOUT_STATES = ("completed", "aborted", "rolled_back")
ROLLOUT_ID_CHARS = 12  # hex digits of a random id: short enough to type, unique in practice
# Time for a wave's devices to fetch the model, activate it and pass probation on a slow link.
DEFAULT_WAVE_TIMEOUT_S = 900.0
# A success ratio times the wave's size is a float (0.9 * 10 = 9.000000000000002): this much
# below it still counts as the whole number of devices needed.
RATIO_ROUNDING_SLACK = 1e-9
# A canary is drawn among the devices heard from within this long (the configuration's default).
DEFAULT_OFFLINE_AFTER_S: float = CentralConfig.model_fields["offline_after_s"].default


class RolloutError(Exception):
    """A rollout cannot be started or changed; the message says why and what to do."""


def parse_waves(text: str) -> list[float]:
    """'25%,100%' -> [0.25, 1.0]: cumulative shares of the devices, the last one 100%."""
    shares = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        match = re.fullmatch(r"(\d+(?:\.\d+)?)%", part)
        if not match or not 0 < float(match[1]) <= 100:
            raise RolloutError(f"wave {part!r} is not a share such as 25%; give e.g. 25%,100%")
        shares.append(float(match[1]) / 100)
    if not shares or shares != sorted(shares) or shares[-1] != 1.0:
        raise RolloutError(f"waves {text!r} must grow and end at 100%, e.g. 10%,50%,100%")
    return shares


def choose_canaries(devices: Sequence[str], healthy: Collection[str], count: int,
                    rng: random.Random) -> list[str]:
    """`count` devices drawn at random among the healthy ones (online, no failed source): no
    device can make itself the canary by its name or by what it reports."""
    fit = sorted(set(devices) & set(healthy))
    if len(fit) < count:
        raise RolloutError(
            f"the canary wave needs {count} healthy device(s) (online, no failed source) "
            f"among the rollout's devices; {len(fit)} are ({', '.join(fit) or 'none'}): name "
            "the canary with --canary-device ID, or start with --canary 0")
    return rng.sample(fit, count)


def plan_waves(devices: Sequence[str], canaries: Sequence[str],
               shares: Sequence[float]) -> list[list[str]]:
    """A canary wave of `canaries` (if any), then waves reaching each cumulative share."""
    if not devices:
        raise RolloutError("the rollout targets no device")
    first = list(dict.fromkeys(canaries))
    outside = [d for d in first if d not in set(devices)]
    if outside:
        raise RolloutError(f"canary {', '.join(outside)} is not one of the rollout's devices")
    ordered = first + sorted(set(devices) - set(first))
    plan: list[list[str]] = [first] if first else []
    done = len(first)
    for share in shares:
        upto = max(done, math.ceil(share * len(ordered)))
        if upto > done:
            plan.append(ordered[done:upto])
            done = upto
    return plan


def start_rollout(db: CentralDB, name: str, version: str, devices: Sequence[str], target: str,
                  created_by: str, canary: int = 1, waves: str = "100%",
                  success_ratio: float = 1.0,
                  wave_timeout_s: float = DEFAULT_WAVE_TIMEOUT_S,
                  canary_devices: Sequence[str] = (),
                  offline_after_s: float = DEFAULT_OFFLINE_AFTER_S,
                  rng: random.Random | None = None,
                  signer: Signer | None = None,
                  approval_required: bool = True,
                  kind: str = "model") -> Rollout:
    """Record a new rollout of name@version (a model's by default, a configuration's with
    `kind` config); the engine in `serve` carries it out. The canary wave is `canary_devices`
    when named, else `canary` devices drawn among the healthy ones. With central's `signer`
    the stored version's signature is checked now, not only when a wave is sent. A model
    version is refused unless it may be deployed (`approval_required`: central's
    `models.require_approval`); a configuration needs no approval."""
    behaviour = rollout_kind(kind)
    try:
        behaviour.check(db, signer, name, version, approval_required)
    except behaviour.refusals as exc:
        raise RolloutError(str(exc)) from None
    if not 0 < success_ratio <= 1:
        raise RolloutError(f"success ratio {success_ratio} must be in (0, 1], e.g. 0.9")
    _refuse_when_busy(db, kind, name, devices, behaviour.one_per_device)
    shares = parse_waves(waves)
    now = time.time()
    canaries = list(canary_devices)
    if not canaries and canary > 0 and devices:
        healthy = [d.device_id for d in db.list_devices() if d.healthy(now, offline_after_s)]
        canaries = choose_canaries(devices, healthy, canary, rng or random.SystemRandom())
    plan = plan_waves(devices, canaries, shares)
    rollout = Rollout(
        rollout_id=uuid.uuid4().hex[:ROLLOUT_ID_CHARS], model_name=name, version=version,
        target=target, canary=len(plan[0]) if canaries else 0, waves=len(plan),
        success_ratio=success_ratio, wave_timeout_s=wave_timeout_s,
        state="running", current_wave=0, wave_started_at=now,
        detail=f"wave 1 of {len(plan)} ({len(plan[0])} device(s))", created_at=now,
        created_by=created_by, updated_at=now, kind=kind)
    db.create_rollout(rollout, plan)
    return rollout


def rollout_kind(kind: str) -> RolloutKind:
    """The kind's behaviour; RolloutError for a kind this central does not know."""
    if kind not in ROLLOUT_KINDS:
        raise RolloutError(f"central does not know rollouts of kind {kind!r} (it knows "
                           f"{', '.join(ROLLOUT_KINDS)}); is central up to date?")
    return ROLLOUT_KINDS[kind]


def _refuse_when_busy(db: CentralDB, kind: str, name: str, devices: Sequence[str],
                      one_per_device: bool) -> None:
    """One running rollout per name and kind; for a kind a device runs one of at a time (its
    configuration), none sharing a device with another running rollout of that kind."""
    busy = [r for r in db.list_rollouts(("running", "paused")) if r.kind == kind]
    for other in busy:
        shared = sorted(set(devices) & {d.device_id for d in db.rollout_devices(
            other.rollout_id)}) if one_per_device else []
        if other.model_name != name and not shared:
            continue
        on = f" on {', '.join(shared[:5])}{' ...' if len(shared) > 5 else ''}" if shared else ""
        raise RolloutError(f"rollout {other.rollout_id} of {other.what} is still "
                           f"{other.state}{on}; abort it first (`central-sync rollout abort "
                           f"{other.rollout_id}`)")


def group_devices(db: CentralDB, labels: Sequence[str]) -> list[str]:
    """The provisioned devices holding any of `labels` (given by `device add --labels` or
    `device label`), never what devices report of themselves."""
    return sorted({device for label in labels for device in db.devices_labelled(label)})


def change_rollout(db: CentralDB, rollout_id: str, action: str, actor: str) -> Rollout:
    """pause, resume, abort or rollback, as asked by a person."""
    rollout = db.get_rollout(rollout_id)
    if rollout is None:
        raise RolloutError(f"no rollout {rollout_id}; see `central-sync rollout status`")
    allowed = {
        "pause": ("running",),
        "resume": ("paused",),
        "abort": ("running", "paused", "halted"),
        "rollback": ("running", "paused", "halted", "completed", "aborted"),
    }[action]
    if rollout.state not in allowed:
        raise RolloutError(f"rollout {rollout_id} is {rollout.state}; {action} applies only "
                           f"to a rollout that is {' or '.join(allowed)}")
    state = {"pause": "paused", "resume": "running", "abort": "aborted",
             "rollback": "rolling_back"}[action]
    detail = f"{action} by {actor}"
    db.update_rollout(rollout_id, actor, state, detail,
                      wave_started_at=time.time() if action == "resume" else None)
    updated = db.get_rollout(rollout_id)
    assert updated is not None
    return updated


ROLLOUT_LEASE = "rollouts"
ROLLOUT_LEASE_S = 10.0  # a stopped leader's rollouts move on again at most this much later
# Between two steps of every rollout: a confirmed device moves its wave on within this time,
# and each step costs a few small queries, so the database hardly notices.
ROLLOUT_STEP_INTERVAL_S = 0.5


class RolloutEngine:
    """Carries out the rollouts recorded in the database; runs inside `central-sync serve`."""

    def __init__(self, db: CentralDB, transport: Transport, signer: Signer, topics: Topics,
                 interval_s: float = ROLLOUT_STEP_INTERVAL_S, holder: str = "central",
                 lease_s: float = ROLLOUT_LEASE_S, approval_required: bool = True) -> None:
        self.db = db
        # Checked again before each wave is sent: a version rejected or retired meanwhile
        # halts its rollout. Rolling devices back never depends on it.
        self.approval_required = approval_required
        self.transport = transport
        self.signer = signer
        self.topics = topics
        self.interval_s = interval_s
        self.holder = holder
        self.lease_s = lease_s
        self.leading = False
        self.step_failures: Counter[str] = Counter()  # by rollout id

    async def run(self) -> None:
        """Drive the rollouts while this process holds the rollout lease: of several
        central-sync processes on one database, one moves rollouts on; when it stops, another
        takes over once its lease has run out."""
        while True:
            try:
                active = await self._rollouts_to_step()
            except Exception:  # the engine outlives a failed query: it tries again next round
                log.exception("rollouts not read holder=%s; tried again in %g s", self.holder,
                              self.interval_s)
                active = []
            await self.step_each(active)
            await asyncio.sleep(self.interval_s)

    async def _rollouts_to_step(self) -> list[Rollout]:
        """The active rollouts while this process holds the lease; none while another does."""
        leading = await asyncio.to_thread(self.db.hold_lease, ROLLOUT_LEASE, self.holder,
                                          self.lease_s)
        if leading != self.leading:
            log.info("rollout lease %s holder=%s", "taken" if leading else "lost", self.holder)
            self.leading = leading
        if not leading:
            return []
        return await asyncio.to_thread(self.db.list_rollouts, ROLLOUT_ACTIVE_STATES)

    async def step_each(self, rollouts: Sequence[Rollout]) -> None:
        """Step every rollout on its own: one that fails (a bad row, a failed query) is logged
        and counted, and the others still step."""
        for rollout in rollouts:
            try:
                await self.step(rollout)
            except Exception:
                self.step_failures[rollout.rollout_id] += 1
                log.exception("rollout step failed rollout=%s failures=%d; the other rollouts "
                              "go on, this one is tried again in %g s", rollout.rollout_id,
                              self.step_failures[rollout.rollout_id], self.interval_s)

    async def step(self, rollout: Rollout) -> None:
        try:
            rollout_kind(rollout.kind)
        except RolloutError as exc:  # written by a newer central: halted, never guessed at
            if rollout.state == "running":
                await self._set(rollout, "halted", f"halted: {exc}")
            return
        devices = await asyncio.to_thread(self.db.rollout_devices, rollout.rollout_id)
        if await self._follow(rollout, devices):
            devices = await asyncio.to_thread(self.db.rollout_devices, rollout.rollout_id)
        if rollout.state == "rolling_back":
            await self._roll_back(rollout, [d for d in devices if d.state == "succeeded"])
            await self._set(rollout, "rolled_back", "rolled back: every device that took "
                            f"{rollout.what} was sent back to its previous one")
            return
        if rollout.state == "halted":
            # A deployment still under way when the wave halted may succeed later: undo it.
            late = [d for d in devices if d.wave == rollout.current_wave
                    and d.state == "succeeded"]
            await self._roll_back(rollout, late)
            return
        if rollout.state != "running":
            return
        wave = [d for d in devices if d.wave == rollout.current_wave]
        await self._send(rollout, [d for d in wave if d.state == "pending"])
        await self._judge(rollout, devices)  # sending moves no device to success or failure

    async def _send(self, rollout: Rollout, pending: list[RolloutDevice]) -> None:
        kind = ROLLOUT_KINDS[rollout.kind]
        for device in pending:
            try:
                command = await asyncio.to_thread(
                    kind.deploy, self.db, self.signer, rollout, device.device_id,
                    f"rollout {rollout.rollout_id}", self.approval_required)
            except kind.refusals as exc:
                await self._set(rollout, "halted", f"cannot deploy: {exc}")
                return
            if not await self._publish(command):
                return  # marked failed; sent again next step, as a new command
            await asyncio.to_thread(self.db.update_rollout_device, rollout.rollout_id,
                                    device.device_id, "sent", "deploy command sent",
                                    command.command_id)
            log.info("rollout deploy sent rollout=%s kind=%s device=%s wave=%d command=%s",
                     rollout.rollout_id, rollout.kind, device.device_id, device.wave + 1,
                     command.command_id)

    async def _publish(self, command: Command) -> bool:
        """Send a recorded command; False (its deployment marked failed) when the broker is
        not connected."""
        try:
            await self.transport.publish(self.topics.commands(command.device_id),
                                         encode(command), qos=1)
        except NotConnected as exc:
            await asyncio.to_thread(self.db.mark_deployment, command.command_id, "failed",
                                    f"command not sent: {exc}")
            return False
        return True

    async def _follow(self, rollout: Rollout, devices: list[RolloutDevice]) -> bool:
        """Bring each sent device's state up to date from its deployment; True if any moved."""
        changed = False
        for device in devices:
            if device.state != "sent" or device.command_id is None:
                continue
            deployment = await asyncio.to_thread(self.db.get_deployment, device.command_id)
            if deployment is None:
                continue
            step, detail = deployment["state"], deployment["detail"]
            state = ("succeeded" if step in SUCCEEDED_STEPS
                     else "failed" if step in FAILED_STEPS else None)
            if state is not None or f"{step}: {detail}" != device.detail:
                await asyncio.to_thread(self.db.update_rollout_device, rollout.rollout_id,
                                        device.device_id, state or "sent", f"{step}: {detail}")
                changed = True
        return changed

    async def _judge(self, rollout: Rollout, devices: list[RolloutDevice]) -> None:
        wave = [d for d in devices if d.wave == rollout.current_wave]
        size = len(wave)
        needed = math.ceil(rollout.success_ratio * size - RATIO_ROUNDING_SLACK)
        succeeded = [d for d in wave if d.state == "succeeded"]
        failed = [d for d in wave if d.state == "failed"]
        name = wave_name(rollout, rollout.current_wave)
        if len(succeeded) >= needed:
            if rollout.current_wave + 1 >= rollout.waves:
                await self._set(rollout, "completed",
                                f"all {rollout.waves} waves done: {rollout.what} confirmed on "
                                f"{sum(d.state == 'succeeded' for d in devices)} device(s)")
                return
            following = rollout.current_wave + 1
            await self._set(rollout, "running",
                            f"{name} passed ({len(succeeded)}/{size}); wave {following + 1} of "
                            f"{rollout.waves} started", current_wave=following,
                            wave_started_at=time.time())
            return
        reason = None
        if len(failed) > size - needed:
            first = failed[0]
            reason = (f"{name} failed: {len(failed)} of {size} device(s) failed "
                      f"({first.device_id}: {first.detail})")
        elif rollout.wave_started_at is not None and \
                time.time() - rollout.wave_started_at > rollout.wave_timeout_s:
            reason = (f"{name} timed out after {rollout.wave_timeout_s:g} s with "
                      f"{len(succeeded)} of {size} confirmed")
        if reason is not None:
            await self._set(rollout, "halted", f"halted: {reason}; the wave is rolled back")
            await self._roll_back(rollout, succeeded)

    async def _roll_back(self, rollout: Rollout, devices: list[RolloutDevice]) -> None:
        kind = ROLLOUT_KINDS[rollout.kind]
        for device in devices:
            # Recorded first: the device's steps are accepted only for commands issued to it.
            command = await asyncio.to_thread(kind.roll_back, self.db, self.signer, rollout,
                                              device.device_id, f"rollout {rollout.rollout_id}")
            if not await self._publish(command):
                return  # tried again next step
            await asyncio.to_thread(self.db.update_rollout_device, rollout.rollout_id,
                                    device.device_id, "rolled_back",
                                    f"rollback sent ({rollout.state})")
            log.info("rollout rollback sent rollout=%s kind=%s device=%s", rollout.rollout_id,
                     rollout.kind, device.device_id)

    async def _set(self, rollout: Rollout, state: str, detail: str,
                   current_wave: int | None = None, wave_started_at: float | None = None) -> None:
        log.info("rollout rollout=%s state=%s detail=%s", rollout.rollout_id, state, detail)
        await asyncio.to_thread(self.db.update_rollout, rollout.rollout_id, ENGINE, state,
                                detail, current_wave, wave_started_at)


def wave_name(rollout: Rollout, index: int) -> str:
    return f"wave {index + 1} of {rollout.waves}" + (
        " (canary)" if index == 0 and rollout.canary else "")

"""The alert engine: evaluates the rules on a timer and soon after ingest brings news, holds
each condition for its `for` duration, fires and resolves alerts with hysteresis, and enqueues
their notifications. One central process evaluates at a time (the "alerts" lease)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from central_sync.alert_rules import (
    SCADA_ROUTE,
    SEVERITY_RANK,
    AlertMessage,
    AlertsConfig,
    RuleConfig,
)
from central_sync.alerts.conditions import Deployment, Facts, Observation, observe
from central_sync.db import CentralDB
from central_sync.db.alerts import Alert, Silence
from central_sync.db.rows import device_summary
from central_sync.drift import MIN_COUNT, drift_report

log = logging.getLogger(__name__)

ALERTS_LEASE = "alerts"
POKE_DEBOUNCE_S = 0.3  # news from ingest comes in bursts: one evaluation for the burst
MIN_GAP_S = 1.0  # at most one evaluation a second, however busy ingest is
BASELINE_REFRESH_S = 600.0  # the defect baselines (days of history) change slowly
DAY_S = 86400.0
HOUR_S = 3600.0

Held = tuple[float | None, float | None]  # (breach_since, clear_since)
ChangeListener = Callable[[list[Alert]], Awaitable[None]]


@dataclass(frozen=True)
class Decision:
    action: Literal["fire", "resolve", "update", "none"]
    held: Held | None  # what to keep holding; None: nothing


def decide(rule: RuleConfig, observation: Observation | None, held: Held,
           open_alert: Alert | None, now: float) -> Decision:
    """The state machine of one rule and group: a breach (value at or above the threshold)
    held for `for_s` fires; a firing alert whose value stays below the resolve threshold for
    `resolve_after_s` resolves; a value between the two thresholds changes nothing."""
    assert rule.threshold is not None and rule.resolve_threshold is not None
    value = observation.value if observation is not None else None
    breach = value is not None and value >= rule.threshold
    clear = value is None or value < rule.resolve_threshold
    breach_since, clear_since = held
    if open_alert is None:
        if not breach:
            return Decision("none", None)
        since = breach_since if breach_since is not None else now
        if now - since >= rule.for_s:
            return Decision("fire", None)
        return Decision("none", (since, None))
    if not clear:
        return Decision("update", None)
    since = clear_since if clear_since is not None else now
    if now - since >= rule.resolve_after_s:
        return Decision("resolve", None)
    return Decision("none", (None, since))


def alert_message(alert: Alert, event: str, central_id: str, public_url: str,
                  now: float | None = None) -> AlertMessage:
    """What the routes send about `alert`."""
    url = f"{public_url.rstrip('/')}/alerts/{alert.alert_id}" if public_url else ""
    return AlertMessage(
        event=event, alert_id=alert.alert_id, rule=alert.rule, kind=alert.kind,  # type: ignore[arg-type]
        severity=alert.severity, state=alert.state,  # type: ignore[arg-type]
        summary=alert.summary, devices=list(alert.devices), labels=alert.labels,
        value=alert.value, threshold=alert.threshold, fired_at=alert.fired_at,
        resolved_at=alert.resolved_at, url=url, central_id=central_id,
        sent_at=time.time() if now is None else now)


class AlertEngine:
    """Runs inside `central-sync serve`; state lives in the database, so a restarted or
    another central process goes on where this one stopped."""

    def __init__(self, db: CentralDB, config: AlertsConfig, offline_after_s: float,
                 holder: str = "central", public_url: str = "",
                 device_labels: Callable[[], dict[str, Sequence[str]]] | None = None) -> None:
        self.db = db
        self.config = config
        self.offline_after_s = offline_after_s
        self.holder = holder
        self.public_url = public_url
        self.rules = config.effective_rules()
        self.lease_s = max(3 * config.evaluate_interval_s, 15.0)
        self.leading = False
        self.evaluations = 0
        self.failures = 0
        self.listeners: list[ChangeListener] = []
        self._poked = asyncio.Event()
        self._baselines: dict[str, tuple[float, tuple[dict[tuple[str, str, str], float],
                                                          set[tuple[str, str]]]]] = {}

    def poke(self) -> None:
        """Ingest brought news (a status, defects, statistics, a deployment step)."""
        self._poked.set()

    async def run(self) -> None:
        """Evaluate at once (what a restart left pending goes out now), then on the timer and
        soon after each poke."""
        last, first = 0.0, True
        while True:
            if not first and await self._poked_within(self.config.evaluate_interval_s):
                await asyncio.sleep(max(POKE_DEBOUNCE_S, last + MIN_GAP_S - time.monotonic()))
            first = False
            last = time.monotonic()
            self._poked.clear()
            try:
                await self.evaluate()
            except Exception:  # the engine outlives a failed query: it tries again next round
                self.failures += 1
                log.exception("alert rules not evaluated holder=%s failures=%d; tried again "
                              "in %g s", self.holder, self.failures,
                              self.config.evaluate_interval_s)

    async def _poked_within(self, timeout_s: float) -> bool:
        """Whether a poke came within `timeout_s`. asyncio.timeout, not wait_for: on Python
        3.11 wait_for may turn a cancellation that meets its timeout into TimeoutError, and
        the loop would then outlive the service's stop."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._poked.wait()
        except TimeoutError:
            return False
        return True

    async def evaluate(self, now: float | None = None) -> list[Alert]:
        """One round while this process holds the lease: the alerts it fired or resolved."""
        now = time.time() if now is None else now
        leading = await asyncio.to_thread(self.db.hold_lease, ALERTS_LEASE, self.holder,
                                          self.lease_s, now)
        if leading != self.leading:
            log.info("alerts lease %s holder=%s", "taken" if leading else "lost", self.holder)
            self.leading = leading
        if not leading:
            return []
        changed = await asyncio.to_thread(self._evaluate, now)
        self.evaluations += 1
        for listener in self.listeners:
            await listener(changed)
        return changed

    # --- one round, on a worker thread ----------------------------------------------------

    def _evaluate(self, now: float) -> list[Alert]:
        facts = self._facts(now)
        open_alerts = {(a.rule, a.group_key): a for a in self.db.open_alerts()}
        held = self.db.alert_conditions()
        silences = self.db.active_silences(now)
        labels_of = {d.device_id: d.labels for d in facts.devices}
        new_held: dict[tuple[str, str], Held] = {}
        changed: list[Alert] = []
        for rule in self.rules:
            observations = observe(rule, facts)
            keys = set(observations) | {k for r, k in open_alerts if r == rule.name} | \
                {k for r, k in held if r == rule.name}
            for key in sorted(keys):
                observation = observations.get(key)
                current = open_alerts.get((rule.name, key))
                decision = decide(rule, observation, held.get((rule.name, key), (None, None)),
                                  current, now)
                if decision.held is not None:
                    new_held[(rule.name, key)] = decision.held
                notify = self._notifier(rule, key, silences, labels_of, now)
                if decision.action == "fire" and observation is not None:
                    breach_since = held.get((rule.name, key), (None, None))[0]
                    fired = self.db.fire_alert(
                        rule.name, key, kind=rule.kind, severity=rule.severity,
                        summary=observation.summary, devices=observation.devices,
                        labels=observation.labels, operator=rule.operator,
                        value=observation.value, threshold=rule.threshold,
                        started_at=breach_since if breach_since is not None else now, now=now,
                        notify=notify)
                    if fired is not None:
                        log.warning("alert fired id=%s rule=%s group=%s severity=%s %s",
                                    fired.alert_id, rule.name, key, rule.severity,
                                    observation.summary)
                        changed.append(fired)
                elif decision.action == "resolve" and current is not None:
                    resolved = self.db.resolve_alert(current.alert_id, now=now, notify=notify)
                    if resolved is not None:
                        log.info("alert resolved id=%s rule=%s group=%s after %.0f s",
                                 current.alert_id, rule.name, key, now - current.fired_at)
                        changed.append(resolved)
                elif decision.action == "update" and current is not None and \
                        observation is not None and (
                            observation.value != current.value
                            or observation.devices != current.devices
                            or observation.summary != current.summary):
                    self.db.update_open_alert(current.alert_id, observation.value,
                                              observation.summary, observation.devices, now)
        known = {rule.name for rule in self.rules}
        for (rule_name, _), alert in open_alerts.items():
            if rule_name not in known:  # the rule was removed or turned off
                resolved = self.db.resolve_alert(alert.alert_id, now=now,
                                                 detail="its rule is no longer configured")
                if resolved is not None:
                    changed.append(resolved)
        if new_held != held:
            self.db.save_alert_conditions(new_held)
        return changed

    def _notifier(self, rule: RuleConfig, key: str, silences: list[Silence],
                  labels_of: dict[str, tuple[str, ...]], now: float
                  ) -> Callable[[Alert], list[tuple[str, str, float]]]:
        """Per route that takes this alert: its name, the message, and when it may go first.
        A silenced alert notifies no route (it still shows on the pages)."""
        def notify(alert: Alert) -> list[tuple[str, str, float]]:
            if any(s.covers(rule.name, key) for s in silences):
                return []
            event = "fired" if alert.open else "resolved"
            payload = alert_message(alert, event, self.holder, self.public_url,
                                    now).model_dump_json()
            out = [(SCADA_ROUTE, payload, now)] if self.config.mqtt_topic else []
            device_labels = {label for d in alert.devices for label in labels_of.get(d, ())}
            for route in self.config.routes:
                if not route.enabled or SEVERITY_RANK[alert.severity] < \
                        SEVERITY_RANK[route.min_severity]:
                    continue
                if route.rules and rule.name not in route.rules:
                    continue
                if route.labels and not device_labels & set(route.labels):
                    continue
                if event == "resolved" and not route.send_resolved:
                    continue
                not_before = now
                quiet = route.quiet_hours
                if quiet is not None and SEVERITY_RANK[alert.severity] < \
                        SEVERITY_RANK[quiet.min_severity]:
                    not_before = quiet.quiet_until(now) or now
                out.append((route.name, payload, not_before))
            return out

        return notify

    # --- facts ----------------------------------------------------------------------------

    def _facts(self, now: float) -> Facts:
        kinds = {rule.kind for rule in self.rules}
        facts = Facts(now=now, offline_after_s=self.offline_after_s,
                      line_label_prefix=self.config.line_label_prefix,
                      devices=[device_summary(row) for row in self.db.alert_devices()])
        windows = {rule.kind: rule.window_s or 0.0 for rule in self.rules}
        if "model_rolled_back" in kinds:
            facts.deployments = [
                Deployment(row["device_id"], row["kind"], row["model_name"], row["version"],
                           row["state"], row["detail"], row["updated_at"])
                for row in self.db.deployments_changed_since(now - windows["model_rolled_back"])]
        if "drift" in kinds:
            facts.drift = self._drift(now - windows["drift"])
        if "buffer_evicting" in kinds:
            facts.evictions = self._evictions(facts, now)
        for rule in self.rules:
            if rule.kind == "defect_rate":
                assert rule.window_s is not None
                facts.defects[rule.name] = self.db.defect_counts(now - rule.window_s, now + 1)
                facts.defect_baselines[rule.name], facts.defect_cameras[rule.name] = \
                    self._baseline(rule, now)
        return facts

    def _drift(self, since: float) -> dict[tuple[str, str, str], tuple[float, str]]:
        """(device, model, version) -> the largest PSI of a value over the period."""
        out = {}
        for name in self.db.model_names_with_stats_since(since):
            windows: dict[tuple[str, str], list] = {}
            for device_id, stats in self.db.model_stats(name, None, since):
                windows.setdefault((device_id, stats.model.version), []).append(stats)
            references = {}
            for device_id, version in sorted(windows):
                if version not in references:
                    manifest = self.db.get_model(name, version)
                    references[version] = manifest.meta.reference if manifest else None
                reference = references[version]
                if reference is None:
                    continue
                measured = [(d.psi, f"{d.side[:-1]} {d.name}")
                            for d in drift_report(reference, windows[(device_id, version)])
                            if d.psi is not None and d.count >= MIN_COUNT]
                if measured:
                    out[(device_id, name, version)] = max(measured)
        return out

    def _evictions(self, facts: Facts, now: float) -> dict[str, tuple[float, int]]:
        """When each buffer was last seen evicting: its eviction count grew since the last
        status central saw (kept in the database, so a restart does not fire again)."""
        seen = self.db.observations("evicted:")
        out, changed = {}, {}
        for device in facts.devices:
            buffer = device.status.buffer if device.status else None
            if buffer is None:
                continue
            key = f"evicted:{device.device_id}"
            count, last = seen.get(key, (None, 0.0))
            if count is None:  # first look: what was evicted before is history
                changed[key] = (float(buffer.evicted), 0.0)
            elif buffer.evicted > count:
                last = now
                changed[key] = (float(buffer.evicted), now)
            elif buffer.evicted < count:  # a reinstalled gateway starts counting again
                changed[key] = (float(buffer.evicted), last)
            out[device.device_id] = (last, buffer.evicted)
        if changed:
            self.db.save_observations(changed)
        return out

    def _baseline(self, rule: RuleConfig, now: float
                  ) -> tuple[dict[tuple[str, str, str], float], set[tuple[str, str]]]:
        """Defects per hour per device, camera and class over the days before the window,
        counted from the camera's first defect in that period; and the cameras with at least
        `baseline_min_hours` of history (the others have no baseline yet: not judged)."""
        if rule.fixed_per_hour is not None:
            return {}, set()
        cached = self._baselines.get(rule.name)
        if cached is not None and now - cached[0] < BASELINE_REFRESH_S:
            return cached[1]
        assert rule.window_s is not None
        until = now - rule.window_s
        history = self.db.defect_history(until - rule.baseline_days * DAY_S, until)
        first: dict[tuple[str, str], float] = {}
        for (device_id, camera, _), (_, first_at) in history.items():
            first[(device_id, camera)] = min(first_at, first.get((device_id, camera), until))
        hours = {camera: (until - at) / HOUR_S for camera, at in first.items()}
        judged = {camera for camera, h in hours.items() if h >= max(rule.baseline_min_hours,
                                                                     1e-9)}
        baseline = {key: count / hours[key[:2]] for key, (count, _) in history.items()
                    if key[:2] in judged}
        self._baselines[rule.name] = (now, (baseline, judged))
        return baseline, judged

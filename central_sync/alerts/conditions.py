"""What each kind of rule sees in central's facts: per group key a value, with the summary,
devices and labels an alert would carry. Pure functions; the engine gathers the facts."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from central_sync.alert_rules import RuleConfig
from central_sync.db import DeviceSummary

DOWN_SOURCE_STATES = ("failed", "reconnecting")
HOUR_S = 3600.0


@dataclass(frozen=True)
class Observation:
    """One group's value for one rule, and what an alert about it says."""

    value: float
    summary: str
    devices: tuple[str, ...]
    labels: dict[str, str]


@dataclass(frozen=True)
class Deployment:
    device_id: str
    kind: str  # model | config | agent
    name: str
    version: str
    state: str
    detail: str
    updated_at: float


@dataclass
class Facts:
    """What the rules look at, gathered once per evaluation."""

    now: float
    offline_after_s: float
    line_label_prefix: str
    devices: list[DeviceSummary]
    deployments: list[Deployment] = field(default_factory=list)  # oldest first
    # (device, model, version) -> (largest PSI, the value it was measured on)
    drift: dict[tuple[str, str, str], tuple[float, str]] = field(default_factory=dict)
    # rule name -> (device, camera, class) -> defects in the rule's window
    defects: dict[str, dict[tuple[str, str, str], int]] = field(default_factory=dict)
    # rule name -> (device, camera, class) -> defects per hour over the baseline days
    defect_baselines: dict[str, dict[tuple[str, str, str], float]] = field(default_factory=dict)
    # rule name -> (device, camera) with enough history for a baseline
    defect_cameras: dict[str, set[tuple[str, str]]] = field(default_factory=dict)
    # device -> when its buffer last evicted records (seen growing), and how many in all
    evictions: dict[str, tuple[float, int]] = field(default_factory=dict)

    def line_of(self, device: DeviceSummary) -> str | None:
        return next((label for label in device.labels
                     if label.startswith(self.line_label_prefix)), None)


def _stamp(at: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(at)) if at else "never"


def _targeted(rule: RuleConfig, devices: Iterable[DeviceSummary]) -> list[DeviceSummary]:
    targets = rule.targets
    return [d for d in devices
            if (not targets.devices or d.device_id in targets.devices)
            and (not targets.labels or set(d.labels) & set(targets.labels))]


def _gateway_offline(rule: RuleConfig, facts: Facts) -> dict[str, Observation]:
    out = {}
    for device in _targeted(rule, facts.devices):
        if device.state == "unknown":
            continue  # known only from records (never sent a status): nothing says it is down
        if device.presence(facts.now, facts.offline_after_s) == "offline":
            out[f"device={device.device_id}"] = Observation(
                1.0, f"gateway {device.device_id} offline, last heard "
                f"{_stamp(device.last_seen)}", (device.device_id,),
                {"device": device.device_id})
    return out


def _buffer_filling(rule: RuleConfig, facts: Facts) -> dict[str, Observation]:
    out = {}
    for device in _targeted(rule, facts.devices):
        buffer = device.status.buffer if device.status else None
        if buffer is None or not buffer.quota_bytes:
            continue
        share = buffer.bytes_used / buffer.quota_bytes
        out[f"device={device.device_id}"] = Observation(
            share, f"buffer of {device.device_id} {share:.0%} full ({buffer.depth} records "
            f"waiting for central); records are evicted when it is full",
            (device.device_id,), {"device": device.device_id})
    return out


def _buffer_evicting(rule: RuleConfig, facts: Facts) -> dict[str, Observation]:
    out = {}
    assert rule.window_s is not None
    for device in _targeted(rule, facts.devices):
        last, total = facts.evictions.get(device.device_id, (0.0, 0))
        if last and facts.now - last <= rule.window_s:
            out[f"device={device.device_id}"] = Observation(
                1.0, f"buffer of {device.device_id} is evicting records ({total} since "
                "install): central is not taking them as fast as they are made",
                (device.device_id,), {"device": device.device_id})
    return out


def _source_down(rule: RuleConfig, facts: Facts) -> dict[str, Observation]:
    out = {}
    for device in _targeted(rule, facts.devices):
        if device.status is None or device.presence(facts.now, facts.offline_after_s) \
                != "online":
            continue  # an offline gateway is the gateway_offline rule's
        for name, source in sorted(device.status.sources.items()):
            if rule.targets.cameras and name not in rule.targets.cameras:
                continue
            if source.state in DOWN_SOURCE_STATES:
                detail = f": {source.detail}" if source.detail else ""
                out[f"device={device.device_id}/source={name}"] = Observation(
                    1.0, f"source {name} on {device.device_id} {source.state}{detail}",
                    (device.device_id,), {"device": device.device_id, "source": name})
    return out


def _model_rolled_back(rule: RuleConfig, facts: Facts) -> dict[str, Observation]:
    assert rule.window_s is not None
    targeted = {d.device_id for d in _targeted(rule, facts.devices)}
    newest: dict[tuple[str, str, str], Deployment] = {}
    for deployment in facts.deployments:
        newest[(deployment.device_id, deployment.kind, deployment.name)] = deployment
    out = {}
    for (device_id, kind, name), deployment in sorted(newest.items()):
        if device_id not in targeted or deployment.state != "rolled_back" or \
                facts.now - deployment.updated_at > rule.window_s:
            continue
        what = {"model": "model", "config": "configuration", "agent": "agent"}.get(kind, kind)
        detail = f": {deployment.detail}" if deployment.detail else ""
        out[f"device={device_id}/{kind}={name}"] = Observation(
            1.0, f"{what} {name} {deployment.version} rolled back on {device_id}{detail}",
            (device_id,), {"device": device_id, kind: name, "version": deployment.version})
    return out


def _drift(rule: RuleConfig, facts: Facts) -> dict[str, Observation]:
    targeted = {d.device_id for d in _targeted(rule, facts.devices)}
    out = {}
    for (device_id, model, version), (psi, value_name) in sorted(facts.drift.items()):
        if device_id in targeted:
            out[f"device={device_id}/model={model}"] = Observation(
                psi, f"model {model} {version} on {device_id} drifted: PSI {psi:.2f} on "
                f"{value_name} against its reference", (device_id,),
                {"device": device_id, "model": model, "version": version})
    return out


def _defect_rate(rule: RuleConfig, facts: Facts) -> dict[str, Observation]:
    assert rule.window_s is not None and rule.threshold is not None
    targeted = {d.device_id for d in _targeted(rule, facts.devices)}
    counts = facts.defects.get(rule.name, {})
    baselines = facts.defect_baselines.get(rule.name, {})
    hours = rule.window_s / HOUR_S
    out = {}
    for (device_id, camera, label), count in sorted(counts.items()):
        targets = rule.targets
        if device_id not in targeted or (targets.cameras and camera not in targets.cameras) \
                or (targets.classes and label not in targets.classes):
            continue
        rate = count / hours
        if rule.fixed_per_hour is not None:
            against, what = rule.fixed_per_hour, "the fixed rate"
        elif (device_id, camera) in facts.defect_cameras.get(rule.name, ()):
            against = max(baselines.get((device_id, camera, label), 0.0),
                          rule.baseline_floor_per_hour)
            what = f"the {rule.baseline_days:g}-day baseline"
        else:
            continue  # a camera without history yet: nothing to compare with
        ratio = rate / against if count >= rule.min_count else 0.0
        out[f"device={device_id}/camera={camera}/class={label}"] = Observation(
            ratio, f"{label} on {camera} ({device_id}): {count} in the last "
            f"{rule.window_s / 60:.0f} min, {rate:.1f}/h against {against:.1f}/h for "
            f"{what} ({ratio:.1f}x)", (device_id,),
            {"device": device_id, "camera": camera, "class": label})
    return out


OBSERVERS: dict[str, Callable[[RuleConfig, Facts], dict[str, Observation]]] = {
    "gateway_offline": _gateway_offline,
    "buffer_filling": _buffer_filling,
    "buffer_evicting": _buffer_evicting,
    "source_down": _source_down,
    "model_rolled_back": _model_rolled_back,
    "drift": _drift,
    "defect_rate": _defect_rate,
}


def observe(rule: RuleConfig, facts: Facts) -> dict[str, Observation]:
    """The rule's value per group: per device (and source, camera, model), or per line."""
    found = OBSERVERS[rule.kind](rule, facts)
    return by_line(found, facts) if rule.group_by == "line" else found


def by_line(found: dict[str, Observation], facts: Facts) -> dict[str, Observation]:
    """One observation per line: the largest value, every device concerned. Devices with no
    line stay on their own."""
    lines = {d.device_id: facts.line_of(d) for d in facts.devices}
    grouped: dict[str, list[Observation]] = {}
    for key, observation in found.items():
        device_id = observation.devices[0]
        line = lines.get(device_id)
        rest = key.split("/", 1)[1] if "/" in key else ""
        line_key = (f"line={line}" if line else f"device={device_id}") + \
            (f"/{rest}" if rest else "")
        grouped.setdefault(line_key, []).append(observation)
    out = {}
    for key, observations in grouped.items():
        worst = max(observations, key=lambda o: o.value)
        devices = tuple(sorted({d for o in observations for d in o.devices}))
        labels = {k: v for k, v in worst.labels.items() if k != "device"}
        line = key.split("/", 1)[0].removeprefix("line=") if key.startswith("line=") else None
        if line is None:
            out[key] = worst
            continue
        summary = worst.summary if len(observations) == 1 else \
            f"{line}: {len(devices)} gateways ({', '.join(devices)}); worst: {worst.summary}"
        out[key] = Observation(worst.value, summary, devices, {**labels, "line": line})
    return out

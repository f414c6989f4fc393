"""The plant overview, central's home page: per line, each gateway's health, open alerts,
defect rates against their baseline, recommendations of the last day and the models it serves
with their drift. Made for a wall screen: large type, refreshed every few seconds."""

import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse
from pydantic import ValidationError

from central_sync.alert_rules import SEVERITY_RANK, AlertsConfig, RuleConfig
from central_sync.db import CentralDB, DeviceSummary
from central_sync.db.accounts import Session
from central_sync.db.alerts import Alert
from central_sync.web.auth import session_dependencies
from central_sync.web.pages import model_health
from central_sync.web.rendering import templates
from edge_agent.kernel.contract import (
    RECORD_RECOMMENDATION,
    RECORD_RECOMMENDATION_ANSWER,
    RECORD_RECOMMENDATION_OUTCOME,
    RecommendationAnswerPayload,
    RecommendationOutcomePayload,
    RecommendationPayload,
)

log = logging.getLogger(__name__)

OVERVIEW_REFRESH_S = 10
UNASSIGNED = "unassigned"  # the line of a gateway with no label naming one
HOUR_S = 3600.0
DAY_S = 24 * HOUR_S
RECOMMENDATIONS_S = DAY_S
SOURCE_DOWN_STATES = ("failed", "reconnecting")  # as the source_down rule counts them
# The baseline (days of defects) moves little in minutes; counting it at every refresh of every
# wall screen would read a week of defects each time (0.3 s for 40 gateways at 60 an hour).
BASELINE_REFRESH_S = 300.0
CLASSES_SHOWN_PER_GATEWAY = 6


class BaselineCache:
    """Defects per (device, class) over the baseline days before the last hour, counted at
    most every BASELINE_REFRESH_S."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counted: tuple[float, float, dict[tuple[str, str], int]] | None = None

    def counts(self, db: CentralDB, now: float, days: float) -> dict[tuple[str, str], int]:
        with self._lock:
            if self._counted is None or self._counted[1] != days \
                    or not 0 <= now - self._counted[0] < BASELINE_REFRESH_S:
                until = now - HOUR_S
                self._counted = (now, days, db.defect_counts_by_class(until - days * DAY_S,
                                                                      until))
            return self._counted[2]


@dataclass(frozen=True)
class ClassRate:
    """Defects of one class on a gateway in the last hour against its baseline rate."""

    label: str
    count: int  # in the last hour: also the rate per hour
    baseline_per_hour: float  # mean hourly rate over the baseline days, floored
    ratio: float
    mark: str  # "" | "above" (above its baseline) | "alert" (the defect-rate rule fired)
    alert: Alert | None = None  # the defect-rate alert open for it: its own figure is shown


@dataclass(frozen=True)
class Effect:
    """What accepted recommendations of one target did: the prediction when offered against
    the value measured (or, without a measuring tag, predicted) afterwards."""

    target: str
    unit: str
    outcomes: int
    before: float
    after: float
    measured: bool


@dataclass(frozen=True)
class Recommendations:
    offered: int = 0
    accepted: int = 0
    rejected: int = 0
    effects: tuple[Effect, ...] = ()


@dataclass(frozen=True)
class Serving:
    """A model version a gateway serves, and what drifted in its inputs and outputs."""

    name: str
    version: str
    drifted: tuple[str, ...]
    checked: bool  # whether the gateway reported this version's stats in the drift window


@dataclass(frozen=True)
class Gateway:
    device: DeviceSummary
    health: str  # online | stale (says online, silent too long) | offline
    buffer_pct: float | None
    sources_down: tuple[str, ...]
    alerts: int
    worst: str | None  # severity of its worst open alert
    rates: tuple[ClassRate, ...]
    more_classes: int
    recommendations: Recommendations
    models: tuple[Serving, ...]


@dataclass(frozen=True)
class Line:
    name: str
    gateways: tuple[Gateway, ...]
    alerts: tuple[Alert, ...]  # open, worst first
    worst: str | None

    def count(self, health: str) -> int:
        return sum(1 for g in self.gateways if g.health == health)


@dataclass(frozen=True)
class PlantOverview:
    at: float
    lines: tuple[Line, ...]
    alerts: int
    critical: int
    health: dict[str, int] = field(default_factory=dict)


def overview_router(db: CentralDB, offline_after_s: float,
                    alerts_config: AlertsConfig | None = None) -> APIRouter:
    router = APIRouter()
    _, viewer, _ = session_dependencies(db)
    config = alerts_config or AlertsConfig()
    baseline = BaselineCache()

    @router.get("/", response_class=HTMLResponse)
    def overview(session: Annotated[Session, Depends(viewer)]) -> str:
        view = plant_overview(db, time.time(), offline_after_s, config, baseline)
        return templates.get_template("overview.html").render(
            session=session, view=view, refresh_s=OVERVIEW_REFRESH_S)

    return router


def plant_overview(db: CentralDB, now: float, offline_after_s: float, config: AlertsConfig,
                   baseline: BaselineCache | None = None) -> PlantOverview:
    """Everything the overview shows, read with a handful of bounded queries."""
    rules = config.effective_rules()
    defect_rule = next((r for r in rules if r.kind == "defect_rate"), None)
    drift_rule = next((r for r in rules if r.kind == "drift"), None)
    devices = db.overview_devices()
    open_alerts = db.open_alerts()
    rates = _class_rates(db, now, defect_rule, baseline or BaselineCache(), open_alerts)
    recommendations = _recommendations(db, now - RECOMMENDATIONS_S)
    drift = _drift(db, devices, now - (drift_rule.window_s if drift_rule and
                                       drift_rule.window_s else HOUR_S))
    by_line: dict[str, list[Gateway]] = defaultdict(list)
    for device in devices:
        mine = [a for a in open_alerts if device.device_id in a.devices]
        classes = rates.get(device.device_id, [])
        by_line[line_of(device, config.line_label_prefix)].append(Gateway(
            device=device, health=health(device, now, offline_after_s),
            buffer_pct=_buffer_pct(device), sources_down=_sources_down(device),
            alerts=len(mine), worst=_worst(mine),
            rates=tuple(classes[:CLASSES_SHOWN_PER_GATEWAY]),
            more_classes=max(0, len(classes) - CLASSES_SHOWN_PER_GATEWAY),
            recommendations=recommendations.get(device.device_id, Recommendations()),
            models=tuple(Serving(m.name, m.version, *drift.get(
                (device.device_id, m.name, m.version), ((), False)))
                for m in device.active_models)))
    lines = []
    for name in sorted(by_line, key=lambda n: (n == UNASSIGNED, n)):
        ids = {g.device.device_id for g in by_line[name]}
        concerned = sorted((a for a in open_alerts if ids & set(a.devices)
                            or a.labels.get("line") == name),
                           key=lambda a: (-SEVERITY_RANK.get(a.severity, 0), -a.fired_at))
        lines.append(Line(name, tuple(by_line[name]), tuple(concerned), _worst(concerned)))
    gateways = [g for line in lines for g in line.gateways]
    return PlantOverview(
        at=now, lines=tuple(lines), alerts=len(open_alerts),
        critical=sum(1 for a in open_alerts if a.severity == "critical"),
        health={state: sum(1 for g in gateways if g.health == state)
                for state in ("online", "stale", "offline")})


def line_of(device: DeviceSummary, prefix: str) -> str:
    """The gateway's line: its first provisioning label starting with `prefix`."""
    return next((label for label in device.labels if label.startswith(prefix)), UNASSIGNED)


def health(device: DeviceSummary, now: float, offline_after_s: float) -> str:
    """offline when it said so (or its broker did, by its last will); stale when it says it
    is online but has been silent for longer than offline_after_s."""
    if device.state != "online":
        return "offline"
    if device.last_seen is None or now - device.last_seen > offline_after_s:
        return "stale"
    return "online"


def _buffer_pct(device: DeviceSummary) -> float | None:
    buffer = device.status.buffer if device.status else None
    if buffer is None or buffer.quota_bytes <= 0:
        return None
    return 100.0 * buffer.bytes_used / buffer.quota_bytes


def _sources_down(device: DeviceSummary) -> tuple[str, ...]:
    sources = device.status.sources if device.status else {}
    return tuple(sorted(name for name, s in sources.items() if s.state in SOURCE_DOWN_STATES))


def _worst(alerts: list[Alert]) -> str | None:
    return max((a.severity for a in alerts), key=lambda s: SEVERITY_RANK.get(s, 0),
               default=None)


def _class_rates(db: CentralDB, now: float, rule: RuleConfig | None, baseline: BaselineCache,
                 open_alerts: list[Alert]) -> dict[str, list[ClassRate]]:
    """Per gateway, its defect classes of the last hour and baseline days, highest ratio first.
    The baseline days and floor are the defect-rate rule's; "alert" marks a class the rule
    has an open alert for, so the page and the alerts never disagree."""
    days = rule.baseline_days if rule else 7.0
    floor = rule.baseline_floor_per_hour if rule else 1.0
    alerting = {(a.labels.get("device"), a.labels.get("class")): a for a in open_alerts
                if a.kind == "defect_rate"}
    recent = db.defect_counts_by_class(now - HOUR_S, now + 1)
    before = baseline.counts(db, now, days)
    out: dict[str, list[ClassRate]] = defaultdict(list)
    for device_id, label in sorted(set(recent) | set(before)):
        count, usual = recent.get((device_id, label), 0), before.get((device_id, label), 0)
        ratio = count / max(usual / (days * 24), floor)
        alert = alerting.get((device_id, label))
        mark = "alert" if alert else "above" if ratio > 1 else ""
        out[device_id].append(ClassRate(label, count, usual / (days * 24), ratio, mark, alert))
    for rates in out.values():
        rates.sort(key=lambda r: (r.mark != "alert", -r.ratio, -r.count, r.label))
    return out


def _recommendations(db: CentralDB, since: float) -> dict[str, Recommendations]:
    """Per gateway: recommendations offered, accepted and rejected since `since`, and what the
    accepted ones did to their target."""
    offers: dict[str, RecommendationPayload] = {}
    answers: list[tuple[str, RecommendationAnswerPayload]] = []
    outcomes: list[tuple[str, RecommendationOutcomePayload]] = []
    offered: dict[str, int] = defaultdict(int)
    for device_id, kind, payload in db.record_payloads_since(
            [RECORD_RECOMMENDATION, RECORD_RECOMMENDATION_ANSWER,
             RECORD_RECOMMENDATION_OUTCOME], since):
        try:
            if kind == RECORD_RECOMMENDATION:
                offer = RecommendationPayload.model_validate(payload)
                offers[f"{device_id}/{offer.id}"] = offer
                offered[device_id] += 1
            elif kind == RECORD_RECOMMENDATION_ANSWER:
                answers.append((device_id, RecommendationAnswerPayload.model_validate(payload)))
            else:
                outcomes.append((device_id,
                                 RecommendationOutcomePayload.model_validate(payload)))
        except ValidationError as exc:
            log.warning("%s record left out of the overview device=%s: %s", kind, device_id,
                        exc.errors()[0]["msg"])
    decided: dict[tuple[str, str], int] = defaultdict(int)
    for device_id, answer in answers:
        decided[device_id, answer.decision] += 1
    changes: dict[tuple[str, str, str, bool], list[tuple[float, float]]] = defaultdict(list)
    for device_id, outcome in outcomes:
        offer = offers.get(f"{device_id}/{outcome.id}")
        after = outcome.measured if outcome.measured is not None else outcome.predicted
        if outcome.decision != "accepted" or offer is None or after is None:
            continue
        key = (device_id, offer.target, offer.unit, outcome.measured is not None)
        changes[key].append((offer.predicted_now, after))
    effects: dict[str, list[Effect]] = defaultdict(list)
    for (device_id, target, unit, measured), pairs in sorted(changes.items()):
        effects[device_id].append(Effect(
            target, unit, len(pairs), sum(b for b, _ in pairs) / len(pairs),
            sum(a for _, a in pairs) / len(pairs), measured))
    devices = set(offered) | {d for d, _ in decided} | set(effects)
    return {d: Recommendations(offered[d], decided[d, "accepted"], decided[d, "rejected"],
                               tuple(effects[d])) for d in devices}


def _drift(db: CentralDB, devices: list[DeviceSummary],
           since: float) -> dict[tuple[str, str, str], tuple[tuple[str, ...], bool]]:
    """(device, model, version) -> (values drifted since `since`, reported at all): the
    model pages' drift report, for each version served."""
    out: dict[tuple[str, str, str], tuple[tuple[str, ...], bool]] = {}
    for name, version in sorted({(m.name, m.version) for d in devices
                                 for m in d.active_models}):
        found = model_health(db, name, version, since)
        for report in found[0]["devices"] if found else []:
            out[report["device_id"], name, version] = (tuple(report["drifted"]), True)
    return out

"""The alerts each gateway's operator page shows: the open operator alerts of its line,
published retained on the device's alerts topic whenever they change for that device."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from central_sync.alert_rules import SEVERITY_RANK
from central_sync.db import CentralDB
from central_sync.db.alerts import Alert
from central_sync.db.rows import device_summary
from edge_agent.kernel.contract import (
    MAX_OPERATOR_ALERTS,
    DeviceAlerts,
    OperatorAlert,
    Topics,
    encode,
)
from edge_agent.kernel.contract.alerts import MAX_ALERT_DEVICES, MAX_ALERT_SUMMARY_CHARS
from edge_agent.kernel.transport import NotConnected, Transport

log = logging.getLogger(__name__)

UNASSIGNED = ""  # the devices_by_line key of devices on no line: each sees only its own alerts
PUBLISH_TIMEOUT_S = 10.0  # a broker that stops answering must not stall the alert engine
PUBLISHES_AT_ONCE = 32
REFRESH_S = 600.0  # every gateway's topic is published again this often, changed or not

Published = dict[str, DeviceAlerts]  # device -> what its alerts topic holds now


def devices_by_line(labels_by_device: Mapping[str, Sequence[str]],
                    line_label_prefix: str) -> dict[str, list[str]]:
    """Line -> its devices: a device's line is its first label starting with the prefix
    (`alerts.line_label_prefix`); devices with none are under UNASSIGNED."""
    lines: dict[str, list[str]] = {}
    for device, labels in sorted(labels_by_device.items()):
        line = next((label for label in labels if label.startswith(line_label_prefix)),
                    UNASSIGNED)
        lines.setdefault(line, []).append(device)
    return lines


def device_alert_messages(open_alerts: Iterable[Alert],
                          devices_by_line: Mapping[str, Sequence[str]],
                          now: float | None = None) -> dict[str, DeviceAlerts]:
    """One message per known device: the open operator alerts of its line (an alert goes to
    every device of each line it concerns, and to the devices it names), most severe and
    newest first, at most MAX_OPERATOR_ALERTS; an empty list where none is open."""
    now = time.time() if now is None else now
    line_of = {device: line for line, devices in devices_by_line.items() for device in devices}
    shown: dict[str, list[tuple[Alert, OperatorAlert]]] = {device: [] for device in line_of}
    for alert in open_alerts:
        if not (alert.operator and alert.open):
            continue
        lines = {alert.labels.get("line", UNASSIGNED)}
        lines |= {line_of[d] for d in alert.devices if d in line_of}
        lines.discard(UNASSIGNED)
        targets = {d for line in lines for d in devices_by_line.get(line, ())}
        targets |= {d for d in alert.devices if d in line_of}
        item = _operator_alert(alert)
        for device in targets:
            shown[device].append((alert, item))
    return {device: DeviceAlerts(device_id=device, sent_at=now, alerts=[
        item for _, item in sorted(items, key=_most_urgent)[:MAX_OPERATOR_ALERTS]])
        for device, items in shown.items()}


def _most_urgent(pair: tuple[Alert, OperatorAlert]) -> tuple[int, float, str]:
    alert = pair[0]
    return (-SEVERITY_RANK.get(alert.severity, 0), -alert.fired_at, alert.alert_id)


def _operator_alert(alert: Alert) -> OperatorAlert:
    summary = alert.summary
    if len(summary) > MAX_ALERT_SUMMARY_CHARS:
        summary = summary[:MAX_ALERT_SUMMARY_CHARS - 1] + "…"
    return OperatorAlert(alert_id=alert.alert_id, rule=alert.rule,
                         severity=alert.severity,  # type: ignore[arg-type]
                         summary=summary, fired_at=alert.fired_at,
                         acked=alert.acked_by is not None,
                         devices=list(alert.devices[:MAX_ALERT_DEVICES]))


async def publish_device_alerts(transport: Transport, topics: Topics,
                                messages: Mapping[str, DeviceAlerts],
                                previous: Published, *, every: bool = False) -> Published:
    """Publish, retained, each message whose alerts differ from what `previous` says the
    device's topic holds (`every`: all of them), and clear the topic of a device no longer
    known. Returns what the topics hold now; a failed publish is tried again next call."""
    held = dict(previous)
    gate = asyncio.Semaphore(PUBLISHES_AT_ONCE)

    async def put(device: str, message: DeviceAlerts | None) -> None:
        payload = b"" if message is None else encode(message)  # empty retained: cleared
        async with gate:
            try:
                async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                    await transport.publish(topics.alerts(device), payload, qos=1, retain=True)
            except (NotConnected, TimeoutError) as exc:
                log.warning("operator alerts not published device=%s: %s; tried again after "
                            "the next evaluation", device, exc or "no PUBACK in time")
                held.pop(device, None)  # unknown now: published again next time
                return
        if message is None:
            held.pop(device, None)
        else:
            held[device] = message

    changed = [(d, m) for d, m in messages.items()
               if every or d not in previous or previous[d].alerts != m.alerts]
    gone = [(d, None) for d in previous if d not in messages]
    await asyncio.gather(*(put(d, m) for d, m in [*changed, *gone]))
    if changed or gone:
        log.info("operator alerts published devices=%d cleared=%d", len(changed), len(gone))
    return held


class DeviceAlertPublisher:
    """An alert engine listener: after each evaluation, every gateway's alerts topic holds
    the open operator alerts of its line (acknowledgements included)."""

    def __init__(self, db: CentralDB, transport: Transport, topics: Topics,
                 line_label_prefix: str, evaluate_interval_s: float = 10.0,
                 refresh_s: float = REFRESH_S) -> None:
        self.db = db
        self.transport = transport
        self.topics = topics
        self.line_label_prefix = line_label_prefix
        # Called less often than this, the process did not lead meanwhile: another one may
        # have published since, so what this one published last is not what the topics hold.
        self.gap_s = 2 * evaluate_interval_s
        self.refresh_s = refresh_s
        self.published: Published = {}
        self._last_call = self._last_refresh = -math.inf

    async def __call__(self, changed: list[Alert]) -> None:
        open_alerts, rows = await asyncio.to_thread(self._read)
        devices = [device_summary(row) for row in rows]
        lines = devices_by_line({d.device_id: d.labels for d in devices},
                                self.line_label_prefix)
        messages = device_alert_messages(open_alerts, lines)
        started = time.monotonic()
        # All again after a gap, and now and then for a broker that lost its retained
        # messages (restarted without persistence).
        every = started - self._last_call > self.gap_s or \
            started - self._last_refresh > self.refresh_s
        if every:
            self._last_refresh = started
        self._last_call = started
        self.published = await publish_device_alerts(self.transport, self.topics, messages,
                                                     self.published, every=every)

    def _read(self) -> tuple[list[Alert], list[dict[str, Any]]]:
        return self.db.open_alerts(operator_only=True), self.db.alert_devices()

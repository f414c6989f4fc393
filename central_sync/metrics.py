"""Prometheus metrics of central: the fleet as the database knows it, the ingest counters and
the open alerts.

Read at scrape time; `collect()` queries the database, so it runs in the web app's thread pool.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from central_sync.db import CentralDB, DeviceSummary
from central_sync.db.alerts import Alert

HealthProvider = Callable[[], dict[str, Any]]
MS_PER_S = 1000  # devices report milliseconds; Prometheus wants base units

# IngestStats counter -> (metric name without _total, help)
_INGEST_COUNTERS: dict[str, tuple[str, str]] = {
    "batches": ("central_sync_batches_stored", "Uplink batches stored in the database"),
    "records_acked": ("central_sync_records_acked", "Records acked to devices after storing"),
    "acks_unsent": ("central_sync_acks_unsent",
                    "Stored batches whose ack could not be published (the device resends)"),
    "store_failures": ("central_sync_store_failures",
                       "Device messages the database failed on, every handler (not acked, the "
                       "device resends); by handler in central_sync_database_errors"),
    "statuses": ("central_sync_statuses_received", "Device status messages applied"),
    "deployment_events": ("central_sync_deployment_events", "New deployment steps recorded"),
    "chunk_requests": ("central_sync_chunk_requests", "Artifact chunk requests received"),
    "chunks_sent": ("central_sync_chunks_sent", "Artifact chunks published"),
    "chunks_shared": ("central_sync_chunks_shared",
                      "Requested chunks already queued for another device (published once)"),
    "chunk_failures": ("central_sync_chunk_failures", "Chunk transfers that stopped on an error"),
    "chunks_refused": ("central_sync_chunk_requests_refused",
                       "Chunk requests refused: no open deployment on that device, or over "
                       "ingest.chunks_per_s_per_device"),
    "record_pieces_refused": ("central_sync_record_pieces_refused",
                              "Pieces of large records refused (device over "
                              "ingest.pending_record_bytes_per_device, or pieces not adding up)"),
    "records_expired": ("central_sync_records_expired",
                        "Large records dropped unfinished after ingest.unfinished_record_expiry_s"),
}


def central_registry(db: CentralDB, offline_after_s: float,
                     health: HealthProvider | None = None) -> CollectorRegistry:
    """A private registry (several services may share a process) over one central's state."""
    registry = CollectorRegistry()
    registry.register(CentralCollector(db, offline_after_s, health))
    return registry


class CentralCollector(Collector):
    def __init__(self, db: CentralDB, offline_after_s: float,
                 health: HealthProvider | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._offline_after_s = offline_after_s
        self._health = health
        self._clock = clock

    def collect(self) -> Iterator[Any]:
        if self._health is not None:
            yield from service_metric_families(self._health())
        yield from device_metric_families(self._db.list_devices(), self._clock(),
                                          self._offline_after_s)
        yield from alert_metric_families(self._db.open_alerts(), self._db.delivery_summary())


def service_metric_families(health: dict[str, Any]) -> Iterator[Any]:
    """The service's own state, from `CentralService.health()`."""
    yield GaugeMetricFamily("central_sync_broker_connected", "1 while the MQTT broker is connected",
                            value=int(health["broker_connected"]))
    ingest = health["ingest"]
    for key, (name, doc) in _INGEST_COUNTERS.items():
        yield CounterMetricFamily(name, doc, value=ingest[key])
    rejected = CounterMetricFamily(
        "central_sync_rejected_messages",
        "Received messages refused (bad JSON, schema, device), by device topic leaf",
        labels=["topic"])
    for leaf, count in sorted(ingest["rejected"].items()):
        rejected.add_metric([leaf], count)
    yield rejected
    database_errors = CounterMetricFamily(
        "central_sync_database_errors",
        "Device messages not handled because the database failed (not acked, the device "
        "resends), by handler: the device topic leaf", labels=["handler"])
    for leaf, count in sorted(ingest["database_errors"].items()):
        database_errors.add_metric([leaf], count)
    yield database_errors
    yield CounterMetricFamily(
        "central_sync_rollout_step_failures",
        "Steps of one rollout that failed (logged with the rollout id); the other rollouts "
        "still step, and this one is tried again next round",
        value=health["rollout_step_failures"])


def device_metric_families(devices: list[DeviceSummary], now: float, offline_after_s: float
                           ) -> Iterator[Any]:
    """One sample per device in each family; values a device never reported are left out."""
    def family(kind: type, name: str, doc: str) -> Any:
        return kind(f"central_sync_device_{name}", doc, labels=["device_id"])

    online = family(GaugeMetricFamily, "online",
                    "1 while the device is online and was heard from within offline_after_s")
    age = family(GaugeMetricFamily, "last_seen_age_seconds",
                 "Seconds since the device's last status or batch")
    last_seq = family(GaugeMetricFamily, "last_seq", "Highest record seq stored for the device")
    stored = family(GaugeMetricFamily, "records_stored", "Records of the device in the database")
    depth = family(GaugeMetricFamily, "buffer_depth",
                   "Records waiting in the device's buffer, from its last status")
    evicted = family(CounterMetricFamily, "buffer_evicted_records",
                     "Records the device dropped to respect its quota, from its last status")
    round_trip = family(GaugeMetricFamily, "uplink_round_trip_seconds",
                        "The device's last batch-to-ack time, from its last status")
    for device in devices:
        labels = [device.device_id]
        online.add_metric(labels, int(device.presence(now, offline_after_s) == "online"))
        if device.last_seen is not None:
            age.add_metric(labels, max(0.0, now - device.last_seen))
        last_seq.add_metric(labels, device.last_seq)
        stored.add_metric(labels, device.records)
        status = device.status
        if status is not None and status.buffer is not None:
            depth.add_metric(labels, status.buffer.depth)
            evicted.add_metric(labels, status.buffer.evicted)
        if status is not None and status.uplink is not None and (
                status.uplink.round_trip_ms is not None):
            round_trip.add_metric(labels, status.uplink.round_trip_ms / MS_PER_S)
    yield from (online, age, last_seq, stored, depth, evicted, round_trip)


def alert_metric_families(open_alerts: list[Alert], notifications: dict[str, int]
                          ) -> Iterator[Any]:
    """Open alerts counted by rule, severity and acknowledgement (only the combinations that
    have some), and the notifications waiting or given up."""
    counts: dict[tuple[str, str, str], int] = {}
    for alert in open_alerts:
        key = (alert.rule, alert.severity, "true" if alert.acked_at is not None else "false")
        counts[key] = counts.get(key, 0) + 1
    alerts = GaugeMetricFamily(
        "central_sync_alerts_open", "Open (firing) alerts, by rule, severity and whether "
        "someone acknowledged them", labels=["rule", "severity", "acked"])
    for labels, count in sorted(counts.items()):
        alerts.add_metric(list(labels), count)
    yield alerts
    by_state = GaugeMetricFamily(
        "central_sync_alert_notifications", "Alert notifications by state: pending (waiting "
        "for their first or next attempt), dead (given up after the last attempt; retried "
        "from the alerts page)", labels=["state"])
    for state in ("pending", "dead"):
        by_state.add_metric([state], notifications.get(state, 0))
    yield by_state

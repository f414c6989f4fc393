"""The Prometheus rules and Grafana dashboard shipped in deploy/ load, and every metric they
use is one a real central exports (scraped over fake data), so neither goes stale silently."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import subprocess
import urllib.request
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from central_sync.config import CentralConfig
from central_sync.service import CentralService
from edge_agent.kernel.contract import (
    DeviceStatus,
    Topics,
    UplinkBatch,
    UplinkRecord,
    encode,
)
from edge_agent.kernel.transport.memory import MemoryBroker, MemoryTransport
from tests.helpers import REPO, wait_until_async, write_test_keys

RULES = REPO / "deploy" / "prometheus" / "central-sync-rules.yml"
RULE_TESTS = REPO / "deploy" / "prometheus" / "central-sync-rules.test.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "central-sync-dashboard.json"
PROMETHEUS_OWN = {"up"}  # what Prometheus records about each scrape itself
_DURATION = re.compile(r"^\d+(ms|s|m|h|d|w|y)$")
_PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
                 "group_left", "group_right", "inf", "nan"}


def promql_metric_names(expr: str) -> set[str]:
    """The metric names an expression reads: identifiers that are not functions, keywords,
    label names (inside {} or after by/without/on/ignoring) or durations."""
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w$.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", text):
        name, call = match.groups()
        if call is None and name.lower() not in _PROMQL_WORDS:
            names.add(name)
    return names


def test_metric_names_are_found_in_promql() -> None:
    expr = ('sum by (rule) (rate(central_sync_x_total{state="a{b}", le=~"$i"}[5m])) > 0 '
            'and on (instance) central_sync:y:rate5m or vector(0) unless up offset 5m')
    assert promql_metric_names(expr) == {"central_sync_x_total", "central_sync:y:rate5m", "up"}


@pytest.fixture(scope="module")
def exported_names(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Every metric name a real central serves on /metrics with a device, an alert and a
    notification in its database."""
    folder = tmp_path_factory.mktemp("central")
    config = CentralConfig.model_validate({
        "database_url": f"sqlite:///{folder}/central.db", "artifact_dir": str(folder / "a"),
        "web": {"host": "127.0.0.1", "port": _free_port()},
        "signing_key_path": str(write_test_keys(folder / "keys")[0])})
    topics = Topics()

    async def scrape() -> str:
        broker = MemoryBroker()
        service = CentralService(config, MemoryTransport(broker))
        await service.start()
        device = MemoryTransport(broker)
        await device.start()
        try:
            await device.publish(topics.status("gw-1"), encode(DeviceStatus(
                device_id="gw-1", state="online",
                buffer={"depth": 5, "bytes_used": 1, "quota_bytes": 10, "evicted": 1},
                uplink={"connected": True, "round_trip_ms": 20.0})))
            await device.publish(topics.uplink("gw-1"), encode(UplinkBatch(
                device_id="gw-1", records=[UplinkRecord(seq=1, type="event",
                                                        created_at=1.7e9, payload={})])))
            await device.publish(topics.status("gw-1"), b"not json")
            await wait_until_async(lambda: service.stats.batches == 1, what="the batch stored")
            alert = service.db.fire_alert(
                "source-down", "device=gw-1", kind="source_down", severity="critical",
                summary="camera cam1 down", devices=["gw-1"],
                notify=lambda a: [("ops", "{}", 0.0)])
            assert alert is not None
            return await asyncio.to_thread(_get, f"{service.web_url}metrics")
        finally:
            await device.stop()
            await service.stop()

    text = asyncio.run(asyncio.wait_for(scrape(), 30))
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        if family.type == "counter":  # a counter with no labelled sample yet is still one
            names.add(family.name + "_total")
        names.update(sample.name for sample in family.samples)
    assert "central_sync_alerts_open" in names and "central_sync_device_online" in names
    return names


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


# --- Prometheus rules ----------------------------------------------------------------------


def _rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    assert isinstance(document, dict) and set(document) == {"groups"}
    rules = []
    for group in document["groups"]:
        assert set(group) <= {"name", "interval", "rules"} and group["name"], group
        assert group["rules"], f"group {group['name']} has no rules"
        rules.extend(group["rules"])
    return rules


def test_prometheus_rules_have_the_structure_prometheus_loads() -> None:
    rules = _rules()
    names = [rule.get("alert") or rule.get("record") for rule in rules]
    assert len(names) == len(set(names)), "two rules of one name"
    for rule in rules:
        assert ("alert" in rule) != ("record" in rule), rule
        assert isinstance(rule["expr"], str) and rule["expr"].strip(), rule
        if "record" in rule:
            assert set(rule) <= {"record", "expr", "labels"}, rule
            assert re.fullmatch(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+", rule["record"]), rule
            continue
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert "for" not in rule or _DURATION.match(rule["for"]), rule
        assert rule["labels"]["severity"] in ("warning", "critical"), rule
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule
    alerts = {rule["alert"] for rule in rules if "alert" in rule}
    assert {"CentralSyncDown", "CentralSyncBrokerDisconnected", "CentralSyncStoreFailuresRising",
            "CentralSyncCriticalAlertUnacknowledged", "CentralSyncAlertNotificationsDead",
            "CentralSyncDeviceOffline"} <= alerts


def test_prometheus_rules_use_only_metrics_central_exports(exported_names: set[str]) -> None:
    rules = _rules()
    recorded = {rule["record"] for rule in rules if "record" in rule}
    unknown = {(rule.get("alert") or rule.get("record"), name) for rule in rules
               for name in promql_metric_names(rule["expr"])
               if name not in exported_names | recorded | PROMETHEUS_OWN}
    assert not unknown, f"rules read metrics central does not export: {sorted(unknown)}"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_accepts_the_rules_and_they_fire_as_their_unit_tests_say() -> None:
    for command in (["check", "rules", str(RULES)], ["test", "rules", str(RULE_TESTS)]):
        done = subprocess.run(["promtool", *command], capture_output=True, text=True,
                              timeout=60, cwd=RULES.parent)
        assert done.returncode == 0, done.stdout + done.stderr


# --- Grafana dashboard ---------------------------------------------------------------------


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    panels = []
    for panel in dashboard["panels"]:
        panels.extend([panel, *panel.get("panels", [])])
    return [p for p in panels if p["type"] != "row"]


def test_grafana_dashboard_has_a_datasource_variable_and_panels_with_targets() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    source = next(v for v in variables.values() if v["type"] == "datasource")
    assert source["query"] == "prometheus"
    panels = _panels(dashboard)
    assert len(panels) >= 10
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "two panels of one id"
    for panel in panels:
        assert panel["title"] and set(panel["gridPos"]) == {"x", "y", "w", "h"}, panel
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        assert panel["datasource"]["uid"] == f"${{{source['name']}}}", panel["title"]
        assert panel["targets"], f"panel {panel['title']} has no query"
        for target in panel["targets"]:
            assert target["expr"].strip() and target["refId"], panel["title"]


def test_grafana_dashboard_uses_only_metrics_central_exports(
        exported_names: set[str]) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    unknown = {(panel["title"], name) for panel in _panels(dashboard)
               for target in panel["targets"] for name in promql_metric_names(target["expr"])
               if name not in exported_names}
    assert not unknown, f"panels read metrics central does not export: {sorted(unknown)}"
    used = {name for panel in _panels(dashboard) for target in panel["targets"]
            for name in promql_metric_names(target["expr"])}
    assert {"central_sync_alerts_open", "central_sync_alert_notifications",
            "central_sync_broker_connected", "central_sync_device_online"} <= used


def test_readme_points_at_the_monitoring_files() -> None:
    readme = (REPO / "README.md").read_text()
    for path in (RULES, DASHBOARD):
        assert str(path.relative_to(REPO)) in readme, f"README does not mention {path.name}"

"""The `alerts:` section of central's configuration: defaults, replacement by name, the
shipped example (its commented routes too), and errors that say what to change."""

from __future__ import annotations

import datetime as dt
import re

import pytest
import yaml
from pydantic import ValidationError

from central_sync.alert_rules import AlertsConfig, QuietHours, RouteConfig, RuleConfig
from central_sync.config import load_central_config
from tests.helpers import REPO

EXAMPLE = REPO / "deploy" / "central-sync.example.yaml"


def test_the_default_rules_are_on_and_a_configured_rule_replaces_its_namesake() -> None:
    defaults = AlertsConfig().effective_rules()
    assert {r.kind for r in defaults} == {"gateway_offline", "buffer_filling",
                                         "buffer_evicting", "source_down",
                                         "model_rolled_back", "drift", "defect_rate"}
    mine = AlertsConfig.model_validate({"rules": [
        {"name": "drift", "kind": "drift", "threshold": 0.4},
        {"name": "source-down", "kind": "source_down", "enabled": False}]})
    rules = {r.name: r for r in mine.effective_rules()}
    assert "source-down" not in rules and rules["drift"].threshold == 0.4
    # A threshold of its own without a resolve threshold: no band below it.
    assert rules["drift"].resolve_threshold == 0.4
    assert len(rules) == len(defaults) - 1


def test_the_shipped_example_loads_and_its_commented_routes_are_valid() -> None:
    config = load_central_config(EXAMPLE)
    assert "line-3-offline" in {r.name for r in config.alerts.effective_rules()}
    text = EXAMPLE.read_text()
    commented = re.search(r"routes: \[\].*\n((?:    # .*\n)+)", text)
    assert commented, "the example's routes are no longer commented out below `routes: []`"
    routes = yaml.safe_load("\n".join(line.replace("    # ", "  ", 1)
                                      for line in commented.group(1).splitlines()))
    for route in routes:
        RouteConfig.model_validate(route)


@pytest.mark.parametrize(("rule", "says"), [
    ({"name": "x", "kind": "drift", "threshold": 0.2, "resolve_threshold": 0.3},
     "resolve_threshold 0.3 is above threshold 0.2"),
    ({"name": "x", "kind": "noise"}, "gateway_offline"),
])
def test_a_wrong_rule_says_what_to_change(rule: dict, says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        RuleConfig.model_validate(rule)


@pytest.mark.parametrize(("route", "says"), [
    ({"name": "m", "kind": "smtp", "host": "mail"}, "needs from, to"),
    ({"name": "w", "kind": "webhook", "url": "ftp://x"}, "must start with http"),
    ({"name": "scada-topic", "kind": "mqtt"}, "built-in SCADA topic"),
])
def test_a_wrong_route_says_what_to_change(route: dict, says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        RouteConfig.model_validate(route)


def test_rule_and_route_names_are_unique() -> None:
    with pytest.raises(ValidationError, match="drift twice"):
        AlertsConfig.model_validate({"rules": [{"name": "drift", "kind": "drift"}] * 2})


def test_quiet_hours_across_midnight_end_the_next_morning() -> None:
    quiet = QuietHours(start="22:00", end="06:00")
    local = dt.datetime.now().astimezone().replace(hour=23, minute=30, second=0,
                                                   microsecond=0)
    ends = dt.datetime.fromtimestamp(quiet.quiet_until(local.timestamp())).astimezone()
    assert (ends.date() - local.date()).days == 1 and (ends.hour, ends.minute) == (6, 0)
    early = local.replace(hour=5)
    assert quiet.quiet_until(early.timestamp()) == early.replace(hour=6, minute=0).timestamp()
    assert quiet.quiet_until(local.replace(hour=12).timestamp()) is None
    with pytest.raises(ValidationError, match="HH:MM"):
        QuietHours(start="25:00", end="06:00")

"""`central-sync alerts rules`: the alert rules in force, with thresholds, durations, targets
and the routes each alert goes to, then the routes (the `alerts:` section as central reads it)."""

from __future__ import annotations

import argparse
import json

from rich.table import Table
from rich.text import Text

from central_sync.alert_rules import (
    SCADA_ROUTE,
    SEVERITY_RANK,
    AlertsConfig,
    RouteConfig,
    RuleConfig,
)
from central_sync.cli.common import (
    EXIT_OK,
    Subcommands,
    add_command,
    duration_text,
    load_config,
    make_console,
)

# What a rule's value is, per kind: the unit its threshold and resolve_threshold are in.
VALUE_UNITS = {
    "gateway_offline": "1 while offline",
    "buffer_filling": "share of the buffer's quota",
    "buffer_evicting": "records evicted in the window",
    "source_down": "1 while a source is down",
    "model_rolled_back": "1 for the window after a rollback",
    "drift": "largest PSI in the window",
    "defect_rate": "rate over the baseline rate",
}


def routes_of(rule: RuleConfig, alerts: AlertsConfig) -> list[str]:
    """The routes an alert of `rule` goes to (those with a label filter marked so)."""
    names = [SCADA_ROUTE] if alerts.mqtt_topic else []
    for route in alerts.routes:
        if not route.enabled or SEVERITY_RANK[rule.severity] < SEVERITY_RANK[route.min_severity]:
            continue
        if route.rules and rule.name not in route.rules:
            continue
        names.append(f"{route.name} (labels {','.join(route.labels)})" if route.labels
                     else route.name)
    return names


def cmd_alerts_rules(args: argparse.Namespace) -> int:
    alerts = load_config(args).alerts
    rules = alerts.effective_rules()
    if args.json:
        print(json.dumps({
            "enabled": alerts.enabled,
            "rules": [{**r.model_dump(mode="json"), "routes": routes_of(r, alerts)}
                      for r in rules],
            "routes": [r.model_dump(mode="json", by_alias=True) for r in alerts.routes],
            "scada_topic": alerts.mqtt_topic}, indent=2))
        return EXIT_OK
    console = make_console()
    if not alerts.enabled:
        console.print("alerts.enabled is false: no rule is evaluated, nothing is sent",
                      highlight=False)
    table = Table(title=f"Alert rules (evaluated every {alerts.evaluate_interval_s:g} s)")
    for column in ("rule", "kind", "severity", "fires at", "clears below", "value", "for",
                   "resolves after", "window", "per", "targets", "operator", "routes"):
        table.add_column(column, no_wrap=column in ("rule", "kind"))
    for rule in rules:
        table.add_row(*map(Text, (
            rule.name, rule.kind, rule.severity, f"{rule.threshold:g}",
            f"{rule.resolve_threshold:g}", _value_text(rule), duration_text(rule.for_s),
            duration_text(rule.resolve_after_s), duration_text(rule.window_s), rule.group_by,
            _targets_text(rule), "yes" if rule.operator else "no",
            ", ".join(routes_of(rule, alerts)) or "none (shown on the pages only)")))
    console.print(table)
    console.print(_routes_table(alerts))
    return EXIT_OK


def _value_text(rule: RuleConfig) -> str:
    if rule.kind != "defect_rate":
        return VALUE_UNITS[rule.kind]
    against = (f"{rule.fixed_per_hour:g}/h" if rule.fixed_per_hour
               else f"the {rule.baseline_days:g}-day baseline (at least "
                    f"{rule.baseline_floor_per_hour:g}/h)")
    return f"rate over {against}; never under {rule.min_count} defects"


def _targets_text(rule: RuleConfig) -> str:
    parts = [f"{name} {', '.join(values)}" for name, values in rule.targets.model_dump().items()
             if values]
    return "; ".join(parts) or "all"


def _routes_table(alerts: AlertsConfig) -> Table:
    table = Table(title="Routes")
    for column in ("route", "kind", "to", "from severity", "rules", "labels", "resolved",
                   "quiet hours"):
        table.add_column(column, no_wrap=column == "route")
    if alerts.mqtt_topic:
        table.add_row(SCADA_ROUTE, "mqtt", "{prefix}/alerts/open/ID (retained), "
                      "{prefix}/alerts/events", "info", "all", "all", "yes", "-")
    for route in alerts.routes:
        quiet = route.quiet_hours
        table.add_row(*map(Text, (
            route.name + ("" if route.enabled else " (disabled)"), route.kind,
            _destination(route), route.min_severity, ", ".join(route.rules) or "all",
            ", ".join(route.labels) or "all", "yes" if route.send_resolved else "no",
            f"{quiet.start}-{quiet.end} (below {quiet.min_severity})" if quiet else "-")))
    return table


def _destination(route: RouteConfig) -> str:
    if route.kind == "webhook":
        where = route.url or f"${route.url_env} (the URL carries a token: not shown)"
        return f"{where} ({route.template})"
    if route.kind == "smtp":
        return f"{', '.join(route.to)} via {route.host}:{route.port}"
    return route.topic or "{prefix}/alerts/events"


def add_rules_command(actions: Subcommands) -> None:
    rules = add_command(
        actions, "rules", help="print the rules in force and where each alert goes",
        description="Print the effective rules (the defaults, each replaced by a configured "
                    "rule of its name, and the added ones) with thresholds, durations, "
                    "targets and the routes their alerts go to, then the routes.",
        examples=["central-sync alerts rules -c central-sync.yaml",
                  "central-sync alerts rules --json | jq '.rules[].name'"])
    rules.add_argument("--json", action="store_true", help="as JSON, for scripts")
    rules.set_defaults(func=cmd_alerts_rules)

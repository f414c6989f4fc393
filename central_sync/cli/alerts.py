"""`central-sync alerts`: list, acknowledge and silence central's alerts, send a test through a
route; `alerts rules` (the rules in force) is in alerts_rules.py.

Acknowledging and silencing are audited (by the database layer); a test send is audited here.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import time
from typing import TYPE_CHECKING, Any

from rich.table import Table
from rich.text import Text

from central_sync.alert_rules import SCADA_ROUTE, SEVERITY_RANK, AlertsConfig, default_rules
from central_sync.cli.alerts_rules import add_rules_command
from central_sync.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    Subcommands,
    UsageError,
    acting_user,
    add_by_option,
    add_command,
    add_group,
    duration_text,
    load_config,
    make_console,
    open_database,
    seconds_ago,
)

if TYPE_CHECKING:
    from central_sync.config import CentralConfig
    from central_sync.db import CentralDB
    from central_sync.db.alerts import Alert

MIN_SILENCE_H, MAX_SILENCE_H = 0.25, 168.0  # a quarter of an hour to a week, as on the page
TEST_CONNECT_TIMEOUT_S = 10.0
SEVERITY_STYLES = {"critical": "bold red", "warning": "yellow", "info": ""}


def _clock(at: float | None) -> str:
    return "-" if at is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(at))


# --- list ----------------------------------------------------------------------------------


def cmd_alerts_list(args: argparse.Namespace) -> int:
    config = load_config(args)
    with open_database(config) as db:
        try:
            alerts = db.list_alerts(state=None if args.all else "firing", rule=args.rule,
                                    device_id=args.device, severity=args.severity,
                                    limit=args.limit)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    if args.json:
        print(json.dumps([_alert_json(a) for a in alerts], indent=2))
        return EXIT_OK
    console = make_console()
    if not alerts:
        console.print("no alerts match" if args.all else
                      "no open alerts (`--all` shows resolved ones too)", highlight=False,
                      markup=False)
        return EXIT_OK
    now = time.time()
    what = "Alerts" if args.all else "Open alerts"
    table = Table(title=f"{what} in {config.database_name}")
    for column in ("id", "severity", "rule", "summary", "devices", "fired", "for", "state",
                   "acknowledged", "silenced"):
        table.add_column(column, no_wrap=column in ("id", "severity", "rule"))
    for alert in alerts:
        # Text, not markup: a summary or a reason may hold [brackets] of its own.
        table.add_row(
            Text(alert.alert_id), Text(alert.severity, style=SEVERITY_STYLES[alert.severity]),
            Text(alert.rule), Text(alert.summary), Text(", ".join(alert.devices) or "-"),
            seconds_ago(alert.fired_at, now), duration_text(alert.duration_s(now)), alert.state,
            Text(f"{alert.acked_by}: {alert.ack_reason}" if alert.acked_by else "-"),
            Text(f"until {_clock(alert.silenced_until)}: {alert.silence_reason}"
                 if alert.silenced_until else "-"))
    console.print(table)
    return EXIT_OK


def _alert_json(alert: Alert) -> dict[str, Any]:
    data = dataclasses.asdict(alert)
    data["devices"] = list(alert.devices)
    return data


# --- ack, silence, unsilence ---------------------------------------------------------------


def cmd_alerts_ack(args: argparse.Namespace) -> int:
    from central_sync.db.alerts import AlertNotFound

    with open_database(load_config(args)) as db:
        by = acting_user(db, args, "quality")
        try:
            alert = db.ack_alert(args.alert_id, by, args.reason)
        except (AlertNotFound, ValueError) as exc:
            raise UsageError(str(exc)) from None
    make_console().print(f"acknowledged {alert.alert_id} ({alert.rule}: {alert.summary}) by "
                         f"{by}: {alert.ack_reason}", highlight=False, markup=False)
    return EXIT_OK


def cmd_alerts_silence(args: argparse.Namespace) -> int:
    from central_sync.db.alerts import AlertNotFound

    if (args.alert_id is None) == (args.rule is None):
        raise UsageError("name what to silence: an ALERT_ID, or --rule R (with --group KEY "
                         "for one group of it); `central-sync alerts list` shows both")
    if args.alert_id is not None and args.group is not None:
        raise UsageError("--group goes with --rule; an ALERT_ID names its group already")
    if not MIN_SILENCE_H <= args.hours <= MAX_SILENCE_H:
        raise UsageError(f"--hours must be between {MIN_SILENCE_H:g} and {MAX_SILENCE_H:g}")
    config = load_config(args)
    until = time.time() + args.hours * 3600
    with open_database(config) as db:
        by = acting_user(db, args, "engineer")
        try:
            if args.alert_id is not None:
                silence = db.silence_alert(args.alert_id, until, args.reason, by)
            else:
                _known_rule(config.alerts, db, args.rule)
                silence = db.silence_rule(args.rule, args.group or "", until, args.reason, by)
        except (AlertNotFound, ValueError) as exc:
            raise UsageError(str(exc)) from None
    make_console().print(
        f"silenced {_silence_target(silence.rule, silence.group_key)} until "
        f"{_clock(silence.until)}: no notification goes out meanwhile (its alerts still show)",
        highlight=False, markup=False)
    return EXIT_OK


def cmd_alerts_unsilence(args: argparse.Namespace) -> int:
    if (args.alert_id is None) == (args.rule is None):
        raise UsageError("name the silence to lift: --rule R (with --group KEY if it was "
                         "for one group), or an ALERT_ID")
    config = load_config(args)
    with open_database(config) as db:
        by = acting_user(db, args, "engineer")
        if args.alert_id is not None:
            alert = db.get_alert(args.alert_id)
            if alert is None:
                raise UsageError(f"no alert {args.alert_id}; list them with `central-sync "
                                 "alerts list --all`")
            rule, group = alert.rule, alert.group_key
        else:
            rule, group = args.rule, args.group or ""
        lifted = db.lift_silence(rule, group, by)
        silences = db.active_silences()
    console = make_console()
    if lifted:
        console.print(f"lifted the silence on {_silence_target(rule, group)}",
                      highlight=False, markup=False)
        return EXIT_OK
    in_force = ", ".join(f"{_silence_target(s.rule, s.group_key)} until {_clock(s.until)}"
                         for s in silences) or "none"
    console.print(f"no silence in force on {_silence_target(rule, group)}; silences in "
                  f"force: {in_force}", highlight=False, markup=False)
    return EXIT_FAILED


def _silence_target(rule: str, group_key: str) -> str:
    return f"rule {rule}, {group_key}" if group_key else f"rule {rule} (every group)"


def _known_rule(alerts: AlertsConfig, db: CentralDB, rule: str) -> None:
    """A typo in --rule would silence nothing, quietly: refuse names nobody knows."""
    known = {r.name for r in [*default_rules(), *alerts.rules]}
    if rule in known or db.list_alerts(rule=rule, limit=1):
        return
    raise UsageError(f"no rule {rule}; the rules are {', '.join(sorted(known))} "
                     "(`central-sync alerts rules`)")


# --- test ----------------------------------------------------------------------------------


def cmd_alerts_test(args: argparse.Namespace) -> int:
    from central_sync.alerts.channels import DeliveryError

    config = load_config(args)
    with open_database(config) as db:
        by = acting_user(db, args, "engineer")
        try:
            answer = asyncio.run(_send_test(config, args.route))
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        except (DeliveryError, ConnectionError) as exc:
            db.audit(by, "alert.test", args.route, f"failed: {exc}")
            make_console().print(f"test message through {args.route} did not get through: "
                                 f"{exc}", highlight=False, markup=False)
            return EXIT_FAILED
        db.audit(by, "alert.test", args.route, answer)
    make_console().print(f"test message sent through {args.route}: {answer}",
                         highlight=False, markup=False)
    return EXIT_OK


async def _send_test(config: CentralConfig, route_name: str) -> str:
    """A test through the route; MQTT routes (and the SCADA topic) over a session of the
    command's own."""
    from central_sync.alerts.delivery import send_test
    from central_sync.cli.common import broker_session

    route = config.alerts.route(route_name)
    over_mqtt = (route is not None and route.kind == "mqtt") or (
        route_name == SCADA_ROUTE and config.alerts.mqtt_topic)
    if not over_mqtt:
        return await send_test(config, route_name)
    async with broker_session(config, TEST_CONNECT_TIMEOUT_S) as transport:
        return await send_test(config, route_name, publish=transport.publish)


# --- the parser ----------------------------------------------------------------------------


def add_commands(commands: Subcommands) -> None:
    actions = add_group(
        commands, "alerts", help="list, acknowledge, silence and test central's alerts",
        description="Central evaluates alert rules (gateway offline, buffer filling, source "
                    "down, drift, defect rate, ...) and notifies the configured routes. These "
                    "commands show the alerts, acknowledge them (someone is on it), silence "
                    "their notifications for maintenance, send a test through a route and "
                    "print the rules in force.",
        examples=["central-sync alerts list -c central-sync.yaml",
                  "central-sync alerts ack a18c2f0e1b2c3d --reason 'cleaning camera 2'",
                  "central-sync alerts silence --rule source-down --hours 4 "
                  "--reason 'line 2 maintenance'",
                  "central-sync alerts test ops-webhook",
                  "central-sync alerts rules"],
        dest="alerts_command")
    _add_list(actions)
    _add_ack(actions)
    _add_silence(actions)
    _add_unsilence(actions)
    test = add_command(
        actions, "test", help="send a test message through one route",
        description="Send one test message (event \"test\") through a configured route, or "
                    f"{SCADA_ROUTE} (only its events topic, nothing retained), and print the "
                    "receiver's answer; exit status 1 when it did not get through. Needs the "
                    "engineer role once central has accounts. Audited.",
        examples=["central-sync alerts test ops-webhook -c central-sync.yaml",
                  "central-sync alerts test shift-mail",
                  f"central-sync alerts test {SCADA_ROUTE}"])
    test.add_argument("route", help="a route's name in alerts.routes (`alerts rules` lists "
                                    "them)")
    add_by_option(test, "who tests")
    test.set_defaults(func=cmd_alerts_test)
    add_rules_command(actions)


def _add_list(actions: Subcommands) -> None:
    listing = add_command(
        actions, "list", help="open alerts (or all with --all), newest first",
        description="Show open alerts newest first: severity, rule, summary, devices, since "
                    "when, acknowledgement and silence. --all adds resolved ones (history).",
        examples=["central-sync alerts list -c central-sync.yaml",
                  "central-sync alerts list --all --rule defect-rate --device line1-gw1",
                  "central-sync alerts list --json | jq '.[].alert_id'"])
    listing.add_argument("--all", action="store_true", help="resolved alerts too")
    listing.add_argument("--rule", help="only this rule's alerts")
    listing.add_argument("--device", metavar="ID", help="only alerts concerning this device")
    listing.add_argument("--severity", choices=list(SEVERITY_RANK), help="only this severity")
    listing.add_argument("--limit", type=int, default=200, help="at most this many (default "
                                                                "200)")
    listing.add_argument("--json", action="store_true", help="as JSON, for scripts")
    listing.set_defaults(func=cmd_alerts_list)


def _add_ack(actions: Subcommands) -> None:
    ack = add_command(
        actions, "ack", help="acknowledge an open alert: someone is on it",
        description="Mark an open alert acknowledged with a reason (what is being done), "
                    "shown on the alerts page and the operator page. Needs the quality role "
                    "once central has accounts. Audited.",
        examples=["central-sync alerts ack a18c2f0e1b2c3d --reason 'cleaning camera 2' "
                  "-c central-sync.yaml",
                  "central-sync alerts ack a18c2f0e1b2c3d --reason 'replacing the PLC cable' "
                  "--by anna"])
    ack.add_argument("alert_id", metavar="ALERT_ID", help="from `central-sync alerts list`")
    ack.add_argument("--reason", required=True, help="what is being done about it")
    add_by_option(ack, "who acknowledges")
    ack.set_defaults(func=cmd_alerts_ack)


def _add_silence(actions: Subcommands) -> None:
    silence = add_command(
        actions, "silence", help="send no notification of an alert or a rule for a while",
        description="Silence one alert (its rule and group), or a whole rule (maintenance), "
                    "for --hours: its alerts still fire and show, but no route is notified "
                    "until the silence ends. Needs the engineer role once central has "
                    "accounts. Audited.",
        examples=["central-sync alerts silence a18c2f0e1b2c3d --hours 2 --reason 'camera "
                  "being replaced'",
                  "central-sync alerts silence --rule source-down --hours 8 --reason "
                  "'line 2 maintenance'",
                  "central-sync alerts silence --rule gateway-offline --group device=line2-gw1 "
                  "--hours 24 --reason 'gateway shipped for repair'"])
    silence.add_argument("alert_id", metavar="ALERT_ID", nargs="?",
                         help="an alert from `central-sync alerts list` (or use --rule)")
    silence.add_argument("--rule", help="silence this rule instead of one alert")
    silence.add_argument("--group", metavar="KEY", help="with --rule: only this group "
                         "(e.g. device=line2-gw1, as `alerts list --json` shows group_key)")
    silence.add_argument("--hours", type=float, required=True,
                         help=f"how long ({MIN_SILENCE_H:g} to {MAX_SILENCE_H:g})")
    silence.add_argument("--reason", required=True, help="why, for the next shift")
    add_by_option(silence, "who silences")
    silence.set_defaults(func=cmd_alerts_silence)


def _add_unsilence(actions: Subcommands) -> None:
    unsilence = add_command(
        actions, "unsilence", help="lift a silence before it ends",
        description="Lift a silence of a rule (every group, or --group KEY), or the one of "
                    "an alert's rule and group; notifications go out again. Exit status 1 "
                    "when no such silence is in force. Needs the engineer role once central "
                    "has accounts. Audited.",
        examples=["central-sync alerts unsilence --rule source-down -c central-sync.yaml",
                  "central-sync alerts unsilence --rule gateway-offline "
                  "--group device=line2-gw1",
                  "central-sync alerts unsilence a18c2f0e1b2c3d"])
    unsilence.add_argument("alert_id", metavar="ALERT_ID", nargs="?",
                           help="lift the silence of this alert's rule and group")
    unsilence.add_argument("--rule", help="the silenced rule")
    unsilence.add_argument("--group", metavar="KEY", help="with --rule: the silenced group "
                           "(without it: the silence of the whole rule)")
    add_by_option(unsilence, "who lifts it")
    unsilence.set_defaults(func=cmd_alerts_unsilence)

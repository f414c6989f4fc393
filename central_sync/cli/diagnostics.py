"""`central-sync device logs|diagnose|restart`: a gateway's log, its diagnosis and restarts,
over MQTT, without SSH.

Each command logs in as an engineer, checks that central knows the gateway and that it is
online, records the signed request (so the running service stores the answer) and sends it;
the answer is read here from the gateway's diagnostics topic as it comes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from collections.abc import Callable
from typing import Any

import yaml
from rich.console import Console
from rich.text import Text

from central_sync.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    Subcommands,
    UsageError,
    acting_user,
    add_by_option,
    add_command,
    broker_session,
    load_config,
    make_console,
    open_database,
    seconds_ago,
)
from central_sync.config import CentralConfig
from central_sync.db import CentralDB
from central_sync.diagnostics import (
    DEFAULT_REPLY_TIMEOUT_S,
    Answer,
    DeviceOffline,
    DiagnosticCommand,
    UnknownDevice,
    log_request,
    require_online,
    send_and_follow,
)
from edge_agent.kernel.contract import (
    ID_PATTERN,
    LOG_LEVELS,
    MAX_FOLLOW_S,
    MAX_LOG_LINES,
    DiagnoseRequest,
    DiagnosticReply,
    LogBatch,
    RestartCommand,
    Topics,
)

DEFAULT_FOLLOW_S = 300.0
LEVEL_STYLES = {"DEBUG": "dim", "INFO": "", "WARNING": "yellow", "ERROR": "red",
                "CRITICAL": "bold red"}
REPORT_SECTIONS = ("sources", "pipelines", "models", "buffer", "uplink")


def printable(text: str, lines: bool = False) -> str:
    """A gateway's text as it may reach a terminal: control characters (an escape sequence
    that would rewrite the screen) shown as \\xNN; line breaks kept when `lines`."""
    kept = "\t\n" if lines else "\t"
    return "".join(c if c.isprintable() or c in kept else f"\\x{ord(c):02x}" for c in text)


def _ask(args: argparse.Namespace, console: Console, make: Callable[[str], DiagnosticCommand],
         on_answer: Callable[[Answer], None]) -> Answer | int | None:
    """Send the request `make(by)` builds to an online gateway central knows and follow its
    answers: the last one, None when none came in time, or an exit code when nothing could be
    sent or the user stopped it (UsageError for an unknown gateway)."""
    if not re.fullmatch(ID_PATTERN, args.device_id):
        raise UsageError(f"device id {args.device_id!r} is not valid: use letters, digits, "
                         ". _ -")
    config = load_config(args)
    with open_database(config) as db:
        by = acting_user(db, args, "engineer")
        try:
            require_online(db, args.device_id, config.offline_after_s)
            command = make(by)
        except UnknownDevice as exc:
            raise UsageError(str(exc)) from None
        except DeviceOffline as exc:
            console.print(f"[red]{exc}[/]", highlight=False)
            return EXIT_FAILED
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        try:
            return asyncio.run(_send(config, db, command, on_answer, args))
        except KeyboardInterrupt:
            console.print("stopped; the gateway ends a follow by itself when its time is up")
            return EXIT_OK
        except ConnectionError as exc:
            console.print(f"[red]{exc}[/]", highlight=False)
            return EXIT_FAILED


async def _send(config: CentralConfig, db: CentralDB, command: DiagnosticCommand,
                on_answer: Callable[[Answer], None], args: argparse.Namespace) -> Answer | None:
    from edge_agent.kernel.transport import NotConnected

    async with broker_session(config, args.connect_timeout) as transport:
        try:
            return await send_and_follow(db, transport, config.signer(),
                                         Topics(config.broker.topic_prefix), command,
                                         on_answer, timeout_s=args.timeout)
        except NotConnected as exc:
            raise ConnectionError(f"request not sent: {exc}") from None


def _no_reply(console: Console, device_id: str, timeout_s: float) -> int:
    console.print(f"[red]no reply from {device_id} within {timeout_s:g} s[/]. Check that it is "
                  "online (`central-sync devices`), that its agent answers diagnostics (a "
                  "recent edge-agent), and the gateway's own log (journalctl -u edge-agent); "
                  "a longer --timeout helps on a slow link", highlight=False)
    return EXIT_FAILED


# --- device logs --------------------------------------------------------------------------


def log_line_text(at: float, level: str, logger: str, message: str) -> Text:
    """One log line as printed: local time, level (coloured), logger, message."""
    stamp = time.strftime("%H:%M:%S", time.localtime(at)) + f".{int(at % 1 * 1000):03d}"
    return Text.assemble((stamp, "dim"), " ", (f"{level:<8}", LEVEL_STYLES.get(level, "")),
                         " ", (printable(logger), "cyan"), ": ", printable(message))


def cmd_device_logs(args: argparse.Namespace) -> int:
    console = make_console()
    follow_s = args.follow or 0.0
    counts = {"lines": 0, "dropped": 0}

    def show(answer: Answer) -> None:
        if isinstance(answer, LogBatch):
            for line in answer.lines:
                console.print(log_line_text(line.at, line.level, line.logger, line.message))
            counts["lines"] += len(answer.lines)
            counts["dropped"] += answer.dropped

    final = _ask(args, console, lambda by: log_request(
        args.device_id, by, args.level, args.lines, follow_s), show)
    if isinstance(final, int):
        return final
    if isinstance(final, DiagnosticReply):
        console.print(f"[red]{args.device_id} refused[/]: {printable(final.detail)}",
                      highlight=False)
        return EXIT_FAILED
    if final is None and not counts["lines"]:
        return _no_reply(console, args.device_id, args.timeout)
    left_out = f"; {counts['dropped']} left out by the gateway's rate limit" \
        if counts["dropped"] else ""
    end = "follow ended" if follow_s else "end of the tail"
    console.print(f"[dim]({end}: {counts['lines']} lines{left_out})[/]", highlight=False)
    return EXIT_OK


def _follow_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= MAX_FOLLOW_S:
        raise argparse.ArgumentTypeError(f"a follow lasts 1 to {MAX_FOLLOW_S:g} s; ask "
                                         "again to go on")
    return value


def _line_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= value <= MAX_LOG_LINES:
        raise argparse.ArgumentTypeError(f"--lines is 0 to {MAX_LOG_LINES}")
    return value


def _pipeline_name(text: str) -> str:
    if not re.fullmatch(ID_PATTERN, text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a pipeline name: letters, digits, "
                                         ". _ -")
    return text


# --- device diagnose ----------------------------------------------------------------------


def cmd_device_diagnose(args: argparse.Namespace) -> int:
    console = make_console()
    started = time.monotonic()
    final = _ask(args, console, lambda by: DiagnoseRequest(
        device_id=args.device_id, issued_by=by), lambda _answer: None)
    if isinstance(final, int):
        return final
    if not isinstance(final, DiagnosticReply):
        return _no_reply(console, args.device_id, args.timeout)
    config = load_config(args)
    with open_database(config) as db:  # central measured it; the gateway cannot say
        clock = db.device_presence(args.device_id) or {}
    warn_s = config.clock.warn_offset_s
    clock_view = {key: clock.get(key) for key in ("clock_offset_s", "clock_rtt_ms",
                                                  "clock_measured_at")}
    if args.json:
        print(json.dumps({"device_id": args.device_id, "request_id": final.request_id,
                          "ok": final.ok, "detail": final.detail, "clock": clock_view,
                          "report": final.report}, indent=2))
    else:
        print_diagnosis(console, args.device_id, final, clock_view, warn_s,
                        time.monotonic() - started)
    return EXIT_OK if final.ok else EXIT_FAILED


def print_diagnosis(console: Console, device_id: str, reply: DiagnosticReply,
                    clock: dict[str, Any], warn_offset_s: float, took_s: float) -> None:
    """The report for people: versions, configuration in force, clock, states, and the
    effective configuration (as the gateway redacted it)."""
    report = dict(reply.report)
    state = "[green]ok[/]" if reply.ok else f"[red]not ok[/]: {printable(reply.detail)}"
    console.print(f"[bold]Diagnosis of {device_id}[/] ({took_s:.1f} s): {state}",
                  highlight=False)
    versions = " · ".join(f"{label}{report.pop(key)}" for key, label in
                          (("agent_version", "agent "), ("python", "python "), ("platform", ""))
                          if key in report)
    console.print(Text("versions       " + printable(versions or "not reported")))
    ref = report.pop("config", None)
    in_force = "local YAML only" if not ref else (
        f"{ref.get('name')}@{ref.get('version')} (sha256 {str(ref.get('sha256', ''))[:12]})"
        if isinstance(ref, dict) else str(ref))
    console.print(Text("configuration  " + printable(in_force)))
    console.print(_clock_text(clock, warn_offset_s))
    effective = report.pop("effective_config", None)
    for key in (*REPORT_SECTIONS, *sorted(k for k in report if k not in REPORT_SECTIONS)):
        if key not in report:
            continue
        if not isinstance(report[key], dict | list):
            console.print(Text(printable(f"{key:<14} {report[key]}")))
            continue
        console.print(Text(f"{key}:", style="bold"))
        console.print(Text(printable(_yaml(report[key]), lines=True).rstrip()))
    if effective is not None:
        console.print(Text("effective configuration (secrets redacted by the gateway):",
                           style="bold"))
        console.print(Text(printable(_yaml(effective), lines=True).rstrip()))


def _clock_text(clock: dict[str, Any], warn_offset_s: float) -> Text:
    offset = clock.get("clock_offset_s")
    if offset is None:
        return Text("clock offset   not measured yet (central probes it on the gateway's "
                    "status)")
    warn = abs(offset) > warn_offset_s
    text = Text("clock offset   ")
    text.append(f"{offset:+.3f} s", style="bold red" if warn else "green")
    text.append(f" (round trip {clock.get('clock_rtt_ms') or 0:.0f} ms, measured "
                f"{seconds_ago(clock.get('clock_measured_at'))})")
    if warn:
        text.append(f": more than {warn_offset_s:g} s off central's clock; its records' "
                    "times are flagged as suspect. Set its clock by NTP", style="red")
    return text


def _yaml(value: Any) -> str:
    return yaml.safe_dump(value, sort_keys=False, default_flow_style=False, allow_unicode=True)


# --- device restart -----------------------------------------------------------------------


def cmd_device_restart(args: argparse.Namespace) -> int:
    console = make_console()
    what = f"pipeline {args.pipeline}" if args.pipeline else "the agent"
    final = _ask(args, console, lambda by: RestartCommand(
        device_id=args.device_id, issued_by=by, pipeline=args.pipeline), lambda _answer: None)
    if isinstance(final, int):
        return final
    if not isinstance(final, DiagnosticReply):
        return _no_reply(console, args.device_id, args.timeout)
    if not final.ok:
        console.print(f"[red]{args.device_id} did not restart {what}[/]: "
                      f"{printable(final.detail)}", highlight=False)
        return EXIT_FAILED
    console.print(f"[green]{args.device_id}: {printable(final.detail) or what + ' restarts'}[/]",
                  highlight=False)
    if not args.pipeline:
        console.print("it goes offline for a moment; `central-sync devices` shows it back "
                      "online", highlight=False)
    return EXIT_OK


# --- the parser ---------------------------------------------------------------------------


def add_commands(commands: Subcommands) -> None:
    """`logs`, `diagnose` and `restart` in the `device` group (added by cli/devices.py)."""
    device = commands.choices["device"]
    actions = next(action for action in device._actions
                   if isinstance(action, argparse._SubParsersAction))
    logs = add_command(
        actions, "logs", help="show a gateway's log, or follow it live (over MQTT)",
        description="Ask the gateway for its newest log lines (at --level or above) and print "
                    "them; with --follow, keep printing new lines for that long (at most "
                    f"{MAX_FOLLOW_S:g} s; Ctrl-C stops). The gateway sends at most ~50 lines "
                    "a second and says how many it left out. The running `serve` also keeps "
                    "the newest 2000 lines per gateway for its device page.",
        examples=["central-sync device logs line3-gw1",
                  "central-sync device logs line3-gw1 --level WARNING --lines 500",
                  "central-sync device logs line3-gw1 --follow        # 300 s",
                  "central-sync device logs line3-gw1 --follow 600 --level DEBUG"])
    logs.add_argument("--follow", nargs="?", type=_follow_seconds, const=DEFAULT_FOLLOW_S,
                      metavar="SECONDS", help=f"keep printing new lines (default "
                      f"{DEFAULT_FOLLOW_S:g} s, at most {MAX_FOLLOW_S:g})")
    logs.add_argument("--level", type=str.upper, choices=LOG_LEVELS, default="INFO",
                      help="the lowest level shown (default: INFO)")
    logs.add_argument("--lines", type=_line_count, default=100, metavar="N",
                      help=f"how many of the newest lines first (default 100, at most "
                      f"{MAX_LOG_LINES})")
    logs.set_defaults(func=cmd_device_logs)
    diagnose = add_command(
        actions, "diagnose", help="a gateway's versions, configuration, sources, buffer, clock",
        description="Ask the gateway for its diagnosis and print it: agent, Python and "
                    "platform versions, the configuration in force, the clock offset central "
                    "measured, sources, pipelines, buffer and uplink, and the effective "
                    "configuration (passwords, tokens and keys redacted by the gateway). The "
                    "running `serve` keeps the newest one for the device page.",
        examples=["central-sync device diagnose line3-gw1",
                  "central-sync device diagnose line3-gw1 --json > line3-gw1.json"])
    diagnose.add_argument("--json", action="store_true", help="print the report as JSON")
    diagnose.set_defaults(func=cmd_device_diagnose)
    restart = add_command(
        actions, "restart", help="restart a gateway's agent, or one of its pipelines",
        description="Restart one pipeline (with its source when no other pipeline uses it), "
                    "or with no --pipeline the whole agent (systemd starts it again). The "
                    "gateway's reply is printed. Recorded in the audit log.",
        examples=["central-sync device restart line3-gw1 --pipeline surface",
                  "central-sync device restart line3-gw1"])
    restart.add_argument("--pipeline", metavar="P", type=_pipeline_name,
                         help="the pipeline to restart")
    restart.set_defaults(func=cmd_device_restart)
    for parser in (logs, diagnose, restart):
        parser.add_argument("device_id", help="the gateway (see `central-sync devices`)")
        parser.add_argument("--timeout", type=float, default=DEFAULT_REPLY_TIMEOUT_S,
                            metavar="SECONDS", help="how long to wait for the gateway's "
                            f"first answer (default {DEFAULT_REPLY_TIMEOUT_S:g})")
        parser.add_argument("--connect-timeout", type=float, default=10.0, metavar="SECONDS",
                            help="how long to try reaching the broker (default: 10)")
        add_by_option(parser)

"""`central-sync rollout ...`: start, follow and steer staged rollouts.

The rollout is recorded in the database; the running `central-sync serve` carries it out.
These commands only record decisions and show progress, so they work from any shell that
can read central's configuration.
"""

from __future__ import annotations

import argparse
import re
import time

from rich.console import Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from central_sync.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    Subcommands,
    UsageError,
    acting_user,
    add_by_option,
    add_command,
    add_group,
    load_config,
    make_console,
    open_database,
    parse_model_ref,
)
from central_sync.db import CentralDB, Rollout
from central_sync.rollouts import (
    DEFAULT_WAVE_TIMEOUT_S,
    TERMINAL_ROLLOUT_STATES,
    RolloutError,
    change_rollout,
    group_devices,
    start_rollout,
    wave_name,
)
from edge_agent.kernel.contract import ID_PATTERN

STATE_COLOURS = {"succeeded": "green", "failed": "red", "rolled_back": "yellow",
                 "sent": "cyan", "pending": "dim"}
ROLLOUT_COLOURS = {"completed": "green", "halted": "red", "aborted": "yellow",
                   "rolled_back": "yellow", "running": "cyan", "paused": "magenta"}


def cmd_rollout_start(args: argparse.Namespace) -> int:
    name, version = parse_model_ref(args.model)
    config = load_config(args)
    with open_database(config) as db:
        devices, target = _targets(db, args)
        try:
            rollout = start_rollout(db, name, version, devices, target,
                                    acting_user(db, args, "engineer"),
                                    canary=args.canary, waves=args.waves,
                                    success_ratio=args.success_ratio,
                                    wave_timeout_s=args.wave_timeout,
                                    canary_devices=args.canary_device,
                                    offline_after_s=config.offline_after_s,
                                    signer=config.signer(),
                                    approval_required=config.models.require_approval)
        except RolloutError as exc:
            raise UsageError(str(exc)) from None
        console = make_console()
        plan = db.rollout_devices(rollout.rollout_id)
        console.print(f"rollout [bold]{rollout.rollout_id}[/] of {rollout.ref} to {target}: "
                      f"{len(plan)} device(s) in {rollout.waves} wave(s)", highlight=False)
        for index in range(rollout.waves):
            members = [d.device_id for d in plan if d.wave == index]
            console.print(f"  {wave_name(rollout, index)}: {', '.join(members)}",
                          highlight=False)
        if args.no_follow:
            console.print(f"follow it with `central-sync rollout status {rollout.rollout_id} "
                          "--follow`")
            return EXIT_OK
        return follow_rollout(db, rollout.rollout_id, args.timeout)


def _targets(db: CentralDB, args: argparse.Namespace) -> tuple[list[str], str]:
    if bool(args.devices) == bool(args.group):
        raise UsageError("name the targets with --devices a,b,c or --group LABEL (one of them)")
    if args.devices:
        devices = [d.strip() for d in args.devices.split(",") if d.strip()]
        bad = [d for d in devices if not re.fullmatch(ID_PATTERN, d)]
        if bad:
            raise UsageError(f"device ids {bad} are not valid: use letters, digits, . _ -")
        return devices, f"devices {', '.join(devices)}"
    devices = group_devices(db, args.group)
    if not devices:
        raise UsageError(f"no provisioned device has the label(s) {', '.join(args.group)}; "
                         "groups come from provisioning, not from what gateways report: "
                         "`central-sync device label ID --add LABEL` (see `central-sync device "
                         "list`), or name the devices with --devices")
    return devices, f"group {', '.join(args.group)}"


def cmd_rollout_status(args: argparse.Namespace) -> int:
    config = load_config(args)
    with open_database(config) as db:
        if args.rollout_id is None:
            _print_rollouts(db)
            return EXIT_OK
        if db.get_rollout(args.rollout_id) is None:
            raise UsageError(f"no rollout {args.rollout_id}; see `central-sync rollout status`")
        if args.follow:
            return follow_rollout(db, args.rollout_id, args.timeout)
        make_console().print(_rollout_view(db, args.rollout_id))
    return EXIT_OK


def cmd_rollout_change(args: argparse.Namespace) -> int:
    config = load_config(args)
    with open_database(config) as db:
        try:
            rollout = change_rollout(db, args.rollout_id, args.rollout_command,
                                     acting_user(db, args, "engineer"))
        except RolloutError as exc:
            raise UsageError(str(exc)) from None
    make_console().print(f"rollout {rollout.rollout_id} of {rollout.what} is now "
                         f"[bold]{rollout.state}[/]", highlight=False)
    return EXIT_OK


def _print_rollouts(db: CentralDB) -> None:
    rollouts = db.list_rollouts()
    console = make_console()
    if not rollouts:
        console.print("No rollouts yet; start one with `central-sync rollout start NAME@VERSION "
                      "--group LABEL`.")
        return
    table = Table(title="Rollouts")
    for column in ("rollout", "deploys", "target", "state", "wave", "started", "by", "detail"):
        table.add_column(column)
    for r in rollouts:
        colour = ROLLOUT_COLOURS.get(r.state, "white")
        table.add_row(r.rollout_id, r.what, r.target, f"[{colour}]{r.state}[/]",
                      f"{r.current_wave + 1}/{r.waves}",
                      time.strftime("%Y-%m-%d %H:%M", time.localtime(r.created_at)),
                      r.created_by, r.detail)
    console.print(table)


def _rollout_view(db: CentralDB, rollout_id: str) -> Group:
    rollout = db.get_rollout(rollout_id)
    assert rollout is not None
    colour = ROLLOUT_COLOURS.get(rollout.state, "white")
    header = Text.from_markup(
        f"rollout [bold]{rollout.rollout_id}[/] {rollout.what} → {rollout.target}: "
        f"[{colour}]{rollout.state}[/] — {rollout.detail}")
    table = Table(show_edge=False)
    for column in ("device", "wave", "state", "transfer", "last step"):
        table.add_column(column, no_wrap=column != "last step")
    for device in db.rollout_devices(rollout_id):
        progress = _transfer_progress(db, device.command_id)
        state_colour = STATE_COLOURS.get(device.state, "white")
        table.add_row(device.device_id, wave_name(rollout, device.wave),
                      f"[{state_colour}]{device.state}[/]",
                      ProgressBar(total=1.0, completed=progress, width=20),
                      device.detail)
    return Group(header, table)


def _transfer_progress(db: CentralDB, command_id: str | None) -> float:
    if command_id is None:
        return 0.0
    progress = 0.0
    for event in db.deployment_events(command_id):
        if event["step"] == "downloading" and event["progress"] is not None:
            progress = max(progress, float(event["progress"]))
        elif event["step"] in ("verifying", "installed", "shadow", "activated", "confirmed"):
            progress = 1.0
    return progress


def follow_rollout(db: CentralDB, rollout_id: str, timeout_s: float) -> int:
    """Show the rollout live until it ends; exit 0 when completed."""
    console = make_console()
    deadline = time.monotonic() + timeout_s
    started = time.monotonic()
    rollout: Rollout | None = db.get_rollout(rollout_id)
    hinted = False
    with Live(_rollout_view(db, rollout_id), console=console, refresh_per_second=4,
              transient=False) as live:
        while time.monotonic() < deadline:
            rollout = db.get_rollout(rollout_id)
            assert rollout is not None
            live.update(_rollout_view(db, rollout_id))
            if rollout.state in (*TERMINAL_ROLLOUT_STATES, "halted"):
                break
            if not hinted and time.monotonic() - started > 10 and all(
                    d.state == "pending" for d in db.rollout_devices(rollout_id)):
                hinted = True
                console.print("[yellow]no deploy command sent yet: is `central-sync serve` "
                              "running with this configuration?[/]")
            time.sleep(0.5)
    assert rollout is not None
    if rollout.state == "completed":
        console.print(f"[green]rollout {rollout_id} completed[/]")
        return EXIT_OK
    if rollout.state in (*TERMINAL_ROLLOUT_STATES, "halted"):
        console.print(f"[red]rollout {rollout_id} {rollout.state}[/]: {rollout.detail}")
        return EXIT_FAILED
    console.print(f"rollout {rollout_id} still {rollout.state} after {timeout_s:g} s; "
                  f"`central-sync rollout status {rollout_id} --follow` to keep watching")
    return EXIT_FAILED


def add_commands(commands: Subcommands) -> None:
    actions = add_group(
        commands, "rollout",
        help="roll a model version out in waves: canary first, halt on failure",
        description="Staged rollouts. `serve` carries them out: a canary wave, then waves "
                    "reaching the given shares of the devices; a wave passes when enough of "
                    "its devices confirmed the version (after their probation), fails when "
                    "too many failed or rolled back, and a failed wave halts the rollout and "
                    "rolls that wave back.",
        examples=["central-sync rollout start surface-defects@1.4.0 --group line-3 --canary 1 "
                  "--waves 25%,100%",
                  "central-sync rollout status",
                  "central-sync rollout pause 3f2a9c1d7e4b"],
        dest="rollout_command")
    _add_start(actions)
    status = add_command(
        actions, "status", help="list rollouts, or show one device by device",
        description="Without an id: every rollout. With one: its devices, waves, transfer "
                    "progress and last steps; --follow keeps it live until it ends.",
        examples=["central-sync rollout status",
                  "central-sync rollout status 3f2a9c1d7e4b --follow"])
    status.add_argument("rollout_id", nargs="?", help="a rollout id from the list")
    status.add_argument("--follow", action="store_true", help="live until the rollout ends")
    status.add_argument("--timeout", type=float, default=3600.0, metavar="SECONDS",
                        help="stop following after this long (default 3600)")
    status.set_defaults(func=cmd_rollout_status)

    helps = {
        "pause": "stop starting new waves (deployments under way go on)",
        "resume": "continue a paused rollout (its wave timeout starts again)",
        "abort": "end the rollout where it is (devices keep what they run)",
        "rollback": "send every device that took the version back to its previous one",
    }
    for action, text in helps.items():
        parser = add_command(
            actions, action, help=text,
            description=f"{text[0].upper()}{text[1:]}. Recorded in the audit log.",
            examples=[f"central-sync rollout {action} 3f2a9c1d7e4b"])
        parser.add_argument("rollout_id", help="a rollout id (`central-sync rollout status`)")
        add_by_option(parser, "who decides")
        parser.set_defaults(func=cmd_rollout_change)


def _add_start(actions: Subcommands) -> None:
    start = add_command(
        actions, "start", help="start a rollout and follow it live",
        description="Record a rollout of NAME@VERSION to the devices given by --group (the "
                    "labels provisioning gave them: `device add --labels`, `device label`; "
                    "never what a gateway reports) or --devices, and follow it live until it "
                    "completes (exit 0), halts or times out (exit 1). The canary is drawn at "
                    "random among the healthy devices (online, no failed source), or named "
                    "with --canary-device.",
        examples=["central-sync rollout start surface-defects@1.4.0 --group line-3 --canary 1 "
                  "--waves 25%,100%",
                  "central-sync rollout start surface-defects@1.4.0 --group line-3 "
                  "--canary-device line3-gw2",
                  "central-sync rollout start extruder-scrap@1.1.0 --devices gw1,gw2 "
                  "--canary 0 --no-follow"])
    start.add_argument("model", metavar="NAME@VERSION", help="e.g. surface-defects@1.4.0")
    start.add_argument("--group", action="append", default=[], metavar="LABEL",
                       help="devices with this label (repeat for several)")
    start.add_argument("--devices", help="comma-separated device ids")
    start.add_argument("--canary", type=int, default=1,
                       help="devices in the first wave, alone, drawn at random among the "
                       "healthy ones (default 1; 0: none)")
    start.add_argument("--canary-device", action="append", default=[], metavar="ID",
                       help="this device is the canary (repeat for several); it must be one "
                       "of the rollout's devices")
    start.add_argument("--waves", default="100%",
                       help="cumulative shares after the canary, e.g. 25%%,100%% (default 100%%)")
    start.add_argument("--success-ratio", type=float, default=1.0,
                       help="share of a wave that must confirm before the next (default 1.0)")
    start.add_argument("--wave-timeout", type=float, default=DEFAULT_WAVE_TIMEOUT_S,
                       metavar="SECONDS", help="a wave not passed by then halts the rollout "
                       f"(default {DEFAULT_WAVE_TIMEOUT_S:g})")
    start.add_argument("--no-follow", action="store_true", help="record it and return")
    start.add_argument("--timeout", type=float, default=3600.0, metavar="SECONDS",
                       help="stop following after this long (default 3600)")
    add_by_option(start, "who starts it")
    start.set_defaults(func=cmd_rollout_start)

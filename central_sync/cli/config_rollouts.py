"""`central-sync config push|deploy|rollback`: send a configuration to gateways, in waves (a
rollout `serve` carries out) or to one gateway at once over MQTT, or send one back."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from rich.console import Console

from central_sync.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    Subcommands,
    UsageError,
    acting_user,
    add_by_option,
    add_command,
    broker_session,
    device_ids,
    load_config,
    make_console,
    open_database,
    rollout_targets,
)
from central_sync.cli.configs import (
    add_file_options,
    add_registry_commands,
    print_published,
    publish_file,
    read_file,
    require,
)
from central_sync.cli.rollouts import follow_rollout
from central_sync.rollouts import DEFAULT_WAVE_TIMEOUT_S
from edge_agent.kernel.contract import (
    ConfigDeployCommand,
    ConfigRollbackCommand,
    DeploymentEvent,
    Topics,
)

if TYPE_CHECKING:
    from central_sync.config import CentralConfig
    from central_sync.db import CentralDB

FOLLOW_MARGIN_S = 120.0  # --wait alone: the probation and this long for the switch itself
DEFAULT_PUSH_WAIT_S = 3600.0


def cmd_config_push(args: argparse.Namespace) -> int:
    from central_sync.rollouts import RolloutError, start_rollout, wave_name

    found = read_file(args.file)
    config = load_config(args)
    console = make_console()
    with open_database(config) as db:
        by = acting_user(db, args, "engineer")
        # Before publishing: a mistyped group publishes nothing.
        devices, target = rollout_targets(db, args.group, args.device)
        document, new = publish_file(db, args, found, by)
        print_published(console, document, new)
        if not new and (args.probation_s, args.notes) != (document.probation_s, document.notes):
            console.print(f"  it keeps its own probation ({document.probation_s:g} s) "
                          "and notes: a version is immutable; change the file's body to "
                          "publish a new one", highlight=False)
        try:
            rollout = start_rollout(
                db, document.name, str(document.version), devices, target, by,
                canary=args.canary, waves=args.waves, success_ratio=args.success_ratio,
                wave_timeout_s=args.wave_timeout_s, offline_after_s=config.offline_after_s,
                signer=config.signer(), kind="config")
        except RolloutError as exc:
            raise UsageError(f"{document.label} not rolled out: {exc}") from None
        plan = db.rollout_devices(rollout.rollout_id)
        console.print(f"rollout [bold]{rollout.rollout_id}[/] of {rollout.what} to {target}: "
                      f"{len(plan)} device(s) in {rollout.waves} wave(s)", highlight=False)
        for index in range(rollout.waves):
            members = [d.device_id for d in plan if d.wave == index]
            console.print(f"  {wave_name(rollout, index)}: {', '.join(members)}",
                          highlight=False)
        if not args.wait:
            console.print(f"`central-sync serve` carries it out; follow it with `central-sync "
                          f"rollout status {rollout.rollout_id} --follow`", highlight=False)
            return EXIT_OK
        return follow_rollout(db, rollout.rollout_id, args.timeout)


def cmd_config_deploy(args: argparse.Namespace) -> int:
    from central_sync.configs import ConfigError, config_deploy_command

    device_id = device_ids([args.device])[0]
    config = load_config(args)
    with open_database(config) as db:
        document = require(db, args.config_ref)
        by = acting_user(db, args, "engineer")
        try:
            command = config_deploy_command(db, config.signer(), document.name,
                                            document.version, device_id, by)
        except ConfigError as exc:
            make_console().print(f"[red]deploy refused[/]: {exc}", highlight=False)
            return EXIT_FAILED
        wait = _wait_s(args, document.probation_s)
        return _send(config, db, command, wait, args.connect_timeout,
                     f"{document.label} on {device_id}")


def cmd_config_rollback(args: argparse.Namespace) -> int:
    from central_sync.configs import config_rollback_command

    device_id = device_ids([args.device])[0]
    config = load_config(args)
    with open_database(config) as db:
        name = args.name or _running_name(db, device_id)
        if args.to is not None:
            require(db, f"{name}@{args.to}")
        by = acting_user(db, args, "engineer")
        command = config_rollback_command(config.signer(), name, device_id, by, args.to)
        what = f"{name}@{args.to}" if args.to else f"{name}'s previous configuration"
        return _send(config, db, command, _wait_s(args, 0.0), args.connect_timeout,
                     f"{what} on {device_id}")


def _running_name(db: CentralDB, device_id: str) -> str:
    """The configuration a rollback is about: the one the gateway reports, else the last one
    central sent it."""
    device = next((d for d in db.list_devices() if d.device_id == device_id), None)
    if device is not None and device.status is not None and device.status.config is not None:
        return device.status.config.name
    last = db.last_config_deployments().get(device_id)
    if last is None:
        raise UsageError(f"{device_id} reports no configuration from central and was never "
                         "sent one: nothing to roll back (`central-sync config where`); name "
                         "it with --name if the gateway runs one anyway")
    return last.name


def _wait_s(args: argparse.Namespace, probation_s: float) -> float | None:
    """How long to follow: None without --wait; --timeout, else the probation and
    FOLLOW_MARGIN_S."""
    if not args.wait:
        return None
    return args.timeout if args.timeout is not None else probation_s + FOLLOW_MARGIN_S


def _send(config: CentralConfig, db: CentralDB,
          command: ConfigDeployCommand | ConfigRollbackCommand, wait_s: float | None,
          connect_timeout_s: float, what: str) -> int:
    """Send the command and, with `wait_s`, show each step until the end; exit 0 when sent
    (or confirmed, when waiting)."""
    console = make_console()
    try:
        final = asyncio.run(_send_async(config, db, command, wait_s, connect_timeout_s,
                                        _event_printer(console)))
    except ConnectionError as exc:  # NotConnected included
        console.print(f"[red]command not sent[/]: {exc}", highlight=False)
        return EXIT_FAILED
    if wait_s is None:
        console.print(f"sent: {what} (command {command.command_id}); add --wait to follow it, "
                      "or see `central-sync config where`", highlight=False)
        return EXIT_OK
    if final is None:
        console.print(f"[red]no final answer within {wait_s:g} s[/] for {what}: the gateway may "
                      "be offline (the command waits at the broker) or still in probation; "
                      "see `central-sync config where`", highlight=False)
        return EXIT_FAILED
    # A deployment ends confirmed after its probation; a rollback once it is rolled back.
    done = "confirmed" if isinstance(command, ConfigDeployCommand) else "rolled_back"
    if final.step == done:
        console.print(f"[green]{what}: {final.step}[/] {final.detail}".rstrip(),
                      highlight=False)
        return EXIT_OK
    console.print(f"[red]{what}: {final.step}[/] {final.detail}", highlight=False)
    return EXIT_FAILED


async def _send_async(config: CentralConfig, db: CentralDB,
                      command: ConfigDeployCommand | ConfigRollbackCommand,
                      wait_s: float | None, connect_timeout_s: float,
                      on_event: Callable[[DeploymentEvent], None]) -> DeploymentEvent | None:
    from central_sync.configs import send_config_command

    async with broker_session(config, connect_timeout_s) as transport:
        return await send_config_command(db, transport, Topics(config.broker.topic_prefix),
                                         command, wait_s, on_event)


def _event_printer(console: Console) -> Callable[[DeploymentEvent], None]:
    def show(event: DeploymentEvent) -> None:
        console.print(f"  {event.step} {event.detail}".rstrip(), highlight=False)

    return show


def add_commands(commands: Subcommands) -> None:
    """The whole `config` group: the registry's actions, then push, deploy and rollback."""
    actions = add_registry_commands(commands)
    _add_push(actions)
    deploy = add_command(
        actions, "deploy", help="send one configuration version to one gateway now",
        description="Record the deployment and send the signed configuration to the gateway "
                    "over MQTT (QoS 1: it waits at the broker while the gateway is offline). "
                    "With --wait, show each step until the gateway confirms it after its "
                    "probation (exit 0), or it failed or was rolled back (exit 1).",
        examples=["central-sync config deploy line-3-vision@2 --device line3-gw1",
                  "central-sync config deploy line-3-vision@2 --device line3-gw1 --wait"])
    deploy.add_argument("config_ref", metavar="NAME@VERSION", help="e.g. line-3-vision@2")
    deploy.add_argument("--device", required=True, help="the gateway's device id")
    _add_send_options(deploy, "who deploys")
    deploy.set_defaults(func=cmd_config_deploy)
    rollback = add_command(
        actions, "rollback", help="send a gateway back to its previous configuration",
        description="Send the gateway back to the configuration it ran before the current "
                    "one (or to version --to of it). The configuration is the one it "
                    "reports, else the last one central sent it; --name says it.",
        examples=["central-sync config rollback --device line3-gw1",
                  "central-sync config rollback --device line3-gw1 --to 1 --wait"])
    rollback.add_argument("--device", required=True, help="the gateway's device id")
    rollback.add_argument("--to", type=int, metavar="VERSION",
                          help="this version of the configuration (default: the previous one)")
    rollback.add_argument("--name", help="the configuration (default: the one it reports)")
    _add_send_options(rollback, "who rolls back")
    rollback.set_defaults(func=cmd_config_rollback)


def _add_send_options(parser: argparse.ArgumentParser, who: str) -> None:
    parser.add_argument("--wait", action="store_true",
                        help="follow it until confirmed, failed or rolled back")
    parser.add_argument("--timeout", type=float, metavar="SECONDS",
                        help="stop following after this long (default: its probation + "
                        f"{FOLLOW_MARGIN_S:g})")
    parser.add_argument("--connect-timeout", type=float, default=10.0, metavar="SECONDS",
                        help="how long to try reaching the broker (default: 10)")
    add_by_option(parser, who)


def _add_push(actions: Subcommands) -> None:
    push = add_command(
        actions, "push", help="publish a configuration file if changed and roll it out",
        description="Publish FILE as the next version of --name when its body differs from "
                    "the newest version (else that version is used), then start a rollout of "
                    "it to --group or --device: a canary, then waves; `serve` carries it out. "
                    "A gateway that fails to start it, or finds it unhealthy within its "
                    "probation, goes back to its previous configuration by itself; a failed "
                    "wave halts the rollout and sends that wave back.",
        examples=["central-sync config push line-3-vision.yaml --name line-3-vision "
                  "--group line-3 --canary 1 --waves 50%,100%",
                  "central-sync config push line-3-vision.yaml --name line-3-vision "
                  "--device line3-gw1 --device line3-gw2 --canary 0 --wait"])
    add_file_options(push)
    push.add_argument("--group", action="append", default=[], metavar="LABEL",
                      help="gateways with this label from provisioning (repeat for several)")
    push.add_argument("--device", action="append", default=[], metavar="ID",
                      help="this gateway (repeat for several)")
    push.add_argument("--canary", type=int, default=1,
                      help="gateways in the first wave, alone, drawn among the healthy ones "
                      "(default 1; 0: none)")
    push.add_argument("--waves", default="100%",
                      help="cumulative shares after the canary, e.g. 50%%,100%% (default 100%%)")
    push.add_argument("--success-ratio", type=float, default=1.0,
                      help="share of a wave that must confirm before the next (default 1.0)")
    push.add_argument("--wave-timeout-s", type=float, default=DEFAULT_WAVE_TIMEOUT_S,
                      metavar="SECONDS", help="a wave not passed by then halts the rollout "
                      f"(default {DEFAULT_WAVE_TIMEOUT_S:g})")
    push.add_argument("--wait", action="store_true", help="show the rollout live until it "
                      "ends (exit 0 when completed)")
    push.add_argument("--timeout", type=float, default=DEFAULT_PUSH_WAIT_S, metavar="SECONDS",
                      help=f"stop following after this long (default {DEFAULT_PUSH_WAIT_S:g})")
    push.set_defaults(func=cmd_config_push)

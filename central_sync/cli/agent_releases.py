"""`central-sync agent ...`: publish agent releases (the project's wheel), list them, and
update, roll out or roll back the agent on gateways over MQTT."""

from __future__ import annotations

import argparse
import asyncio
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

from rich.table import Table

from central_sync.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    Subcommands,
    UsageError,
    acting_user,
    add_by_option,
    add_command,
    add_group,
    broker_session,
    load_config,
    make_console,
    open_database,
    rollout_targets,
    seconds_ago,
)
from edge_agent.kernel.contract import (
    AGENT_PACKAGE_NAME,
    ID_PATTERN,
    SEMVER_PATTERN,
    DeploymentEvent,
    Topics,
)
from edge_agent.kernel.contract.fleet import (
    DEFAULT_AGENT_HEALTHY_WITHIN_S,
    MAX_AGENT_HEALTHY_WITHIN_S,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from rich.console import Console

    from central_sync.config import CentralConfig
    from central_sync.db import CentralDB
    from edge_agent.kernel.contract import AgentRollbackCommand, AgentUpdateCommand

EXAMPLE_WHEEL = "dist/edge_mlops-1.2.0-py3-none-any.whl"


def cmd_agent_publish(args: argparse.Namespace) -> int:
    from central_sync.agent_releases import AgentReleaseError, publish_agent

    config = load_config(args)
    with open_database(config) as db:
        by = acting_user(db, args, "engineer")
        try:
            package, new = publish_agent(db, config.signer(), args.wheel, by,
                                         config.artifact_dir, config.chunk_size_bytes)
        except AgentReleaseError as exc:
            raise UsageError(str(exc)) from None
    what = "published" if new else "already published, unchanged:"
    make_console().print(
        f"{what} {AGENT_PACKAGE_NAME} {package.version} ({package.filename}, "
        f"{package.size_bytes} bytes, sha256 {package.sha256[:12]}..., {package.chunk_count} "
        f"chunks, {len(package.requires)} requirements, signed by key {package.key_id}); "
        f"update a gateway with `central-sync agent deploy {package.version} --device ID "
        "--wait 300`", highlight=False)
    return EXIT_OK


def cmd_agent_list(args: argparse.Namespace) -> int:
    config = load_config(args)
    with open_database(config) as db:
        releases = db.list_agent_packages()
    console = make_console()
    if not releases:
        console.print(f"no agent release published; publish one with `central-sync agent "
                      f"publish {EXAMPLE_WHEEL}`")
        return EXIT_OK
    table = Table("version", "wheel", "size", "sha256", "python", "published", "by")
    for release in releases:
        package = release.package
        table.add_row(package.version, package.filename, f"{package.size_bytes / 1e6:.2f} MB",
                      package.sha256[:12], package.requires_python or "-",
                      seconds_ago(package.published_at), release.published_by)
    console.print(table)
    return EXIT_OK


def cmd_agent_deploy(args: argparse.Namespace) -> int:
    from central_sync.agent_releases import AgentReleaseError, agent_update_command

    _check_device(args.device)
    if not re.fullmatch(SEMVER_PATTERN, args.version):
        raise UsageError(f"{args.version!r} is not a release version such as 1.2.0; see "
                         "`central-sync agent list`")
    if not 0 < args.healthy_within <= MAX_AGENT_HEALTHY_WITHIN_S:
        raise UsageError(f"--healthy-within must be in (0, {MAX_AGENT_HEALTHY_WITHIN_S:g}] s")
    config = load_config(args)
    with open_database(config) as db:
        by = acting_user(db, args, "engineer")
        try:
            command = agent_update_command(db, config.signer(), args.version, args.device, by,
                                           args.healthy_within)
        except AgentReleaseError as exc:
            raise UsageError(str(exc)) from None
        return asyncio.run(_send(config, db, command, args))


def cmd_agent_rollback(args: argparse.Namespace) -> int:
    from central_sync.agent_releases import agent_rollback_command

    _check_device(args.device)
    config = load_config(args)
    with open_database(config) as db:
        by = acting_user(db, args, "engineer")
        command = agent_rollback_command(config.signer(), args.device, by)
        return asyncio.run(_send(config, db, command, args))


def cmd_agent_rollout(args: argparse.Namespace) -> int:
    from central_sync.cli.rollouts import follow_rollout
    from central_sync.rollouts import RolloutError, start_rollout, wave_name

    config = load_config(args)
    with open_database(config) as db:
        devices, target = rollout_targets(db, args.group, args.device)
        try:
            rollout = start_rollout(db, AGENT_PACKAGE_NAME, args.version, devices, target,
                                    acting_user(db, args, "engineer"), canary=args.canary,
                                    waves=args.waves, success_ratio=args.success_ratio,
                                    wave_timeout_s=args.wave_timeout,
                                    offline_after_s=config.offline_after_s,
                                    signer=config.signer(), kind="agent")
        except RolloutError as exc:
            raise UsageError(str(exc)) from None
        console = make_console()
        plan = db.rollout_devices(rollout.rollout_id)
        console.print(f"rollout [bold]{rollout.rollout_id}[/] of {AGENT_PACKAGE_NAME} "
                      f"{args.version} to {target}: {len(plan)} device(s) in {rollout.waves} "
                      "wave(s)", highlight=False)
        for index in range(rollout.waves):
            members = [d.device_id for d in plan if d.wave == index]
            console.print(f"  {wave_name(rollout, index)}: {', '.join(members)}",
                          highlight=False)
        if args.no_follow:
            return EXIT_OK
        return follow_rollout(db, rollout.rollout_id, args.timeout)


def _check_device(device: str) -> None:
    if not re.fullmatch(ID_PATTERN, device):
        raise UsageError(f"device id {device!r} is not valid: use letters, digits, . _ -")


async def _send(config: CentralConfig, db: CentralDB,
                command: AgentUpdateCommand | AgentRollbackCommand,
                args: argparse.Namespace) -> int:
    from central_sync.agent_releases import send_agent_command

    console = make_console()
    what = f"agent {command.kind.removeprefix('agent_')}"
    started = time.monotonic()
    try:
        async with broker_session(config, args.connect_timeout) as transport:
            final = await send_agent_command(db, transport, Topics(config.broker.topic_prefix),
                                             command, args.wait, _event_printer(console))
    except ConnectionError as exc:  # NotConnected included
        console.print(f"[red]{what} not sent[/]: {exc}", highlight=False)
        return EXIT_FAILED
    if args.wait is None:
        console.print(f"{what} sent to {command.device_id} (command {command.command_id}); "
                      "add --wait 300 to follow it", highlight=False)
        return EXIT_OK
    if final is None:
        console.print(f"[red]no final answer from {command.device_id} within {args.wait:g} s"
                      "[/]; it may be offline (the command waits at the broker) or still "
                      "installing; check `central-sync devices`", highlight=False)
        return EXIT_FAILED
    step, detail = final
    took = f" in {time.monotonic() - started:.0f} s"
    wanted = "confirmed" if command.kind == "agent_update" else "rolled_back"
    colour = "green" if step == wanted else "red"
    console.print(f"[{colour}]{what} {step} on {command.device_id}{took}[/]: {detail}",
                  highlight=False)
    return EXIT_OK if step == wanted else EXIT_FAILED


def _event_printer(console: Console) -> Callable[[DeploymentEvent], None]:
    def show(event: DeploymentEvent) -> None:
        progress = "" if event.progress is None else f" {event.progress:.0%}"
        console.print(f"  {event.step}{progress} {event.detail}".rstrip(), highlight=False)
    return show


def add_commands(commands: Subcommands) -> None:
    actions = add_group(
        commands, "agent", help="publish agent releases and update gateways' agents",
        description="Agent releases: the project's wheel, signed and sent to gateways in chunks "
                    "like a model. A gateway installs it beside the running agent (offline, "
                    "with the dependencies it has), switches to it and restarts; if the new "
                    "agent is not online and healthy in time, the previous one comes back by "
                    "itself and says why.",
        examples=[f"central-sync agent publish {EXAMPLE_WHEEL}",
                  "central-sync agent deploy 1.2.0 --device line1-gw1 --wait 300",
                  "central-sync agent rollout 1.2.0 --group line-3 --canary 1 --waves 50%,100%"],
        dest="agent_command")
    publish = add_command(
        actions, "publish", help="publish an agent wheel as a signed release",
        description="Read the wheel's METADATA (it must be a wheel of edge-mlops: its version, "
                    "Requires-Dist and Requires-Python), store it by sha256 and sign it. A "
                    "release is immutable: the same wheel again changes nothing, another wheel "
                    "of the same version is refused.",
        examples=[f"central-sync agent publish {EXAMPLE_WHEEL}",
                  "pip wheel --no-deps -w dist . && central-sync agent publish dist/*.whl"])
    publish.add_argument("wheel", type=Path, help="the .whl file")
    add_by_option(publish, "who publishes")
    publish.set_defaults(func=cmd_agent_publish)
    listing = add_command(actions, "list", help="list published agent releases",
                          description="Every published release, newest version first.",
                          examples=["central-sync agent list"])
    listing.set_defaults(func=cmd_agent_list)
    _add_deploy(actions)
    _add_rollout(actions)
    rollback = add_command(
        actions, "rollback", help="send a gateway back to the agent release it ran before",
        description="The gateway switches back to the release it ran before the current one "
                    "(or to its base install) and restarts into it.",
        examples=["central-sync agent rollback --device line1-gw1 --wait 300"])
    rollback.add_argument("--device", required=True, help="device id of the gateway")
    _add_send_options(rollback, "who rolls back")
    rollback.set_defaults(func=cmd_agent_rollback)


def _add_deploy(actions: Subcommands) -> None:
    deploy = add_command(
        actions, "deploy", help="update one gateway's agent to a release",
        description="Record the update and send the signed command (QoS 1; it waits at the "
                    "broker while the gateway is offline). The running `serve` process serves "
                    "the wheel's chunks. With --wait, show each step until the new agent is "
                    "confirmed (exit 0), or failed, rolled back or timed out (exit 1).",
        examples=["central-sync agent deploy 1.2.0 --device line1-gw1",
                  "central-sync agent deploy 1.2.0 --device line1-gw1 --wait 300 "
                  "--healthy-within 60"])
    deploy.add_argument("version", help="a published release, e.g. 1.2.0")
    deploy.add_argument("--device", required=True, help="device id of the gateway")
    deploy.add_argument("--healthy-within", type=float, default=DEFAULT_AGENT_HEALTHY_WITHIN_S,
                        metavar="SECONDS", help="the new agent must be online and healthy "
                        f"within this long, else the previous one comes back (default: "
                        f"{DEFAULT_AGENT_HEALTHY_WITHIN_S:g})")
    _add_send_options(deploy, "who deploys")
    deploy.set_defaults(func=cmd_agent_deploy)


def _add_send_options(parser: argparse.ArgumentParser, who: str) -> None:
    parser.add_argument("--wait", type=float, metavar="SECONDS",
                        help="follow it for at most this long")
    parser.add_argument("--connect-timeout", type=float, default=10.0, metavar="SECONDS",
                        help="how long to try reaching the broker (default: 10)")
    add_by_option(parser, who)


def _add_rollout(actions: Subcommands) -> None:
    from central_sync.rollouts import DEFAULT_WAVE_TIMEOUT_S

    rollout = add_command(
        actions, "rollout", help="update the agent on a group of gateways in waves",
        description="A staged rollout of a release, carried out by the running `serve`: a "
                    "canary first, then waves; a wave whose gateways do not confirm the new "
                    "agent halts the rollout and sends its gateways back. Follow and steer it "
                    "with `central-sync rollout status|pause|resume|abort|rollback`.",
        examples=["central-sync agent rollout 1.2.0 --group line-3 --canary 1 --waves 50%,100%",
                  "central-sync agent rollout 1.2.0 --device line1-gw1 --device line1-gw2"])
    rollout.add_argument("version", help="a published release, e.g. 1.2.0")
    rollout.add_argument("--group", action="append", default=[], metavar="LABEL",
                         help="the provisioned devices with this label (repeatable)")
    rollout.add_argument("--device", action="append", default=[], metavar="ID",
                         help="a device (repeatable)")
    rollout.add_argument("--canary", type=int, default=1,
                         help="devices in the canary wave, drawn among healthy ones (default 1)")
    rollout.add_argument("--waves", default="100%",
                         help="cumulative shares after the canary, e.g. 50%%,100%%")
    rollout.add_argument("--success-ratio", type=float, default=1.0,
                         help="share of a wave that must confirm to go on (default 1.0)")
    rollout.add_argument("--wave-timeout", type=float, default=DEFAULT_WAVE_TIMEOUT_S,
                         metavar="SECONDS", help="a wave not done by then halts the rollout")
    rollout.add_argument("--no-follow", action="store_true", help="record it and return")
    rollout.add_argument("--timeout", type=float, default=3600.0, metavar="SECONDS",
                         help="how long to follow it (default 3600)")
    add_by_option(rollout, "who starts it")
    rollout.set_defaults(func=cmd_agent_rollout)

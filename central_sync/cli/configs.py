"""`central-sync config publish|list|show|diff|where`: the configuration registry, and which
configuration each gateway runs. Sending one (push, deploy, rollback) is in config_rollouts.py,
which adds those actions to this group."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
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
    seconds_ago,
)
from edge_agent.kernel.contract import DEFAULT_CONFIG_PROBATION_S, ConfigDocument

if TYPE_CHECKING:
    from central_sync.configs import ConfigFile
    from central_sync.db import CentralDB

STATE_COLOURS = {"confirmed": "green", "activated": "cyan", "received": "cyan",
                 "issued": "dim", "failed": "red", "rolled_back": "yellow"}


def read_file(path: Path) -> ConfigFile:
    """The file's body, or a UsageError naming its file and line."""
    from central_sync.configs import ConfigError, read_config_file

    try:
        return read_config_file(path)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None


def publish_file(db: CentralDB, args: argparse.Namespace, found: ConfigFile,
                 by: str) -> tuple[ConfigDocument, bool]:
    """Publish the file's body as the next version of --name: (the version, True), or (the
    newest version, False) when it already has this body. UsageError pointing at the file's
    lines for a body the gateways would refuse."""
    from central_sync.configs import ConfigError, ConfigInvalid, ConfigUnchanged, publish_config

    config = load_config(args)
    try:
        return publish_config(db, config.signer(), args.name, found.body, by,
                              probation_s=args.probation_s, notes=args.notes), True
    except ConfigUnchanged as exc:
        return exc.existing, False
    except ConfigInvalid as exc:
        noun = "problem" if len(exc.problems) == 1 else "problems"
        raise UsageError(f"{found.path}: configuration refused, {len(exc.problems)} {noun} "
                         "(as a gateway would refuse it):\n  "
                         + "\n  ".join(found.locate(p) for p in exc.problems)
                         + "\nsee `edge-agent config-schema` for what central may set") from None
    except ConfigError as exc:
        raise UsageError(str(exc)) from None


def print_published(console: Console, document: ConfigDocument, new: bool) -> None:
    if new:
        console.print(f"published [bold]{document.label}[/] sha256 {document.sha256[:12]}..., "
                      f"probation {document.probation_s:g} s, signed by key {document.key_id}",
                      highlight=False)
    else:
        console.print(f"unchanged: [bold]{document.label}[/] already has this body "
                      f"(sha256 {document.sha256[:12]}...)", highlight=False)


def cmd_config_publish(args: argparse.Namespace) -> int:
    found = read_file(args.file)
    config = load_config(args)
    console = make_console()
    with open_database(config) as db:
        document, new = publish_file(db, args, found, acting_user(db, args, "engineer"))
    print_published(console, document, new)
    if not new:
        console.print("nothing published: change the file, or send this version with "
                      f"`central-sync config push {args.file} --name {document.name} "
                      "--group LABEL`", highlight=False)
        return EXIT_FAILED
    console.print(f"send it with `central-sync config push {args.file} --name {document.name} "
                  f"--group LABEL` or `central-sync config deploy {document.label} --device ID`",
                  highlight=False)
    return EXIT_OK


def cmd_config_list(args: argparse.Namespace) -> int:
    config = load_config(args)
    with open_database(config) as db:
        documents = db.list_configs(args.name)
    console = make_console()
    if not documents:
        console.print(f"No configuration{' ' + args.name if args.name else ''} yet; publish "
                      "one with `central-sync config publish FILE --name NAME`.",
                      highlight=False)
        return EXIT_OK
    table = Table(title=f"Configurations in {config.database_name}")
    for column in ("name", "version", "sha256", "sources", "pipelines", "probation",
                   "published", "by", "notes"):
        table.add_column(column, no_wrap=column in ("name", "sha256"))
    for d in documents:
        table.add_row(d.name, str(d.version), d.sha256[:12], _names(d, "sources"),
                      _names(d, "pipelines"), f"{d.probation_s:g} s",
                      seconds_ago(d.published_at), d.published_by, d.notes)
    console.print(table)
    return EXIT_OK


def _names(document: ConfigDocument, key: str) -> str:
    items = document.body.get(key) or []
    return ", ".join(str(item.get("name", "?")) for item in items if isinstance(item, dict))


def require(db: CentralDB, ref: str, version_required: bool = True) -> ConfigDocument:
    """The version NAME@V names (the newest of NAME when it may be left out); UsageError
    saying where to look otherwise."""
    from central_sync.configs import UnknownConfig, parse_config_ref, require_config

    try:
        name, version = parse_config_ref(ref, version_required)
        if version is None:
            newest = db.newest_config(name)
            if newest is None:
                raise UnknownConfig(f"no configuration is named {name}; see `central-sync "
                                    "config list`")
            return newest
        return require_config(db, name, version)
    except (ValueError, UnknownConfig) as exc:
        raise UsageError(str(exc)) from None


def cmd_config_show(args: argparse.Namespace) -> int:
    from central_sync.configs import body_yaml

    config = load_config(args)
    with open_database(config) as db:
        document = require(db, args.config_ref, version_required=False)
    console = make_console()
    table = Table(show_header=False, title=document.label, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value")
    published = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(document.published_at))
    for field, value in (("sha256", document.sha256),
                         ("probation", f"{document.probation_s:g} s"),
                         ("published", f"{published} by {document.published_by}"),
                         ("signed by", f"key {document.key_id}"), ("notes", document.notes)):
        table.add_row(field, value)
    console.print(table)
    console.print(Text(body_yaml(document.body)))
    return EXIT_OK


def cmd_config_diff(args: argparse.Namespace) -> int:
    from central_sync.configs import config_diff

    config = load_config(args)
    with open_database(config) as db:
        old = require(db, args.old)
        new = require(db, args.new if "@" in args.new else f"{old.name}@{args.new}")
    console = make_console()
    for field in ("probation_s", "notes"):
        before, after = getattr(old, field), getattr(new, field)
        if before != after:
            console.print(f"{field}: {before!r} → {after!r}", highlight=False)
    diff = config_diff(old, new)
    if not diff:
        console.print(f"{old.label} and {new.label} have the same body", highlight=False)
        return EXIT_OK
    for line in diff.splitlines():
        style = ("green" if line.startswith("+") else "red" if line.startswith("-")
                 else "cyan" if line.startswith("@@") else "")
        console.print(Text(line, style=style))
    return EXIT_OK


def cmd_config_where(args: argparse.Namespace) -> int:
    from central_sync.configs import config_whereabouts

    config = load_config(args)
    with open_database(config) as db:
        rows = config_whereabouts(db, args.name, time.time(), config.offline_after_s)
    console = make_console()
    if not rows:
        console.print("No gateway reports a configuration from central or was sent one"
                      f"{' of ' + args.name if args.name else ''}.", highlight=False)
        return EXIT_OK
    table = Table(title="Configurations on the gateways")
    for column in ("device", "state", "reports running", "last sent", "its state", "when",
                   "detail"):
        table.add_column(column, no_wrap=column in ("device", "reports running", "last sent"))
    for row in rows:
        last = row.last
        runs = row.reported.label if row.reported else "local YAML only"
        colour = STATE_COLOURS.get(last.state, "white") if last else "white"
        table.add_row(row.device_id, row.presence, runs,
                      f"{last.name}@{last.version}" if last else "-",
                      f"[{colour}]{last.state}[/]" if last else "-",
                      seconds_ago(last.updated_at) if last else "-", last.detail if last else "")
    console.print(table)
    return EXIT_OK


def add_registry_commands(commands: Subcommands) -> Subcommands:
    """The `config` group with its registry actions; returns it for the sending actions."""
    actions = add_group(
        commands, "config",
        help="publish gateway configurations (sources, pipelines) and roll them out",
        description="Gateway configurations from central: a YAML file of sources: and "
                    "pipelines: (as in the agent's own YAML) published as a signed, immutable "
                    "version (NAME@1, NAME@2, ...), checked as every gateway checks it, and "
                    "rolled out in waves like a model. A gateway that cannot start it, or "
                    "finds it unhealthy within its probation, goes back to its previous one.",
        examples=["central-sync config push line-3-vision.yaml --name line-3-vision "
                  "--group line-3 --canary 1 --waves 50%,100%",
                  "central-sync config where line-3-vision",
                  "central-sync config diff line-3-vision@1 line-3-vision@2"],
        dest="config_command")
    publish = add_command(
        actions, "publish", help="check a configuration file and publish its next version",
        description="Check FILE (sources:, pipelines: and optionally monitoring_interval_s:, "
                    "written as in the agent's YAML) with the agent's own rules, sign it and "
                    "store it as the next version of --name. A body the same as the newest "
                    "version's is refused (exit 1), naming that version.",
        examples=["central-sync config publish line-3-vision.yaml --name line-3-vision",
                  "central-sync config publish line-3.yaml --name line-3 --probation-s 120 "
                  "--notes 'camera 2 at 10 fps'"])
    add_file_options(publish)
    publish.set_defaults(func=cmd_config_publish)
    listing = add_command(
        actions, "list", help="list configuration versions",
        description="Every published version (of NAME only, when given), newest first.",
        examples=["central-sync config list", "central-sync config list line-3-vision"])
    listing.add_argument("name", nargs="?", help="only this configuration")
    listing.set_defaults(func=cmd_config_list)
    show = add_command(
        actions, "show", help="one version: hash, probation, who published it, its body",
        description="One version with its body as YAML; NAME alone shows the newest.",
        examples=["central-sync config show line-3-vision@2",
                  "central-sync config show line-3-vision"])
    show.add_argument("config_ref", metavar="NAME[@VERSION]", help="e.g. line-3-vision@2")
    show.set_defaults(func=cmd_config_show)
    diff = add_command(
        actions, "diff", help="what changed between two versions",
        description="A unified diff of two versions' bodies (as YAML), and their probation "
                    "and notes when they differ.",
        examples=["central-sync config diff line-3-vision@1 line-3-vision@2",
                  "central-sync config diff line-3-vision@1 2"])
    diff.add_argument("old", metavar="NAME@VERSION", help="the older version")
    diff.add_argument("new", metavar="NAME@VERSION|VERSION", help="the newer one")
    diff.set_defaults(func=cmd_config_diff)
    where = add_command(
        actions, "where", help="which configuration each gateway runs",
        description="Per gateway: the configuration it reports running (or local YAML only), "
                    "the last configuration central sent it and how that went.",
        examples=["central-sync config where", "central-sync config where line-3-vision"])
    where.add_argument("name", nargs="?", help="only gateways that run or were sent it")
    where.set_defaults(func=cmd_config_where)
    return actions


def add_file_options(parser: argparse.ArgumentParser) -> None:
    """FILE, --name, --probation-s, --notes and --by: what publishing a file takes."""
    parser.add_argument("file", type=Path, metavar="FILE",
                        help="YAML with sources:, pipelines: (and monitoring_interval_s:)")
    parser.add_argument("--name", required=True,
                        help="the configuration's name, e.g. line-3-vision")
    parser.add_argument("--probation-s", type=float, default=DEFAULT_CONFIG_PROBATION_S,
                        metavar="SECONDS",
                        help="how long a gateway watches it before confirming it (default "
                        f"{DEFAULT_CONFIG_PROBATION_S:g})")
    parser.add_argument("--notes", default="", help="what changed and why, for reviewers")
    add_by_option(parser, "who publishes")

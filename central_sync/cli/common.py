"""What every `central-sync` command shares: exit codes and usage errors, the console, the
configuration and database, who acts (for the audit log), readable ages, and how a command
adds itself to the parser."""

from __future__ import annotations

import argparse
import contextlib
import getpass
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from central_sync.config import CentralConfig, load_central_config
from edge_agent.kernel.contract import ID_PATTERN, SEMVER_PATTERN, ModelRef

if TYPE_CHECKING:
    from central_sync.db import CentralDB

CONFIG_ENV = "CENTRAL_SYNC_CONFIG"
DEFAULT_CONFIG = "central-sync.yaml"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
FORMATTER = argparse.RawDescriptionHelpFormatter

Subcommands = argparse._SubParsersAction
"""What `add_subparsers` returns: where a command module adds its commands."""


class UsageError(Exception):
    """Bad input from the user; the message says what to do instead."""


def make_console() -> Console:
    """A rich console; wide when piped, so tables are not cut for scripts and logs."""
    console = Console()
    if not console.is_terminal:
        console.width = 200
    return console


def load_config(args: argparse.Namespace) -> CentralConfig:
    return load_central_config(args.config)


@contextlib.contextmanager
def open_database(config: CentralConfig) -> Iterator[CentralDB]:
    """Central's database for one command, closed afterwards."""
    from central_sync.db import CentralDB, DatabaseError

    try:
        db = CentralDB(config.database_url)
    except (*DatabaseError, OSError) as exc:
        raise UsageError(f"cannot open the database {config.database_name}: {exc}; "
                         "check database_url in the configuration") from None
    try:
        yield db
    finally:
        db.close()


@contextlib.asynccontextmanager
async def broker_session(config: CentralConfig, connect_timeout_s: float) -> AsyncIterator[Any]:
    """A short-lived MQTT session of the command's own (not the service's client id);
    ConnectionError saying so when the broker does not answer in time."""
    import secrets

    from edge_agent.kernel.transport.mqtt import MqttTransport

    broker = config.broker.model_copy(update={"client_id": None})
    client_id = f"{config.central_id}-cli-{secrets.token_hex(4)}"
    transport = MqttTransport(broker, client_id=client_id, persistent_session=False)
    await transport.start()
    try:
        if not await transport.wait_connected(connect_timeout_s):
            raise ConnectionError(f"cannot reach the MQTT broker at {broker.host}:{broker.port} "
                                  f"({transport.last_error or 'no answer'}); is it running?")
        yield transport
    finally:
        await transport.stop()


def acting_user(db: CentralDB, args: argparse.Namespace, role: str) -> str:
    """Who does this, for the audit log. Once central has accounts, changing commands log in
    as a user with `role` or a higher one: the user is CENTRAL_SYNC_USER (else --by), the
    password CENTRAL_SYNC_PASSWORD (else asked). Before the first account, --by is taken as
    given, so a new central can be set up."""
    from central_sync.accounts import password_matches

    if not db.has_users():
        return args.by
    username = os.environ.get("CENTRAL_SYNC_USER") or args.by
    password = os.environ.get("CENTRAL_SYNC_PASSWORD")
    if password is None:
        if not sys.stdin.isatty():
            raise UsageError("central has accounts: set CENTRAL_SYNC_USER and "
                             "CENTRAL_SYNC_PASSWORD to log in (or run this at a terminal)")
        password = getpass.getpass(f"central password of {username}: ")
    found = db.user_with_hash(username)
    if found is None or found[0].disabled or not password_matches(found[1], password):
        raise UsageError(f"{username} is not an active account of central with this password; "
                         "an admin adds one with `central-sync users add NAME --role engineer`")
    if not found[0].may(role):
        raise UsageError(f"{username} is a {found[0].role}; this needs the {role} role "
                         f"(`central-sync users role {username} {role}`, by an admin)")
    return username


def login_name() -> str:
    """The operating system's user name: who acts when --by is not given."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "cli"


def parse_model_ref(text: str) -> tuple[str, str]:
    """'extruder-scrap@1.2.0' -> ('extruder-scrap', '1.2.0'), or a UsageError saying the form."""
    name, _, version = text.rpartition("@")
    if not name or not re.fullmatch(ID_PATTERN, name) or not re.fullmatch(SEMVER_PATTERN, version):
        raise UsageError(f"{text!r} is not NAME@VERSION, e.g. extruder-scrap@1.2.0; "
                         "see `central-sync model list`")
    return name, version


def seconds_ago(at: float | None, now: float | None = None) -> str:
    """'12 s ago', '3 min ago', '5 h ago', 'never': ages for people reading fleet views."""
    if at is None:
        return "never"
    age = max(0.0, (time.time() if now is None else now) - at)
    for unit, seconds in (("d", 86400), ("h", 3600), ("min", 60)):
        if age >= seconds:
            return f"{int(age // seconds)} {unit} ago"
    return f"{int(age)} s ago"


def duration_text(seconds: float | None) -> str:
    """'45 s', '12 min', '3 h 5 min', '2 d 4 h': how long something lasts."""
    if seconds is None:
        return "-"
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h" if hours else f"{days} d"
    if hours:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    return f"{minutes} min" if minutes else f"{secs} s"


def models_text(active_models: list[ModelRef]) -> str:
    """'scrap-model 1.0.0, surface-defects 1.4.0', or '-' when none is active."""
    names = [f"{ref.name} {ref.version}" for ref in active_models]
    return ", ".join(names) or "-"


# --- building the parser -----------------------------------------------------------------------


def epilog(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c", "--config", type=Path,
        default=Path(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG),
        help=f"central's YAML config (default: ${CONFIG_ENV} or ./{DEFAULT_CONFIG})")


def add_command(subcommands: Subcommands, name: str, *, help: str, description: str,
                examples: list[str], config: bool = True) -> argparse.ArgumentParser:
    """A command (or a group's action) with its help, examples and, unless `config` is
    False, the -c/--config option."""
    parser = subcommands.add_parser(name, formatter_class=FORMATTER, help=help,
                                    description=description, epilog=epilog(*examples))
    if config:
        add_config_option(parser)
    return parser


def add_group(subcommands: Subcommands, name: str, *, help: str, description: str,
              examples: list[str], dest: str) -> Subcommands:
    """A command made of actions (`central-sync NAME ACTION`); returns where they go."""
    group = add_command(subcommands, name, help=help, description=description,
                        examples=examples, config=False)
    return group.add_subparsers(dest=dest, required=True, metavar="ACTION")


def add_by_option(parser: argparse.ArgumentParser, who: str = "who does it") -> None:
    parser.add_argument("--by", default=login_name(), help=f"{who}, for the audit log")


def device_ids(ids: list[str]) -> list[str]:
    """Device ids given on the command line, each checked, without repeats."""
    bad = [d for d in ids if not re.fullmatch(ID_PATTERN, d)]
    if bad:
        raise UsageError(f"device ids {bad} are not valid: use letters, digits, . _ -")
    return list(dict.fromkeys(ids))


def rollout_targets(db: CentralDB, groups: list[str],
                    devices: list[str]) -> tuple[list[str], str]:
    """The gateways a rollout goes to, from --group LABEL or --device ID (one of them, each
    repeatable), and the target as the rollout names it. Groups come from provisioning."""
    from central_sync.rollouts import group_devices

    if bool(devices) == bool(groups):
        raise UsageError("name the gateways with --group LABEL or --device ID (one of them; "
                         "each may be repeated)")
    if devices:
        chosen = device_ids(devices)
        return chosen, f"devices {', '.join(chosen)}"
    chosen = group_devices(db, groups)
    if not chosen:
        raise UsageError(f"no provisioned device has the label(s) {', '.join(groups)}; "
                         "groups come from provisioning, not from what gateways report: "
                         "`central-sync device label ID --add LABEL`, or name them with "
                         "--device ID")
    return chosen, f"group {', '.join(groups)}"


"""`central-sync users`: local accounts for central's web pages (viewer, quality, engineer,
admin). Passwords come from a prompt or an environment variable, never the command line."""

from __future__ import annotations

import argparse
import getpass
import os
import re
import secrets

from rich.console import Console
from rich.table import Table

from central_sync.accounts import hash_password, token_digest
from central_sync.cli.common import (
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
from central_sync.db.accounts import ROLES, UnknownUser, UserExists
from edge_agent.kernel.contract import ID_PATTERN


def _password(args: argparse.Namespace) -> str:
    if args.password_env:
        password = os.environ.get(args.password_env)
        if not password:
            raise UsageError(f"environment variable {args.password_env} is empty or unset")
    else:
        password = getpass.getpass(f"password for {args.username}: ")
        if getpass.getpass("again: ") != password:
            raise UsageError("the two passwords differ; nothing changed")
    try:
        return hash_password(password)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def cmd_users_add(args: argparse.Namespace) -> int:
    if not re.fullmatch(ID_PATTERN, args.username):
        raise UsageError(f"user name {args.username!r}: use letters, digits, . _ - (at most "
                         "64 characters)")
    config = load_config(args)
    password_hash = _password(args)
    with open_database(config) as db:
        if not db.has_users() and args.role != "admin":
            raise UsageError("the first account must be an admin (it adds the others): "
                             f"central-sync users add {args.username} --role admin")
        by = acting_user(db, args, "admin")
        try:
            db.add_user(args.username, password_hash, args.role, by=by)
        except UserExists as exc:
            raise UsageError(str(exc)) from None
    make_console().print(f"user {args.username} added with role {args.role}")
    return EXIT_OK


def cmd_users_change(args: argparse.Namespace) -> int:
    config = load_config(args)
    changes: dict[str, object] = {}
    if args.users_command == "passwd":
        changes["password_hash"] = _password(args)
    elif args.users_command == "role":
        changes["role"] = args.role
    else:
        changes["disabled"] = args.users_command == "disable"
    with open_database(config) as db:
        by = acting_user(db, args, "admin")
        try:
            db.update_user(args.username, by, **changes)  # type: ignore[arg-type]
        except UnknownUser as exc:
            raise UsageError(str(exc)) from None
    make_console().print(f"user {args.username}: {args.users_command} done")
    return EXIT_OK


def cmd_users_token(args: argparse.Namespace) -> int:
    config = load_config(args)
    with open_database(config) as db:
        by = acting_user(db, args, "admin")
        found = db.user_with_hash(args.username)
        if found is None or found[0].disabled:
            raise UsageError(f"{args.username} is not an active user; see `central-sync users "
                             "list`")
        token = secrets.token_urlsafe(32)
        db.create_session(args.username, token_digest(token), secrets.token_urlsafe(24),
                          args.days * 86400, action="user.token", by=by, kind="api")
    print(token)
    Console(stderr=True).print(
        f"an API token for {args.username} ({found[0].role}), valid {args.days:g} days: send "
        "it as Authorization: Bearer TOKEN (to /api/... and /metrics). "
        f"`central-sync users disable {args.username}` or a new password ends it.", style="dim")
    return EXIT_OK


def cmd_users_list(args: argparse.Namespace) -> int:
    config = load_config(args)
    with open_database(config) as db:
        users = db.list_users()
    table = Table(title="Users of central's web pages")
    for column in ("user", "role", "since", "access"):
        table.add_column(column)
    for user in users:
        table.add_row(user.username, user.role, seconds_ago(user.created_at),
                      "disabled" if user.disabled else "yes")
    make_console().print(table)
    return EXIT_OK


def add_commands(commands: Subcommands) -> None:
    actions = add_group(
        commands, "users",
        help="accounts for central's web pages: add, list, passwd, role, disable, enable",
        description="Local users of central's web pages. Roles, each allowing what the ones "
                    f"before it allow: {', '.join(ROLES)} (quality labels defects). Every "
                    "change is in the audit log.",
        examples=["central-sync users add anna --role quality",
                  "REVIEW_PASSWORD=... central-sync users add anna --role quality "
                  "--password-env REVIEW_PASSWORD",
                  "central-sync users list", "central-sync users disable anna"],
        dest="users_command")
    add = add_command(
        actions, "add", help="add a user with a role",
        description="Add a user; the password is asked twice (or read from --password-env) "
                    "and stored as an Argon2id hash.",
        examples=["central-sync users add anna --role quality"])
    add.add_argument("username", help="letters, digits, . _ -")
    add.add_argument("--role", choices=ROLES, default="viewer", help="default: viewer")
    add.set_defaults(func=cmd_users_add)
    token = add_command(
        actions, "token",
        help="an API token for scripts and Prometheus (Authorization: Bearer)",
        description="Print a new token that reads the JSON API and /metrics as this user, "
                    "until it expires or the user is disabled or gets a new password.",
        examples=["central-sync users token grafana --days 365 > central.token"])
    token.add_argument("username", help="an existing user (a viewer is enough to read)")
    token.add_argument("--days", type=float, default=90.0, help="validity (default: 90)")
    add_by_option(token)
    token.set_defaults(func=cmd_users_token)
    listing = add_command(
        actions, "list", help="list the users", description="Every user with role and access.",
        examples=["central-sync users list"])
    listing.set_defaults(func=cmd_users_list)
    changes = _add_changes(actions)
    for parser in (add, *changes):
        if parser is add or parser.prog.endswith("passwd"):
            parser.add_argument("--password-env", metavar="VAR",
                                help="read the password from this environment variable")
        add_by_option(parser)


def _add_changes(actions: Subcommands) -> list[argparse.ArgumentParser]:
    helps = {"passwd": "set a new password (ends the user's sessions)",
             "role": "change the user's role",
             "disable": "refuse the user's logins and end their sessions",
             "enable": "allow a disabled user again"}
    parsers = []
    for action, text in helps.items():
        parser = add_command(
            actions, action, help=text,
            description=f"{text[0].upper()}{text[1:]}. Recorded in the audit log.",
            examples=[f"central-sync users {action} anna"
                      + (" engineer" if action == "role" else "")])
        parser.add_argument("username", help="an existing user")
        if action == "role":
            parser.add_argument("role", choices=ROLES, help="the new role")
        parser.set_defaults(func=cmd_users_change)
        parsers.append(parser)
    return parsers

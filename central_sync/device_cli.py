"""`central-sync device` and `central-sync broker`: per-device broker credentials, the bundle
a new gateway is installed from, rotation and revocation, and central's own broker login."""

from __future__ import annotations

import argparse
import os
import re
import time

from rich.table import Table

from central_sync.cli import (
    EXIT_OK,
    UsageError,
    _actor,
    _console,
    _database,
    _epilog,
    _load,
    _user,
)
from central_sync.config import CentralConfig
from central_sync.db import CentralDB
from central_sync.db.broker_accounts import AccountExists, UnknownAccount
from central_sync.present import seconds_ago
from central_sync.provisioning import (
    ProvisioningError,
    apply,
    mosquitto_hash,
    new_password,
    write_bundle,
)
from edge_agent.kernel.contract import ID_PATTERN


def _device_id(value: str) -> str:
    if not re.match(ID_PATTERN, value):
        raise UsageError(f"device id {value!r}: use letters, digits, . _ - (at most 64)")
    return value


def _labels(text: str) -> list[str]:
    labels = [label.strip() for label in text.split(",") if label.strip()]
    for label in labels:
        if not re.match(ID_PATTERN, label):
            raise UsageError(f"label {label!r}: use letters, digits, . _ -")
    return labels


def _apply(config: CentralConfig, db: CentralDB) -> str:
    try:
        return apply(config, db.broker_accounts())
    except ProvisioningError as exc:
        raise UsageError(str(exc)) from None


def _bundle(config: CentralConfig, db: CentralDB, device: str, password: str) -> str:
    account = db.broker_account(device)
    assert account is not None
    try:
        bundle = write_bundle(config, account, password, config.trusted_public_pem().encode())
    except ProvisioningError as exc:
        raise UsageError(str(exc)) from None
    client = " and a client certificate" if bundle.has_client_certificate else ""
    return (f"bundle: {bundle.path} (mode 600: it holds the password{client})\n"
            f"copy it to the gateway and run: sudo deploy/install-agent.sh {bundle.path.name}")


def cmd_device_add(args: argparse.Namespace) -> int:
    device = _device_id(args.device_id)
    config = _load(args)
    config.signer()  # the bundle carries its public key: fail before anything changes
    password = new_password()
    with _database(config) as db:
        by = _actor(db, args, "engineer")
        try:
            db.add_broker_account(device, "device", _labels(args.labels),
                                  mosquitto_hash(password), by=by)
        except AccountExists as exc:
            raise UsageError(str(exc)) from None
        bundle = _bundle(config, db, device, password)
        print(bundle)  # before the reload, which may fail: the password lives only in it
        done = _apply(config, db)
    console = _console()
    console.print(f"device {device} provisioned: {done}")
    return EXIT_OK


def cmd_device_rotate(args: argparse.Namespace) -> int:
    device = _device_id(args.device_id)
    config = _load(args)
    config.signer()
    password = new_password()
    with _database(config) as db:
        by = _actor(db, args, "engineer")
        try:
            db.rotate_broker_account(device, mosquitto_hash(password), by=by)
        except UnknownAccount as exc:
            raise UsageError(str(exc)) from None
        bundle = _bundle(config, db, device, password)
        print(bundle)  # before the reload, which may fail: the password lives only in it
        done = _apply(config, db)
    console = _console()
    console.print(f"device {device}: new credentials; {done}. Its old password no longer "
                  "works: until the gateway has the new one it buffers its data, losing none.")
    return EXIT_OK


def cmd_device_remove(args: argparse.Namespace) -> int:
    device = _device_id(args.device_id)
    config = _load(args)
    with _database(config) as db:
        by = _actor(db, args, "engineer")
        try:
            db.revoke_broker_account(device, by=by)
        except UnknownAccount as exc:
            raise UsageError(str(exc)) from None
        done = _apply(config, db)
    bundle = config.provisioning.bundle_dir / f"{device}.tar.gz"
    bundle.unlink(missing_ok=True)
    _console().print(f"device {device} revoked: {done}. Mosquitto refuses its login and ends "
                     "its connection; its stored data stays in central.")
    return EXIT_OK


def cmd_device_list(args: argparse.Namespace) -> int:
    config = _load(args)
    with _database(config) as db:
        accounts = [a for a in db.broker_accounts(include_revoked=True) if a.kind == "device"]
        fleet = {d.device_id: d for d in db.list_devices()}
    now = time.time()
    table = Table(title="Provisioned devices")
    for column in ("device", "labels", "access", "provisioned", "credentials from", "state",
                   "last seen"):
        table.add_column(column)
    for account in accounts:
        seen = fleet.get(account.username)
        state = seen.presence(now, config.offline_after_s) if seen else "never connected"
        access = "[green]yes[/]" if account.active else (
            f"[red]revoked {seconds_ago(account.revoked_at, now)}[/]")
        table.add_row(account.username, ", ".join(account.labels) or "-", access,
                      seconds_ago(account.created_at, now), seconds_ago(account.rotated_at, now),
                      state, seconds_ago(seen.last_seen, now) if seen else "-")
    console = _console()
    if accounts:
        console.print(table)
    else:
        console.print("No device is provisioned yet: central-sync device add DEVICE_ID")
    return EXIT_OK


def cmd_broker_init(args: argparse.Namespace) -> int:
    config = _load(args)
    username, target = config.broker.username, config.broker.password_file
    if not username or target is None:
        raise UsageError("set broker.username (e.g. central) and broker.password_file (e.g. "
                         "keys/mqtt-password) in the configuration first: central logs in "
                         "with them")
    if target.exists() and not args.force:
        raise UsageError(f"{target} exists; --force makes a new password (central must then "
                         "be restarted)")
    password = new_password()
    with _database(config) as db:
        by = _actor(db, args, "admin")
        account = db.broker_account(username)
        if account is not None and account.active:
            if account.kind != "central":
                raise UsageError(f"{username} is a device's account; give central another "
                                 "broker.username")
            db.rotate_broker_account(username, mosquitto_hash(password), by=by)
        else:
            db.add_broker_account(username, "central", [], mosquitto_hash(password), by=by)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(password + "\n")
        done = _apply(config, db)
    _console().print(f"broker account {username} for central: password in {target}; {done}")
    return EXIT_OK


def add_parser(commands: argparse._SubParsersAction, common: argparse.ArgumentParser,
               formatter: type[argparse.HelpFormatter]) -> None:
    device = commands.add_parser(
        "device", formatter_class=formatter,
        help="provision gateways: add, list, rotate, remove (broker credentials and bundle)",
        description="Each gateway has its own broker login, and an ACL that lets it publish "
                    "only under its own topics and read only what is addressed to it. `add` "
                    "writes a bundle (agent configuration, credentials, CA certificate, "
                    "central's signing key) for deploy/install-agent.sh on the gateway.",
        epilog=_epilog("central-sync device add line3-gw1 --labels line-3",
                       "central-sync device list",
                       "central-sync device rotate line3-gw1",
                       "central-sync device remove line3-gw1"))
    actions = device.add_subparsers(dest="device_command", required=True, metavar="ACTION")
    add = actions.add_parser(
        "add", parents=[common], formatter_class=formatter,
        help="create the device's broker login and ACL, and write its bundle",
        description="Create a random password for the device (its user name is its id), "
                    "update Mosquitto's password file and ACL, and write "
                    "bundle_dir/DEVICE_ID.tar.gz. A removed device can be added again.",
        epilog=_epilog("central-sync device add line3-gw1 --labels line-3,extruders"))
    add.add_argument("device_id", help="the gateway's id: letters, digits, . _ -")
    add.add_argument("--labels", default="", help="groups for rollouts, comma-separated")
    add.set_defaults(func=cmd_device_add)
    rotate = actions.add_parser(
        "rotate", parents=[common], formatter_class=formatter,
        help="give the device a new password (and a new bundle); the old one stops working",
        description="Replace the device's password and write a new bundle. Copy the new "
                    "mqtt-password to the gateway (or run deploy/install-agent.sh with the "
                    "bundle again); meanwhile the gateway buffers its data.",
        epilog=_epilog("central-sync device rotate line3-gw1"))
    rotate.add_argument("device_id", help="a provisioned device")
    rotate.set_defaults(func=cmd_device_rotate)
    remove = actions.add_parser(
        "remove", parents=[common], formatter_class=formatter,
        help="revoke the device: Mosquitto refuses it and drops its connection",
        description="Revoke the device's broker login and ACL and delete its bundle. Its "
                    "data stays in central; `device add` gives it new credentials.",
        epilog=_epilog("central-sync device remove line3-gw1"))
    remove.add_argument("device_id", help="a provisioned device")
    remove.set_defaults(func=cmd_device_remove)
    listing = actions.add_parser(
        "list", parents=[common], formatter_class=formatter,
        help="provisioned devices: labels, access, credentials' age, state",
        description="Every provisioned device, revoked ones included.",
        epilog=_epilog("central-sync device list"))
    listing.set_defaults(func=cmd_device_list)
    for parser in (add, rotate, remove):
        parser.add_argument("--by", default=_user(), help="who does it, for the audit log")

    broker = commands.add_parser(
        "broker", formatter_class=formatter, help="central's own broker login",
        description="Central logs in to Mosquitto as broker.username with the password in "
                    "broker.password_file; its ACL covers the whole topic tree.",
        epilog=_epilog("central-sync broker init -c /etc/central-sync/central-sync.yaml"))
    broker_actions = broker.add_subparsers(dest="broker_command", required=True,
                                           metavar="ACTION")
    init = broker_actions.add_parser(
        "init", parents=[common], formatter_class=formatter,
        help="create central's broker password and write Mosquitto's account files",
        description="Write a random password to broker.password_file (mode 600), add "
                    "central's account to Mosquitto's password file and ACL, and reload.",
        epilog=_epilog("central-sync broker init -c central-sync.yaml",
                       "central-sync broker init -c central-sync.yaml --force   # rotate"))
    init.add_argument("--force", action="store_true", help="replace an existing password")
    init.add_argument("--by", default=_user(), help="who does it, for the audit log")
    init.set_defaults(func=cmd_broker_init)

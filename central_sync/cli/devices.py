"""`central-sync devices` (the fleet as central sees it), `central-sync device` (each
gateway's broker credentials, the bundle it is installed from, rotation and revocation; the
read-only logins of SCADA hosts to the alert topics) and `central-sync broker` (central's own
broker login)."""

from __future__ import annotations

import argparse
import os
import re
import time
from collections.abc import Callable

from rich.table import Table

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
    models_text,
    open_database,
    seconds_ago,
)
from central_sync.cli.scada_readers import add_reader_command, hand_over_password, readers_table
from central_sync.config import CentralConfig
from central_sync.db import CentralDB
from central_sync.db.broker_accounts import AccountExists, UnknownAccount
from central_sync.provisioning import (
    ProvisioningError,
    apply,
    mosquitto_hash,
    new_password,
    reader_password_path,
    write_bundle,
)
from edge_agent.kernel.contract import ID_PATTERN, Topics


def cmd_devices(args: argparse.Namespace) -> int:
    config = load_config(args)
    with open_database(config) as db:
        devices = db.list_devices()
    now = time.time()
    table = Table(title="Devices")
    for column in ("device", "labels", "reported labels", "state", "last seen",
                   "active models", "records stored", "evicted", "buffer depth", "oldest unsent",
                   "uplink"):
        table.add_column(column)
    for d in devices:
        state = d.presence(now, config.offline_after_s)
        colour = "green" if state == "online" else "red"
        depth = "-" if d.buffer_depth is None else str(d.buffer_depth)
        buffer = d.status.buffer if d.status else None
        oldest = "-" if buffer is None or buffer.oldest_age_s is None else (
            f"{buffer.oldest_age_s:.0f} s")
        uplink = d.status.uplink if d.status else None
        rate = "-" if uplink is None else (
            f"{uplink.records_per_s:g}/s"
            + ("" if uplink.round_trip_ms is None else f", rtt {uplink.round_trip_ms:.0f} ms"))
        reported = _reported(d.reported_labels, d.labels)
        table.add_row(d.device_id, ", ".join(d.labels) or "-", reported, f"[{colour}]{state}[/]",
                      seconds_ago(d.last_seen, now),
                      models_text(d.active_models), f"{d.records:,}", f"{d.evicted:,}", depth,
                      oldest, rate)
    console = make_console()
    if not devices:
        console.print("No device has reported yet; is `central-sync serve` running?")
    else:
        console.print(table)
    return EXIT_OK


def _reported(reported: tuple[str, ...], provisioned: tuple[str, ...]) -> str:
    """What a device says of its groups; a label provisioning did not give it in red."""
    shown = [label if label in provisioned else f"[red]{label} (not provisioned)[/]"
             for label in reported]
    return ", ".join(shown) or "-"


def _device_id(value: str) -> str:
    if not re.fullmatch(ID_PATTERN, value):
        raise UsageError(f"device id {value!r}: use letters, digits, . _ - (at most 64, "
                         "starting with a letter or digit; no spaces or line breaks)")
    return value


def _labels(text: str) -> list[str]:
    labels = [label.strip() for label in text.split(",") if label.strip()]
    for label in labels:
        if not re.fullmatch(ID_PATTERN, label):
            raise UsageError(f"label {label!r}: use letters, digits, . _ - (no spaces)")
    return list(dict.fromkeys(labels))


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


def _kind_to_rotate(db: CentralDB, name: str) -> str:
    account = db.broker_account(name)
    if account is None or not account.active:
        return "device"  # the rotation itself says it is unknown
    if account.kind == "central":
        raise UsageError(f"{name} is central's own broker login: `central-sync broker init "
                         "--force` gives it a new password")
    return account.kind


def _issue_credentials(args: argparse.Namespace, kind: str | None,
                       store: Callable[[CentralDB, str, str], None]) -> tuple[str, str, str]:
    """Give the account named in `args` a new password: `store(db, password_hash, by)` records
    it, a device's bundle (a SCADA reader's password file) is written and named, Mosquitto's
    files rewritten. `kind` None: the account's own. Returns its name, kind and what the
    reload did."""
    name = _device_id(args.device_id)
    config = load_config(args)
    password = new_password()
    with open_database(config) as db:
        by = acting_user(db, args, "engineer")
        kind = kind or _kind_to_rotate(db, name)
        if kind == "device":
            config.signer()  # the bundle carries its public key: fail before anything changes
        try:
            store(db, mosquitto_hash(password), by)
        except (AccountExists, UnknownAccount) as exc:
            raise UsageError(str(exc)) from None
        # Before the reload, which may fail: the password lives only in what this names.
        print(_bundle(config, db, name, password) if kind == "device"
              else hand_over_password(config, name, password))
        return name, kind, _apply(config, db)


def cmd_device_add(args: argparse.Namespace) -> int:
    labels = _labels(args.labels)
    device, _, done = _issue_credentials(args, "device", lambda db, password_hash, by: (
        db.add_broker_account(args.device_id, "device", labels, password_hash, by=by)))
    make_console().print(f"device {device} provisioned: {done}")
    return EXIT_OK


def cmd_device_add_reader(args: argparse.Namespace) -> int:
    name, _, done = _issue_credentials(args, "scada", lambda db, password_hash, by: (
        db.add_broker_account(args.device_id, "scada", [], password_hash, by=by)))
    make_console().print(f"SCADA reader {name} provisioned: it may read central's alert topics "
                         f"and nothing else; {done}", highlight=False)
    return EXIT_OK


def cmd_device_label(args: argparse.Namespace) -> int:
    device = _device_id(args.device_id)
    if args.set is None and not args.add and not args.remove:
        raise UsageError("say what to change: --set a,b (replace), --add a,b or --remove a,b")
    if args.set is not None and (args.add or args.remove):
        raise UsageError("--set replaces every label: use it alone, or --add / --remove")
    config = load_config(args)
    with open_database(config) as db:
        by = acting_user(db, args, "engineer")
        account = db.broker_account(device)
        if account is None or not account.active or account.kind != "device":
            raise UsageError(f"{device} is not a provisioned device; provision it with "
                             f"`central-sync device add {device} --labels ...` (see "
                             "`central-sync device list`)")
        if args.set is not None:
            labels = _labels(args.set)
        else:
            removed = set(_labels(args.remove or ""))
            labels = [label for label in dict.fromkeys([*account.labels,
                                                        *_labels(args.add or "")])
                      if label not in removed]
        before = db.set_device_labels(device, labels, by=by)
    make_console().print(f"device {device}: labels {', '.join(labels) or 'none'} (were "
                         f"{', '.join(before) or 'none'}); rollouts to a group select it by "
                         "these labels from now on", highlight=False)
    return EXIT_OK


def cmd_device_rotate(args: argparse.Namespace) -> int:
    name, kind, done = _issue_credentials(args, None, lambda db, password_hash, by: (
        db.rotate_broker_account(args.device_id, password_hash, by=by)))
    if kind == "scada":
        make_console().print(f"SCADA reader {name}: new password; {done}. Its old password no "
                             "longer works: put the new one in the SCADA host's MQTT "
                             "connection; the open alerts are retained, so it finds them again.")
    else:
        make_console().print(f"device {name}: new credentials; {done}. Its old password no "
                             "longer works: until the gateway has the new one it buffers its "
                             "data, losing none.")
    return EXIT_OK


def cmd_device_remove(args: argparse.Namespace) -> int:
    device = _device_id(args.device_id)
    config = load_config(args)
    with open_database(config) as db:
        by = acting_user(db, args, "engineer")
        account = db.broker_account(device)
        try:
            db.revoke_broker_account(device, by=by)
        except UnknownAccount as exc:
            raise UsageError(str(exc)) from None
        done = _apply(config, db)
    if account is not None and account.kind == "scada":
        reader_password_path(config, device).unlink(missing_ok=True)
        make_console().print(f"SCADA reader {device} revoked: {done}. Mosquitto refuses its "
                             "login and ends its connection.")
        return EXIT_OK
    bundle = config.provisioning.bundle_dir / f"{device}.tar.gz"
    bundle.unlink(missing_ok=True)
    make_console().print(f"device {device} revoked: {done}. Mosquitto refuses its login and "
                         "ends its connection; its stored data stays in central.")
    return EXIT_OK


def cmd_device_list(args: argparse.Namespace) -> int:
    config = load_config(args)
    with open_database(config) as db:
        every = db.broker_accounts(include_revoked=True)
        fleet = {d.device_id: d for d in db.list_devices()}
    accounts = [a for a in every if a.kind == "device"]
    readers = [a for a in every if a.kind == "scada"]
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
    console = make_console()
    if accounts:
        console.print(table)
    else:
        console.print("No device is provisioned yet: central-sync device add DEVICE_ID")
    if readers:
        console.print(readers_table(readers, Topics(config.broker.topic_prefix), now))
    return EXIT_OK


def cmd_broker_init(args: argparse.Namespace) -> int:
    config = load_config(args)
    username, target = config.broker.username, config.broker.password_file
    if not username or target is None:
        raise UsageError("set broker.username (e.g. central) and broker.password_file (e.g. "
                         "keys/mqtt-password) in the configuration first: central logs in "
                         "with them")
    if target.exists() and not args.force:
        raise UsageError(f"{target} exists; --force makes a new password (central must then "
                         "be restarted)")
    password = new_password()
    with open_database(config) as db:
        by = acting_user(db, args, "admin")
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
    make_console().print(f"broker account {username} for central: password in {target}; {done}")
    return EXIT_OK


def add_fleet_command(commands: Subcommands) -> None:
    devices = add_command(
        commands, "devices",
        help="show the fleet: state, last seen, active models, records, buffer depth",
        description="Show every device central has heard from.",
        examples=["central-sync devices -c central-sync.yaml"])
    devices.set_defaults(func=cmd_devices)


def _add_label_command(actions: Subcommands) -> argparse.ArgumentParser:
    label = add_command(
        actions, "label", help="change a provisioned device's groups (its labels); audited",
        description="Set, add or remove the labels a rollout's --group selects the device by. "
                    "Only these labels count: what a gateway reports of itself (its "
                    "configuration's labels) is shown by `central-sync devices` and central's "
                    "pages but never selects it. Recorded in the audit log.",
        examples=["central-sync device label line3-gw1 --set line-3,extruders",
                  "central-sync device label line3-gw1 --add oven",
                  "central-sync device label line3-gw1 --remove extruders"])
    label.add_argument("device_id", help="a provisioned device")
    label.add_argument("--set", metavar="L1,L2", help="replace its labels with these "
                       "('' for none)")
    label.add_argument("--add", metavar="L1,L2", help="add these labels")
    label.add_argument("--remove", metavar="L1,L2", help="remove these labels")
    label.set_defaults(func=cmd_device_label)
    return label


def add_provisioning_commands(commands: Subcommands) -> None:
    """`device` (add, rotate, remove, list) and `broker init`."""
    actions = add_group(
        commands, "device",
        help="provision gateways: add, label, list, rotate, remove (broker credentials, "
             "groups and bundle); SCADA readers of the alerts; logs, diagnosis and restarts",
        description="Each gateway has its own broker login, and an ACL that lets it publish "
                    "only under its own topics and read only what is addressed to it; its labels "
                    "(`add --labels`, `label`) are the groups rollouts select it by. `add` "
                    "writes a bundle (agent configuration, credentials, CA certificate, "
                    "central's signing key) for deploy/install-agent.sh on the gateway. "
                    "`add-reader` gives a SCADA host a login that may only read central's "
                    "alert topics; `rotate`, `remove` and `list` work for it too.",
        examples=["central-sync device add line3-gw1 --labels line-3",
                  "central-sync device add-reader scada-plant1",
                  "central-sync device label line3-gw1 --add extruders",
                  "central-sync device list",
                  "central-sync device rotate line3-gw1",
                  "central-sync device remove line3-gw1",
                  "central-sync device logs line3-gw1 --follow"],
        dest="device_command")
    add = add_command(
        actions, "add", help="create the device's broker login and ACL, and write its bundle",
        description="Create a random password for the device (its user name is its id), "
                    "update Mosquitto's password file and ACL, and write "
                    "bundle_dir/DEVICE_ID.tar.gz. A removed device can be added again.",
        examples=["central-sync device add line3-gw1 --labels line-3,extruders"])
    add.add_argument("device_id", help="the gateway's id: letters, digits, . _ -")
    add.add_argument("--labels", default="",
                     help="its groups for rollouts, comma-separated (`rollout start --group`)")
    add.set_defaults(func=cmd_device_add)
    reader = add_reader_command(actions, cmd_device_add_reader)
    label = _add_label_command(actions)
    rotate = add_command(
        actions, "rotate",
        help="give the device (or SCADA reader) a new password; the old one stops working",
        description="Replace the device's password and write a new bundle. Copy the new "
                    "mqtt-password to the gateway (or run deploy/install-agent.sh with the "
                    "bundle again); meanwhile the gateway buffers its data. A SCADA reader's "
                    "new password is written to bundle_dir/NAME.mqtt-password.",
        examples=["central-sync device rotate line3-gw1",
                  "central-sync device rotate scada-plant1"])
    rotate.add_argument("device_id", metavar="NAME", help="a provisioned device or reader")
    rotate.set_defaults(func=cmd_device_rotate)
    remove = add_command(
        actions, "remove",
        help="revoke the device (or SCADA reader): Mosquitto refuses it and drops its connection",
        description="Revoke the device's broker login and ACL and delete its bundle (a SCADA "
                    "reader's: its password file). Its data stays in central; `device add` "
                    "(`device add-reader`) gives it new credentials.",
        examples=["central-sync device remove line3-gw1",
                  "central-sync device remove scada-plant1"])
    remove.add_argument("device_id", metavar="NAME", help="a provisioned device or reader")
    remove.set_defaults(func=cmd_device_remove)
    listing = add_command(
        actions, "list", help="provisioned devices: labels, access, credentials' age, state",
        description="Every provisioned device, revoked ones included, then the SCADA "
                    "readers.",
        examples=["central-sync device list"])
    listing.set_defaults(func=cmd_device_list)
    for parser in (add, reader, label, rotate, remove):
        add_by_option(parser)

    broker_actions = add_group(
        commands, "broker", help="central's own broker login",
        description="Central logs in to Mosquitto as broker.username with the password in "
                    "broker.password_file; its ACL covers the whole topic tree.",
        examples=["central-sync broker init -c /etc/central-sync/central-sync.yaml"],
        dest="broker_command")
    init = add_command(
        broker_actions, "init",
        help="create central's broker password and write Mosquitto's account files",
        description="Write a random password to broker.password_file (mode 600), add "
                    "central's account to Mosquitto's password file and ACL, and reload.",
        examples=["central-sync broker init -c central-sync.yaml",
                  "central-sync broker init -c central-sync.yaml --force   # rotate"])
    init.add_argument("--force", action="store_true", help="replace an existing password")
    add_by_option(init)
    init.set_defaults(func=cmd_broker_init)

"""`central-sync device add-reader`: a SCADA host's broker login, which may only read the alert
topics; the password it is handed and how readers are listed. `device rotate`, `remove` and
`list` (central_sync/cli/devices.py) serve readers as they serve devices."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from rich.table import Table

from central_sync.cli.common import Subcommands, UsageError, add_command, seconds_ago
from central_sync.config import CentralConfig
from central_sync.db.broker_accounts import BrokerAccount
from central_sync.provisioning import ProvisioningError, write_reader_password
from edge_agent.kernel.contract import Topics


def hand_over_password(config: CentralConfig, name: str, password: str) -> str:
    """Write the reader's password to its file; what the SCADA host needs to connect."""
    try:
        path = write_reader_password(config, name, password)
    except ProvisioningError as exc:
        raise UsageError(str(exc)) from None
    settings = config.provisioning
    ca = f", trusting {settings.ca_file}" if settings.ca_file is not None else ""
    return (f"password: {path} (mode 600: give it to the SCADA host, then delete it)\n"
            f"the SCADA host connects to {settings.gateway_broker_host}:"
            f"{settings.gateway_broker_port} over TLS{ca}, as user {name}, and subscribes to "
            f"{Topics(config.broker.topic_prefix).all_alerts()}")


def readers_table(readers: list[BrokerAccount], topics: Topics, now: float) -> Table:
    table = Table(title=f"SCADA readers (read only: {topics.all_alerts()})")
    for column in ("reader", "access", "provisioned", "credentials from"):
        table.add_column(column)
    for account in readers:
        access = "[green]yes[/]" if account.active else (
            f"[red]revoked {seconds_ago(account.revoked_at, now)}[/]")
        table.add_row(account.username, access, seconds_ago(account.created_at, now),
                      seconds_ago(account.rotated_at, now))
    return table


def add_reader_command(actions: Subcommands,
                       run: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
    reader = add_command(
        actions, "add-reader",
        help="a SCADA host's broker login that may only read the alert topics",
        description="Create a random password for NAME, a broker login whose ACL allows only "
                    "`topic read PREFIX/alerts/#`: the open alerts central keeps retained on "
                    "PREFIX/alerts/open/ALERT_ID and every change on PREFIX/alerts/events. It "
                    "may not publish anything, nor read any device's topics. The password is "
                    "written to bundle_dir/NAME.mqtt-password (mode 600). A removed reader can "
                    "be added again.",
        examples=["central-sync device add-reader scada-plant1",
                  "central-sync device rotate scada-plant1    # a new password",
                  "central-sync device remove scada-plant1    # its login stops working"])
    reader.add_argument("device_id", metavar="NAME",
                        help="the SCADA host's user name: letters, digits, . _ -")
    reader.set_defaults(func=run)
    return reader

"""The `central-sync` command line: a thin layer over the service, registry and database API.

Each module here adds its own commands to the parser; common.py holds what they share.
"""

from __future__ import annotations

import argparse
import logging
import sys

from central_sync import __version__
from central_sync.cli import (
    agent_releases,
    alerts,
    audit,
    config_rollouts,
    contract,
    datasets,
    devices,
    diagnostics,
    keys,
    models,
    rollouts,
    serve,
    train,
    users,
)
from central_sync.cli.common import EXIT_USAGE, FORMATTER, UsageError, epilog
from edge_agent.kernel.configfile import ConfigError
from edge_agent.kernel.signing import KeyFileError
from edge_agent.kernel.transport import BrokerCredentialsError

# The order of `central-sync --help`.
COMMAND_SETS = (serve.add_commands, models.add_commands, datasets.add_commands,
                train.add_commands, rollouts.add_commands, config_rollouts.add_commands,
                agent_releases.add_commands,
                users.add_commands, audit.add_commands,
                devices.add_provisioning_commands, diagnostics.add_commands, keys.add_commands,
                devices.add_fleet_command, alerts.add_commands, contract.add_commands)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="central-sync", formatter_class=FORMATTER,
        description="Central service of edge MLOps: model registry, deployments and ingest "
                    "of gateway data over MQTT.",
        epilog=epilog("central-sync serve -c central-sync.yaml",
                      "central-sync model publish scrap.onnx --name extruder-scrap "
                      "--version 1.0.0",
                      "central-sync deploy extruder-scrap@1.0.0 --device line1-gw1 --wait 120"))
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                        help="logging detail on stderr (default: info for serve, else warning)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_commands in COMMAND_SETS:
        add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `central-sync`; returns the exit code."""
    args = build_parser().parse_args(argv)
    level = args.log_level or ("info" if args.command == "serve" else "warning")
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (UsageError, KeyFileError, BrokerCredentialsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE

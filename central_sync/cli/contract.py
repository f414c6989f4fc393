"""`central-sync contract`: print the MQTT topic table, or the whole contract as Markdown."""

from __future__ import annotations

import argparse

from central_sync.cli.common import EXIT_OK, Subcommands, UsageError, add_command
from edge_agent.kernel.contract import (
    DEFAULT_TOPIC_PREFIX,
    Topics,
    contract_markdown,
    topic_table_markdown,
)


def cmd_contract(args: argparse.Namespace) -> int:
    try:
        Topics(args.prefix)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    print(contract_markdown(args.prefix) if args.markdown else topic_table_markdown(args.prefix))
    return EXIT_OK


def add_commands(commands: Subcommands) -> None:
    contract = add_command(
        commands, "contract", help="print the MQTT topic table (and schemas)",
        description="Print the MQTT contract: the topic table, and with --markdown also the "
                    "JSON Schema of every message.",
        examples=["central-sync contract", "central-sync contract --markdown > CONTRACT.md",
                  "central-sync contract --prefix plant7"],
        config=False)
    contract.add_argument("--markdown", action="store_true",
                          help="the full contract as Markdown, JSON Schemas included")
    contract.add_argument("--prefix", default=DEFAULT_TOPIC_PREFIX,
                          help=f"topic prefix (default: {DEFAULT_TOPIC_PREFIX})")
    contract.set_defaults(func=cmd_contract)

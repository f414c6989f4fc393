"""`central-sync serve`: run ingest, the artifact chunk server and the web page until stopped."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from typing import TYPE_CHECKING

from central_sync.cli.common import EXIT_FAILED, EXIT_OK, Subcommands, add_command, load_config

if TYPE_CHECKING:
    from central_sync.service import CentralService


def cmd_serve(args: argparse.Namespace) -> int:
    from central_sync.service import CentralService, ServiceStartError
    from edge_agent.kernel.gctune import tune_for_service
    from edge_agent.kernel.transport.mqtt import MqttTransport

    config = load_config(args)
    # In a shared ingest group a session that outlives its process would keep taking its
    # share of the devices' messages while the process is down; devices resend whatever was
    # not acked, so the group's members need no backlog of their own.
    transport = MqttTransport(config.broker, client_id=config.central_id,
                              persistent_session=config.ingest_group is None)
    service = CentralService(config, transport)
    tune_for_service()
    try:
        asyncio.run(_serve_until_signal(service))
    except ServiceStartError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


async def _serve_until_signal(service: CentralService) -> None:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await service.run()


def add_commands(commands: Subcommands) -> None:
    serve = add_command(
        commands, "serve",
        help="run ingest, the artifact chunk server and the web page until stopped",
        description="Subscribe to every device's topics, store and acknowledge uplinks, serve "
                    "artifact chunks and the web page. Stops cleanly on SIGTERM or Ctrl-C.",
        examples=["central-sync serve -c central-sync.yaml",
                  "CENTRAL_SYNC_CONFIG=/etc/central-sync.yaml central-sync serve"])
    serve.set_defaults(func=cmd_serve)

"""`edge-agent` command line: run the agent, check a configuration, inspect local state."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from edge_agent import __version__
from edge_agent.config import (
    AgentConfig,
    load_agent_config,
)
from edge_agent.kernel.configfile import ConfigError
from edge_agent.kernel.signing import KeyFileError
from edge_agent.kernel.transport import BrokerCredentialsError

DEFAULT_CONFIG = "edge-agent.yaml"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2  # 2: the configuration or a file it names is wrong

_EPILOGS = {
    "main": """examples:
  edge-agent run -c /etc/edge-agent/edge-agent.yaml
  edge-agent check-config -c edge-agent.yaml
  edge-agent status -c edge-agent.yaml
""",
    "run": """examples:
  edge-agent run -c edge-agent.yaml
  EDGE_AGENT_CONFIG=/etc/edge-agent/edge-agent.yaml edge-agent run --log-level debug
""",
    "check-config": """examples:
  edge-agent check-config -c edge-agent.yaml
  edge-agent check-config -c deploy/edge-agent.example.yaml
""",
    "status": """examples:
  edge-agent status -c edge-agent.yaml
""",
}


def _parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="edge-agent", formatter_class=fmt, epilog=_EPILOGS["main"],
        description="Runs ONNX models on this gateway and syncs with central over MQTT.",
    )
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=help_text, description=help_text,
                                 formatter_class=fmt, epilog=_EPILOGS[name])
        command.add_argument(
            "-c", "--config", type=Path,
            default=Path(os.environ.get("EDGE_AGENT_CONFIG", DEFAULT_CONFIG)),
            help=f"agent YAML file (default: $EDGE_AGENT_CONFIG or ./{DEFAULT_CONFIG})",
        )
        return command

    run = add("run", "Run the agent until Ctrl-C or SIGTERM.")
    run.add_argument("--log-level", default="info",
                     choices=["debug", "info", "warning", "error"])
    add("check-config", "Validate a configuration file and summarise it.")
    add("status", "Show the local buffer and the installed models (works while running).")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_agent_config(args.config)
    except ConfigError as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "run":
        return _run(config, args.log_level)
    if args.command == "check-config":
        return _check_config(config, args.config)
    return _status(config)


def _run(config: AgentConfig, log_level: str) -> int:
    logging.basicConfig(level=log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from edge_agent.app import Agent
    from edge_agent.kernel.gctune import tune_for_service

    tune_for_service()

    async def main_async() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await Agent(config).run(stop)

    try:
        asyncio.run(main_async())
    except KeyFileError as exc:
        print(f"edge-agent: security.central_public_key: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokerCredentialsError as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _check_config(config: AgentConfig, path: Path) -> int:
    try:
        verifier = config.security.verifier()
    except KeyFileError as exc:
        print(f"edge-agent: {path}: security.central_public_key: {exc}", file=sys.stderr)
        return EXIT_USAGE
    broker = config.broker
    try:
        broker.secret()
    except BrokerCredentialsError as exc:
        print(f"edge-agent: {path}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    login = f"user {broker.username}" if broker.username else "anonymous"
    link = "TLS" + (" with client certificate" if broker.cert_file else "") if broker.tls else (
        "plain")
    print(f"{path}: OK")
    print(f"  device:    {config.device_id}")
    print(f"  broker:    {broker.host}:{broker.port} (MQTT {broker.protocol}, {link}, {login}, "
          f"prefix {broker.topic_prefix})")
    print(f"  data dir:  {config.data_dir}")
    for part in [*config.sources, *config.pipelines]:
        print(f"  {part.summary()}")
    ui = f"http://{config.ui.host}:{config.ui.port}/" if config.ui.port else "off"
    print(f"  web page:  {ui}")
    trust = (f"signed by {verifier.description} only" if verifier
             else "UNSIGNED accepted (verify_signatures: false)")
    print(f"  models:    {trust}")
    return EXIT_OK


def _status(config: AgentConfig) -> int:
    from rich.console import Console
    from rich.table import Table

    from edge_agent.buffer import Buffer
    from edge_agent.model_store import ModelStore

    console = Console()
    if not config.buffer_path.exists():
        console.print(f"No buffer at {config.buffer_path} yet: the agent has not run here.")
        return EXIT_OK
    buffer = Buffer(config.buffer_path, config.buffer.policy())
    health = buffer.health_sync()
    buffer.close_sync()
    age = "-" if health.oldest_age_s is None else f"{health.oldest_age_s:.0f} s"
    console.print(f"[bold]{config.device_id}[/bold] buffer {config.buffer_path}: "
                  f"{health.depth} records waiting, oldest {age}, "
                  f"{health.bytes_used / 1e6:.2f} MB of {health.quota_bytes / 1e6:.0f} MB, "
                  f"{health.evicted} evicted")
    table = Table("model", "active version", "sha256", "installed versions")
    store = ModelStore(config.model_store_path)
    for installed in store.active_models():
        m = installed.manifest
        table.add_row(m.name, m.version, m.sha256[:12], ", ".join(store.versions(m.name)))
    console.print(table)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

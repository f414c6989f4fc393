"""`edge-agent` command line: run the agent, check a configuration, inspect local state."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

from edge_agent import __version__
from edge_agent.config import (
    AgentConfig,
    load_agent_config,
    remote_config_json_schema,
)
from edge_agent.kernel.configfile import ConfigError
from edge_agent.kernel.signing import KeyFileError
from edge_agent.kernel.transport import BrokerCredentialsError
from edge_agent.updates.layout import EXIT_RESTART

DEFAULT_CONFIG = "edge-agent.yaml"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2  # 2: the configuration or a file it names is wrong
# EXIT_RESTART (75): the agent asks to be started again (a restart from central, an
# update); systemd's Restart=on-failure and the launcher start it again.

_EPILOGS = {
    "main": """examples:
  edge-agent run -c /etc/edge-agent/edge-agent.yaml
  edge-agent check-config -c edge-agent.yaml
  edge-agent status -c edge-agent.yaml
""",
    "run": """Exits 0 when stopped, 75 when central asked for a restart of the agent
(`central-sync device restart ID`; systemd starts it again), 2 when the configuration
is wrong. Central reads the lines logged at --log-level and above.

examples:
  edge-agent run -c edge-agent.yaml
  EDGE_AGENT_CONFIG=/etc/edge-agent/edge-agent.yaml edge-agent run --log-level debug
""",
    "launch": """What systemd runs: the agent release that is current (an update central sent,
under <data_dir>/agent/current) or this install when there is none. A release on
trial that does not come up healthy is replaced by the previous one. --supervise
keeps the launcher as the parent: it restarts the agent when it exits 75.

examples:
  edge-agent launch -c /etc/edge-agent/edge-agent.yaml --supervise
  edge-agent launch -c edge-agent.yaml
""",
    "check-config": """examples:
  edge-agent check-config -c edge-agent.yaml
  edge-agent check-config -c deploy/edge-agent.example.yaml
""",
    "status": """examples:
  edge-agent status -c edge-agent.yaml
""",
    "config-schema": """What central may set on gateways (sources, pipelines,
monitoring_interval_s), as JSON Schema: check a configuration body before
`central-sync config publish`, or point an editor's YAML support at it. Everything else
stays in each gateway's own YAML file.

examples:
  edge-agent config-schema > gateway-config.schema.json
  edge-agent config-schema | python -m json.tool | less
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
    launch = add("launch", "Start the current agent release and go back to the previous "
                 "one if it is not healthy.")
    launch.add_argument("--supervise", action="store_true",
                        help="stay the parent: restart the agent on exit 75, judge its trial")
    launch.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"])
    add("check-config", "Validate a configuration file and summarise it.")
    add("status", "Show the local buffer and the installed models (works while running).")
    schema_help = "Print the JSON Schema of the configuration central may send."
    sub.add_parser("config-schema", help=schema_help, description=schema_help,
                   formatter_class=fmt, epilog=_EPILOGS["config-schema"])
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "config-schema":  # needs no configuration file
        print(json.dumps(remote_config_json_schema(), indent=2))
        return EXIT_OK
    try:
        config = load_agent_config(args.config)
    except ConfigError as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.command == "run":
        return _run(config, args.log_level)
    if args.command == "launch":
        from edge_agent.updates.launcher import launch

        return launch(args.config, config.data_dir, args.supervise, args.log_level)
    if args.command == "check-config":
        return _check_config(config, args.config)
    return _status(config)


def _run(config: AgentConfig, log_level: str) -> int:
    logging.basicConfig(level=log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from edge_agent.app import Agent
    from edge_agent.kernel.gctune import tune_for_service

    tune_for_service()

    async def main_async() -> tuple[str | None, int | None]:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        agent = Agent(config)
        await agent.run(stop)
        return agent.restart_reason, agent.restart_exit_code

    try:
        restart_reason, exit_code = asyncio.run(main_async())
    except KeyFileError as exc:
        print(f"edge-agent: security.central_public_key: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokerCredentialsError as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if restart_reason is not None:
        exit_code = exit_code or EXIT_RESTART  # 76 from an update's trial
        print(f"edge-agent: restarting ({restart_reason}): exit {exit_code}", file=sys.stderr)
        return exit_code
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
    console.print(_configuration_line(config))
    table = Table("model", "active version", "sha256", "installed versions")
    store = ModelStore(config.model_store_path)
    for installed in store.active_models():
        m = installed.manifest
        table.add_row(m.name, m.version, m.sha256[:12], ", ".join(store.versions(m.name)))
    console.print(table)
    return EXIT_OK


def _configuration_line(config: AgentConfig) -> str:
    """Where the sources and pipelines come from: central's last good document, or the file."""
    from edge_agent.fleet.config_files import last_good_document

    document = last_good_document(config.data_dir)
    if document is None:
        return "sources and pipelines: from this file (no configuration from central)"
    published = time.strftime("%Y-%m-%d %H:%M", time.localtime(document.published_at))
    by = f" by {document.published_by}" if document.published_by else ""
    return (f"sources and pipelines: {document.label} from central (published {published}{by}), "
            "in place of this file's")


if __name__ == "__main__":
    sys.exit(main())

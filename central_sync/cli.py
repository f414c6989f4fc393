"""The `central-sync` command line: a thin layer over the service, registry and database API."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import logging
import os
import re
import secrets
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from central_sync import __version__
from central_sync.config import CentralConfig, load_central_config
from central_sync.present import models_text, seconds_ago
from edge_agent.kernel.atomic_files import write_atomically
from edge_agent.kernel.configfile import ConfigError
from edge_agent.kernel.contract import (
    DEFAULT_TOPIC_PREFIX,
    ID_PATTERN,
    SEMVER_PATTERN,
    DeploymentEvent,
    ModelManifest,
    Topics,
    contract_markdown,
    topic_table_markdown,
)
from edge_agent.kernel.signing import KeyFileError
from edge_agent.kernel.transport import BrokerCredentialsError

if TYPE_CHECKING:
    from central_sync.db import CentralDB
    from central_sync.service import CentralService

log = logging.getLogger(__name__)

CONFIG_ENV = "CENTRAL_SYNC_CONFIG"
DEFAULT_CONFIG = "central-sync.yaml"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad input from the user; the message says what to do instead."""


def _console() -> Console:
    console = Console()
    if not console.is_terminal:
        console.width = 200
    return console


def _load(args: argparse.Namespace) -> CentralConfig:
    return load_central_config(args.config)


@contextlib.contextmanager
def _database(config: CentralConfig) -> Iterator[CentralDB]:
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


# --- serve -------------------------------------------------------------------------------------


def _actor(db: CentralDB, args: argparse.Namespace, role: str) -> str:
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


def cmd_serve(args: argparse.Namespace) -> int:
    from central_sync.service import CentralService, ServiceStartError
    from edge_agent.kernel.gctune import tune_for_service
    from edge_agent.kernel.transport.mqtt import MqttTransport

    config = _load(args)
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


# --- model -------------------------------------------------------------------------------------


def cmd_model_publish(args: argparse.Namespace) -> int:
    from central_sync.registry import RegistryError, load_metadata, publish_model

    config = _load(args)
    signer = config.signer()
    started = time.time()
    with _database(config) as db:
        try:
            metadata = load_metadata(args.metadata) if args.metadata else {}
            given = {key: getattr(args, key) for key in
                     ("training_data", "code_revision", "author", "notes")
                     if getattr(args, key) is not None}
            if given:
                metadata["lineage"] = {**(metadata.get("lineage") or {}), **given}
            manifest = publish_model(
                db, config.artifact_dir, args.file, signer=signer, name=args.name,
                version=args.version, kind=args.kind, metadata=metadata,
                chunk_size_bytes=config.chunk_size_bytes,
                published_by=_actor(db, args, "engineer"))
        except RegistryError as exc:
            raise UsageError(str(exc)) from None
    what = "published" if manifest.published_at >= started else "already published, unchanged:"
    chunks = f"{manifest.chunk_count} chunk{'' if manifest.chunk_count == 1 else 's'}"
    console = _console()
    console.print(f"{what} [bold]{manifest.name} {manifest.version}[/] ({manifest.kind}) "
                  f"sha256 {manifest.sha256[:12]}..., {manifest.size_bytes:,} bytes in {chunks}, "
                  f"signed by key {manifest.key_id}",
                  highlight=False)
    for side, specs in (("input", manifest.inputs), ("output", manifest.outputs)):
        for spec in specs:
            console.print(f"  {side} {spec.name}: {spec.dtype} {spec.shape}", highlight=False)
    return EXIT_OK


def cmd_model_list(args: argparse.Namespace) -> int:
    config = _load(args)
    with _database(config) as db:
        models = db.list_models()
    table = Table(title=f"Models in {config.database_name}")
    for column in ("name", "version", "kind", "sha256", "size", "inputs", "outputs",
                   "published", "by"):
        table.add_column(column, no_wrap=column in ("name", "version", "sha256"))
    for item in models:
        m = item.manifest
        table.add_row(m.name, m.version, m.kind, m.sha256[:12], f"{m.size_bytes:,}",
                      ", ".join(s.name for s in m.inputs), ", ".join(s.name for s in m.outputs),
                      seconds_ago(m.published_at), item.published_by)
    console = _console()
    if not models:
        console.print("No models yet; publish one with `central-sync model publish FILE "
                      "--name N --version V`.")
    else:
        console.print(table)
    return EXIT_OK


def cmd_model_show(args: argparse.Namespace) -> int:
    name, version = parse_model_ref(args.model)
    config = _load(args)
    with _database(config) as db:
        manifest = _model_or_usage_error(db, name, version)
        published_by = next((m.published_by for m in db.list_models()
                             if m.manifest.ref == manifest.ref), "?")
    console = _console()
    table = Table(show_header=False, title=f"{name} {version}", title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value")
    table.add_row("kind", manifest.kind)
    table.add_row("sha256", manifest.sha256)
    table.add_row("size", f"{manifest.size_bytes:,} bytes in {manifest.chunk_count} chunks")
    table.add_row("signed by", f"key {manifest.key_id or '(unsigned)'}")
    published = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(manifest.published_at))
    table.add_row("published", f"{published} by {published_by}")
    for side, specs in (("input", manifest.inputs), ("output", manifest.outputs)):
        for spec in specs:
            table.add_row(side, f"{spec.name}: {spec.dtype} {spec.shape}")
    from central_sync.registry import flatten

    flat: dict[str, object] = {}
    flatten("", manifest.metadata, flat)
    for key, value in flat.items():
        text = str(value)
        table.add_row(key.lstrip("."), text if len(text) <= 120 else text[:117] + "...")
    console.print(table)
    return EXIT_OK


def cmd_model_diff(args: argparse.Namespace) -> int:
    from central_sync.registry import manifest_diff

    old_ref = parse_model_ref(args.old)
    new_ref = (parse_model_ref(args.new) if "@" in args.new else (old_ref[0], args.new))
    parse_model_ref(f"{new_ref[0]}@{new_ref[1]}")
    config = _load(args)
    with _database(config) as db:
        old = _model_or_usage_error(db, *old_ref)
        new = _model_or_usage_error(db, *new_ref)
    changes = manifest_diff(old, new)
    console = _console()
    if not changes:
        console.print("no differences")
        return EXIT_OK
    table = Table(title=f"{old.name} {old.version} → {new.name} {new.version}")
    for column in ("field", old.version, new.version):
        table.add_column(column)
    for key, before, after in changes:
        table.add_row(key, "-" if before is None else str(before),
                      "-" if after is None else str(after))
    console.print(table)
    return EXIT_OK


def _model_or_usage_error(db: CentralDB, name: str, version: str) -> ModelManifest:
    from central_sync.deployments import unknown_model_message

    manifest = db.get_model(name, version)
    if manifest is None:
        raise UsageError(unknown_model_message(name, version))
    return manifest


# --- deploy ------------------------------------------------------------------------------------


def parse_model_ref(text: str) -> tuple[str, str]:
    """'extruder-scrap@1.2.0' -> ('extruder-scrap', '1.2.0'), or a UsageError saying the form."""
    name, _, version = text.rpartition("@")
    if not name or not re.match(ID_PATTERN, name) or not re.match(SEMVER_PATTERN, version):
        raise UsageError(f"{text!r} is not NAME@VERSION, e.g. extruder-scrap@1.2.0; "
                         "see `central-sync model list`")
    return name, version


def cmd_deploy(args: argparse.Namespace) -> int:
    name, version = parse_model_ref(args.model)
    if not re.match(ID_PATTERN, args.device):
        raise UsageError(f"device id {args.device!r} is not valid: use letters, digits, . _ -")
    config = _load(args)
    from central_sync.deployments import unknown_model_message

    with _database(config) as db:
        # Checked before connecting to the broker, so a typo fails fast.
        if db.get_model(name, version) is None:
            raise UsageError(unknown_model_message(name, version))
        args.by = _actor(db, args, "engineer")
        return asyncio.run(_deploy(config, db, name, version, args))


async def _deploy(config: CentralConfig, db: CentralDB, name: str, version: str,
                  args: argparse.Namespace) -> int:
    from central_sync.deployments import TamperedManifest, deploy, deploy_and_wait
    from edge_agent.kernel.transport import NotConnected
    from edge_agent.kernel.transport.mqtt import MqttTransport

    console = _console()
    signer = config.signer()
    broker = config.broker.model_copy(update={"client_id": None})
    client_id = f"{config.central_id}-cli-{secrets.token_hex(4)}"
    transport = MqttTransport(broker, client_id=client_id, persistent_session=False)
    topics = Topics(broker.topic_prefix)
    await transport.start()
    try:
        if not await transport.wait_connected(args.connect_timeout):
            console.print(f"[red]cannot reach the MQTT broker at {broker.host}:{broker.port}"
                          f"[/] ({transport.last_error or 'no answer'}); is it running?")
            return EXIT_FAILED
        try:
            if args.wait is None:
                command = await deploy(db, transport, signer, name, version, args.device,
                                       args.by, topics)
                console.print(f"deploy {name} {version} sent to {args.device} "
                              f"(command {command.command_id}); add --wait 120 to follow it")
                return EXIT_OK
            command, final = await deploy_and_wait(
                db, transport, signer, name, version, args.device, args.by,
                timeout_s=args.wait, on_event=_event_printer(console), topics=topics)
        except NotConnected as exc:
            console.print(f"[red]deploy command not sent[/]: {exc}")
            return EXIT_FAILED
        except TamperedManifest as exc:
            console.print(f"[red]deploy refused[/]: {exc}")
            return EXIT_FAILED
    finally:
        await transport.stop()
    if final is None:
        console.print(f"[red]no final answer from {args.device} within {args.wait:g} s[/]; it may "
                      "be offline (the command waits at the broker); check `central-sync devices`")
        return EXIT_FAILED
    if final.step == "activated":
        console.print(f"[green]{name} {version} is active on {args.device}[/]")
        return EXIT_OK
    console.print(f"[red]deployment {final.step} on {args.device}[/]: {final.detail}")
    return EXIT_FAILED


def _event_printer(console: Console) -> Callable[[DeploymentEvent], None]:
    def show(event: DeploymentEvent) -> None:
        progress = "" if event.progress is None else f" {event.progress:.0%}"
        console.print(f"  {event.step}{progress} {event.detail}".rstrip(), highlight=False)

    return show


# --- keys --------------------------------------------------------------------------------------


def cmd_keys_init(args: argparse.Namespace) -> int:
    from edge_agent.kernel.signing import write_key_pair

    config = _load(args)
    private, public, signer = write_key_pair(config.signing_key_path, force=args.force)
    console = _console()
    console.print(f"signing key [bold]{signer.key_id}[/] written:", highlight=False)
    console.print(f"  private: {private}  (mode 600; keep it on central only)", highlight=False)
    console.print(f"  public:  {public}  (copy to every agent; name it in "
                  "security.central_public_key)", highlight=False)
    return EXIT_OK


def cmd_keys_show(args: argparse.Namespace) -> int:
    config = _load(args)
    signer, upcoming = config.signer(), config.next_signer()
    also = f", and the next key {upcoming.key_id}" if upcoming else ""
    print(f"central signing key {signer.key_id}{also} ({args.config}):", file=sys.stderr)
    print(config.trusted_public_pem(), end="")
    return EXIT_OK


def cmd_keys_next(args: argparse.Namespace) -> int:
    from edge_agent.kernel.signing import Signer

    config = _load(args)
    current = config.signer()
    path, existing = config.next_signing_key_path, config.next_signer()
    if existing is not None and not args.force:
        raise UsageError(f"{path} exists already (key {existing.key_id}); give agents "
                         "signing.pub, then `central-sync keys promote`")
    upcoming = Signer.generate()
    upcoming.save(path)
    public = config.signing_key_path.with_suffix(".pub")
    _write_public(public, config.trusted_public_pem())
    console = _console()
    console.print(f"next signing key [bold]{upcoming.key_id}[/] written to {path}; "
                  f"{current.key_id} still signs.", highlight=False)
    console.print(f"  {public} now holds both keys: give it to every agent (as its "
                  "security.central_public_key), then run `central-sync keys promote`.",
                  highlight=False)
    return EXIT_OK


def cmd_keys_promote(args: argparse.Namespace) -> int:
    config = _load(args)
    upcoming, current = config.next_signer(), config.signer()
    if upcoming is None:
        raise UsageError("there is no next key: `central-sync keys next` makes one")
    next_path = config.next_signing_key_path
    os.replace(next_path, config.signing_key_path)
    next_path.with_suffix(".pub").unlink(missing_ok=True)
    _write_public(config.signing_key_path.with_suffix(".pub"), upcoming.public_pem())
    with _database(config) as db:
        db.audit(_actor(db, args, "admin"), "keys.promote", upcoming.key_id,
                 f"replaces {current.key_id}")
    _console().print(f"key {upcoming.key_id} signs from now on (restart central-sync); "
                     f"{current.key_id} is gone. Agents that trust only the old key refuse "
                     "new manifests until they get signing.pub.", highlight=False)
    return EXIT_OK


def _write_public(path: Path, pem: str) -> None:
    write_atomically(path, pem)


# --- devices and contract ----------------------------------------------------------------------


def cmd_devices(args: argparse.Namespace) -> int:
    config = _load(args)
    with _database(config) as db:
        devices = db.list_devices()
    now = time.time()
    table = Table(title="Devices")
    for column in ("device", "labels", "state", "last seen", "active models", "records stored",
                   "evicted", "buffer depth", "oldest unsent", "uplink"):
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
        table.add_row(d.device_id, ", ".join(d.labels) or "-", f"[{colour}]{state}[/]",
                      seconds_ago(d.last_seen, now),
                      models_text(d.active_models), f"{d.records:,}", f"{d.evicted:,}", depth,
                      oldest, rate)
    console = _console()
    if not devices:
        console.print("No device has reported yet; is `central-sync serve` running?")
    else:
        console.print(table)
    return EXIT_OK


def cmd_contract(args: argparse.Namespace) -> int:
    try:
        Topics(args.prefix)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    print(contract_markdown(args.prefix) if args.markdown else topic_table_markdown(args.prefix))
    return EXIT_OK


# --- parser ------------------------------------------------------------------------------------


def _epilog(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def build_parser() -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-c", "--config", type=Path,
        default=Path(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG),
        help=f"central's YAML config (default: ${CONFIG_ENV} or ./{DEFAULT_CONFIG})")

    parser = argparse.ArgumentParser(
        prog="central-sync", formatter_class=formatter,
        description="Central service of edge MLOps: model registry, deployments and ingest "
                    "of gateway data over MQTT.",
        epilog=_epilog("central-sync serve -c central-sync.yaml",
                       "central-sync model publish scrap.onnx --name extruder-scrap "
                       "--version 1.0.0",
                       "central-sync deploy extruder-scrap@1.0.0 --device line1-gw1 --wait 120"))
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                        help="logging detail on stderr (default: info for serve, else warning)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve", parents=[common], formatter_class=formatter,
        help="run ingest, the artifact chunk server and the web page until stopped",
        description="Subscribe to every device's topics, store and acknowledge uplinks, serve "
                    "artifact chunks and the web page. Stops cleanly on SIGTERM or Ctrl-C.",
        epilog=_epilog("central-sync serve -c central-sync.yaml",
                       "CENTRAL_SYNC_CONFIG=/etc/central-sync.yaml central-sync serve"))
    serve.set_defaults(func=cmd_serve)

    model = commands.add_parser(
        "model", formatter_class=formatter, help="publish, list, show and compare model versions",
        description="The model registry: immutable, versioned ONNX artifacts.",
        epilog=_epilog("central-sync model publish scrap.onnx --name extruder-scrap "
                       "--version 1.0.0",
                       "central-sync model list"))
    model_commands = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    publish = model_commands.add_parser(
        "publish", parents=[common], formatter_class=formatter,
        help="validate an ONNX file with ONNX Runtime and publish it as name@version",
        description="Validate FILE with ONNX Runtime, store it by sha256 and record it. A "
                    "version is immutable: the same bytes again change nothing, other bytes "
                    "are refused. --name/--version/--kind win over the same keys in the "
                    "metadata file; without them the metadata's values are used.",
        epilog=_epilog(
            "central-sync model publish scrap_model.onnx --metadata scrap_model.json",
            "central-sync model publish defects.onnx --name surface-defects --version 1.4.0 "
            "--kind vision"))
    publish.add_argument("file", type=Path, help="the .onnx file")
    publish.add_argument("--name", help="model name (default: metadata's \"name\")")
    publish.add_argument("--version", help="semantic version, e.g. 1.4.0 "
                                           "(default: metadata's \"version\")")
    publish.add_argument("--kind", choices=["process", "vision"],
                         help="model kind (default: metadata's \"kind\", else process)")
    publish.add_argument("--metadata", type=Path,
                         help="JSON file copied into the manifest (features, golden, ...)")
    publish.add_argument("--by", default=_user(), help="who publishes, for the audit log")
    lineage = publish.add_argument_group(
        "lineage", "stored under metadata.lineage (wins over the metadata file's values)")
    lineage.add_argument("--training-data", help="reference of the training data set")
    lineage.add_argument("--code-revision", help="revision of the training code")
    lineage.add_argument("--author", help="who trained the model")
    lineage.add_argument("--notes", help="free notes for reviewers")
    publish.set_defaults(func=cmd_model_publish)
    show = model_commands.add_parser(
        "show", parents=[common], formatter_class=formatter,
        help="one version: hash, signature, specs, checks, lineage",
        description="Everything stored for one version: sha256, size, signing key, input and "
                    "output specs and every metadata field (golden input, latency budget, "
                    "probation and shadow settings, lineage, ...).",
        epilog=_epilog("central-sync model show extruder-scrap@1.0.0"))
    show.add_argument("model", metavar="NAME@VERSION", help="e.g. extruder-scrap@1.0.0")
    show.set_defaults(func=cmd_model_show)
    diff = model_commands.add_parser(
        "diff", parents=[common], formatter_class=formatter,
        help="what changed between two versions",
        description="Fields that differ between two versions, metadata included, field by "
                    "field.",
        epilog=_epilog("central-sync model diff extruder-scrap@1.0.0 1.1.0",
                       "central-sync model diff extruder-scrap@1.0.0 extruder-scrap-v2@1.0.0"))
    diff.add_argument("old", metavar="NAME@VERSION", help="the older version")
    diff.add_argument("new", metavar="VERSION|NAME@VERSION", help="the newer one")
    diff.set_defaults(func=cmd_model_diff)
    listing = model_commands.add_parser(
        "list", parents=[common], formatter_class=formatter, help="list published models",
        description="List every published model version.",
        epilog=_epilog("central-sync model list -c central-sync.yaml"))
    listing.set_defaults(func=cmd_model_list)

    deploy = commands.add_parser(
        "deploy", parents=[common], formatter_class=formatter,
        help="send a model version to a device over MQTT",
        description="Record a deployment and send the deploy command to the device (QoS 1; it "
                    "waits at the broker while the device is offline). The running `serve` "
                    "process serves the artifact's chunks. With --wait, show each step until "
                    "activated (exit 0) or failed / timed out (exit 1).",
        epilog=_epilog("central-sync deploy extruder-scrap@1.0.0 --device line1-gw1",
                       "central-sync deploy extruder-scrap@1.0.0 --device line1-gw1 --wait 120"))
    deploy.add_argument("model", metavar="NAME@VERSION", help="e.g. extruder-scrap@1.0.0")
    deploy.add_argument("--device", required=True, help="device id of the target gateway")
    deploy.add_argument("--wait", type=float, metavar="SECONDS",
                        help="follow the deployment for at most this long")
    deploy.add_argument("--connect-timeout", type=float, default=10.0, metavar="SECONDS",
                        help="how long to try reaching the broker (default: 10)")
    deploy.add_argument("--by", default=_user(), help="who deploys, for the audit log")
    deploy.set_defaults(func=cmd_deploy)

    from central_sync import rollout_cli

    rollout_cli.add_parser(commands, common, formatter)

    from central_sync import users_cli

    users_cli.add_parser(commands, common, formatter)

    from central_sync import device_cli

    device_cli.add_parser(commands, common, formatter)

    keys = commands.add_parser(
        "keys", formatter_class=formatter, help="create or show central's signing key",
        description="The Ed25519 key pair that signs every manifest and command. Agents hold "
                    "its public half and refuse anything it did not sign.",
        epilog=_epilog("central-sync keys init -c central-sync.yaml",
                       "central-sync keys show -c central-sync.yaml > central-signing.pub"))
    key_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    init = key_commands.add_parser(
        "init", parents=[common], formatter_class=formatter,
        help="create the key pair at signing_key_path (and its .pub beside it)",
        description="Create the private key (mode 600) at the configured signing_key_path "
                    "and the public key (.pub) beside it. Refuses to replace an existing key "
                    "unless --force: agents trust the old one until they get the new .pub.",
        epilog=_epilog("central-sync keys init -c central-sync.yaml",
                       "central-sync keys init -c central-sync.yaml --force   # rotate"))
    init.add_argument("--force", action="store_true", help="replace an existing key")
    init.set_defaults(func=cmd_keys_init)
    show = key_commands.add_parser(
        "show", parents=[common], formatter_class=formatter,
        help="print the public key (PEM) agents must trust",
        description="Print the public key and its id, to copy into agents' configuration.",
        epilog=_epilog("central-sync keys show -c central-sync.yaml > central-signing.pub"))
    show.set_defaults(func=cmd_keys_show)
    upcoming = key_commands.add_parser(
        "next", parents=[common], formatter_class=formatter,
        help="start a key change: a next key, trusted by agents before it signs",
        description="Create the next signing key beside the current one (which still signs) "
                    "and put both public keys in signing.pub. Give agents that signing.pub, "
                    "then `keys promote`: no agent refuses a manifest on the way.",
        epilog=_epilog("central-sync keys next -c central-sync.yaml",
                       "central-sync keys show -c central-sync.yaml > central-signing.pub"))
    upcoming.add_argument("--force", action="store_true", help="replace a next key")
    upcoming.set_defaults(func=cmd_keys_next)
    promote = key_commands.add_parser(
        "promote", parents=[common], formatter_class=formatter,
        help="finish a key change: the next key signs, the old one is deleted",
        description="Make the next key (from `keys next`) the signing key; manifests signed "
                    "by the old key are re-signed when they are deployed.",
        epilog=_epilog("central-sync keys promote -c central-sync.yaml"))
    promote.add_argument("--by", default=_user(), help="who does it, for the audit log")
    promote.set_defaults(func=cmd_keys_promote)

    devices = commands.add_parser(
        "devices", parents=[common], formatter_class=formatter,
        help="show the fleet: state, last seen, active models, records, buffer depth",
        description="Show every device central has heard from.",
        epilog=_epilog("central-sync devices -c central-sync.yaml"))
    devices.set_defaults(func=cmd_devices)

    contract = commands.add_parser(
        "contract", formatter_class=formatter, help="print the MQTT topic table (and schemas)",
        description="Print the MQTT contract: the topic table, and with --markdown also the "
                    "JSON Schema of every message.",
        epilog=_epilog("central-sync contract", "central-sync contract --markdown > CONTRACT.md",
                       "central-sync contract --prefix plant7"))
    contract.add_argument("--markdown", action="store_true",
                          help="the full contract as Markdown, JSON Schemas included")
    contract.add_argument("--prefix", default=DEFAULT_TOPIC_PREFIX,
                          help=f"topic prefix (default: {DEFAULT_TOPIC_PREFIX})")
    contract.set_defaults(func=cmd_contract)
    return parser


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "cli"


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


if __name__ == "__main__":
    sys.exit(main())

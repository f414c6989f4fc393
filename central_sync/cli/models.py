"""`central-sync model` (publish, list, show, diff) and `central-sync deploy`: the model
registry and sending one version to one device."""

from __future__ import annotations

import argparse
import asyncio
import re
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from central_sync.cli.common import (
    EXIT_FAILED,
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
    parse_model_ref,
    seconds_ago,
)
from central_sync.cli.evaluations import add_evaluate_command
from central_sync.cli.model_review import add_review_commands
from edge_agent.kernel.contract import ID_PATTERN, DeploymentEvent, ModelManifest, Topics

if TYPE_CHECKING:
    from central_sync.config import CentralConfig
    from central_sync.db import CentralDB


def cmd_model_publish(args: argparse.Namespace) -> int:
    from central_sync.registry import RegistryError, load_metadata, publish_model

    config = load_config(args)
    signer = config.signer()
    started = time.time()
    console = make_console()
    with open_database(config) as db:
        by = acting_user(db, args, "engineer")
        try:
            metadata = load_metadata(args.metadata) if args.metadata else {}
            given = {key: getattr(args, key) for key in
                     ("training_data", "code_revision", "author", "notes")
                     if getattr(args, key) is not None}
            given.update(_dataset_lineage(db, args.dataset))
            if given:
                metadata["lineage"] = {**(metadata.get("lineage") or {}), **given}
            manifest = publish_model(
                db, config.artifact_dir, args.file, signer=signer, name=args.name,
                version=args.version, kind=args.kind, metadata=metadata,
                chunk_size_bytes=config.chunk_size_bytes, published_by=by)
        except RegistryError as exc:
            raise UsageError(str(exc)) from None
        _print_published(console, manifest, manifest.published_at >= started)
        if args.dataset and manifest.published_at >= started:
            from central_sync.cli.evaluations import print_report, run_evaluation

            print_report(console, run_evaluation(db, config, manifest.name, manifest.version,
                                                 args.dataset, by))
            console.print(f"{manifest.name}@{manifest.version} is evaluated: another engineer "
                          "or admin approves it with `central-sync model approve "
                          f"{manifest.name}@{manifest.version}` or on its model page",
                          highlight=False)
    return EXIT_OK


def _print_published(console: Console, manifest: ModelManifest, new: bool) -> None:
    what = "published" if new else "already published, unchanged:"
    chunks = f"{manifest.chunk_count} chunk{'' if manifest.chunk_count == 1 else 's'}"
    console.print(f"{what} [bold]{manifest.name} {manifest.version}[/] ({manifest.kind}) "
                  f"sha256 {manifest.sha256[:12]}..., {manifest.size_bytes:,} bytes in {chunks}, "
                  f"signed by key {manifest.key_id}",
                  highlight=False)
    for side, specs in (("input", manifest.inputs), ("output", manifest.outputs)):
        for spec in specs:
            console.print(f"  {side} {spec.name}: {spec.dtype} {spec.shape}", highlight=False)


def _dataset_lineage(db: CentralDB, ref: str | None) -> dict[str, str]:
    """metadata.lineage's dataset and dataset_id for --dataset NAME@N (none without it)."""
    if ref is None:
        return {}
    from central_sync.datasets import DatasetError

    try:
        return db.require_dataset(ref).lineage
    except DatasetError as exc:
        raise UsageError(str(exc)) from None


def cmd_model_list(args: argparse.Namespace) -> int:
    from central_sync.cli.model_review import state_text

    config = load_config(args)
    with open_database(config) as db:
        models = db.list_models()
        states = db.model_states()
    table = Table(title=f"Models in {config.database_name}")
    for column in ("name", "version", "kind", "state", "sha256", "size", "inputs", "outputs",
                   "published", "by"):
        table.add_column(column, no_wrap=column in ("name", "version", "sha256"))
    for item in models:
        m = item.manifest
        table.add_row(m.name, m.version, m.kind, state_text(states.get((m.name, m.version))),
                      m.sha256[:12], f"{m.size_bytes:,}",
                      ", ".join(s.name for s in m.inputs), ", ".join(s.name for s in m.outputs),
                      seconds_ago(m.published_at), item.published_by)
    console = make_console()
    if not models:
        console.print("No models yet; publish one with `central-sync model publish FILE "
                      "--name N --version V`.")
    else:
        console.print(table)
    return EXIT_OK


def cmd_model_show(args: argparse.Namespace) -> int:
    from central_sync.cli.model_review import review_rows

    name, version = parse_model_ref(args.model)
    config = load_config(args)
    with open_database(config) as db:
        manifest = _model_or_usage_error(db, name, version)
        published_by = next((m.published_by for m in db.list_models()
                             if m.manifest.ref == manifest.ref), "?")
        review = review_rows(db, name, version)
    console = make_console()
    table = Table(show_header=False, title=f"{name} {version}", title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value")
    table.add_row("kind", manifest.kind)
    table.add_row("sha256", manifest.sha256)
    table.add_row("size", f"{manifest.size_bytes:,} bytes in {manifest.chunk_count} chunks")
    table.add_row("signed by", f"key {manifest.key_id or '(unsigned)'}")
    published = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(manifest.published_at))
    table.add_row("published", f"{published} by {published_by}")
    for field, value in review:
        table.add_row(field, value)
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
    config = load_config(args)
    with open_database(config) as db:
        old = _model_or_usage_error(db, *old_ref)
        new = _model_or_usage_error(db, *new_ref)
    changes = manifest_diff(old, new)
    console = make_console()
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


def cmd_deploy(args: argparse.Namespace) -> int:
    name, version = parse_model_ref(args.model)
    if not re.fullmatch(ID_PATTERN, args.device):
        raise UsageError(f"device id {args.device!r} is not valid: use letters, digits, . _ -")
    config = load_config(args)
    from central_sync.db import NotApproved
    from central_sync.deployments import unknown_model_message

    with open_database(config) as db:
        # Checked before connecting to the broker, so a typo or an unapproved version fails
        # fast; deploy() checks the approval again when it issues the command.
        if db.get_model(name, version) is None:
            raise UsageError(unknown_model_message(name, version))
        try:
            db.require_deployable(name, version, config.models.require_approval)
        except NotApproved as exc:
            make_console().print(f"[red]deploy refused[/]: {exc}", highlight=False)
            return EXIT_FAILED
        args.by = acting_user(db, args, "engineer")
        return asyncio.run(_deploy(config, db, name, version, args))


async def _deploy(config: CentralConfig, db: CentralDB, name: str, version: str,
                  args: argparse.Namespace) -> int:
    from central_sync.db import NotApproved
    from central_sync.deployments import TamperedManifest, deploy, deploy_and_wait
    from edge_agent.kernel.transport import NotConnected
    from edge_agent.kernel.transport.mqtt import MqttTransport

    console = make_console()
    signer = config.signer()
    approval_required = config.models.require_approval
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
                                       args.by, topics, approval_required=approval_required)
                console.print(f"deploy {name} {version} sent to {args.device} "
                              f"(command {command.command_id}); add --wait 120 to follow it")
                return EXIT_OK
            command, final = await deploy_and_wait(
                db, transport, signer, name, version, args.device, args.by,
                timeout_s=args.wait, on_event=_event_printer(console), topics=topics,
                approval_required=approval_required)
        except NotConnected as exc:
            console.print(f"[red]deploy command not sent[/]: {exc}")
            return EXIT_FAILED
        except (TamperedManifest, NotApproved) as exc:
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


def add_commands(commands: Subcommands) -> None:
    actions = add_group(
        commands, "model", help="publish, evaluate, approve, list, show and compare model "
                                "versions",
        description="The model registry: immutable, versioned ONNX artifacts. A version is "
                    "published, evaluated, approved by a second account, and only then "
                    "deployed (central's models.require_approval), or rejected or retired.",
        examples=["central-sync model publish scrap.onnx --name extruder-scrap --version 1.0.0",
                  "central-sync model approve extruder-scrap@1.0.0",
                  "central-sync model list"],
        dest="model_command")
    _add_publish(actions)
    show = add_command(
        actions, "show", help="one version: hash, signature, specs, checks, lineage",
        description="Everything stored for one version: sha256, size, signing key, input and "
                    "output specs and every metadata field (golden input, latency budget, "
                    "probation and shadow settings, lineage, ...).",
        examples=["central-sync model show extruder-scrap@1.0.0"])
    show.add_argument("model", metavar="NAME@VERSION", help="e.g. extruder-scrap@1.0.0")
    show.set_defaults(func=cmd_model_show)
    diff = add_command(
        actions, "diff", help="what changed between two versions",
        description="Fields that differ between two versions, metadata included, field by "
                    "field.",
        examples=["central-sync model diff extruder-scrap@1.0.0 1.1.0",
                  "central-sync model diff extruder-scrap@1.0.0 extruder-scrap-v2@1.0.0"])
    diff.add_argument("old", metavar="NAME@VERSION", help="the older version")
    diff.add_argument("new", metavar="VERSION|NAME@VERSION", help="the newer one")
    diff.set_defaults(func=cmd_model_diff)
    listing = add_command(
        actions, "list", help="list published models",
        description="List every published model version.",
        examples=["central-sync model list -c central-sync.yaml"])
    listing.set_defaults(func=cmd_model_list)
    add_evaluate_command(actions)
    add_review_commands(actions)
    _add_deploy(commands)


def _add_publish(actions: Subcommands) -> None:
    publish = add_command(
        actions, "publish",
        help="validate an ONNX file with ONNX Runtime and publish it as name@version",
        description="Validate FILE with ONNX Runtime, store it by sha256 and record it. A "
                    "version is immutable: the same bytes again change nothing, other bytes "
                    "are refused. --name/--version/--kind win over the same keys in the "
                    "metadata file; without them the metadata's values are used.",
        examples=["central-sync model publish scrap_model.onnx --metadata scrap_model.json",
                  "central-sync model publish defects.onnx --name surface-defects --version "
                  "1.4.0 --kind vision"])
    publish.add_argument("file", type=Path, help="the .onnx file")
    publish.add_argument("--name", help="model name (default: metadata's \"name\")")
    publish.add_argument("--version", help="semantic version, e.g. 1.4.0 "
                                           "(default: metadata's \"version\")")
    publish.add_argument("--kind", choices=["process", "vision"],
                         help="model kind (default: metadata's \"kind\", else process)")
    publish.add_argument("--metadata", type=Path,
                         help="JSON file copied into the manifest (features, golden, ...)")
    add_by_option(publish, "who publishes")
    lineage = publish.add_argument_group(
        "lineage", "stored under metadata.lineage (wins over the metadata file's values)")
    lineage.add_argument("--training-data", help="reference of the training data set")
    lineage.add_argument("--code-revision", help="revision of the training code")
    lineage.add_argument("--author", help="who trained the model")
    lineage.add_argument("--notes", help="free notes for reviewers")
    lineage.add_argument("--dataset", metavar="NAME@N",
                         help="the dataset version it was trained on (recorded with its id); "
                              "the new version is then evaluated on its test split beside the "
                              "version serving now")
    publish.set_defaults(func=cmd_model_publish)


def _add_deploy(commands: Subcommands) -> None:
    deploy = add_command(
        commands, "deploy", help="send a model version to a device over MQTT",
        description="Record a deployment and send the deploy command to the device (QoS 1; it "
                    "waits at the broker while the device is offline). The running `serve` "
                    "process serves the artifact's chunks. With --wait, show each step until "
                    "activated (exit 0) or failed / timed out (exit 1).",
        examples=["central-sync deploy extruder-scrap@1.0.0 --device line1-gw1",
                  "central-sync deploy extruder-scrap@1.0.0 --device line1-gw1 --wait 120"])
    deploy.add_argument("model", metavar="NAME@VERSION", help="e.g. extruder-scrap@1.0.0")
    deploy.add_argument("--device", required=True, help="device id of the target gateway")
    deploy.add_argument("--wait", type=float, metavar="SECONDS",
                        help="follow the deployment for at most this long")
    deploy.add_argument("--connect-timeout", type=float, default=10.0, metavar="SECONDS",
                        help="how long to try reaching the broker (default: 10)")
    add_by_option(deploy, "who deploys")
    deploy.set_defaults(func=cmd_deploy)

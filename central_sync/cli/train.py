"""`central-sync train`: retrain a vision classifier's head on a frozen dataset version and
write an ONNX file with metadata ready to publish (or publish it at once with --publish)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

from central_sync.cli.common import (
    EXIT_OK,
    Subcommands,
    UsageError,
    acting_user,
    add_by_option,
    add_command,
    load_config,
    make_console,
    open_database,
)
from edge_agent.kernel.contract import ID_PATTERN


def cmd_train(args: argparse.Namespace) -> int:
    from central_sync.training import TrainingError
    from central_sync.training.sources import train_on_dataset

    if not re.fullmatch(ID_PATTERN, args.model):
        raise UsageError(f"model name {args.model!r} is not valid: use letters, digits, . _ -")
    labels = _labels(args.labels)
    config = load_config(args)
    console = make_console()
    with open_database(config) as db:
        # Publishing needs an engineer's login; asked before the work, not after it.
        author = acting_user(db, args, "engineer") if args.publish else args.by
        with Progress("embedding", BarColumn(), MofNCompleteColumn(), "images",
                      TimeElapsedColumn(), console=console, transient=True) as bar:
            task = bar.add_task("embedding", total=None)

            def progress(done: int, total: int) -> None:
                if done == 0:  # also for logs and pipes, where the bar is not drawn
                    console.print(f"embedding {total} images of {args.dataset}",
                                  highlight=False)
                bar.update(task, completed=done, total=total)

            try:
                trained = train_on_dataset(
                    db, config.artifact_dir, args.model, args.dataset, base_ref=args.base,
                    version=args.version, labels=labels, by=author, progress=progress)
            except TrainingError as exc:
                raise UsageError(str(exc)) from None
        model_path, metadata_path = trained.write(args.out)
        lineage = trained.metadata["lineage"]
        console.print(
            f"trained [bold]{trained.name} {trained.version}[/] from {lineage['base_model']} "
            f"on {lineage['dataset']}: {trained.rows} training items, {trained.holdout_rows} "
            f"held out; classes {', '.join(trained.labels)}", highlight=False)
        console.print("  " + _metrics_text(trained.metrics), highlight=False)
        console.print(f"  wrote {model_path} and {metadata_path}", highlight=False,
                      soft_wrap=True)
        if not args.publish:
            console.print(f"publish it with: central-sync model publish {model_path} "
                          f"--metadata {metadata_path} --dataset {lineage['dataset']}",
                          highlight=False, soft_wrap=True)
            return EXIT_OK
        return _publish(config, db, model_path, metadata_path, lineage["dataset"], author,
                        console)


def _publish(config, db, model_path: Path, metadata_path: Path, dataset: str, by: str,
             console) -> int:
    from central_sync.registry import RegistryError, publish_model

    try:
        manifest = publish_model(db, config.artifact_dir, model_path, signer=config.signer(),
                                 metadata=metadata_path, published_by=by,
                                 chunk_size_bytes=config.chunk_size_bytes)
    except RegistryError as exc:
        raise UsageError(f"{exc} (the files stay in {model_path.parent})") from None
    console.print(f"published [bold]{manifest.name} {manifest.version}[/] sha256 "
                  f"{manifest.sha256[:12]}...", highlight=False)
    # As `model publish --dataset`: evaluated at once beside the version serving now, on the
    # dataset's test split, which training held out.
    from central_sync.cli.evaluations import print_report, run_evaluation

    print_report(console, run_evaluation(db, config, manifest.name, manifest.version, dataset,
                                         by))
    ref = f"{manifest.name}@{manifest.version}"
    console.print(f"{ref} is evaluated: another engineer or admin approves it with "
                  f"`central-sync model approve {ref}` or on its model page", highlight=False)
    return EXIT_OK


def _metrics_text(metrics: dict[str, float]) -> str:
    names = {"train_accuracy": "training accuracy", "holdout_accuracy": "hold-out accuracy",
             "base_holdout_accuracy": "base model's hold-out accuracy"}
    return ", ".join(f"{names.get(key, key)} {value:.1%}" for key, value in metrics.items()) \
        or "no metrics"


def _labels(text: str | None) -> list[str] | None:
    if text is None:
        return None
    labels = [label.strip() for label in text.split(",")]
    bad = [label for label in labels if not re.fullmatch(ID_PATTERN, label)]
    if bad or not labels:
        raise UsageError(f"--labels {text!r}: give class names separated by commas, e.g. "
                         "ok,scratch,pit,stain (letters, digits, . _ -)")
    return labels


def add_commands(commands: Subcommands) -> None:
    train = add_command(
        commands, "train",
        help="retrain a vision classifier's head on a dataset version",
        description="Retrain the final layer of a published vision classifier on a frozen "
                    "dataset version: its items of the train and val splits are embedded "
                    "through the base version's frozen layers (with the gateway's own "
                    "preprocessing), a logistic regression is fitted on them, and the test "
                    "split is held out to score the new and the base version. Writes "
                    "NAME-VERSION.onnx and NAME-VERSION.json (labels, golden check, lineage "
                    "with the dataset's id, training summary, hold-out metrics) ready for "
                    "`central-sync model publish`. The same dataset gives the same weights.",
        examples=["central-sync train surface-defects --dataset surface-labels@3",
                  "central-sync train surface-defects --dataset surface-labels@3 --version "
                  "1.2.0 --out trained/ --publish",
                  "central-sync train surface-defects --dataset surface-labels@4 --base "
                  "surface-defects@1.0.0 --labels ok,scratch,pit,stain,dent"])
    train.add_argument("model", metavar="NAME", help="the model to retrain, e.g. surface-defects")
    train.add_argument("--dataset", required=True, metavar="NAME@N",
                       help="the dataset version to train on, e.g. surface-labels@3")
    train.add_argument("--base", metavar="NAME@VERSION",
                       help="the version whose layers are kept (default: the version serving "
                            "on most gateways, else the newest published, else the shipped "
                            "sample model)")
    train.add_argument("--version", help="the new version (default: the newest published "
                                         "one's next minor, e.g. 1.3.0 -> 1.4.0)")
    train.add_argument("--labels", metavar="A,B,...",
                       help="the new model's classes in output order (default: the base's). "
                            "Needed to add a class the base lacks, or to drop one the dataset "
                            "has no items of")
    train.add_argument("--out", type=Path, default=Path("."),
                       help="folder for the .onnx and .json files (default: here)")
    train.add_argument("--publish", action="store_true",
                       help="publish the new version at once and evaluate it on the dataset's "
                            "test split beside the version serving now, as `model publish "
                            "--dataset` does (needs an engineer's login)")
    add_by_option(train, "who trains (the lineage's author)")
    train.set_defaults(func=cmd_train)

"""`central-sync dataset` (create, list, show, diff, export): reviewed defects and samples
frozen as immutable dataset versions, compared, and written out for training tools."""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
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
    open_database,
    seconds_ago,
)

if TYPE_CHECKING:
    from central_sync.datasets import DatasetSelection, DatasetVersion
    from central_sync.db import CentralDB

SHOWN = 20  # items listed per kind of change by `dataset diff`


def cmd_dataset_create(args: argparse.Namespace) -> int:
    from central_sync.datasets import MAX_ITEMS, DatasetError, create_dataset

    selection = _selection(args)
    max_items = MAX_ITEMS if args.max_items is None else args.max_items
    if max_items < 1:
        raise UsageError("--max-items must be at least 1")
    config = load_config(args)
    console = make_console()
    with open_database(config) as db:
        by = acting_user(db, args, "quality")
        with _progress(console, "freezing") as progress:
            try:
                dataset = create_dataset(db, args.name, selection, by,
                                         max_items=max_items, progress=progress)
            except DatasetError as exc:
                raise UsageError(str(exc)) from None
    manifest = dataset.manifest
    console.print(f"created [bold]{dataset.ref}[/] (id {dataset.dataset_id[:12]}, "
                  f"{manifest.kind}): {len(manifest.items):,} items, classes "
                  f"{', '.join(manifest.labels)}", highlight=False)
    console.print(_counts_table(dataset))
    return EXIT_OK


def cmd_dataset_list(args: argparse.Namespace) -> int:
    config = load_config(args)
    with open_database(config) as db:
        versions = db.list_datasets(args.name)
    console = make_console()
    if not versions:
        console.print("No datasets yet; freeze the labelled review data with `central-sync "
                      "dataset create NAME --from-review`.")
        return EXIT_OK
    table = Table(title=f"Datasets in {config.database_name}")
    for column in ("dataset", "id", "kind", "items", "classes", "created by", "created"):
        table.add_column(column, no_wrap=column in ("dataset", "id"),
                         justify="right" if column == "items" else "left")
    for summary in versions:
        table.add_row(summary.ref, summary.dataset_id[:12], summary.kind, f"{summary.items:,}",
                      ", ".join(summary.labels), summary.created_by,
                      seconds_ago(summary.created_at))
    console.print(table)
    return EXIT_OK


def cmd_dataset_show(args: argparse.Namespace) -> int:
    config = load_config(args)
    with open_database(config) as db:
        dataset = _dataset_or_usage_error(db, args.dataset)
    manifest = dataset.manifest
    console = make_console()
    table = Table(show_header=False, title=dataset.ref, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value")
    table.add_row("id", dataset.dataset_id)
    table.add_row("kind", manifest.kind)
    table.add_row("items", f"{len(manifest.items):,}")
    table.add_row("classes", ", ".join(manifest.labels))
    created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(dataset.created_at))
    table.add_row("created", f"{created} by {dataset.created_by}")
    selection = manifest.selection
    table.add_row("selection", ", ".join(f"{key}={_shown(key, value)}"
                                         for key, value in selection.items()) or
                  "everything labelled")
    table.add_row("split rule", manifest.split_rule)
    console.print(table)
    console.print(_counts_table(dataset))
    return EXIT_OK


def cmd_dataset_diff(args: argparse.Namespace) -> int:
    from central_sync.datasets import diff_manifests

    config = load_config(args)
    with open_database(config) as db:
        old = _dataset_or_usage_error(db, args.old)
        new_ref = args.new if "@" in args.new else f"{old.name}@{args.new}"
        new = _dataset_or_usage_error(db, new_ref)
    diff = diff_manifests(old.manifest, new.manifest)
    console = make_console()
    console.print(f"{old.ref} → {new.ref}: {len(diff.added):,} added, {len(diff.removed):,} "
                  f"removed, {len(diff.relabelled):,} relabelled, {len(diff.changed):,} with "
                  "another image, region or boxes", highlight=False)
    if diff.empty and old.dataset_id == new.dataset_id:
        console.print("same id: the two versions hold the same data")
        return EXIT_OK
    table = Table(title="items")
    for column in ("change", "source", "origin", "split", old.ref, new.ref):
        table.add_column(column)
    for change, pairs in (("added", [(None, i) for i in diff.added]),
                          ("removed", [(i, None) for i in diff.removed]),
                          ("relabelled", list(diff.relabelled)),
                          ("changed", list(diff.changed))):
        for before, after in pairs[:SHOWN]:
            item = after or before
            assert item is not None
            table.add_row(change, item.source, item.origin, item.split,
                          before.label if before else "-", after.label if after else "-")
        if len(pairs) > SHOWN:
            table.add_row(change, f"... {len(pairs) - SHOWN:,} more", "", "", "", "")
    if table.row_count:
        console.print(table)
    counts = Table(title="counts that changed")
    for column in ("split", "class", old.ref, new.ref, "change"):
        counts.add_column(column, justify="left" if column in ("split", "class") else "right")
    for split, moved in diff.counts.items():
        for label, (was, now) in moved.items():
            counts.add_row(split, label, str(was), str(now), f"{now - was:+d}")
    if counts.row_count:
        console.print(counts)
    return EXIT_OK


def cmd_dataset_export(args: argparse.Namespace) -> int:
    from central_sync.datasets import DatasetError, export_dataset

    config = load_config(args)
    console = make_console()
    with open_database(config) as db:
        dataset = _dataset_or_usage_error(db, args.dataset)
        with _progress(console, "exporting") as progress:
            try:
                result = export_dataset(db, dataset, args.layout, args.out, progress)
            except DatasetError as exc:
                raise UsageError(str(exc)) from None
    console.print(f"exported {dataset.ref} ({args.layout}) to {args.out}: {result.written:,} "
                  f"images written, {result.present:,} already there", highlight=False)
    for reason, n in sorted(result.left_out.items()):
        console.print(f"[yellow]{n:,} items left out[/]: {reason}", highlight=False)
    return EXIT_OK


def _dataset_or_usage_error(db: CentralDB, ref: str) -> DatasetVersion:
    from central_sync.datasets import DatasetError

    try:
        return db.require_dataset(ref)
    except DatasetError as exc:
        raise UsageError(str(exc)) from None


def _counts_table(dataset: DatasetVersion) -> Table:
    from central_sync.datasets import SPLITS

    counts = dataset.manifest.counts
    title = f"{dataset.ref}: items per class and split"
    table = Table(title=title, title_justify="left", min_width=len(title))
    for column in ("class", *SPLITS, "total"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for label in dataset.manifest.labels:
        row = [counts.get(split, {}).get(label, 0) for split in SPLITS]
        table.add_row(label, *(f"{n:,}" for n in row), f"{sum(row):,}")
    totals = [sum(counts.get(split, {}).values()) for split in SPLITS]
    table.add_row("[bold]all[/]", *(f"{n:,}" for n in totals), f"{sum(totals):,}")
    return table


@contextlib.contextmanager
def _progress(console: object, what: str) -> Iterator[Callable[[int, int], None]]:
    """A progress bar on a terminal (nothing when piped), as a (done, total) callback."""
    with Progress(TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True,  # type: ignore[arg-type]
                  disable=not console.is_terminal) as bar:  # type: ignore[attr-defined]
        task = bar.add_task(what, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _selection(args: argparse.Namespace) -> DatasetSelection:
    from central_sync.datasets import DatasetSelection

    model_name, model_version = args.model, args.model_version
    if model_name and "@" in model_name:
        model_name, _, model_version = model_name.partition("@")
    since, until = _moment(args.since, "--since"), _moment(args.until, "--until", end=True)
    if since is not None and until is not None and until <= since:
        raise UsageError("--until must come after --since")
    return DatasetSelection(
        device_id=args.device, camera=args.camera, pipeline=args.pipeline,
        model_name=model_name or None, model_version=model_version or None,
        labelled_since=since, labelled_until=until,
        origin={"defects": "defect", "samples": "sample"}.get(args.origin or ""))


def _moment(text: str | None, option: str, end: bool = False) -> float | None:
    """A date (its start, or with `end` its end) or a date and time, local time."""
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"{option} {text!r} is not a date like 2026-03-31 or a time like "
                         "2026-03-31T14:00") from None
    if end and len(text) == len("2026-03-31"):
        moment += timedelta(days=1)  # --until 2026-03-31 takes that whole day
    return moment.timestamp()


def _shown(key: str, value: object) -> str:
    if key in ("labelled_since", "labelled_until") and isinstance(value, int | float):
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))
    return str(value)


def add_commands(commands: Subcommands) -> None:
    actions = add_group(
        commands, "dataset", help="freeze labelled defects and samples as dataset versions",
        description="Dataset versions: the labelled review data (defects and samples) frozen "
                    "as immutable, content-addressed versions NAME@1, NAME@2, ..., with copies "
                    "of their images; compared and exported for training.",
        examples=["central-sync dataset create surface-labels --from-review",
                  "central-sync dataset list",
                  "central-sync dataset export surface-labels@3 --layout imagefolder "
                  "--out data/"],
        dest="dataset_command")
    _add_create(actions)
    listing = add_command(
        actions, "list", help="every dataset version: id, items, classes, author",
        description="Every dataset version (or those of one name), oldest first.",
        examples=["central-sync dataset list", "central-sync dataset list surface-labels"])
    listing.add_argument("name", nargs="?", help="only the versions of this dataset")
    listing.set_defaults(func=cmd_dataset_list)
    show = add_command(
        actions, "show", help="one version: id, selection, items per class and split",
        description="One dataset version: its id (sha256 of its manifest), selection, split "
                    "rule, and a table of items per class in train, val and test.",
        examples=["central-sync dataset show surface-labels@3"])
    show.add_argument("dataset", metavar="NAME@N", help="e.g. surface-labels@3")
    show.set_defaults(func=cmd_dataset_show)
    diff = add_command(
        actions, "diff", help="items added, removed and relabelled between two versions",
        description="What changed from one version to another: items added, removed, "
                    "relabelled or with another image or boxes (matched by their record), and "
                    "the counts per class and split that moved.",
        examples=["central-sync dataset diff surface-labels@2 surface-labels@3",
                  "central-sync dataset diff surface-labels@2 3"])
    diff.add_argument("old", metavar="NAME@N", help="the older version")
    diff.add_argument("new", metavar="N|NAME@N", help="the newer one")
    diff.set_defaults(func=cmd_dataset_diff)
    _add_export(actions)


def _add_create(actions: Subcommands) -> None:
    create = add_command(
        actions, "create", help="freeze the labelled review data as the next version of NAME",
        description="Freeze the labelled defects (confirmed: the model's class; relabelled: "
                    "the reviewer's; false alarm: ok) and labelled samples as the next "
                    "version of NAME, with a copy of each evidence image. Its id is the "
                    "sha256 of its manifest: the same labels give the same id, and a version "
                    "identical to the newest one is refused. Each image is in train, val or "
                    "test by its hash, so it stays in its split in every version. Needs the "
                    "quality role once central has accounts.",
        examples=["central-sync dataset create surface-labels --from-review",
                  "central-sync dataset create surface-labels --from-review --pipeline "
                  "surface --model surface-defects --since 2026-01-01",
                  "central-sync dataset create line2-samples --from-review --origin samples "
                  "--device line2-gw1"])
    create.add_argument("name", help="the dataset's name, e.g. surface-labels")
    create.add_argument("--from-review", action="store_true", required=True,
                        help="take the labels given on central's review pages (required)")
    filters = create.add_argument_group("filters (all optional; without any, everything "
                                        "labelled)")
    filters.add_argument("--device", help="only records of this gateway")
    filters.add_argument("--camera", help="only records of this camera")
    filters.add_argument("--pipeline", help="only records of this pipeline")
    filters.add_argument("--model", metavar="NAME[@VERSION]",
                         help="only records judged by this model (and version)")
    filters.add_argument("--model-version", help="only records judged by this model version")
    filters.add_argument("--since", metavar="DATE",
                         help="only labels given from this date or time on (local time), "
                              "e.g. 2026-01-01 or 2026-01-01T08:00")
    filters.add_argument("--until", metavar="DATE",
                         help="only labels given before this time, or up to the end of this "
                              "date")
    filters.add_argument("--origin", choices=["defects", "samples"],
                         help="only labelled defects, or only labelled samples (default both)")
    create.add_argument("--max-items", type=int,
                        help="refuse a selection of more labelled records than this "
                             "(default: central's bound, 200,000)")
    add_by_option(create, "who freezes it")
    create.set_defaults(func=cmd_dataset_create)


def _add_export(actions: Subcommands) -> None:
    export = add_command(
        actions, "export", help="write a version out for training (ImageFolder or YOLO)",
        description="Write a dataset version into a folder, with manifest.json. imagefolder: "
                    "OUT/{train,val,test}/CLASS/*.jpg, each the region the model saw. yolo "
                    "(detection datasets): OUT/images/SPLIT/*.jpg, OUT/labels/SPLIT/*.txt "
                    "(class cx cy w h, normalised) and OUT/data.yaml. Running it again into "
                    "the same folder writes only what is missing.",
        examples=["central-sync dataset export surface-labels@3 --layout imagefolder "
                  "--out data/surface-labels-3",
                  "central-sync dataset export parts@2 --layout yolo --out data/parts-2"])
    export.add_argument("dataset", metavar="NAME@N", help="e.g. surface-labels@3")
    export.add_argument("--layout", choices=["imagefolder", "yolo"], required=True,
                        help="the folder layout a training tool reads")
    export.add_argument("--out", type=Path, required=True,
                        help="the folder to write (new, empty, or an earlier export of the "
                             "same version)")
    export.set_defaults(func=cmd_dataset_export)

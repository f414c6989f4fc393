"""`central-sync model evaluate`: a candidate version and the version serving now measured on
the same held-out data, printed side by side and stored for the approver."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
from rich.table import Table

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
    parse_model_ref,
)

MAX_ITEMS = 1_000_000  # as models.max_evaluation_items allows

if TYPE_CHECKING:
    from central_sync.config import CentralConfig
    from central_sync.db import CentralDB, Evaluation


def cmd_model_evaluate(args: argparse.Namespace) -> int:
    name, version = parse_model_ref(args.model)
    config = load_config(args)
    with open_database(config) as db:
        if db.get_model(name, version) is None:
            from central_sync.deployments import unknown_model_message

            raise UsageError(unknown_model_message(name, version))
        by = acting_user(db, args, "engineer")
        evaluation = run_evaluation(db, config, name, version, args.dataset, by,
                                    args.max_items)
        state = db.model_state(name, version)
    console = make_console()
    print_report(console, evaluation)
    if state is not None and state.state == "evaluated":
        console.print(f"{name}@{version} is evaluated: another engineer or admin approves it "
                      f"with `central-sync model approve {name}@{version}` or on its model "
                      "page", highlight=False)
    elif state is not None:
        console.print(f"{name}@{version} stays {state.state}; the report is stored beside it",
                      highlight=False)
    return EXIT_OK


def run_evaluation(db: CentralDB, config: CentralConfig, name: str, version: str,
                   dataset: str | None, by: str, max_items: int | None = None) -> Evaluation:
    """evaluate_model with a progress bar on stderr; EvaluationError as a UsageError."""
    from central_sync.evaluation import EvaluationError, evaluate_model

    with _progress(f"evaluating {name}@{version}") as on_progress:
        try:
            return evaluate_model(db, config.artifact_dir, name, version, dataset, by,
                                  max_items=max_items or config.models.max_evaluation_items,
                                  on_progress=on_progress)
        except EvaluationError as exc:
            raise UsageError(str(exc)) from None


@contextmanager
def _progress(what: str) -> Iterator[Any]:
    progress = Progress("{task.description}", BarColumn(), MofNCompleteColumn(),
                        TimeRemainingColumn(), console=Console(stderr=True), transient=True)
    task = progress.add_task(what, total=None)

    def update(done: int, total: int) -> None:
        progress.update(task, completed=done, total=total)

    with progress:
        yield update


def _figure(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def print_report(console: Console, evaluation: Evaluation) -> None:
    """The stored report as tables: headline figures, per class, confusion matrices."""
    report = evaluation.report
    candidate, baseline = report["candidate"], report.get("baseline")
    sides = [("candidate", candidate)] + ([("serving now", baseline)] if baseline else [])
    data = evaluation.dataset or ("recorded predictions" if report["kind"] == "process"
                                  else "no dataset")
    title = (f"{evaluation.model_name} evaluation {evaluation.evaluation_id[:12]}: "
             f"{report['items']} {'rows' if report['kind'] == 'process' else 'test items'} "
             f"of {data}")
    headline = Table(title=title, title_justify="left")
    headline.add_column("figure", style="bold")
    for label, metrics in sides:
        headline.add_column(f"{label} {metrics['version']}", justify="right")
    figures = (("rows", "rows"), ("MAE", "mae"), ("bias (predicted - measured)", "bias"),
               ("in-spec agreement", "in_spec_agreement")) if report["kind"] == "process" \
        else (("accuracy", "accuracy"),)
    for text, key in figures:
        headline.add_row(text, *(_figure(m.get(key)) for _, m in sides))
    if report["kind"] != "process":
        for text, key in (("latency mean ms (central)", "mean"), ("latency p95 ms", "p95")):
            headline.add_row(text, *(_figure(m["latency_ms"][key]) for _, m in sides))
    console.print(headline)
    if report["kind"] != "process" and candidate.get("per_class"):
        _print_classes(console, sides)
        for label, metrics in sides:
            _print_confusion(console, f"{label} {metrics['version']}", metrics["confusion"])
    for _, metrics in sides:
        if metrics.get("note"):
            console.print(f"note ({metrics['version']}): {metrics['note']}", highlight=False)
    for note in report.get("notes", []):
        console.print(f"note: {note}", highlight=False)


def _print_classes(console: Console, sides: list[tuple[str, dict[str, Any]]]) -> None:
    table = Table(title="per class", title_justify="left")
    table.add_column("class", style="bold")
    table.add_column("support", justify="right")
    for _, metrics in sides:
        for figure in ("precision", "recall"):
            table.add_column(f"{figure} {metrics['version']}", justify="right")
    labels = list(dict.fromkeys(label for _, m in sides for label in m["per_class"]))
    for label in labels:
        support = next(m["per_class"][label]["support"] for _, m in sides
                       if label in m["per_class"])
        cells = [_figure(m["per_class"].get(label, {}).get(figure)) for _, m in sides
                 for figure in ("precision", "recall")]
        table.add_row(label, str(support), *cells)
    console.print(table)


def _print_confusion(console: Console, title: str, confusion: dict[str, Any]) -> None:
    table = Table(title=f"confusion, {title}", title_justify="left",
                  caption="rows: true class; columns: predicted", caption_justify="left")
    table.add_column("", style="bold")
    for label in confusion["labels"]:
        table.add_column(label, justify="right")
    for label, row in zip(confusion["labels"], confusion["matrix"], strict=True):
        table.add_row(label, *(str(n) if n else "[dim]0[/]" for n in row))
    console.print(table)


def add_evaluate_command(actions: Subcommands) -> None:
    evaluate = add_command(
        actions, "evaluate",
        help="measure a version beside the one serving now, and store the report",
        description="Run the version on central as a gateway runs it (the agent's own "
                    "preprocessing and decoder) and, beside it, the version serving now (the "
                    "one most devices report active, else the newest approved one). A vision "
                    "model runs on the test split of a dataset version (default: the one its "
                    "lineage names): accuracy, per-class precision and recall, confusion "
                    "matrix, latency on central's CPU; a detection model's boxes count at IoU "
                    ">= 0.5. A process model runs on the line's recorded predictions whose "
                    "target a measured_tag read: MAE, bias and, with spec limits, in-spec "
                    "agreement. The report is stored and the version becomes 'evaluated', "
                    "ready for a second engineer's approval. Engineer or admin.",
        examples=["central-sync model evaluate surface-defects@1.2.0 --dataset surface-labels@3",
                  "central-sync model evaluate extruder-scrap@1.1.0"])
    evaluate.add_argument("model", metavar="NAME@VERSION", help="e.g. surface-defects@1.2.0")
    evaluate.add_argument("--dataset", metavar="NAME@N",
                          help="dataset version whose test split a vision model runs on "
                               "(`central-sync dataset list`)")
    evaluate.add_argument("--max-items", type=_positive, metavar="N",
                          help="items to run at most (default: models.max_evaluation_items "
                               "of central's configuration, 20,000)")
    add_by_option(evaluate, "who evaluates (before central has accounts)")
    evaluate.set_defaults(func=cmd_model_evaluate)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_ITEMS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of items from 1 to "
                                         f"{MAX_ITEMS:,}")
    return value

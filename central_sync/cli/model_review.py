"""`central-sync model approve | reject | retire`: a version's review before it may reach a
line, and how `model list` and `model show` tell where a version stands."""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    from central_sync.db import CentralDB, ModelState

STATE_COLOURS = {"published": "cyan", "evaluated": "magenta", "approved": "green",
                 "rejected": "red", "retired": "dim"}


def state_text(state: ModelState | None) -> str:
    """'approved by bob', 'rejected: too many false alarms', 'published', ... (rich markup)."""
    if state is None:
        return "[cyan]published[/]"
    colour = STATE_COLOURS.get(state.state, "white")
    text = f"[{colour}]{state.state}[/]"
    if state.state == "approved" and state.approved_by:
        text += f" by {state.approved_by}"
    elif state.state in ("rejected", "retired") and state.reason:
        text += f": {state.reason}"
    return text


def review_rows(db: CentralDB, name: str, version: str) -> list[tuple[str, str]]:
    """(field, value) lines of `model show` on the version's review: state, evaluation,
    approver."""
    state = db.model_state(name, version)
    rows = [("state", state_text(state))]
    if state is None:
        return rows
    rows.append(("state changed", f"{_when(state.updated_at)} by {state.updated_by}"))
    if state.evaluation_id:
        evaluation = db.get_evaluation(state.evaluation_id)
        rows.append(("evaluation", evaluation_summary(evaluation) if evaluation else
                     f"{state.evaluation_id} (not found)"))
    if state.approved_by:
        rows.append(("approved", f"{_when(state.approved_at)} by {state.approved_by}"))
    return rows


def evaluation_summary(evaluation: object) -> str:
    """One line about an evaluation: id, data, candidate's headline figure against the
    baseline's."""
    from central_sync.db import Evaluation

    assert isinstance(evaluation, Evaluation)
    report = evaluation.report
    figure = "mae" if report.get("kind") == "process" else "accuracy"
    candidate = (report.get("candidate") or {}).get(figure)
    baseline = (report.get("baseline") or {}).get(figure)
    versus = (f" vs {baseline:.4g} for {evaluation.baseline_version}"
              if isinstance(baseline, float | int) else " (no version served before)")
    headline = f"{figure} {candidate:.4g}{versus}" if isinstance(candidate, float | int) else \
        "no figures"
    data = evaluation.dataset or "recorded predictions"
    return (f"{evaluation.evaluation_id} on {data}, {report.get('items', 0)} items: {headline}; "
            f"{_when(evaluation.created_at)} by {evaluation.created_by}")


def _when(at: float | None) -> str:
    return "-" if at is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def cmd_model_approve(args: argparse.Namespace) -> int:
    return _review(args, "approve")


def cmd_model_reject(args: argparse.Namespace) -> int:
    return _review(args, "reject")


def cmd_model_retire(args: argparse.Namespace) -> int:
    return _review(args, "retire")


def _review(args: argparse.Namespace, action: str) -> int:
    from central_sync.db import ModelStateError

    name, version = parse_model_ref(args.model)
    config = load_config(args)
    with open_database(config) as db:
        if db.get_model(name, version) is None:
            from central_sync.deployments import unknown_model_message

            raise UsageError(unknown_model_message(name, version))
        by = acting_user(db, args, "engineer")
        try:
            if action == "approve":
                state = db.approve_model(name, version, by)
            elif action == "reject":
                state = db.reject_model(name, version, by, args.reason)
            else:
                state = db.retire_model(name, version, by, args.reason)
        except ModelStateError as exc:
            raise UsageError(str(exc)) from None
    console = make_console()
    console.print(f"{name}@{version} is now {state_text(state)}", highlight=False)
    if state.state == "approved" and not config.models.require_approval:
        console.print("(models.require_approval is off in this central's configuration: "
                      "versions deploy without approval)")
    elif state.state == "approved":
        console.print(f"roll it out with `central-sync rollout start {name}@{version} --group "
                      "LABEL`", highlight=False)
    return EXIT_OK


def add_review_commands(actions: Subcommands) -> None:
    approve = add_command(
        actions, "approve", help="approve an evaluated version for deployment",
        description="Approve a version after reading its evaluation (`central-sync model show "
                    "NAME@V`): it must be evaluated, and the approver an engineer or admin "
                    "other than the account that published it. Only approved versions can be "
                    "deployed or rolled out while central's models.require_approval is on "
                    "(the default). Audited.",
        examples=["central-sync model approve surface-defects@1.2.0",
                  "CENTRAL_SYNC_USER=bob central-sync model approve surface-defects@1.2.0"])
    approve.add_argument("model", metavar="NAME@VERSION", help="e.g. surface-defects@1.2.0")
    add_by_option(approve, "who approves (before central has accounts)")
    approve.set_defaults(func=cmd_model_approve)
    for action, func, help_text, description in (
            ("reject", cmd_model_reject, "reject a version that is published or evaluated",
             "Reject a version not yet approved, saying why; it can then never be deployed "
             "(publish a corrected version instead). Engineer or admin. Audited."),
            ("retire", cmd_model_retire, "retire an approved version",
             "Retire an approved version, saying why: it is no longer deployed or rolled out. "
             "Devices running it keep it until they get another version, and rolling a device "
             "back to it as its previous version still works. Engineer or admin. Audited.")):
        parser = add_command(
            actions, action, help=help_text, description=description,
            examples=[f"central-sync model {action} surface-defects@1.2.0 --reason "
                      "\"misses fine scratches on line 3\""])
        parser.add_argument("model", metavar="NAME@VERSION", help="e.g. surface-defects@1.2.0")
        parser.add_argument("--reason", required=True, help="why, for the people who read the "
                            "model page and the audit log (at most 500 characters)")
        add_by_option(parser, "who does it (before central has accounts)")
        parser.set_defaults(func=func)

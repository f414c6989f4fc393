"""Each model version's review state and its evaluations (part of CentralDB).

published -> evaluated -> approved -> retired; rejected (with a reason) from published or
evaluated. A second account approves: never the one that published the version.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from central_sync.db.connection import Connection, serialised

PUBLISHED, EVALUATED, APPROVED, REJECTED, RETIRED = (
    "published", "evaluated", "approved", "rejected", "retired")
MODEL_STATES = (PUBLISHED, EVALUATED, APPROVED, REJECTED, RETIRED)
# What a person may do from each state.
_APPROVE_FROM = (EVALUATED,)
_REJECT_FROM = (PUBLISHED, EVALUATED)
_RETIRE_FROM = (APPROVED,)
_EVALUATE_MOVES = (PUBLISHED, EVALUATED)  # an evaluation moves only these to 'evaluated'
REASON_MAX_CHARS = 500
# A measured outcome is paired with its pipeline's prediction at most this long before it: the
# agent records both in the same tick, so a longer gap means the model did not predict then.
OUTCOME_PAIR_WINDOW_S = 60.0
OUTCOME_TYPE = "recommendation_outcome"
OUTCOME_SCAN_FACTOR = 4  # pages of outcomes read at most, each as many as asked for


class ModelStateError(Exception):
    """A review step that the version's state or the person does not allow; the message says
    why and what to do instead."""


class NotApproved(ModelStateError):
    """The version may not be deployed or rolled out (yet); the message says what to do."""


@dataclass(frozen=True)
class ModelState:
    """One row of `model_states`: where a version stands in its review."""

    model_name: str
    version: str
    state: str
    evaluation_id: str | None
    approved_by: str | None
    approved_at: float | None
    reason: str
    updated_at: float
    updated_by: str

    @property
    def ref(self) -> str:
        return f"{self.model_name}@{self.version}"


@dataclass(frozen=True)
class Evaluation:
    """A candidate version measured on held-out data, beside the version serving then."""

    evaluation_id: str
    model_name: str
    version: str
    dataset: str  # "NAME@N", or "" (process models: recorded predictions)
    dataset_id: str
    baseline_version: str  # "" when nothing served before
    report: dict[str, Any]
    created_at: float
    created_by: str

    @property
    def ref(self) -> str:
        return f"{self.model_name}@{self.version}"


def _how_to_approve(ref: str) -> str:
    return (f"a second engineer approves it with `central-sync model approve {ref}` or on its "
            "model page")


def not_deployable_message(ref: str, state: ModelState | None,
                           approval_required: bool) -> str | None:
    """Why `ref` may not be deployed now, with what to do; None when it may."""
    current = state.state if state is not None else PUBLISHED
    if current == REJECTED:
        return (f"{ref} was rejected by {state.updated_by if state else '?'}"
                f"{f' ({state.reason})' if state and state.reason else ''}: publish a "
                "corrected version and have it evaluated and approved")
    if current == RETIRED:
        return (f"{ref} is retired{f' ({state.reason})' if state and state.reason else ''}: "
                "deploy an approved version (`central-sync model list` shows them)")
    if not approval_required or current == APPROVED:
        return None
    if current == EVALUATED:
        return f"{ref} is evaluated, not approved: {_how_to_approve(ref)}"
    return (f"{ref} is published, not evaluated: evaluate it with `central-sync model evaluate "
            f"{ref}` (--dataset NAME@N for a vision model), then {_how_to_approve(ref)}")


class ModelStateQueries:
    """Review states and evaluations; mixed into CentralDB, whose connection and lock it uses."""

    _db: Connection
    _audit: Callable[[str, str, str, str], None]  # CentralDB's: actor, action, subject, detail
    dialect: str

    # --- states ----------------------------------------------------------------------------

    @serialised
    def model_state(self, name: str, version: str) -> ModelState | None:
        return self._state(name, version)

    @serialised
    def model_states(self) -> dict[tuple[str, str], ModelState]:
        """Every version's state, by (name, version)."""
        return {(row["model_name"], row["version"]): ModelState(**row)
                for row in self._db.query("SELECT * FROM model_states")}

    def _state(self, name: str, version: str) -> ModelState | None:
        row = next(self._db.query(
            "SELECT * FROM model_states WHERE model_name = ? AND version = ?",
            (name, version)), None)
        return ModelState(**row) if row else None

    @serialised
    def set_published(self, name: str, version: str, by: str) -> ModelState:
        """Give a newly published version its first state (kept if it has one)."""
        with self._db.atomic():
            self._set_published_unlocked(name, version, by)
        state = self._state(name, version)
        assert state is not None
        return state

    def _set_published_unlocked(self, name: str, version: str, by: str) -> None:
        """set_published inside the caller's transaction (add_model's)."""
        self._db.execute(
            "INSERT OR IGNORE INTO model_states (model_name, version, state, reason, "
            "updated_at, updated_by) VALUES (?, ?, ?, '', ?, ?)",
            (name, version, PUBLISHED, time.time(), by or "unknown"))

    @serialised
    def mark_evaluated(self, name: str, version: str, evaluation_id: str,
                       by: str) -> ModelState:
        """Record that `evaluation_id` evaluated the version: published (or evaluated) ->
        evaluated. A version already approved, rejected or retired keeps its state; the
        evaluation is stored and audited all the same."""
        with self._db.atomic():
            self._mark_evaluated_unlocked(name, version, evaluation_id, by)
        return self._require_state(name, version)

    def _mark_evaluated_unlocked(self, name: str, version: str, evaluation_id: str,
                                 by: str) -> None:
        ref = f"{name}@{version}"
        self._set_published_unlocked(name, version, by)
        marks = ", ".join("?" * len(_EVALUATE_MOVES))
        self._db.execute(
            "UPDATE model_states SET state = ?, evaluation_id = ?, updated_at = ?, "
            f"updated_by = ? WHERE model_name = ? AND version = ? AND state IN ({marks})",
            (EVALUATED, evaluation_id, time.time(), by, name, version, *_EVALUATE_MOVES))
        self._audit(by, "model.evaluate", ref, f"evaluation={evaluation_id}")

    @serialised
    def approve_model(self, name: str, version: str, by: str) -> ModelState:
        """evaluated -> approved. Refused (ModelStateError) unless the version is evaluated,
        and when `by` published it. The caller checks that `by` is an engineer or admin."""
        ref = f"{name}@{version}"
        with self._db.atomic():
            state = self._require_state(name, version)
            if state.state != EVALUATED:
                raise ModelStateError(self._refusal(state, "approved", _APPROVE_FROM))
            publisher = self._publisher(name, version)
            if publisher is not None and publisher.casefold() == by.casefold():
                raise ModelStateError(
                    f"{publisher} published {ref} and cannot also approve it: "
                    f"{_how_to_approve(ref).replace('a second', 'another')}")
            now = time.time()
            moved = self._db.execute(
                "UPDATE model_states SET state = ?, approved_by = ?, approved_at = ?, "
                "updated_at = ?, updated_by = ? WHERE model_name = ? AND version = ? "
                "AND state = ?", (APPROVED, by, now, now, by, name, version, EVALUATED))
            if not moved:  # another approver or reviewer came first
                raise ModelStateError(self._refusal(self._require_state(name, version),
                                                    "approved", _APPROVE_FROM))
            self._audit(by, "model.approve", ref, f"evaluation={state.evaluation_id or ''}")
        return self._require_state(name, version)

    @serialised
    def reject_model(self, name: str, version: str, by: str, reason: str) -> ModelState:
        """published or evaluated -> rejected, with the reason people will read."""
        return self._close(name, version, by, reason, REJECTED, _REJECT_FROM, "model.reject")

    @serialised
    def retire_model(self, name: str, version: str, by: str, reason: str) -> ModelState:
        """approved -> retired: no longer deployed or rolled out (devices running it keep it
        until they get another version)."""
        return self._close(name, version, by, reason, RETIRED, _RETIRE_FROM, "model.retire")

    def _close(self, name: str, version: str, by: str, reason: str, target: str,
               allowed: tuple[str, ...], action: str) -> ModelState:
        reason = " ".join(reason.split())
        if not reason:
            raise ModelStateError(f"say why {name}@{version} is {target} (--reason TEXT)")
        if len(reason) > REASON_MAX_CHARS:
            raise ModelStateError(f"the reason is {len(reason)} characters; keep it under "
                                  f"{REASON_MAX_CHARS}")
        with self._db.atomic():
            state = self._require_state(name, version)
            marks = ", ".join("?" * len(allowed))
            moved = self._db.execute(
                "UPDATE model_states SET state = ?, reason = ?, updated_at = ?, updated_by = ? "
                f"WHERE model_name = ? AND version = ? AND state IN ({marks})",
                (target, reason, time.time(), by, name, version, *allowed))
            if not moved:
                raise ModelStateError(self._refusal(self._require_state(name, version), target,
                                                    allowed))
            self._audit(by, action, f"{name}@{version}", f"from={state.state} reason={reason}")
        return self._require_state(name, version)

    @serialised
    def require_deployable(self, name: str, version: str, approval_required: bool) -> None:
        """Raise NotApproved (saying what to do) unless name@version may be deployed: approved,
        or with `approval_required` off anything not rejected or retired."""
        message = not_deployable_message(f"{name}@{version}", self._state(name, version),
                                         approval_required)
        if message is not None:
            raise NotApproved(message)

    def _require_state(self, name: str, version: str) -> ModelState:
        state = self._state(name, version)
        if state is None:
            if self._publisher(name, version) is None:
                raise ModelStateError(f"model {name} {version} is not in the registry; see "
                                      "`central-sync model list`")
            self._set_published_unlocked(name, version, "central")
            state = self._state(name, version)
            assert state is not None
        return state

    def _publisher(self, name: str, version: str) -> str | None:
        row = next(self._db.query("SELECT published_by FROM models WHERE name = ? AND "
                                  "version = ?", (name, version)), None)
        return row["published_by"] if row else None

    @staticmethod
    def _refusal(state: ModelState, target: str, allowed: tuple[str, ...]) -> str:
        ref = state.ref
        by = f" by {state.updated_by}" if state.updated_by else ""
        hint = {
            APPROVED: f"evaluate it first (`central-sync model evaluate {ref}`)",
            REJECTED: "only a version not yet approved can be rejected; retire it instead "
                      f"(`central-sync model retire {ref} --reason TEXT`)",
            RETIRED: "only an approved version can be retired; reject it instead "
                     f"(`central-sync model reject {ref} --reason TEXT`)",
        }[target]
        if state.state == target:
            return f"{ref} is already {target}{by}"
        if state.state in (REJECTED, RETIRED):
            hint = "it is final: publish a new version"
        return (f"{ref} is {state.state}{by}; only a version that is {' or '.join(allowed)} "
                f"can be {target}: {hint}")

    # --- evaluations -----------------------------------------------------------------------

    @serialised
    def add_evaluation(self, evaluation: Evaluation) -> ModelState:
        """Store an evaluation and mark its version evaluated, in one transaction."""
        with self._db.atomic():
            self._db.execute(
                "INSERT INTO evaluations (evaluation_id, model_name, version, dataset, "
                "dataset_id, baseline_version, report, created_at, created_by) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (evaluation.evaluation_id, evaluation.model_name, evaluation.version,
                 evaluation.dataset, evaluation.dataset_id, evaluation.baseline_version,
                 json.dumps(evaluation.report, allow_nan=False), evaluation.created_at,
                 evaluation.created_by))
            self._mark_evaluated_unlocked(evaluation.model_name, evaluation.version,
                                          evaluation.evaluation_id, evaluation.created_by)
        return self._require_state(evaluation.model_name, evaluation.version)

    @serialised
    def get_evaluation(self, evaluation_id: str) -> Evaluation | None:
        row = next(self._db.query("SELECT * FROM evaluations WHERE evaluation_id = ?",
                                  (evaluation_id,)), None)
        return _evaluation(row) if row else None

    @serialised
    def list_evaluations(self, name: str, version: str | None = None,
                         limit: int = 50) -> list[Evaluation]:
        """A model's evaluations (of one version, or all), newest first."""
        where, params = "model_name = ?", [name]
        if version is not None:
            where, params = where + " AND version = ?", [*params, version]
        return [_evaluation(row) for row in self._db.query(
            f"SELECT * FROM evaluations WHERE {where} ORDER BY created_at DESC LIMIT ?",
            (*params, limit))]

    # --- what an evaluation compares with, and evaluates on --------------------------------

    @serialised
    def serving_versions(self, name: str) -> Counter[str]:
        """How many devices report each version of model `name` active (their last status)."""
        counts: Counter[str] = Counter()
        for row in self._db.query("SELECT active_models FROM devices"):
            for model in json.loads(row["active_models"] or "[]"):
                if model.get("name") == name:
                    counts[str(model.get("version"))] += 1
        return counts

    @serialised
    def measured_outcomes(self, name: str, limit: int,
                          window_s: float = OUTCOME_PAIR_WINDOW_S) -> list[tuple[dict, float]]:
        """Up to `limit` of the newest moments a pipeline of model `name` predicted and its
        measured_tag read the target: (the inputs the model saw, by feature; the measured
        value), from recommendation_outcome records paired with the prediction just before."""
        pipelines = sorted({row["pipeline"] for row in self._db.query(
            "SELECT DISTINCT pipeline FROM model_stats WHERE model_name = ?", (name,))})
        if not pipelines:
            return []
        field = _JSON_FIELD[self.dialect]
        marks = ", ".join("?" * len(pipelines))
        outcomes = (
            f"SELECT device_id, created_at, {field.format('pipeline')} AS pipeline, "
            f"{field.format('measured')} AS measured FROM records WHERE type = ? "
            f"AND {field.format('pipeline')} IN ({marks}) "
            f"AND {field.format('measured')} IS NOT NULL "
            "ORDER BY created_at DESC, device_id, seq LIMIT ? OFFSET ?")
        page = max(limit, 100)
        pairs: list[tuple[dict, float]] = []
        # Outcomes without their prediction are passed over, up to OUTCOME_SCAN_FACTOR pages.
        for offset in range(0, page * OUTCOME_SCAN_FACTOR, page):
            rows = list(self._db.query(outcomes, (OUTCOME_TYPE, *pipelines, page, offset)))
            for outcome in rows:
                pair = self._prediction_before(name, outcome, window_s)
                if pair is not None:
                    pairs.append(pair)
                    if len(pairs) == limit:
                        return pairs
            if len(rows) < page:
                break
        return pairs

    def _prediction_before(self, name: str, outcome: dict[str, Any],
                           window_s: float) -> tuple[dict, float] | None:
        prediction = next(self._db.query(
            "SELECT model_name, inputs FROM predictions WHERE created_at <= ? AND "
            "created_at >= ? AND device_id = ? AND pipeline = ? "
            "ORDER BY created_at DESC LIMIT 1",
            (outcome["created_at"], outcome["created_at"] - window_s, outcome["device_id"],
             outcome["pipeline"])), None)
        if prediction is None or prediction["model_name"] != name:
            return None
        return json.loads(prediction["inputs"]), float(outcome["measured"])


# One field of a record's JSON payload, as text.
_JSON_FIELD = {
    "sqlite": "json_extract(payload, '$.{0}')",
    "postgresql": "(CAST(payload AS jsonb) ->> '{0}')",
}


def _evaluation(row: dict[str, Any]) -> Evaluation:
    return Evaluation(**{**row, "report": json.loads(row["report"])})

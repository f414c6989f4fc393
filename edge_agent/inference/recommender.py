"""Setpoint recommendations: search the controllable tags for a better predicted outcome.

The search scores thousands of candidate settings in one batched model run (a tree ensemble
from its tables, `tree_tables`), then a smaller set around the best; `offer_refusal` keeps the
open recommendation from flapping. Settings come in as any objects with the attributes below
(the agent's `recommend:` configuration has them); writing to the PLC is not done here.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from edge_agent.kernel.contract import ModelManifest, OutputSpec, RecommendationPayload

log = logging.getLogger(__name__)

Predict = Callable[[np.ndarray], np.ndarray]  # (N, features) float32 -> (N,) objective output
CHECKED_SETTINGS = 32  # settings scored both ways each search when the model has tables
TABLES_TOLERANCE = 1e-4  # tables and ONNX Runtime agree to float32 rounding, relative
TIE_TOLERANCE = 1e-6  # scores this close are equal: trees are flat in places
ROUNDING = 1e-9  # setpoints are multiples of a step: absorbs float rounding of the grid


class ControlLimits(Protocol):
    """A controllable tag's hard limits, step and largest single move."""

    @property
    def min(self) -> float: ...
    @property
    def max(self) -> float: ...
    @property
    def step(self) -> float: ...
    @property
    def max_change(self) -> float: ...


class SearchSettings(Protocol):
    """What the search and the offer rules need of a pipeline's `recommend:` settings."""

    @property
    def controls(self) -> Mapping[str, ControlLimits]: ...
    @property
    def candidates(self) -> int: ...
    @property
    def refine_candidates(self) -> int: ...
    @property
    def min_improvement(self) -> float: ...
    @property
    def hold_s(self) -> float: ...


class ObjectiveSettings(Protocol):
    """A configured objective: its type, output and target limits."""

    @property
    def type(self) -> str: ...
    @property
    def output(self) -> str | None: ...
    @property
    def low(self) -> float | None: ...
    @property
    def high(self) -> float | None: ...
    @property
    def target(self) -> float | None: ...
    @property
    def margin(self) -> float: ...


class ModelInput(Protocol):
    """One model input: the tag it is read from, and how (only last values can be moved)."""

    @property
    def tag(self) -> str: ...
    @property
    def transform(self) -> str: ...


class GridModel(Protocol):
    """A model that can score a grid of control settings without running it (tree_tables)."""

    def grid_scorer(self, base: np.ndarray, columns: Sequence[int],
                    levels: Sequence[np.ndarray]) -> Callable[[np.ndarray], np.ndarray] | None:
        ...


class RecommenderError(Exception):
    """The recommender cannot work with this model or configuration; the message says why."""


def require_dynamic_batch(manifest: ModelManifest) -> None:
    """The search scores many candidates in one run: the first input dimension must be free."""
    spec = manifest.inputs[0]
    if not spec.shape or isinstance(spec.shape[0], int):
        shape = "x".join(str(d) if isinstance(d, int) else "?" for d in spec.shape)
        raise RecommenderError(
            f"model {manifest.name} {manifest.version} takes input {spec.name!r} of fixed shape "
            f"{shape}: the recommender scores thousands of settings in one run and needs a "
            "dynamic batch dimension; re-export it with the first dimension free (skl2onnx: "
            f"initial_types=[({spec.name!r}, FloatTensorType([None, n]))])")


@dataclass(frozen=True)
class Objective:
    """What is better: a score per prediction, lower is better, in the output's unit."""

    type: str
    output: str
    low: float | None = None
    high: float | None = None
    target: float | None = None
    margin: float = 0.0

    def score(self, predicted: np.ndarray) -> np.ndarray:
        y = np.asarray(predicted, dtype=np.float64)
        if self.type == "minimise":
            return y
        if self.type == "maximise":
            return -y
        if self.target is not None:
            return np.abs(y - self.target)
        low = -math.inf if self.low is None else self.low + self.margin
        high = math.inf if self.high is None else self.high - self.margin
        return np.maximum(low - y, 0.0) + np.maximum(y - high, 0.0)

    def describe(self) -> str:
        if self.type in ("minimise", "maximise"):
            return f"{self.type} {self.output}"
        if self.target is not None:
            return f"hold {self.output} at {self.target:g}"
        limits = [f"≥ {self.low + self.margin:g}" if self.low is not None else "",
                  f"≤ {self.high - self.margin:g}" if self.high is not None else ""]
        return f"keep {self.output} " + " and ".join(x for x in limits if x)


def resolve_objective(config: ObjectiveSettings, spec: OutputSpec | None,
                      outputs: Sequence[str], pipeline: str) -> Objective:
    """The configured objective, with the output and spec limits taken from the manifest."""
    spec = spec or OutputSpec()
    output = config.output or spec.target or outputs[0]
    if output not in outputs:
        raise RecommenderError(
            f"objective output {output} of pipeline {pipeline} is not a model output; "
            f"choose one of: {', '.join(outputs)}")
    low, high = config.low, config.high
    if config.type == "target" and config.target is None and low is None and high is None:
        if spec.target == output:
            low, high = spec.low, spec.high
        if low is None and high is None:
            raise RecommenderError(
                f"objective target of pipeline {pipeline} needs target or low/high (the model's "
                f"metadata has no 'spec' for {output}); add them under recommend.objective")
    return Objective(config.type, output, low, high, config.target, config.margin)


@dataclass(frozen=True)
class Proposal:
    """The best setting found, against the current one."""

    current: dict[str, float]
    proposed: dict[str, float]
    predicted_now: float
    predicted_after: float
    improvement: float  # how much better the objective gets, in the output's unit
    scored: int  # candidate settings the model scored

    @property
    def changed(self) -> dict[str, float]:
        return {tag: value for tag, value in self.proposed.items()
                if abs(value - self.current[tag]) > ROUNDING}


class Recommender:
    """Searches the controllable tags of one pipeline's model; pure apart from `predict`."""

    def __init__(self, config: SearchSettings, features: Sequence[ModelInput],
                 objective: Objective, predict: Predict, pipeline: str, seed: int = 0,
                 grid: GridModel | None = None) -> None:
        self.config = config
        self.objective = objective
        self._predict = predict
        self._grid = grid
        self._pipeline = pipeline
        self._rng = np.random.default_rng(seed)
        last_values = {f.tag: i for i, f in enumerate(features) if f.transform == "last"}
        for tag in config.controls:
            if tag not in last_values:
                raise RecommenderError(
                    f"control {tag} is not a feature of pipeline {pipeline}; controls must be "
                    f"among its last-value features: {', '.join(last_values) or 'none'}")
        self.tags = list(config.controls)
        self._columns = [last_values[tag] for tag in self.tags]
        self._controls = [config.controls[tag] for tag in self.tags]

    @property
    def scoring(self) -> str:
        """How candidate settings are scored: from the model's tree tables or by model runs."""
        return "tree tables" if self._grid is not None else "batched model runs"

    def search(self, row: np.ndarray) -> Proposal:
        """The best setting near the current one (row: the model's current input, as read)."""
        base = np.asarray(row, dtype=np.float64).reshape(-1)
        current = base[self._columns]
        levels = [_levels(control, value) for control, value in zip(self._controls, current,
                                                                    strict=True)]
        score = self._scorer(base, levels)
        now = np.asarray([[int(np.searchsorted(lv, value)) for lv, value
                           in zip(levels, current, strict=True)]])
        coarse, exhaustive = _draw([np.arange(len(lv)) for lv in levels],
                                   self.config.candidates, self._rng)
        index = np.vstack([now, coarse])
        predicted = score(index)
        best = self._best(levels, index, predicted, current)
        if not exhaustive and self.config.refine_candidates:
            # Random settings lie about range / n^(1/k) apart: look twice that around the best.
            spacing = len(coarse) ** (1 / len(levels))
            near = [np.flatnonzero(np.abs(lv - lv[index[best, i]]) <= math.ceil(
                2 * len(lv) / spacing) * self._controls[i].step + ROUNDING)
                for i, lv in enumerate(levels)]
            fine, _ = _draw(near, self.config.refine_candidates, self._rng)
            index = np.vstack([index, fine])
            predicted = np.concatenate([predicted, score(fine)])
            best = self._best(levels, index, predicted, current)
        settings = _values(levels, index[[0, best]])
        objective = self.objective.score(predicted[[0, best]])
        return Proposal(
            current=dict(zip(self.tags, current.tolist(), strict=True)),
            proposed=dict(zip(self.tags, settings[1].tolist(), strict=True)),
            predicted_now=float(predicted[0]), predicted_after=float(predicted[best]),
            improvement=float(objective[0] - objective[1]), scored=len(index))

    def _scorer(self, base: np.ndarray,
                levels: list[np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
        """Scores settings given as level indices: from the model's tables when it has them
        (checked against the model itself on a few settings each search), else by batches."""

        def run_model(index: np.ndarray) -> np.ndarray:
            batch = np.repeat(base[None, :].astype(np.float32), len(index), axis=0)
            for k, (column, lv) in enumerate(zip(self._columns, levels, strict=True)):
                batch[:, column] = lv[index[:, k]]
            return self._score_batch(batch)

        if self._grid is None:
            return run_model
        from_tables = self._grid.grid_scorer(base, self._columns, levels)
        if from_tables is None:
            return run_model
        check = np.stack([self._rng.integers(0, len(lv), CHECKED_SETTINGS) for lv in levels],
                         axis=1)
        expected, got = run_model(check), np.asarray(from_tables(check), dtype=np.float64)
        scale = max(1.0, np.abs(expected).max())
        if not np.allclose(got, expected, rtol=TABLES_TOLERANCE, atol=TABLES_TOLERANCE * scale):
            log.error("tree tables disagree with the model pipeline=%s largest_difference=%g; "
                      "scoring with ONNX Runtime from now on", self._pipeline,
                      float(np.abs(got - expected).max()))
            self._grid = None
            return run_model
        return lambda index: np.asarray(from_tables(index), dtype=np.float64)

    def _score_batch(self, batch: np.ndarray) -> np.ndarray:
        predicted = np.asarray(self._predict(batch), dtype=np.float64).reshape(-1)
        if len(predicted) != len(batch):
            raise RecommenderError(f"the model gave {len(predicted)} values for "
                                   f"{len(batch)} settings; it must predict one per row")
        return predicted

    def _best(self, levels: list[np.ndarray], index: np.ndarray, predicted: np.ndarray,
              current: np.ndarray) -> int:
        """The best score; among equal ones (trees are flat in places) the smallest move."""
        score = np.where(np.isfinite(predicted), self.objective.score(predicted), np.inf)
        lowest = score.min()
        tied = np.flatnonzero(score <= lowest + TIE_TOLERANCE * max(1.0, abs(lowest)))
        max_change = np.asarray([c.max_change for c in self._controls])
        moves = (np.abs(_values(levels, index[tied]) - current) / max_change).sum(axis=1)
        return int(tied[np.argmin(moves)])


def _levels(control: ControlLimits, current: float) -> np.ndarray:
    """Values a control may take: multiples of its step within reach and limits, and now."""
    low = max(control.min, current - control.max_change)
    high = min(control.max, current + control.max_change)
    first = math.ceil(low / control.step - ROUNDING)
    last = math.floor(high / control.step + ROUNDING)
    grid = np.round(np.arange(first, last + 1) * control.step, 9)
    return np.unique(np.append(grid, current))


def _draw(choices: list[np.ndarray], count: int,
          rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """Level indices: every combination of `choices` when there are at most `count`, else
    `count` random ones."""
    total = math.prod(len(c) for c in choices)
    if total <= count:
        grids = np.meshgrid(*choices, indexing="ij")
        return np.stack([g.reshape(-1) for g in grids], axis=1), True
    return np.stack([c[rng.integers(0, len(c), size=count)] for c in choices], axis=1), False


def _values(levels: list[np.ndarray], index: np.ndarray) -> np.ndarray:
    return np.stack([lv[index[:, k]] for k, lv in enumerate(levels)], axis=1)


def offer_refusal(proposal: Proposal, config: SearchSettings, objective: Objective,
                  open_one: RecommendationPayload | None,
                  last_closed: tuple[RecommendationPayload, float] | None,
                  now: float) -> str | None:
    """Why this proposal is not shown (None: offer it); keeps recommendations from flapping.

    `last_closed` is the last answered or expired recommendation and when it closed.
    """
    if not proposal.changed:
        return "the current setting is the best found"
    if proposal.improvement <= config.min_improvement or proposal.improvement <= 0:
        return (f"best improvement {proposal.improvement:.4g} is not more than "
                f"min_improvement {config.min_improvement:g}")
    if open_one is not None:
        if _same_setting(open_one, proposal, config):
            return "the open recommendation already proposes this"
        gain = float(objective.score(np.asarray([open_one.predicted_after]))[0]
                     - objective.score(np.asarray([proposal.predicted_after]))[0])
        if gain <= config.min_improvement or gain <= 0:
            return f"it beats the open recommendation by only {gain:.4g}"
    elif last_closed is not None:
        earlier, closed_at = last_closed
        if _same_setting(earlier, proposal, config) and now - closed_at < config.hold_s:
            return (f"the same setting was proposed until {now - closed_at:.0f} s ago; it is "
                    f"proposed again {config.hold_s:g} s after")
    return None


def _same_setting(earlier: RecommendationPayload, proposal: Proposal,
                  config: SearchSettings) -> bool:
    before = {c.tag: c.proposed for c in earlier.changes}
    after = proposal.changed
    if set(before) != set(after):
        return False
    return all(abs(before[t] - after[t]) <= config.controls[t].step + ROUNDING
               for t in after if t in config.controls)

"""What the pipelines see of each model version, for shadow runs, probation and the watch after.

Pipelines report every inference here (`observe`, `observe_shadow`, `observe_shadow_decision`)
and every operator answer to a recommendation (`observe_answer`); the deployer opens a shadow
session before activating a version, a probation window after, and then watch windows for as
long as the version serves. Thresholds come from the manifest's typed metadata (`shadow`,
`probation`, `watch`), with the defaults of the contract's policies.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from edge_agent.inference.model_check import all_finite
from edge_agent.kernel.contract import ProbationPolicy, ShadowPolicy
from edge_agent.model_store import InstalledModel

_REFERENCE_OUTPUTS = 200  # outputs of the active version kept to compare a successor with
# A near-constant reference output still allows this share of its mean as one spread: a
# successor is not rolled back for noise around a flat line.
MIN_RELATIVE_SPREAD = 0.1
MIN_SPREAD = 1e-9  # and a reference of zeros does not divide by zero


def first_value(outputs: dict[str, np.ndarray]) -> float:
    """The first element of the first output: what probation and shadow compare."""
    for value in outputs.values():
        flat = np.asarray(value, dtype=np.float64).reshape(-1)
        if flat.size:
            return float(flat[0])
    return math.nan


@dataclass
class VersionStats:
    """What one version did over a span (its probation, or one watch window), judged against
    the probation thresholds."""

    name: str
    sha256: str
    policy: ProbationPolicy
    latency_budget_ms: float | None
    reference: list[float]
    observations: int = 0
    errors: int = 0
    nonfinite: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    answers: int = 0  # the operators' answers to the version's recommendations
    rejected: int = 0
    started_at: float = field(default_factory=time.time)

    def add(self, value: float | None, latency_ms: float, error: str | None) -> None:
        self.observations += 1
        if error is not None:
            self.errors += 1
        elif value is None or not math.isfinite(value):
            self.nonfinite += 1
        else:
            self.values.append(value)
            self.latencies_ms.append(latency_ms)

    def add_answer(self, rejected: bool) -> None:
        self.answers += 1
        self.rejected += int(rejected)

    def breaches(self) -> list[str]:
        """Each threshold breached by what was seen so far, in words; empty when none."""
        policy, found = self.policy, []
        if self.nonfinite > policy.max_nonfinite:
            found.append(f"{self.nonfinite} of {self.observations} outputs were NaN or infinite "
                         f"(at most {policy.max_nonfinite} tolerated)")
        if self.answers >= policy.min_answers and \
                self.rejected / self.answers > policy.max_rejection_rate:
            found.append(f"operators rejected {self.rejected} of {self.answers} recommendations "
                         f"({self.rejected / self.answers:.0%}), above the "
                         f"{policy.max_rejection_rate:.0%} allowed")
        if self.observations < policy.min_observations:
            return found
        if self.errors / self.observations > policy.max_error_rate:
            found.append(f"{self.errors} of {self.observations} inferences failed "
                         f"(more than {policy.max_error_rate:.0%})")
        p99 = self.latency_p99_ms()
        if self.latency_budget_ms and p99 is not None and \
                len(self.latencies_ms) >= policy.min_observations:
            limit = self.latency_budget_ms * policy.latency_p99_factor
            if p99 > limit:
                found.append(f"latency p99 {p99:.1f} ms over {limit:.1f} ms")
        shift = self.output_shift()
        if shift is not None and policy.max_output_shift is not None \
                and shift > policy.max_output_shift:
            found.append(f"outputs shifted by {shift:.1f} spreads from the previous version's "
                         f"(at most {policy.max_output_shift})")
        return found

    def latency_p99_ms(self) -> float | None:
        return float(np.percentile(self.latencies_ms, 99)) if self.latencies_ms else None

    def output_shift(self) -> float | None:
        if len(self.values) < self.policy.min_observations or \
                len(self.reference) < self.policy.min_observations:
            return None
        reference_mean = statistics.fmean(self.reference)
        spread = max(statistics.pstdev(self.reference), MIN_RELATIVE_SPREAD * abs(reference_mean),
                     MIN_SPREAD)
        return abs(statistics.fmean(self.values) - reference_mean) / spread

    def summary(self) -> str:
        parts = [f"{self.observations} inferences", f"{self.errors} failed"]
        p99 = self.latency_p99_ms()
        if p99 is not None:
            parts.append(f"p99 {p99:.1f} ms")
        shift = self.output_shift()
        if shift is not None:
            parts.append(f"output shift {shift:.2f}")
        if self.answers:
            parts.append(f"{self.rejected} of {self.answers} recommendations rejected")
        return ", ".join(parts)


@dataclass
class Probation(VersionStats):
    """One newly activated version under watch: the first breach trips it."""

    verdict: str | None = None  # why it must be rolled back
    tripped: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, value: float | None, latency_ms: float, error: str | None) -> None:
        super().add(value, latency_ms, error)
        self._judge()

    def add_answer(self, rejected: bool) -> None:
        super().add_answer(rejected)
        self._judge()

    def _judge(self) -> None:
        if self.verdict is None:
            self.verdict = next(iter(self.breaches()), None)
        if self.verdict:
            self.tripped.set()


@dataclass
class ShadowRun:
    """A candidate version run beside the active one on the same inputs.

    Process pipelines compare outputs (`add`); vision pipelines compare each region's decision
    (`add_decision`)."""

    candidate: InstalledModel
    policy: ShadowPolicy
    compared: int = 0
    agreed: int = 0
    errors: int = 0
    max_difference: float = 0.0
    started: float = field(default_factory=time.monotonic)
    enough: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, active: float, shadow: float | None) -> None:
        if shadow is None or not math.isfinite(shadow):
            self.add_decision(None)
            return
        difference = abs(shadow - active)
        self.max_difference = max(self.max_difference, difference)
        self.add_decision(difference <= self.policy.tolerance)

    def add_decision(self, agreed: bool | None) -> None:
        """One comparison: agreed, disagreed, or None when the candidate failed on it."""
        self.compared += 1
        if agreed is None:
            self.errors += 1
        elif agreed:
            self.agreed += 1
        if self.compared >= self.policy.predictions:
            self.enough.set()

    @property
    def vision(self) -> bool:
        return self.candidate.manifest.kind == "vision"

    @property
    def unit(self) -> str:
        return "regions" if self.vision else "inputs"

    @property
    def agreement(self) -> float:
        return self.agreed / self.compared if self.compared else 0.0

    def shortfall(self, elapsed_s: float) -> str | None:
        """Why the run proves nothing (too few comparisons), or None."""
        required = self.policy.required_comparisons
        if self.compared >= required:
            return None
        hint = ("is the camera delivering frames?" if self.vision
                else "is the line delivering fresh tag values?")
        took = f"{elapsed_s:.0f}" if elapsed_s >= 10 else f"{elapsed_s:.1f}"
        return (f"shadow run compared {self.compared} {self.unit} in {took} s (at least "
                f"{required} needed); {hint}")

    def summary(self) -> str:
        how = ("label and defect classes" if self.vision else
               f"tolerance {self.policy.tolerance}, max difference {self.max_difference:.3g}")
        return (f"agreement {self.agreement:.0%} over {self.compared} {self.unit} "
                f"({how}, {self.errors} failed)")


class ModelWatch:
    """Shared by the pipelines (which report) and the deployer (which decides)."""

    def __init__(self) -> None:
        self._recent: dict[str, deque[float]] = {}  # by sha256
        self._probations: dict[str, Probation] = {}  # by model name
        self._shadows: dict[str, ShadowRun] = {}  # by model name
        self._windows: dict[str, VersionStats] = {}  # by model name: the watch after probation

    # --- pipelines report ---

    def observe(self, name: str, sha256: str, outputs: dict[str, np.ndarray] | None,
                latency_ms: float, error: str | None = None) -> None:
        value = None
        if outputs is not None and all_finite(outputs):
            value = first_value(outputs)
            self._recent.setdefault(sha256, deque(maxlen=_REFERENCE_OUTPUTS)).append(value)
        for stats in self._judged(name, sha256):
            stats.add(value, latency_ms, error)

    def observe_answer(self, name: str, sha256: str, rejected: bool) -> None:
        """An operator accepted or rejected a recommendation the version `sha256` made."""
        for stats in self._judged(name, sha256):
            stats.add_answer(rejected)

    def recent_outputs(self, sha256: str) -> list[float]:
        """The latest outputs of version `sha256` seen since the agent started."""
        return list(self._recent.get(sha256, ()))

    def shadow_candidate(self, name: str) -> InstalledModel | None:
        run = self._shadows.get(name)
        return run.candidate if run is not None else None

    def observe_shadow(self, name: str, active: dict[str, np.ndarray],
                       shadow: dict[str, np.ndarray] | None) -> None:
        run = self._shadows.get(name)
        if run is None:
            return
        value = first_value(shadow) if shadow is not None and all_finite(shadow) else None
        run.add(first_value(active), value)

    def observe_shadow_decision(self, name: str, sha256: str, agreed: bool | None) -> None:
        """The candidate `sha256` decided one input (a region) as the active version did, or
        not; None: it failed on it."""
        run = self._shadows.get(name)
        if run is not None and run.candidate.manifest.sha256 == sha256:
            run.add_decision(agreed)

    def _judged(self, name: str, sha256: str) -> list[VersionStats]:
        spans = (self._probations.get(name), self._windows.get(name))
        return [s for s in spans if s is not None and s.sha256 == sha256]

    # --- the deployer decides ---

    def start_probation(self, candidate: InstalledModel, previous_sha256: str | None,
                        policy: ProbationPolicy) -> Probation:
        manifest = candidate.manifest
        reference = self.recent_outputs(previous_sha256 or "")
        probation = Probation(manifest.name, manifest.sha256, policy,
                              manifest.meta.latency_budget_ms, reference)
        self._probations[manifest.name] = probation
        return probation

    def end_probation(self, probation: Probation) -> None:
        if self._probations.get(probation.name) is probation:
            del self._probations[probation.name]

    def start_shadow(self, candidate: InstalledModel, policy: ShadowPolicy) -> ShadowRun:
        run = ShadowRun(candidate, policy)
        self._shadows[candidate.manifest.name] = run
        return run

    def end_shadow(self, run: ShadowRun) -> None:
        if self._shadows.get(run.candidate.manifest.name) is run:
            del self._shadows[run.candidate.manifest.name]

    def start_window(self, active: InstalledModel, reference: list[float]) -> VersionStats:
        """Open one watch window on the active version (its probation thresholds)."""
        manifest = active.manifest
        window = VersionStats(manifest.name, manifest.sha256, manifest.meta.probation_policy,
                              manifest.meta.latency_budget_ms, reference)
        self._windows[manifest.name] = window
        return window

    def end_window(self, window: VersionStats) -> None:
        if self._windows.get(window.name) is window:
            del self._windows[window.name]

"""What the pipelines see of each model version, for shadow runs and probation.

Pipelines report every inference here (`observe`, `observe_shadow`); the deployer opens a
shadow session before activating a version and a probation window after, and waits on them.
Thresholds come from the manifest's typed metadata (`shadow`, `probation`), with the
defaults of the contract's `ShadowPolicy` and `ProbationPolicy`.
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
class Probation:
    """One newly activated version under watch."""

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
    verdict: str | None = None  # why it must be rolled back
    tripped: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, value: float | None, latency_ms: float, error: str | None) -> None:
        self.observations += 1
        if error is not None:
            self.errors += 1
        elif value is None or not math.isfinite(value):
            self.nonfinite += 1
        else:
            self.values.append(value)
            self.latencies_ms.append(latency_ms)
        self.verdict = self.verdict or self._judge()
        if self.verdict:
            self.tripped.set()

    def _judge(self) -> str | None:
        policy = self.policy
        if self.nonfinite > policy.max_nonfinite:
            return (f"{self.nonfinite} of {self.observations} outputs were NaN or infinite "
                    f"(at most {policy.max_nonfinite} tolerated)")
        if self.observations < policy.min_observations:
            return None
        if self.errors / self.observations > policy.max_error_rate:
            return (f"{self.errors} of {self.observations} inferences failed "
                    f"(more than {policy.max_error_rate:.0%})")
        if self.latency_budget_ms and len(self.latencies_ms) >= policy.min_observations:
            p99 = float(np.percentile(self.latencies_ms, 99))
            limit = self.latency_budget_ms * policy.latency_p99_factor
            if p99 > limit:
                return f"latency p99 {p99:.1f} ms over {limit:.1f} ms"
        shift = self.output_shift()
        if shift is not None and policy.max_output_shift is not None \
                and shift > policy.max_output_shift:
            return (f"outputs shifted by {shift:.1f} spreads from the previous version's "
                    f"(at most {policy.max_output_shift})")
        return None

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
        if self.latencies_ms:
            parts.append(f"p99 {float(np.percentile(self.latencies_ms, 99)):.1f} ms")
        shift = self.output_shift()
        if shift is not None:
            parts.append(f"output shift {shift:.2f}")
        return ", ".join(parts)


@dataclass
class ShadowRun:
    """A candidate version run beside the active one on the same inputs."""

    candidate: InstalledModel
    policy: ShadowPolicy
    compared: int = 0
    agreed: int = 0
    errors: int = 0
    max_difference: float = 0.0
    started: float = field(default_factory=time.monotonic)
    enough: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, active: float, shadow: float | None) -> None:
        self.compared += 1
        if shadow is None or not math.isfinite(shadow):
            self.errors += 1
        else:
            difference = abs(shadow - active)
            self.max_difference = max(self.max_difference, difference)
            if difference <= self.policy.tolerance:
                self.agreed += 1
        if self.compared >= self.policy.predictions:
            self.enough.set()

    @property
    def agreement(self) -> float:
        return self.agreed / self.compared if self.compared else 0.0

    def summary(self) -> str:
        return (f"agreement {self.agreement:.0%} over {self.compared} inputs "
                f"(tolerance {self.policy.tolerance}, max difference "
                f"{self.max_difference:.3g}, {self.errors} failed)")


class ModelWatch:
    """Shared by the pipelines (which report) and the deployer (which decides)."""

    def __init__(self) -> None:
        self._recent: dict[str, deque[float]] = {}  # by sha256
        self._probations: dict[str, Probation] = {}  # by model name
        self._shadows: dict[str, ShadowRun] = {}  # by model name

    # --- pipelines report ---

    def observe(self, name: str, sha256: str, outputs: dict[str, np.ndarray] | None,
                latency_ms: float, error: str | None = None) -> None:
        value = None
        if outputs is not None and all_finite(outputs):
            value = first_value(outputs)
            self._recent.setdefault(sha256, deque(maxlen=_REFERENCE_OUTPUTS)).append(value)
        probation = self._probations.get(name)
        if probation is not None and probation.sha256 == sha256:
            probation.add(value, latency_ms, error)

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

    # --- the deployer decides ---

    def start_probation(self, candidate: InstalledModel, previous_sha256: str | None,
                        policy: ProbationPolicy) -> Probation:
        manifest = candidate.manifest
        reference = list(self._recent.get(previous_sha256 or "", ()))
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

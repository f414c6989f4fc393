"""Drift: how far what a model sees in the plant has moved from what it was trained on.

Pure functions over histograms on the same edges: the reference counts from the model's
manifest (`metadata.reference`) against the counts the agents sent in `model_stats` records.
Two measures: the population stability index (PSI; under 0.1 stable, 0.1 to 0.25 moving, over
0.25 shifted) and a two-sample Kolmogorov-Smirnov test on the binned distributions.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_agent.kernel.contract import ModelStatsPayload, ReferenceStats

PSI_DRIFT = 0.25  # the usual reading of PSI: over 0.25 the population has shifted
# KS: a 1 % chance of calling an unchanged distribution drifted; stricter than the usual 5 %
# because a report tests every input and output of a model at once.
P_VALUE_DRIFT = 0.01
MIN_COUNT = 30  # fewer observations say nothing either way
_EPSILON = 1e-4  # an empty bin counts as this share, so PSI stays finite
REPORT_DIGITS = 4  # of PSI and D: enough to compare with the thresholds, no false precision
LATENCY_QUANTILES = (0.5, 0.99)  # the median and the tail, as operators read latency
# Stephens' correction of the KS statistic for a finite effective sample size n:
# (sqrt(n) + 0.12 + 0.11 / sqrt(n)) * D, accurate from a handful of observations on.
_STEPHENS_OFFSET = 0.12
_STEPHENS_SLOPE = 0.11
_KS_Q_IS_ONE_BELOW = 0.2  # P(K > x) rounds to 1 below this, where the series is slow
_KS_SERIES_TERMS = 100  # terms of the alternating series: far beyond double precision


def psi(reference: Sequence[float], observed: Sequence[float]) -> float:
    """Population stability index of `observed` against `reference` (counts on one set of
    bins): sum over bins of (p - q) * ln(p / q) with the shares p, q."""
    expected = _shares(reference)
    actual = _shares(observed)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def ks_binned(reference: Sequence[float], observed: Sequence[float]) -> tuple[float, float]:
    """The two-sample Kolmogorov-Smirnov statistic D (largest gap between the two cumulative
    distributions, at the bin edges) and its asymptotic p-value."""
    n1, n2 = float(np.sum(reference)), float(np.sum(observed))
    if n1 <= 0 or n2 <= 0:
        return 0.0, 1.0
    gap = np.abs(np.cumsum(reference) / n1 - np.cumsum(observed) / n2)
    d = float(gap.max())
    effective = math.sqrt(n1 * n2 / (n1 + n2))
    return d, _kolmogorov_q((effective + _STEPHENS_OFFSET + _STEPHENS_SLOPE / effective) * d)


def _kolmogorov_q(x: float) -> float:
    """P(K > x) for the Kolmogorov distribution (the series converges fast for x > 0.2)."""
    if x < _KS_Q_IS_ONE_BELOW:
        return 1.0
    total = sum((-1) ** (k - 1) * math.exp(-2 * k * k * x * x)
                for k in range(1, _KS_SERIES_TERMS + 1))
    return float(min(1.0, max(0.0, 2 * total)))


def _shares(counts: Sequence[float]) -> np.ndarray:
    values = np.asarray(counts, dtype=np.float64)
    total = values.sum()
    shares = values / total if total > 0 else np.full(len(values), 1 / len(values))
    return np.maximum(shares, _EPSILON)


@dataclass(frozen=True)
class FeatureDrift:
    side: str  # inputs or outputs
    name: str
    count: int
    psi: float | None
    ks: float | None
    p_value: float | None

    @property
    def drifted(self) -> bool:
        return self.count >= MIN_COUNT and self.psi is not None and self.p_value is not None \
            and (self.psi > PSI_DRIFT or self.p_value < P_VALUE_DRIFT)

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "drifted": self.drifted}


def merged_counts(windows: Iterable[ModelStatsPayload], side: str,
                  name: str) -> tuple[list[float], np.ndarray] | None:
    """The summed histogram of one value over several intervals (on their common edges)."""
    edges, total = None, None
    for window in windows:
        stats = getattr(window, side).get(name)
        if stats is None or stats.histogram is None:
            continue
        if edges is None:
            edges, total = stats.histogram.edges, np.zeros(len(stats.histogram.counts))
        if stats.histogram.edges == edges:
            total = total + np.asarray(stats.histogram.counts)  # type: ignore[operator]
    return (edges, total) if edges is not None and total is not None else None


def drift_report(reference: ReferenceStats, windows: Sequence[ModelStatsPayload]
                 ) -> list[FeatureDrift]:
    """PSI and KS of every value the reference has, over the given intervals."""
    report = []
    for side, histograms in (("inputs", reference.inputs), ("outputs", reference.outputs)):
        for name, expected in sorted(histograms.items()):
            merged = merged_counts(windows, side, name)
            if merged is None or merged[0] != expected.edges or not merged[1].sum():
                report.append(FeatureDrift(side, name, 0, None, None, None))
                continue
            observed = merged[1]
            d, p_value = ks_binned(expected.counts, observed)
            report.append(FeatureDrift(side, name, int(observed.sum()),
                                       round(psi(expected.counts, observed), REPORT_DIGITS),
                                       round(d, REPORT_DIGITS), p_value))
    return report


def latency_percentiles(windows: Sequence[ModelStatsPayload],
                        quantiles: Sequence[float] = LATENCY_QUANTILES
                        ) -> dict[str, float | None]:
    """Latency percentiles from the merged histograms (each bin's upper edge: an upper bound)."""
    if not windows:
        return {f"p{round(q * 100)}": None for q in quantiles}
    edges = windows[0].latency_ms.edges
    counts = np.sum([w.latency_ms.counts for w in windows
                     if w.latency_ms.edges == edges], axis=0)
    cumulative = np.cumsum(counts) / max(1, counts.sum())
    return {f"p{round(q * 100)}": float(edges[min(len(edges) - 1, int(np.searchsorted(
        cumulative, q)) + 1)]) for q in quantiles}

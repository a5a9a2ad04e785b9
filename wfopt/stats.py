"""Statistics for held-out comparisons: pure functions, formulas in the docstrings.

Two workflows (or two policies) scored on the *same* problems are compared pairwise: the
per-problem differences d_i = a_i - b_i carry the comparison, so problem difficulty, which
both share, cancels. Intervals of each accuracy alone (Wilson) overlap long before a paired
test stops telling the two apart.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a proportion p = successes / n:

        (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)

    Well-behaved at 0 and n, unlike the Wald interval. n = 0 gives (0, 0).
    """
    if n == 0:
        return (0.0, 0.0)
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, center - half), min(1.0, center + half))


def mcnemar_exact(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided exact McNemar p-value for paired binary outcomes (1 = solved).

    Only discordant pairs count: n01 problems that only `b` solved, n10 that only `a` solved.
    Under H0 each discordant pair falls either way with probability 1/2, so with
    n = n01 + n10 and k = min(n01, n10):  p = min(1, 2 · Σ_{i<=k} C(n, i) / 2^n).
    No discordant pair: p = 1. Returns None when a score is not 0 or 1 (use the bootstrap).
    """
    _check_paired(a, b)
    if any(x not in (0, 1) for x in (*a, *b)):
        return None
    n10 = sum(1 for x, y in zip(a, b, strict=True) if x == 1 and y == 0)
    n01 = sum(1 for x, y in zip(a, b, strict=True) if x == 0 and y == 1)
    n = n01 + n10
    if n == 0:
        return 1.0
    k = min(n01, n10)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_bootstrap(
    a: Sequence[float], b: Sequence[float], *, resamples: int = 10_000, seed: int = 0
) -> tuple[float, float, float, float]:
    """(mean difference, 95% CI low, high, two-sided p) of mean(a) - mean(b) on paired scores.

    Problems are resampled with replacement (the same indices for both sides), B times; the
    interval is the 2.5/97.5 percentiles (linear interpolation) of the resampled mean differences d*_b. The p-value
    is the percentile test p = min(1, 2·min(#{d* <= 0}, #{d* >= 0}) / B): with every
    difference 0 it is 1. Deterministic for a given `seed`.
    """
    _check_paired(a, b)
    n = len(a)
    if n == 0:
        raise ValueError("paired_bootstrap: no problems")
    diffs = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    rng = np.random.default_rng(seed)
    boot = diffs[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
    # exact zeros stay zeros: means of the all-zero resamples must not round to +-1e-17
    boot = np.round(boot, 12)
    low, high = np.quantile(boot, [0.025, 0.975])
    p = min(1.0, 2 * min(int((boot <= 0).sum()), int((boot >= 0).sum())) / resamples)
    return float(diffs.mean()), float(low), float(high), p


@dataclass(frozen=True)
class PairedComparison:
    """`a` vs `b` on the same problems: mean difference with its 95% bootstrap interval, the
    bootstrap p-value and (binary scores only) McNemar's exact p-value."""

    n: int
    diff: float
    ci95: tuple[float, float]
    p_bootstrap: float
    p_mcnemar: float | None

    def as_dict(self) -> dict:
        return {**asdict(self), "ci95": list(self.ci95)}


def compare_paired(a: Sequence[float], b: Sequence[float], seed: int = 0) -> PairedComparison:
    """Both paired tests of per-problem scores `a` against `b` (same problems, same order)."""
    diff, low, high, p = paired_bootstrap(a, b, seed=seed)
    return PairedComparison(len(a), diff, (low, high), p, mcnemar_exact(a, b))


def _check_paired(a: Sequence[float], b: Sequence[float]) -> None:
    if len(a) != len(b):
        raise ValueError(f"paired scores differ in length: {len(a)} vs {len(b)}")

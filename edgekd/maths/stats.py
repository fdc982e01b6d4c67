"""Paired statistics for comparing two classifiers on the same images.

On 5,000 images one top-1 figure has a standard error of about 0.5 points, so a difference
between two models means little without its uncertainty. Both models are scored on the same
images, so the comparison is paired: the bootstrap resamples images (not models) and McNemar's
test looks only at the images on which the two disagree.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 10_000


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts.

    `only_a`: images model A gets right and B wrong; `only_b`: the reverse. Under the null
    (the models are equally accurate) each discordant image is a fair coin, so the p-value is
    twice the binomial tail of the smaller count, capped at 1. Exact integer arithmetic.
    """
    if only_a < 0 or only_b < 0:
        raise ValueError(f"discordant counts must be >= 0, got {only_a} and {only_b}")
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1))
    return min(1.0, 2 * tail / 2**n)


def paired_bootstrap_ci(
    correct_a: np.ndarray,
    correct_b: np.ndarray,
    *,
    confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of acc(B) - acc(A), resampling images with replacement.

    The per-image difference takes only the values -1, 0 and +1, so resampling n images is
    drawing their counts from a multinomial with the observed shares: the same distribution as
    resampling indices, at a cost independent of n.
    """
    a, b = _as_correct(correct_a, correct_b)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    n = a.size
    only_b = int(np.sum(b & ~a))
    only_a = int(np.sum(a & ~b))
    shares = np.array([only_a, n - only_a - only_b, only_b], np.float64) / n
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, shares, size=resamples)
    diffs = (counts[:, 2] - counts[:, 0]) / n
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(diffs, [tail, 1.0 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class PairedComparison:
    """Model B against model A on the same images: difference, 95% interval, McNemar p."""

    a: str
    b: str
    images: int
    accuracy_a: float
    accuracy_b: float
    difference: float  # accuracy_b - accuracy_a, as a fraction
    ci_low: float
    ci_high: float
    only_a: int  # images A gets right and B wrong
    only_b: int
    p_value: float
    confidence: float = CONFIDENCE

    @property
    def significant(self) -> bool:
        """The interval excludes zero."""
        return self.ci_low > 0.0 or self.ci_high < 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "significant": self.significant}

    def describe(self) -> str:
        """'+0.42 pp [+0.10, +0.74], p=0.012' (points, interval, McNemar)."""
        return (
            f"{100 * self.difference:+.2f} pp "
            f"[{100 * self.ci_low:+.2f}, {100 * self.ci_high:+.2f}], p={format_p(self.p_value)}"
        )


def compare_paired(
    name_a: str,
    correct_a: np.ndarray,
    name_b: str,
    correct_b: np.ndarray,
    *,
    confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> PairedComparison:
    """B against A from per-image correctness (bool arrays over the same images)."""
    a, b = _as_correct(correct_a, correct_b)
    only_a = int(np.sum(a & ~b))
    only_b = int(np.sum(b & ~a))
    low, high = paired_bootstrap_ci(
        a, b, confidence=confidence, resamples=resamples, seed=seed
    )
    return PairedComparison(
        a=name_a,
        b=name_b,
        images=int(a.size),
        accuracy_a=float(a.mean()),
        accuracy_b=float(b.mean()),
        difference=float(b.mean() - a.mean()),
        ci_low=low,
        ci_high=high,
        only_a=only_a,
        only_b=only_b,
        p_value=mcnemar_exact(only_a, only_b),
        confidence=confidence,
    )


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    if not len(values):
        raise ValueError("mean_std needs at least one value")
    x = np.asarray(values, np.float64)
    return float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else 0.0


def format_p(p: float) -> str:
    """A p-value for a table: three significant figures, or '<1e-6'."""
    return "<1e-6" if p < 1e-6 else f"{p:.3g}"


def _as_correct(correct_a: np.ndarray, correct_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(correct_a).astype(bool).ravel()
    b = np.asarray(correct_b).astype(bool).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired comparison needs the same images: {a.size} vs {b.size}")
    if a.size == 0:
        raise ValueError("paired comparison needs at least one image")
    return a, b

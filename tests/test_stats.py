"""Paired statistics: exact McNemar, paired bootstrap interval, mean/std over seeds."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest

from edgekd.maths.stats import compare_paired, mcnemar_exact, mean_std, paired_bootstrap_ci


@pytest.mark.parametrize(
    "only_a, only_b, expected",
    [
        (0, 0, 1.0),
        (0, 5, 2 / 32),  # 2 * P(X <= 0), X ~ Bin(5, 1/2)
        (5, 0, 2 / 32),
        (1, 5, 2 * (1 + 6) / 64),  # 2 * (C(6,0) + C(6,1)) / 2^6
        (3, 3, 1.0),  # 2 * 42/64 > 1, capped
        (2, 8, 2 * (1 + 10 + 45) / 1024),
    ],
)
def test_mcnemar_hand_computed(only_a, only_b, expected):
    assert mcnemar_exact(only_a, only_b) == pytest.approx(expected, rel=1e-12)


def test_mcnemar_matches_scipy_binomial_test():
    rng = np.random.default_rng(0)
    for _ in range(30):
        a, b = (int(x) for x in rng.integers(0, 400, size=2))
        if a + b == 0:
            continue
        expected = binomtest(min(a, b), a + b, 0.5).pvalue
        assert mcnemar_exact(a, b) == pytest.approx(expected, rel=1e-9, abs=1e-300)


def test_mcnemar_large_counts_do_not_overflow():
    p = mcnemar_exact(2000, 2300)
    assert 0.0 < p < 1e-3
    assert math.isfinite(p)


def test_mcnemar_rejects_negative():
    with pytest.raises(ValueError, match=">= 0"):
        mcnemar_exact(-1, 3)


def test_bootstrap_degenerate_cases():
    same = np.array([1, 0, 1, 1, 0], bool)
    assert paired_bootstrap_ci(same, same) == (0.0, 0.0)
    wrong, right = np.zeros(50, bool), np.ones(50, bool)
    assert paired_bootstrap_ci(wrong, right) == (1.0, 1.0)
    assert paired_bootstrap_ci(right, wrong) == (-1.0, -1.0)


def test_bootstrap_matches_brute_force_index_resampling():
    rng = np.random.default_rng(1)
    n = 60
    a = rng.random(n) < 0.7
    b = rng.random(n) < 0.8
    low, high = paired_bootstrap_ci(a, b, resamples=40_000, seed=3)
    idx = rng.integers(0, n, size=(40_000, n))
    diffs = b[idx].mean(1) - a[idx].mean(1)
    ref_low, ref_high = np.quantile(diffs, [0.025, 0.975])
    step = 1 / n  # both are discrete on the grid k/n
    assert abs(low - ref_low) <= step + 1e-12
    assert abs(high - ref_high) <= step + 1e-12


def test_bootstrap_width_matches_normal_approximation():
    n, only_a, only_b = 5000, 300, 350
    a = np.zeros(n, bool)
    b = np.zeros(n, bool)
    a[:only_a] = True
    b[only_a : only_a + only_b] = True
    both = slice(only_a + only_b, only_a + only_b + 3000)
    a[both] = b[both] = True
    low, high = paired_bootstrap_ci(a, b)
    pa, pb = only_a / n, only_b / n
    se = math.sqrt((pa + pb - (pb - pa) ** 2) / n)
    assert (high - low) / 2 == pytest.approx(1.96 * se, rel=0.05)
    assert low < (pb - pa) < high


def test_bootstrap_is_seeded():
    rng = np.random.default_rng(2)
    a, b = rng.random(500) < 0.6, rng.random(500) < 0.65
    assert paired_bootstrap_ci(a, b, seed=7) == paired_bootstrap_ci(a, b, seed=7)


def test_compare_paired_counts_and_direction():
    a = np.array([1, 1, 1, 0, 0, 1, 0, 1], bool)
    b = np.array([1, 0, 1, 1, 1, 1, 1, 1], bool)
    c = compare_paired("control", a, "distilled", b)
    assert (c.only_a, c.only_b, c.images) == (1, 3, 8)
    assert c.accuracy_a == pytest.approx(5 / 8) and c.accuracy_b == pytest.approx(7 / 8)
    assert c.difference == pytest.approx(2 / 8)
    assert c.p_value == pytest.approx(2 * (1 + 4) / 16)  # min(1, 2 * P(X <= 1), n = 4)
    assert c.ci_low <= c.difference <= c.ci_high
    d = c.to_dict()
    assert d["a"] == "control" and d["b"] == "distilled" and d["significant"] is c.significant
    assert "pp [" in c.describe() and "p=" in c.describe()


def test_compare_paired_rejects_unpaired():
    with pytest.raises(ValueError, match="same images"):
        compare_paired("a", np.ones(3, bool), "b", np.ones(4, bool))
    with pytest.raises(ValueError, match="at least one"):
        compare_paired("a", np.ones(0, bool), "b", np.ones(0, bool))


def test_mean_std():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert mean_std([0.8]) == (0.8, 0.0)
    with pytest.raises(ValueError):
        mean_std([])

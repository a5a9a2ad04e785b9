"""Paired statistics, checked against cases worked by hand."""

from __future__ import annotations

import math

import pytest

from wfopt.stats import compare_paired, mcnemar_exact, paired_bootstrap, wilson_interval


def test_mcnemar_hand_worked_cases():
    # only `a` solves 3 problems, no problem only `b` solves: p = 2 * C(3,0) / 2^3 = 0.25
    assert mcnemar_exact([1, 1, 1, 0, 0], [0, 0, 0, 0, 0]) == pytest.approx(0.25)
    # 5 vs 1 discordant: p = 2 * (C(6,0) + C(6,1)) / 2^6 = 14 / 64
    a = [1] * 5 + [0] + [1, 0]
    b = [0] * 5 + [1] + [1, 0]
    assert mcnemar_exact(a, b) == pytest.approx(14 / 64)
    # one each way: 2 * (1 + 2) / 4 > 1, capped at 1
    assert mcnemar_exact([1, 0], [0, 1]) == 1.0
    # every problem agrees (ties only): no evidence either way
    assert mcnemar_exact([1, 0, 1], [1, 0, 1]) == 1.0
    # symmetric in its arguments
    assert mcnemar_exact(b, a) == mcnemar_exact(a, b)
    # not binary: McNemar does not apply
    assert mcnemar_exact([0.5, 1], [0, 1]) is None


def test_mcnemar_large_discordance_is_significant():
    a, b = [1] * 12, [0] * 12
    assert mcnemar_exact(a, b) == pytest.approx(2 / 2**12)


def test_paired_bootstrap_all_agree_and_all_differ():
    diff, low, high, p = paired_bootstrap([1, 0, 1, 1], [1, 0, 1, 1])
    assert (diff, low, high, p) == (0.0, 0.0, 0.0, 1.0)
    diff, low, high, p = paired_bootstrap([1] * 10, [0] * 10)
    assert (diff, low, high, p) == (1.0, 1.0, 1.0, 0.0)


def test_paired_bootstrap_interval_and_determinism():
    a = [1, 1, 0, 1, 0, 1, 1, 0, 1, 1] * 4
    b = [0, 1, 0, 0, 0, 1, 0, 0, 1, 0] * 4
    diff, low, high, p = paired_bootstrap(a, b, seed=7)
    assert diff == pytest.approx((sum(a) - sum(b)) / len(a))  # 0.4
    assert low < diff < high and low > 0 and p < 0.01
    # the bootstrap standard error of a mean difference is about sd(d) / sqrt(n)
    d = [x - y for x, y in zip(a, b, strict=True)]
    mean = sum(d) / len(d)
    se = math.sqrt(sum((x - mean) ** 2 for x in d) / len(d) / len(d))
    assert (high - low) == pytest.approx(2 * 1.96 * se, rel=0.15)
    assert paired_bootstrap(a, b, seed=7) == (diff, low, high, p)
    # swapping the sides mirrors everything
    d2, l2, h2, p2 = paired_bootstrap(b, a, seed=7)
    assert d2 == pytest.approx(-diff) and l2 == pytest.approx(-high) and h2 == pytest.approx(-low)
    assert p2 == p


def test_compare_paired_and_lengths():
    result = compare_paired([1, 1, 0], [0, 1, 0])
    assert result.n == 3 and result.p_mcnemar == 1.0
    assert result.as_dict()["ci95"] == list(result.ci95)
    with pytest.raises(ValueError, match="differ in length"):
        compare_paired([1], [1, 0])


def test_wilson_interval_known_values():
    # 0 of 20: the upper bound is z^2 / (n + z^2) = 3.8416 / 23.8416
    low, high = wilson_interval(0, 20)
    assert low == 0.0 and high == pytest.approx(3.8416 / 23.8416)
    # 10 of 20: center 0.5, half = 1.96 * sqrt(0.25/20 + 3.8416/1600) / 1.19208 = 0.20070
    low, high = wilson_interval(10, 20)
    assert low == pytest.approx(1 - high) and high == pytest.approx(0.70070, abs=1e-5)


def test_wilson_interval_by_hand():
    # n=10, k=5: center 0.5, half-width 1.96*sqrt(.025+.0096)/1.384 = 0.2634
    low, high = wilson_interval(5, 10)
    assert low == pytest.approx(0.2366, abs=1e-4) and high == pytest.approx(0.7634, abs=1e-4)
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 0.0)

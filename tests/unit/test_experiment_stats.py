"""The experiment statistics against simple references: a simulation for the delta method, scipy
for the z test, chi-square, sign test and Wilson interval, and hand-counted interleaving credits."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from rayrec.experiments.stats import (
    Z95,
    compare,
    interleaving_preference,
    mean_credit,
    ratio_metric,
    sign_test,
    srm_test,
    wilson_interval,
)


def _clustered(rng: np.random.Generator, n_users: int, reps: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Per-user impressions (1–10) and clicks, with a click rate that varies by user: (reps, n_users)."""
    impressions = rng.integers(1, 11, size=(reps, n_users))
    rate = rng.beta(1.0, 6.0, size=(reps, n_users))  # heavy users of clicks and users who never click
    return rng.binomial(impressions, rate), impressions


def test_delta_method_matches_the_spread_over_simulated_experiments():
    rng = np.random.default_rng(0)
    clicks, impressions = _clustered(rng, 1000, reps=400)
    estimates = [ratio_metric(c, i) for c, i in zip(clicks, impressions)]
    spread = np.std([e.value for e in estimates], ddof=1)
    se = np.mean([e.se for e in estimates])
    assert se == pytest.approx(spread, rel=0.1)
    covered = np.mean([e.ci_low <= 1 / 7 <= e.ci_high for e in estimates])  # the true rate: E[beta(1, 6)]
    assert 0.9 <= covered <= 0.99
    # impressions of one user are correlated: the binomial SE that ignores it is too small
    e = estimates[0]
    naive = math.sqrt(e.value * (1 - e.value) / impressions[0].sum())
    assert e.se > 1.2 * naive


def test_ratio_with_unit_denominators_is_the_mean_and_its_standard_error():
    x = np.random.default_rng(1).normal(3.0, 2.0, size=500)
    e = ratio_metric(x, np.ones_like(x))
    assert e.value == pytest.approx(x.mean())
    assert e.se == pytest.approx(np.std(x, ddof=1) / math.sqrt(x.size))
    assert (e.ci_low, e.ci_high) == pytest.approx((e.value - Z95 * e.se, e.value + Z95 * e.se))
    assert e.n_units == 500


def test_compare_agrees_with_welch_t_test_for_large_samples():
    rng = np.random.default_rng(2)
    a, b = rng.normal(1.0, 1.0, 4000), rng.normal(1.04, 1.2, 5000)
    c = compare(ratio_metric(b, np.ones_like(b)), ratio_metric(a, np.ones_like(a)))
    ref = sps.ttest_ind(b, a, equal_var=False)
    assert c.difference == pytest.approx(b.mean() - a.mean())
    assert c.p_value == pytest.approx(ref.pvalue, rel=0.02)
    assert c.z == pytest.approx(ref.statistic, rel=1e-3)
    assert c.ci_low < c.difference < c.ci_high
    assert c.relative == pytest.approx(b.mean() / a.mean() - 1)
    assert c.relative_ci_low < c.relative < c.relative_ci_high
    assert c.mde == pytest.approx((sps.norm.ppf(0.975) + sps.norm.ppf(0.8)) * c.se)
    assert c.mde_relative == pytest.approx(c.mde / a.mean())


def test_mde_is_detected_with_the_stated_power():
    """A true difference of exactly the MDE is significant in about `power` of the experiments."""
    rng = np.random.default_rng(3)
    (ct, it), (cc, ic) = _clustered(rng, 2000), _clustered(rng, 2000)
    base = compare(ratio_metric(ct[0], it[0]), ratio_metric(cc[0], ic[0]))
    draws = rng.normal(base.mde, base.se, size=20_000)  # the estimated difference, around the true MDE
    assert np.mean(np.abs(draws / base.se) > sps.norm.ppf(0.975)) == pytest.approx(0.8, abs=0.02)


def test_srm_balanced_and_skewed_against_scipy():
    fine = srm_test([5000, 5000], [0.5, 0.5])
    assert (fine.p_value, fine.mismatch, fine.chi2) == (1.0, False, 0.0)
    skewed = srm_test([6000, 4000], [1, 1])  # weights of any scale
    assert skewed.mismatch and skewed.p_value == pytest.approx(sps.chisquare([6000, 4000]).pvalue)
    three = srm_test([3050, 2950, 4000], [0.3, 0.3, 0.4])
    assert not three.mismatch and three.expected == pytest.approx([3000, 3000, 4000])
    assert three.p_value == pytest.approx(sps.chisquare([3050, 2950, 4000], [3000, 3000, 4000]).pvalue)
    assert srm_test([10, 3], [1, 0]).mismatch  # traffic to a variant configured off
    assert not srm_test([0, 0], [1, 1]).mismatch and not srm_test([7], [1]).mismatch
    with pytest.raises(ValueError, match="one weight per variant"):
        srm_test([1, 2], [1])


@pytest.mark.parametrize(("a", "b"), [(0, 1), (3, 9), (10, 10), (60, 40), (480, 520), (5200, 4800)])
def test_sign_test_is_the_exact_binomial_test(a, b):
    assert sign_test(a, b) == pytest.approx(sps.binomtest(a, a + b, 0.5).pvalue)
    assert sign_test(a, b) == pytest.approx(sign_test(b, a))


def test_wilson_interval_matches_scipy():
    for k, n in [(0, 10), (3, 10), (10, 10), (470, 1000)]:
        ci = sps.binomtest(k, n).proportion_ci(method="wilson")
        assert wilson_interval(k, n) == pytest.approx((ci.low, ci.high), abs=1e-6)


def test_interleaving_credit_wins_ties_and_no_credit():
    a = np.array([1, 0, 2, 0, 1, 2])
    b = np.array([1, 0, 0, 3, 0, 2])
    p = interleaving_preference(a, b)
    assert (p.wins_a, p.wins_b, p.ties, p.no_credit) == (2, 1, 2, 1)
    assert p.share_a == pytest.approx(2 / 3)
    assert p.delta == pytest.approx((2 + 2 / 2) / 5 - 0.5)
    assert p.p_value == pytest.approx(sps.binomtest(2, 3).pvalue)
    assert p.share_a_ci_low < p.share_a < p.share_a_ci_high
    flipped = interleaving_preference(b, a)
    assert (flipped.wins_a, flipped.wins_b, flipped.delta) == (1, 2, pytest.approx(-p.delta))


def test_edge_cases_stay_finite_where_defined():
    empty = ratio_metric(np.array([]), np.array([]))
    assert empty.n_units == 0 and math.isnan(empty.value)
    one = ratio_metric(np.array([2.0]), np.array([5.0]))
    assert one.value == 0.4 and math.isnan(one.se)  # a single user: no spread to estimate
    zero = ratio_metric(np.zeros(50), np.full(50, 3.0))
    assert (zero.value, zero.se, zero.ci_low, zero.ci_high) == (0.0, 0.0, 0.0, 0.0)
    c = compare(zero, zero)
    assert (c.difference, c.se, c.p_value, c.mde) == (0.0, 0.0, 1.0, 0.0)
    assert math.isnan(c.relative)  # relative to a zero control: undefined
    some = compare(ratio_metric(np.ones(50), np.full(50, 3.0)), zero)
    assert some.p_value == 0.0 and some.difference == pytest.approx(1 / 3)
    none = interleaving_preference(np.zeros(4), np.zeros(4))
    assert (none.wins_a, none.wins_b, none.ties, none.no_credit, none.p_value) == (0, 0, 0, 4, 1.0)
    assert math.isnan(none.share_a) and math.isnan(none.delta)
    assert interleaving_preference(np.array([]), np.array([])).no_credit == 0
    assert sign_test(0, 0) == 1.0
    with pytest.raises(ValueError, match="one value per unit"):
        ratio_metric(np.ones(3), np.ones(2))


def test_mean_credit_is_the_one_sample_t_test():
    rng = np.random.default_rng(4)
    x = rng.normal(0.3, 2.0, 400)
    m = mean_credit(x)
    t = sps.ttest_1samp(x, 0.0)
    ci = t.confidence_interval(0.95)
    assert m.units == 400 and m.mean == pytest.approx(x.mean())
    assert m.p_value == pytest.approx(t.pvalue) and (m.ci_low, m.ci_high) == pytest.approx((ci.low, ci.high))
    assert mean_credit([]).p_value == 1.0 and mean_credit([2.0]).p_value == 1.0
    assert mean_credit([0.0, 0.0]).p_value == 1.0 and mean_credit([1.0, 1.0]).p_value == 0.0
    null = [mean_credit(rng.choice([-3.0, 0.0, 0.0, 1.0, 2.0], 300)).p_value < 0.05 for _ in range(2000)]
    assert 0.035 < np.mean(null) < 0.065, "skewed credits with mean 0: the test keeps its level"

"""The statistics of online experiments: ratio metrics clustered by user, two-group comparisons, the
sample ratio mismatch check and the sign test of interleaving.

Everything here is pure numpy/scipy on per-unit arrays, so it runs the same on 100 users or 10
million:

- :func:`ratio_metric`: a metric such as clicks per impression is a ratio of two per-user sums. The
  impressions of one user are not independent, so the unit of randomisation (the user) is also the
  unit of the variance: Σnum/Σden with its variance by the delta method (Deng et al., "Applying the
  Delta Method in Metric Analytics", 2018).
- :func:`compare`: treatment against control, with a z test, a confidence interval and the minimum
  detectable effect at the traffic seen so far.
- :func:`srm_test`: users per variant against the configured split; a mismatch means the assignment
  or the logging is broken and no other number of the experiment can be trusted.
- :func:`sign_test` and :func:`interleaving_preference`: the per-impression wins of an interleaving
  experiment (Chapelle et al., "Large-scale validation and analysis of interleaved search
  evaluation", 2012).

Values that are not defined (a rate without impressions, a standard error from a single user) are
``nan``; everything defined is a finite number, also when every count is zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

__all__ = [
    "Z95",
    "SRM_ALPHA",
    "RatioEstimate",
    "Comparison",
    "SRM",
    "Preference",
    "MeanCredit",
    "mean_credit",
    "ratio_metric",
    "compare",
    "srm_test",
    "sign_test",
    "wilson_interval",
    "interleaving_preference",
]

#: the two-sided 95% normal quantile
Z95 = float(sps.norm.ppf(0.975))
#: SRM p-values below this flag a mismatch: strict, because the check runs on every analysis and a
#: false alarm stops a healthy experiment
SRM_ALPHA = 0.001


@dataclass(frozen=True)
class RatioEstimate:
    """A ratio of per-unit sums: its value, standard error (delta method), number of units and 95%
    normal confidence interval."""

    value: float
    se: float
    n_units: int
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class Comparison:
    """Treatment minus control: the absolute and relative difference, their confidence intervals at
    the ``1 - alpha`` level, the two-sided z test and the minimum detectable effect (absolute and
    relative to control) at this traffic with the given power."""

    difference: float
    relative: float
    se: float
    z: float
    p_value: float
    ci_low: float
    ci_high: float
    relative_ci_low: float
    relative_ci_high: float
    mde: float
    mde_relative: float
    alpha: float
    power: float


@dataclass(frozen=True)
class SRM:
    """Sample ratio mismatch: observed and expected units per variant, the chi-square statistic, its
    p-value and whether it flags a mismatch (p < 0.001)."""

    observed: list[int]
    expected: list[float]
    chi2: float
    p_value: float
    mismatch: bool


@dataclass(frozen=True)
class Preference:
    """Wins of each side of an interleaving comparison over units (impressions or users).

    ``ties`` counts units with equal non-zero credit, ``no_credit`` the units without any credit
    (nothing clicked: no preference expressed). ``share_a`` = wins_a / (wins_a + wins_b) with its
    Wilson 95% interval; ``delta`` is Chapelle et al.'s Δ_AB = (wins_a + ties/2) / (wins_a + wins_b +
    ties) − 1/2, in [−1/2, 1/2], positive when A is preferred; ``p_value`` the two-sided sign test of
    wins_a against wins_b."""

    wins_a: int
    wins_b: int
    ties: int
    no_credit: int
    share_a: float
    share_a_ci_low: float
    share_a_ci_high: float
    delta: float
    p_value: float


@dataclass(frozen=True)
class MeanCredit:
    """The mean credit per unit (a user's summed credit, > 0 favouring A) of an interleaving
    comparison, with its 95% interval and the two-sided one-sample t-test of mean 0: the test for
    optimized interleaving, whose credits are graded (a unit's sign alone can mislead there: the
    credits are 0 in expectation under random clicks, not symmetric about 0)."""

    units: int
    mean: float
    ci_low: float
    ci_high: float
    p_value: float


def mean_credit(credit: np.ndarray | Sequence[float], alpha: float = 0.05) -> MeanCredit:
    """:class:`MeanCredit` of ``credit`` (one value per unit); fewer than 2 units, or no spread: p = 1
    (nan interval) unless every unit has the same non-zero credit."""
    x = _as_float(credit, "credit")
    n = int(x.size)
    if n == 0:
        return MeanCredit(0, float("nan"), float("nan"), float("nan"), 1.0)
    mean = float(x.mean())
    sd = float(x.std(ddof=1)) if n > 1 else 0.0
    if n < 2 or sd == 0.0:
        return MeanCredit(n, mean, float("nan"), float("nan"), 1.0 if mean == 0.0 or n < 2 else 0.0)
    se = sd / math.sqrt(n)
    q = float(sps.t.ppf(1 - alpha / 2, n - 1))
    p = float(2 * sps.t.sf(abs(mean) / se, n - 1))
    return MeanCredit(n, mean, mean - q * se, mean + q * se, min(p, 1.0))


def _as_float(a: np.ndarray | Sequence[float], name: str) -> np.ndarray:
    out = np.asarray(a, dtype=np.float64)
    if out.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional (one value per unit), got shape {out.shape}")
    return out


def ratio_metric(num: np.ndarray, den: np.ndarray) -> RatioEstimate:
    """R = Σnum / Σden over units (users), with Var(R) by the delta method:

        Var(R) ≈ (s²_num − 2·R·s_num,den + R²·s²_den) / (n · mean(den)²)

    from the sample (co)variances of the per-unit sums. ``num[i]`` and ``den[i]`` are unit i's sums
    (e.g. its clicks and its impressions). No units or Σden = 0: value ``nan``; one unit: the value
    with an undefined (``nan``) standard error."""
    x, y = _as_float(num, "num"), _as_float(den, "den")
    if x.shape != y.shape:
        raise ValueError(f"num and den need one value per unit each, got {x.size} and {y.size}")
    n = int(x.size)
    total = float(y.sum()) if n else 0.0
    if n == 0 or total == 0.0:
        nan = float("nan")
        return RatioEstimate(nan, nan, n, nan, nan)
    r = float(x.sum()) / total
    if n < 2:
        return RatioEstimate(r, float("nan"), n, float("nan"), float("nan"))
    mean_d = total / n
    dx, dy = x - x.mean(), y - mean_d
    var_x = float(dx @ dx) / (n - 1)
    var_y = float(dy @ dy) / (n - 1)
    cov = float(dx @ dy) / (n - 1)
    var_r = max(var_x - 2.0 * r * cov + r * r * var_y, 0.0) / (n * mean_d * mean_d)  # ≥ 0 up to rounding
    se = math.sqrt(var_r)
    return RatioEstimate(r, se, n, r - Z95 * se, r + Z95 * se)


def compare(treatment: RatioEstimate, control: RatioEstimate, alpha: float = 0.05, power: float = 0.8) -> Comparison:
    """Treatment against control (independent groups of units).

    The difference's standard error is √(se_t² + se_c²); the p-value is the two-sided z test, the
    intervals are at the ``1 - alpha`` level (95% by default) and the relative one is by the delta
    method on t/c − 1. ``mde`` = (z_{1−α/2} + z_power)·SE: the smallest true difference this much
    traffic detects with probability ``power``. Both standard errors zero (e.g. nobody clicked in
    either group): p = 1 when the values are equal, 0 when they differ."""
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError(f"alpha and power must lie in (0, 1), got alpha={alpha}, power={power}")
    t, c = treatment.value, control.value
    diff = t - c
    se = math.sqrt(treatment.se**2 + control.se**2)
    z_crit = float(sps.norm.ppf(1 - alpha / 2))
    if se > 0:
        z = diff / se
        p = float(2 * sps.norm.sf(abs(z)))
    elif se == 0 and not math.isnan(diff):
        z = 0.0 if diff == 0 else math.copysign(math.inf, diff)
        p = 1.0 if diff == 0 else 0.0
    else:
        z = p = float("nan")
    mde = (z_crit + float(sps.norm.ppf(power))) * se
    if c != 0 and not math.isnan(c):
        rel = t / c - 1.0
        rel_se = math.sqrt(treatment.se**2 / c**2 + (t**2) * control.se**2 / c**4)
        rel_lo, rel_hi, mde_rel = rel - z_crit * rel_se, rel + z_crit * rel_se, mde / abs(c)
    else:  # relative to a zero (or unknown) control: not defined
        rel = rel_lo = rel_hi = mde_rel = float("nan")
    return Comparison(diff, rel, se, z, p, diff - z_crit * se, diff + z_crit * se, rel_lo, rel_hi, mde, mde_rel, alpha, power)


def srm_test(observed: Sequence[int], weights: Sequence[float]) -> SRM:
    """Chi-square goodness of fit of units per variant against the configured weights (any positive
    scale). A variant with weight 0 that received units is a mismatch (p = 0); no units at all, or a
    single variant, is no evidence of one (p = 1)."""
    obs = np.asarray(observed, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if obs.shape != w.shape or obs.ndim != 1:
        raise ValueError(f"one weight per variant: {obs.size} counts but {w.size} weights")
    if np.any(w < 0) or not np.all(np.isfinite(w)) or w.sum() <= 0:
        raise ValueError(f"weights must be finite, non-negative and not all zero, got {list(w)}")
    if np.any(obs < 0):
        raise ValueError(f"counts cannot be negative, got {list(obs)}")
    n = float(obs.sum())
    expected = n * w / w.sum()
    out_obs = [int(v) for v in obs]
    out_exp = [float(v) for v in expected]
    if np.any((expected == 0) & (obs > 0)):
        return SRM(out_obs, out_exp, float("inf"), 0.0, True)
    keep = expected > 0
    if n == 0 or int(keep.sum()) < 2:
        return SRM(out_obs, out_exp, 0.0, 1.0, False)
    chi2, p = sps.chisquare(obs[keep], expected[keep])
    return SRM(out_obs, out_exp, float(chi2), float(p), bool(p < SRM_ALPHA))


def sign_test(wins_a: int, wins_b: int) -> float:
    """The exact two-sided binomial p-value of ``wins_a`` successes in ``wins_a + wins_b`` trials at
    p = 1/2 (ties are left out before calling). No trials: 1."""
    if wins_a < 0 or wins_b < 0:
        raise ValueError(f"win counts cannot be negative, got {wins_a} and {wins_b}")
    n = int(wins_a) + int(wins_b)
    if n == 0:
        return 1.0
    return min(float(sps.binomtest(int(wins_a), n, 0.5).pvalue), 1.0)


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (good near 0 and 1 and for small n); n = 0: nan."""
    if n <= 0:
        return float("nan"), float("nan")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(centre - half, 0.0), min(centre + half, 1.0)


def interleaving_preference(credit_a: np.ndarray, credit_b: np.ndarray) -> Preference:
    """Who won each unit of an interleaving experiment: ``credit_a[i]`` and ``credit_b[i]`` are the
    credits (clicks on each team's items) of unit i, an impression or a user's sum. See
    :class:`Preference` for the fields."""
    a, b = _as_float(credit_a, "credit_a"), _as_float(credit_b, "credit_b")
    if a.shape != b.shape:
        raise ValueError(f"one credit per unit and side: {a.size} and {b.size}")
    any_credit = (a + b) > 0
    wins_a = int(np.count_nonzero(a > b))
    wins_b = int(np.count_nonzero(b > a))
    ties = int(np.count_nonzero((a == b) & any_credit))
    no_credit = int(a.size - np.count_nonzero(any_credit))
    decided = wins_a + wins_b
    share = wins_a / decided if decided else float("nan")
    low, high = wilson_interval(wins_a, decided)
    total = decided + ties
    delta = (wins_a + ties / 2) / total - 0.5 if total else float("nan")
    return Preference(wins_a, wins_b, ties, no_credit, share, low, high, delta, sign_test(wins_a, wins_b))

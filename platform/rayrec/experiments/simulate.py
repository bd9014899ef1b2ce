"""How many users does an A/B test need, and how many does interleaving, to find the better of two
variants? Measured on simulated users whose true preferences are known.

The users are those of a synthetic dataset (:func:`rayrec.data.synthetic.truth`): the factors and
biases their ratings were drawn from say how much each of them would like any movie. They look at a
served list through a position-based click model: position ``p`` (0 first) is examined with
probability ``(1 + p) ** -eta``, and an examined item is clicked with probability
``max_attraction · sigmoid((expected rating − threshold) / scale)``, times the user's engagement
(``engagement > 0``: ``(activity / median activity) ** engagement``, from how many ratings the generator
gave them, so heavy users click more, as they do in real traffic; 0: every user alike). A variant's
true quality is then exact: the expected clicks on its list, averaged over users.

The lists come from the serving code itself (:meth:`RecommenderService.recommend_as`, each arm's own
bundle and settings; team draft for the interleaved ones). A trial draws ``n`` users (with
replacement from the dataset's users, each draw a new visitor with that user's tastes), shows each one
list (its A/B arm's, or an interleaving of both) and draws clicks; the test is the analysis job's
(:func:`rayrec.experiments.stats.compare` on per-user CTR, delta method; the sign test on
interleaving preferences, or for optimized interleaving the t-test of the users' mean credit,
:func:`rayrec.experiments.stats.mean_credit`). A method finds the better variant in a trial when its test is significant
at ``alpha`` and points at the variant with the higher true quality; the users it needs is the
smallest ``n`` whose success rate over the trials reaches ``power``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

from rayrec.features.pointintime import LABEL_THRESHOLD
from rayrec.data.synthetic import Truth
from rayrec.experiments.interleave import draft_credits, optimized_distribution, seed_of, team_draft
from rayrec.experiments.stats import compare, interleaving_preference, mean_credit, ratio_metric

if TYPE_CHECKING:
    from rayrec.serving.service import RecommenderService

__all__ = [
    "ClickModel", "Method", "ServedLists", "power_ab", "power_interleaving", "users_needed", "true_quality", "interleavings",
    "collect_lists", "served_lists", "run_online",
]  # fmt: skip


@dataclass(frozen=True)
class ClickModel:
    """Position-based clicks (see the module docstring)."""

    eta: float = 1.0
    threshold: float = LABEL_THRESHOLD  # the expected rating at which an item is half as attractive as it can be
    scale: float = 0.5
    max_attraction: float = 0.5
    engagement: float = 0.0

    def probabilities(self, truth: Truth, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """(U, k) click probability of each listed item (padding ``-1`` and unknown movies: 0)."""
        users = np.asarray(users, dtype=np.int64)
        expected = truth.expected_rating(users[:, None], items)  # (U, k)
        attraction = self.max_attraction / (1.0 + np.exp(-(expected - self.threshold) / self.scale))
        if self.engagement > 0:
            activity = truth.user_activity.astype(np.float64)
            level = (activity[np.clip(users - 1, 0, len(activity) - 1)] / np.median(activity)) ** self.engagement
            attraction = attraction * level[:, None]
        attraction = np.where(np.isfinite(attraction) & (items > 0), np.clip(attraction, 0.0, 1.0), 0.0)
        exam = (1.0 + np.arange(items.shape[1])) ** -self.eta  # (k,)
        return np.asarray(attraction * exam)


@dataclass
class ServedLists:
    """Per user of the pool: each arm's click probabilities by position, and ``draws`` interleavings
    of the two lists (item click probabilities, and the credit of a click on each item: > 0 favours
    arm a, < 0 arm b, 0 neither or past the list's end; team draft's are ±1)."""

    users: np.ndarray  # (U,)
    p_a: np.ndarray  # (U, k)
    p_b: np.ndarray  # (U, k)
    p_inter: np.ndarray  # (U, D, k)
    credit_inter: np.ndarray  # (U, D, k) float
    meta: dict[str, object] = field(default_factory=dict)


Method = Literal["team_draft", "optimized"]


def interleavings(
    a: np.ndarray, b: np.ndarray, draws: int, salt: str = "sim", *, neutral: bool = True, method: Method = "team_draft"
) -> tuple[np.ndarray, np.ndarray]:
    """``draws`` interleavings of each row of ``a`` and ``b`` ((U, k) movie ids, -1 pad) by team
    draft (``neutral``: see :func:`team_draft`) or optimized interleaving (one linear program per
    user, ``draws`` lists drawn from its distribution): (U, D, k) items (-1: pad) and credits."""
    u_n, k = a.shape
    items = np.full((u_n, draws, k), -1, dtype=np.int64)
    credits = np.zeros((u_n, draws, k), dtype=np.float64)
    for u in range(u_n):
        la, lb = [int(m) for m in a[u] if m > 0], [int(m) for m in b[u] if m > 0]
        dist = optimized_distribution(la, lb, k) if method == "optimized" else None
        for d in range(draws):
            seed = seed_of(f"{salt}:{u}:{d}")
            if dist is not None:
                ids, cr = dist.draw(seed)
            else:  # team draft, or optimized's fallback where no unbiased distribution exists
                ids, tm = team_draft(la, lb, k, seed, neutral=neutral)
                cr = draft_credits(tm)
            items[u, d, : len(ids)] = ids
            credits[u, d, : len(cr)] = cr
    return items, credits


def true_quality(p: np.ndarray) -> float:
    """Expected clicks per impression: the mean over users of the summed click probabilities."""
    return float(p.sum(axis=-1).mean())


def power_ab(lists: ServedLists, n_users: int, trials: int, *, alpha: float = 0.05, seed: int = 0, sessions: int = 1) -> float:
    """Share of trials in which an A/B test on ``n_users`` (half per arm, by a fair coin; each user
    sees their arm's list ``sessions`` times) finds the truly better arm (significant at ``alpha``,
    right direction). The metric is CTR per list, clustered by user (the analysis job's)."""
    rng = np.random.default_rng([seed, n_users, sessions, 1])
    better_b = true_quality(lists.p_b) > true_quality(lists.p_a)
    wins = 0
    for _ in range(trials):
        idx = rng.integers(0, len(lists.users), n_users)
        to_b = rng.random(n_users) < 0.5
        p = np.where(to_b[:, None], lists.p_b[idx], lists.p_a[idx])  # (n, k)
        clicks = np.zeros(n_users)
        for _ in range(sessions):
            clicks += (rng.random(p.shape) < p).sum(axis=1)
        shown = np.full(n_users, float(sessions))
        if to_b.sum() < 2 or (~to_b).sum() < 2:
            continue
        c = compare(ratio_metric(clicks[to_b], shown[to_b]), ratio_metric(clicks[~to_b], shown[~to_b]), alpha=alpha)
        if c.p_value < alpha and (c.difference > 0) == better_b:
            wins += 1
    return wins / trials


def power_interleaving(
    lists: ServedLists,
    n_users: int,
    trials: int,
    *,
    alpha: float = 0.05,
    seed: int = 0,
    sessions: int = 1,
    test: Literal["sign", "mean"] = "sign",
) -> float:
    """Share of trials in which interleaving on ``n_users`` (an interleaved list per session, a new
    draw each time) finds the truly better arm, significant at ``alpha`` in the right direction.
    Each user's credit is the summed credit of their clicks (per impression when ``sessions`` is 1);
    ``test``: the sign test over users (team draft's, the analysis job's preference) or the t-test
    of the mean credit (optimized interleaving's: its credits are graded)."""
    rng = np.random.default_rng([seed, n_users, sessions, 2])
    better_b = true_quality(lists.p_b) > true_quality(lists.p_a)
    u_n, draws, _ = lists.p_inter.shape
    wins = 0
    for _ in range(trials):
        idx = rng.integers(0, u_n, n_users)
        credit = np.zeros(n_users)
        for _ in range(sessions):
            d = rng.integers(0, draws, n_users)
            p = lists.p_inter[idx, d]  # (n, k)
            clicks = rng.random(p.shape) < p
            credit += (clicks * lists.credit_inter[idx, d]).sum(axis=1)
        if test == "mean":
            m = mean_credit(credit, alpha)
            found_b, p_value = m.mean < 0, m.p_value
        else:
            pref = interleaving_preference(np.maximum(credit, 0.0), np.maximum(-credit, 0.0))
            found_b, p_value = pref.wins_b > pref.wins_a, pref.p_value
        if p_value < alpha and found_b == better_b:
            wins += 1
    return wins / trials


def users_needed(
    power_at: Callable[[int], float], *, target: float = 0.8, start: int = 16, limit: int = 2_000_000, tolerance: float = 0.1
) -> tuple[int | None, dict[int, float]]:
    """The smallest ``n`` with ``power_at(n) >= target``: doubling from ``start``, then bisection on a
    log scale to within ``tolerance`` (relative). None when even ``limit`` users fall short. Returns
    it with every ``n`` tried and its power."""
    tried: dict[int, float] = {}

    def at(n: int) -> float:
        if n not in tried:
            tried[n] = power_at(n)
        return tried[n]

    lo, hi = 0, start
    while at(hi) < target:
        lo, hi = hi, hi * 2
        if hi > limit:
            return None, tried
    while lo and hi / lo > 1 + tolerance:
        mid = int(round(math.sqrt(lo * hi)))
        if mid in (lo, hi):
            break
        if at(mid) >= target:
            hi = mid
        else:
            lo = mid
    return hi, tried


async def collect_lists(
    service: RecommenderService, arms: tuple[str, str], users: np.ndarray, *, k: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """Each arm's list for every user of ``users`` from the serving code (``recommend_as``): two
    (U, k) arrays of movie ids, -1 where a list is shorter."""
    a = np.full((len(users), k), -1, dtype=np.int64)
    b = np.full((len(users), k), -1, dtype=np.int64)
    for row, u in enumerate(users.tolist()):
        for out, arm in ((a, arms[0]), (b, arms[1])):
            rec = await service.recommend_as(arm, int(u), k)
            ids = [it.movie_id for it in rec.items][:k]
            out[row, : len(ids)] = ids
    return a, b


def served_lists(
    users: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    truth: Truth,
    click: ClickModel,
    *,
    draws: int = 4,
    neutral: bool = True,
    method: Method = "team_draft",
    inter: tuple[np.ndarray, np.ndarray] | None = None,
) -> ServedLists:
    """Click probabilities of both arms' lists and of ``draws`` interleavings of them per user
    (``inter``: those interleavings, already drawn by :func:`interleavings`; they depend on the
    lists only, not on the click model)."""
    u_n, k = a.shape
    inter_items, inter_credits = inter if inter is not None else interleavings(a, b, draws, neutral=neutral, method=method)
    draws = inter_items.shape[1]
    p_inter = click.probabilities(truth, np.repeat(users, draws), inter_items.reshape(u_n * draws, k)).reshape(u_n, draws, k)
    return ServedLists(
        users=users, p_a=click.probabilities(truth, users, a), p_b=click.probabilities(truth, users, b),
        p_inter=p_inter, credit_inter=inter_credits,
        meta={"overlap_at_k": float(np.mean([len(set(x) & set(y) - {-1}) / k for x, y in zip(a.tolist(), b.tolist())])),
              "neutral_share": float(np.mean(inter_credits[inter_items > 0] == 0)) if (inter_items > 0).any() else 0.0},
    )  # fmt: skip


async def run_online(
    service: RecommenderService, users: np.ndarray, truth: Truth, click: ClickModel, *, k: int = 10, seed: int = 0
) -> dict[str, int]:
    """Serve ``users`` through ``service.recommend`` (their experiment assignment, impressions
    logged), draw each one's clicks on the list they got and post them to ``service.event`` with the
    list's request id, as a client would. Returns how many lists were served and clicks posted."""
    rng = np.random.default_rng([seed, 3])
    served = clicks = 0
    for u in users.tolist():
        rec = await service.recommend(int(u), k)
        served += 1
        ids = np.asarray([it.movie_id for it in rec.items], dtype=np.int64)
        if not len(ids):
            continue
        p = click.probabilities(truth, np.asarray([u]), ids[None, :])[0]
        hit = ids[rng.random(len(ids)) < p]
        if len(hit):
            events = [{"kind": "click", "user_id": int(u), "movie_id": int(m), "request_id": rec.request_id} for m in hit]
            await service.event(events)
            clicks += len(hit)
    await service.flush_impressions()
    return {"lists": served, "clicks": clicks}

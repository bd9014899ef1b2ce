"""Interleaving: two rankers' lists into one, and the credit each click gives either ranker.

Team draft (Radlinski, Kurup and Joachims, 2008), :func:`team_draft`:

Like captains picking teams: in each round a coin decides which list picks first, then each list adds
its best item not yet in the merged list. Every item is credited to the team that picked it, so a
click on it is a vote for that ranker, and position bias falls evenly on both teams in expectation.

When a round opens with both lists offering the same item, the item is placed once and credited to
neither team (:data:`NEUTRAL`), and the round goes on. Classic team draft would give it to the coin's
winner; a click on it then says nothing about which list is better, only which way the coin fell,
so it adds noise to the comparison and no signal. Lists that agree everywhere get no credit at all,
instead of a coin-flip preference. The coin is seeded per request, so a request's interleaving can be
reproduced from its id.

Optimized interleaving (Radlinski and Craswell, 2013), :func:`optimized`: the merged list is drawn
from the lists whose every prefix is a prefix of ``a`` joined with a prefix of ``b`` (what a user sees
at the top is always what one ranker or both put first), with probabilities solved for by a linear
program so that a user who clicks without regard to the items (whatever the position bias) gives
neither ranker credit in expectation, at every position. Among such distributions it takes the one
whose lists are each balanced under a ``1/(1+p)`` examination (the least variance). A click on an
item credits ``rank in b − rank in a`` (an item a list does not hold ranks one past its end): a
click on what ``a`` ranks 2nd and ``b`` 7th is 5 points for ``a``. The credit grades how much the
two rankers disagree on the item, where team draft gives every click one vote, so it tells apart
rankers that mostly reorder the same items with fewer users; its clicks are compared by their
mean, not by a sign test (the credits of one list need not be symmetric about 0, only their mean
is 0 under random clicks).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize as spo

__all__ = ["team_draft", "seed_of", "NEUTRAL", "optimized", "optimized_distribution", "Distribution", "team_of", "draft_credits"]

NEUTRAL = -1
"""The team of an item both lists offered at the same round: its clicks credit neither."""


def seed_of(request_id: str) -> int:
    """A seed for the coin flips of one request (stable across processes)."""
    return int.from_bytes(hashlib.blake2b(request_id.encode(), digest_size=8).digest(), "big")


def team_draft(a: Sequence[int], b: Sequence[int], k: int, seed: int, *, neutral: bool = True) -> tuple[list[int], list[int]]:
    """Interleave ranked lists ``a`` and ``b`` into at most ``k`` distinct items.

    Returns ``(items, teams)`` with ``teams[i]`` 0 when list ``a`` picked ``items[i]``, 1 when ``b``
    did, :data:`NEUTRAL` when both offered it as a round opened (``neutral=False``: classic team
    draft, where the coin's winner takes it). The team with fewer picks picks next (a coin decides
    ties), so the teams' sizes differ by at most one while both lists last; when one runs out the
    other fills the list.
    """
    rng = np.random.default_rng(seed)
    lists = (list(a), list(b))
    next_pos = [0, 0]
    picks = [0, 0]
    items: list[int] = []
    teams: list[int] = []
    taken: set[int] = set()

    def offer(team: int) -> int | None:
        src = lists[team]
        while next_pos[team] < len(src) and src[next_pos[team]] in taken:
            next_pos[team] += 1
        return src[next_pos[team]] if next_pos[team] < len(src) else None

    def place(item: int, team: int) -> None:
        taken.add(item)
        items.append(item)
        teams.append(team)
        if team != NEUTRAL:
            picks[team] += 1

    def pick(team: int) -> bool:
        item = offer(team)
        if item is None:
            return False
        place(item, team)
        return True

    while len(items) < k:
        if picks[0] != picks[1]:
            first = 0 if picks[0] < picks[1] else 1
        else:
            shared = offer(0)
            if neutral and shared is not None and shared == offer(1):
                place(shared, NEUTRAL)
                continue
            first = int(rng.integers(2))
        if not pick(first) and not pick(1 - first):
            break  # both lists exhausted
    return items, teams


def draft_credits(teams: Sequence[int]) -> list[float]:
    """Team draft's teams as credits on :func:`optimized`'s scale: 1 for ``a``'s items, −1 for ``b``'s,
    0 for neutral ones."""
    return [1.0 if t == 0 else -1.0 if t == 1 else 0.0 for t in teams]


def team_of(credit: float) -> int:
    """The side a credit favours: 0 (``a``), 1 (``b``) or :data:`NEUTRAL` (0, both rank it alike)."""
    return 0 if credit > 0 else 1 if credit < 0 else NEUTRAL


@dataclass(frozen=True)
class Distribution:
    """Optimized interleaving of one pair of lists: the candidate lists (rows of movie ids, -1 past
    a shorter list's end), each item's credit (> 0 favours ``a``) and each list's probability."""

    lists: np.ndarray  # (n, L) int64
    credits: np.ndarray  # (n, L) float64
    probabilities: np.ndarray  # (n,)

    def draw(self, seed: int) -> tuple[list[int], list[float]]:
        """One list and its credits, drawn by ``seed``."""
        rng = np.random.default_rng(seed)
        j = int(rng.choice(len(self.probabilities), p=self.probabilities))
        keep = self.lists[j] > -1
        return [int(m) for m in self.lists[j][keep]], [float(c) for c in self.credits[j][keep]]


def _prefix_lists(a: list[int], b: list[int], k: int, limit: int) -> np.ndarray:
    """The lists of up to ``k`` items built by taking, one at a time, the first item of ``a`` or of
    ``b`` not yet taken: (n, L) movie ids, -1 past a shorter list's end. All of them (at most
    ``2 ** k``) while they are at most ``limit``; beyond that, ``limit`` of them drawn at random
    (the same for the same pair) as they grow.

    What has been taken is always ``a[:i] + b[:j]`` for the lists' next positions ``(i, j)``, so the
    lists are the paths through at most ``(len(a) + 1) × (len(b) + 1)`` such states, grown a
    position at a time for all paths at once."""
    pos_a = {m: i for i, m in enumerate(a)}
    pos_b = {m: j for j, m in enumerate(b)}
    na, nb = len(a), len(b)

    def settle(i: int, j: int) -> tuple[int, int]:  # skip what the other list's prefix holds
        while True:
            i0, j0 = i, j
            while i < na and pos_b.get(a[i], nb) < j:
                i += 1
            while j < nb and pos_a.get(b[j], na) < i:
                j += 1
            if (i, j) == (i0, j0):
                return i, j

    # per state: the item and next state of taking a's head (0) and b's head (1); -1: none
    item = np.full((2, na + 1, nb + 1), -1, dtype=np.int64)
    to_i = np.zeros((2, na + 1, nb + 1), dtype=np.int64)
    to_j = np.zeros((2, na + 1, nb + 1), dtype=np.int64)
    for i in range(na + 1):
        for j in range(nb + 1):
            if i < na:
                item[0, i, j] = a[i]
                to_i[0, i, j], to_j[0, i, j] = settle(i + 1, j)
            if j < nb and not (i < na and b[j] == a[i]):
                item[1, i, j] = b[j]
                to_i[1, i, j], to_j[1, i, j] = settle(i, j + 1)
    si, sj = (np.asarray([x]) for x in settle(0, 0))
    paths = np.zeros((1, 0), dtype=np.int64)
    rng = np.random.default_rng(seed_of(f"{a}|{b}|{k}"))
    for _ in range(k):
        heads = item[:, si, sj]  # (2, n)
        live = heads > -1
        if not live.any():
            break
        grow = [np.flatnonzero(live[side]) for side in (0, 1)]
        stuck = np.flatnonzero(~live.any(axis=0))  # paths whose lists ran out: kept as they are
        rows = np.concatenate([grow[0], grow[1], stuck])
        added = np.concatenate([heads[0, grow[0]], heads[1, grow[1]], np.full(len(stuck), -1)])
        g0, g1 = grow
        si, sj = (
            np.concatenate([to[0, si[g0], sj[g0]], to[1, si[g1], sj[g1]], old[stuck]])
            for to, old in ((to_i, si), (to_j, sj))
        )
        paths = np.concatenate([paths[rows], added[:, None]], axis=1)
        if len(paths) > limit:
            keep = np.sort(rng.choice(len(paths), limit, replace=False))
            paths, si, sj = paths[keep], si[keep], sj[keep]
    return paths


_cache: OrderedDict[tuple[tuple[int, ...], tuple[int, ...], int, int], Distribution | None] = OrderedDict()
_cache_lock = threading.Lock()
_CACHE_SIZE = 1024


def optimized_distribution(a: Sequence[int], b: Sequence[int], k: int, *, limit: int = 1024) -> Distribution | None:
    """The optimized interleaving of ``a`` and ``b`` (see the module docstring): None when no
    distribution over the candidate lists is unbiased (lists of one length always have one; where
    one list runs out early, what follows holds only the other's items and there may be none; the
    caller falls back to team draft).
    At most ``limit`` candidate lists enter the linear program: every one for lists of 10 (a solve
    takes 3–4 ms; measured on the simulator's lists). The same pair gives the same answer
    (cached, most recent :data:`_CACHE_SIZE` pairs)."""
    la, lb = list(dict.fromkeys(int(m) for m in a)), list(dict.fromkeys(int(m) for m in b))
    key = (tuple(la), tuple(lb), int(k), int(limit))
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    out = _solve(la, lb, int(k), limit)
    with _cache_lock:
        _cache[key] = out
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return out


def _solve(a: list[int], b: list[int], k: int, limit: int) -> Distribution | None:
    if k < 1 or not (a or b):
        return Distribution(np.zeros((1, 0), np.int64), np.zeros((1, 0)), np.ones(1))
    rank_a = {m: i + 1 for i, m in enumerate(a)}
    rank_b = {m: i + 1 for i, m in enumerate(b)}
    items = _prefix_lists(a, b, k, limit)
    width = items.shape[1]
    known = np.asarray(sorted(rank_a.keys() | rank_b.keys()), dtype=np.int64)
    value = np.asarray([rank_b.get(int(m), len(b) + 1) - rank_a.get(int(m), len(a) + 1) for m in known], dtype=np.float64)
    at = np.clip(np.searchsorted(known, items), 0, len(known) - 1)
    credits = np.where(items > -1, value[at], 0.0)
    if not credits.any():  # the lists agree: one list, every item neutral
        return Distribution(items[:1], credits[:1], np.ones(1))
    exam = 1.0 / (1.0 + np.arange(width))
    res = spo.linprog(
        (credits @ exam) ** 2,  # each list's own imbalance under position-biased random clicks
        A_eq=np.vstack([credits.T, np.ones(len(items))]), b_eq=np.r_[np.zeros(width), 1.0],
        bounds=(0, None), method="highs",
    )  # fmt: skip
    if res.status != 0:
        return None
    p = np.clip(np.asarray(res.x, dtype=np.float64), 0.0, None)
    keep = p > 1e-9
    return Distribution(items[keep], credits[keep], p[keep] / p[keep].sum())


def optimized(a: Sequence[int], b: Sequence[int], k: int, seed: int) -> tuple[list[int], list[float]]:
    """Optimized interleaving of ranked lists ``a`` and ``b`` into at most ``k`` distinct items:
    ``(items, credits)``, ``credits[i] > 0`` when a click on ``items[i]`` favours ``a`` (see the
    module docstring). Where no unbiased distribution exists it is team draft, with
    :func:`draft_credits`."""
    dist = optimized_distribution(a, b, k)
    if dist is None:
        ids, teams = team_draft(a, b, k, seed)
        return ids, draft_credits(teams)
    return dist.draw(seed)

"""Team-draft interleaving (Radlinski, Kurup and Joachims, 2008): two rankers' lists into one.

Like captains picking teams: in each round a coin decides which list picks first, then each list adds
its best item not yet in the merged list. Every item is credited to the team that picked it, so a
click on it is a vote for that ranker, and position bias falls evenly on both teams in expectation.

When a round opens with both lists offering the same item, the item is placed once and credited to
neither team (:data:`NEUTRAL`), and the round goes on. Classic team draft would give it to the coin's
winner; a click on it then says nothing about which list is better, only which way the coin fell,
so it adds noise to the comparison and no signal. Lists that agree everywhere get no credit at all,
instead of a coin-flip preference. The coin is seeded per request, so a request's interleaving can be
reproduced from its id.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

__all__ = ["team_draft", "seed_of", "NEUTRAL"]

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

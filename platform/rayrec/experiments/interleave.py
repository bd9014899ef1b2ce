"""Team-draft interleaving (Radlinski, Kurup and Joachims, 2008): two rankers' lists into one.

Like captains picking teams: in each round a coin decides which list picks first, then each list adds
its best item not yet in the merged list. Every item is credited to the team that picked it, so a
click on it is a vote for that ranker; items both lists would show contribute either way, and
position bias falls evenly on both teams in expectation. The coin is seeded per request, so a
request's interleaving can be reproduced from its id.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

__all__ = ["team_draft", "seed_of"]


def seed_of(request_id: str) -> int:
    """A seed for the coin flips of one request (stable across processes)."""
    return int.from_bytes(hashlib.blake2b(request_id.encode(), digest_size=8).digest(), "big")


def team_draft(a: Sequence[int], b: Sequence[int], k: int, seed: int) -> tuple[list[int], list[int]]:
    """Interleave ranked lists ``a`` and ``b`` into at most ``k`` distinct items.

    Returns ``(items, teams)`` with ``teams[i]`` 0 when list ``a`` picked ``items[i]``, 1 when ``b``
    did. The team with fewer picks picks next (a coin decides ties), so the teams' sizes differ by at
    most one while both lists last; when one runs out the other fills the list.
    """
    rng = np.random.default_rng(seed)
    lists = (list(a), list(b))
    next_pos = [0, 0]
    picks = [0, 0]
    items: list[int] = []
    teams: list[int] = []
    taken: set[int] = set()

    def pick(team: int) -> bool:
        src = lists[team]
        while next_pos[team] < len(src) and src[next_pos[team]] in taken:
            next_pos[team] += 1
        if next_pos[team] >= len(src):
            return False
        item = src[next_pos[team]]
        taken.add(item)
        items.append(item)
        teams.append(team)
        picks[team] += 1
        return True

    while len(items) < k:
        if picks[0] != picks[1]:
            first = 0 if picks[0] < picks[1] else 1
        else:
            first = int(rng.integers(2))
        if not pick(first) and not pick(1 - first):
            break  # both lists exhausted
    return items, teams

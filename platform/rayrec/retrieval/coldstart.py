"""Cold start as a recall path: for a new or nearly new user, the items popular at this hour of day,
weighted by the genres the user declared with the request and those of their first likes
(:class:`rayrec.realtime.coldstart.ColdStart` ranks them), lead the candidates.

Unlike the other paths, its picks are not fused by rank: they come first (the user's own signals are
too few to outvote them), and a pick another path found too keeps that path's credit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import numpy as np

from rayrec.retrieval.merge import Recalls
from rayrec.retrieval.paths import PathResult, RecallPath
from rayrec.retrieval.state import UserState

__all__ = ["ColdStartRecall", "lead"]


class _Ranks(Protocol):
    def recommend(
        self, k: int = 10, *, genres: Iterable[str] = (), hour: int | None = None,
        row: Mapping[str, Any] | None = None, exclude: Iterable[int] = (),
    ) -> list[tuple[int, float]]: ...  # fmt: skip


class ColdStartRecall(RecallPath):
    """The cold-start picks for ``user`` (its ``declared_genres``, ``hour`` and store ``row``), none it
    has seen, best first."""

    name = "cold_start"
    prefix_stable = True

    def __init__(self, cold: _Ranks) -> None:
        self.cold = cold

    def recall(self, user: UserState, k: int) -> PathResult:
        picks = self.cold.recommend(k, genres=user.declared_genres, hour=user.hour, row=user.row, exclude=user.seen)
        return PathResult(np.asarray([m for m, _ in picks], dtype=np.int64), np.asarray([s for _, s in picks], dtype=np.float32))


def lead(first: PathResult, found: Recalls, name: str = "cold_start") -> Recalls:
    """``first``'s items ahead of ``found``'s: an item both hold moves up, credited to ``name`` and
    to the paths that found it; the rest of ``found`` follows in its order."""
    ids = found.movie_ids.tolist()
    paths = list(found.paths)
    where = {m: i for i, m in enumerate(ids)}
    head: list[tuple[int, float, tuple[str, ...]]] = []
    for m, sc in zip(first.movie_ids.tolist(), first.scores.tolist()):
        i = where.get(m)
        if i is not None:
            head.append((m, float(sc), (name, *paths[i])))
            paths[i] = ()
        else:
            head.append((m, float(sc), (name,)))
    merged = head + [(m, float(sc), p) for m, sc, p in zip(ids, found.scores.tolist(), paths) if p]
    return Recalls(np.asarray([m for m, _, _ in merged], dtype=np.int64), np.asarray([sc for _, sc, _ in merged], dtype=np.float64),
                   [p for _, _, p in merged])  # fmt: skip

"""Stage 1, recall: read the user (row and online events) and gather candidates from the recall paths,
cold-start picks first for a cold user. Pure compute between two store reads; its output
(:class:`Recalled`) is plain, picklable data, so the stage can run behind a DeploymentHandle.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from rayrec.models.inputs import user_columns
from rayrec.realtime import ColdContext, is_cold
from rayrec.retrieval.coldstart import ColdStartRecall, lead
from rayrec.retrieval.state import UserState
from rayrec.serving.bundle import Bundle
from rayrec.serving.history import merge_events
from rayrec.store.base import OnlineStore

__all__ = ["Recalled", "RecallStage", "HISTORY_LIMIT", "COLD_LIKES"]

COLD_LIKES = 5  # below this many likes (and ratings) a user also gets the cold-start path
HISTORY_LIMIT = 200  # online events read per request
FRESH_GENRES = 2  # genres of the fresh likes that lead the genre path


@dataclass
class Recalled:
    """A request after recall: who asked, and the candidates with the paths that found them."""

    user_id: int
    k: int
    known: bool  # the store holds a feature row for the user
    user_row: dict[str, Any] | None
    liked: tuple[int, ...]  # recent likes, most recent first
    genres: tuple[str, ...]  # favourite genres, best first
    seen: frozenset[int]
    ids: np.ndarray  # (N,) candidate movie ids
    recall_scores: np.ndarray  # (N,)
    paths: list[tuple[str, ...]]
    cold_start: bool = False  # the cold-start path was used (no row, or few ratings)
    declared_genres: tuple[str, ...] = ()  # genres a new user declared with the request
    fresh: tuple[int, ...] = ()  # likes posted as online events since the batch data, most recent first
    timings: dict[str, float] = field(default_factory=dict)
    # the user's encoded model inputs, made for the user tower, and the FeatureSpec hash they were
    # encoded with: the ranker reuses them when its spec is the same
    user_inputs: dict[str, np.ndarray] | None = None
    user_inputs_spec: str | None = None
    versions: dict[str, str | None] = field(default_factory=dict)  # of the bundle that recalled
    arm: str | None = None  # the experiment arm (``<experiment>/<variant>``) whose settings serve it

    def for_ranker(self) -> Recalled:
        """What the rank stage needs, without the paths and recall scores (smaller to send to a Ranker
        deployment); the seen set stays (a ranker's ``ease_score`` input sums over it)."""
        return replace(self, paths=[], recall_scores=self.recall_scores[:0])


class RecallStage:
    """The recall stage of :class:`rayrec.serving.core.Recommender` over its ``bundle``."""

    bundle: Bundle

    @staticmethod
    def read_user(store: OnlineStore, user_id: int) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """The user's feature row (None when unknown) and online events, oldest first."""
        return store.get("user", [user_id])[0], store.get_history(user_id, HISTORY_LIMIT)

    def recall_from(
        self,
        user_id: int,
        k: int,
        row: dict[str, Any] | None,
        events: Sequence[dict[str, Any]],
        context: ColdContext | None = None,
    ) -> Recalled:
        """Candidates for a user read from the store (no store access here: pure compute). A cold
        user (no row, or fewer than 5 ratings) also gets the cold-start path first: popular at this
        hour, weighted by the genres ``context`` declares and those of the first likes."""
        b = self.bundle
        t1 = time.perf_counter()
        hist = merge_events(b.history.user(user_id), events, threshold=b.history.threshold)
        genres: tuple[str, ...] = tuple(row.get("user_genres") or ()) if row else self._genres_of(hist.liked)
        if not genres and context is not None:
            genres = tuple(context.genres)
        vector = inputs = None
        if b.tower is not None and (row is not None or hist.liked):
            inputs = b.tower.encode(user_columns(user_id, row, hist.liked, genres))
            vector = b.tower.vector_of(inputs)
        state = UserState(user_id=user_id, recent_positives=hist.liked, seen=hist.seen,
                          genres=self._recall_genres(genres, hist.fresh), vector=vector)  # fmt: skip
        total = max(b.config.candidates, 3 * k)
        found = b.merger.recall_arrays(state, total=total)
        ids, scores, paths = found.movie_ids, found.scores, found.paths
        cold = is_cold(row) and len(hist.liked) < COLD_LIKES
        if cold:  # the cold-start path's picks lead
            ctx = context or ColdContext()
            at = replace(state, declared_genres=tuple(ctx.genres), hour=ctx.hour, row=row)
            found = lead(ColdStartRecall(b.cold).recall(at, max(2 * k, total // 4)), found)
            ids, scores, paths = found.movie_ids, found.scores, found.paths
        t2 = time.perf_counter()
        return Recalled(
            user_id=user_id, k=k, known=row is not None, user_row=row, liked=hist.liked, genres=genres,
            seen=hist.seen, ids=np.asarray(ids, dtype=np.int64), recall_scores=np.asarray(scores, dtype=np.float32),
            paths=paths, cold_start=cold, declared_genres=tuple(context.genres) if context else (),
            fresh=hist.fresh, timings={"recall_ms": (t2 - t1) * 1e3}, user_inputs=inputs,
            user_inputs_spec=b.tower.spec_hash if inputs is not None and b.tower is not None else None,
            versions=dict(b.versions),
        )  # fmt: skip

    def _recall_genres(self, genres: tuple[str, ...], fresh: Sequence[int]) -> tuple[str, ...]:
        """The genres the genre path recalls from: those of the newest fresh likes lead (the user's
        interest of the moment, which the batch genre preferences are slow to show), then the user's
        favourites, as many in all as the favourites (at least five)."""
        if not fresh:
            return genres
        n = self.bundle.config.fresh_seeds
        lead = self._genres_of(fresh[:n], n=FRESH_GENRES)
        return tuple(dict.fromkeys((*lead, *genres)))[: max(len(genres), 5)]

    def _genres_of(self, liked: Sequence[int], n: int = 5) -> tuple[str, ...]:
        """Favourite genres of a user known only through online likes."""
        counts: dict[str, int] = {}
        for m in liked:
            for g in self.bundle.catalog.genres_of(m):
                counts[g] = counts.get(g, 0) + 1
        return tuple(sorted(counts, key=lambda g: (-counts[g], g))[:n])

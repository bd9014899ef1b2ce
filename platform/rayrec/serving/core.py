"""Recall → rank → rerank in one process: the serving logic, free of Ray.

:class:`Recommender` is the three stages over one bundle, each in a room of its own
(:mod:`rayrec.serving.recall`, :mod:`rayrec.serving.ranking`, :mod:`rayrec.serving.finalize`, with
the reasons in :mod:`rayrec.serving.reasons`), plus the degraded answer and the read endpoints. The
Serve deployments reach it through :class:`rayrec.serving.service.RecommenderService` (in one replica,
or spread over Recall / Ranker / Reranker deployments); each stage takes and returns plain, picklable
data (:class:`Recalled`, :class:`Ranked`), so a stage can run behind a DeploymentHandle unchanged.

One way in: :class:`RecommenderService` does the store reads (under its deadline and breaker) and
calls the stages, which are pure compute. Store reads per ``/recommend``: the user row and the user's
online events before recall, then one batched ``get("item", …)`` for the candidates (and the user's
recent likes, for the reasons) before ranking, for every request of a batch in a single call.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from rayrec.realtime import STATE_KEY
from rayrec.serving.api import Movie, Recommendation, RecommendedItem, SimilarItem, SimilarMovies, UserProfile
from rayrec.serving.bundle import Bundle
from rayrec.serving.finalize import RerankStage, RowFields
from rayrec.serving.history import merge_events
from rayrec.serving.items import ItemRows
from rayrec.serving.movies import movie_fields
from rayrec.serving.ranking import REASON_SEEDS, Ranked, RankStage
from rayrec.serving.recall import HISTORY_LIMIT, Recalled, RecallStage
from rayrec.store.base import OnlineStore

__all__ = ["Recalled", "Ranked", "Recommender", "REASON_SEEDS", "HISTORY_LIMIT", "bundle_lacks"]

log = logging.getLogger(__name__)


class Recommender(RecallStage, RankStage, RerankStage):
    """The serving core over one :class:`Bundle` (swap ``bundle`` to hot-swap artifacts)."""

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle
        self.items = ItemRows(bundle.config.item_cache_s)  # outlives bundle swaps: it holds store rows
        self.fields = RowFields()  # what rerank derives from those rows, per row

    # -- the degraded answer ---------------------------------------------------------------------
    def popular(self, user_id: int, k: int, why: str | None) -> Recommendation:
        """The degraded answer: most popular items the batch history says the user has not seen,
        from memory (no store)."""
        b = self.bundle
        seen = b.history.user(user_id).seen
        picked = [m for m in b.fallback if m["movie_id"] not in seen][:k]
        top = float(picked[0]["rating_count"] or 1) if picked else 1.0
        items = [
            RecommendedItem(**m, score=round(float(m["rating_count"] or 0) / top, 6), rank_score=None, paths=["popular"],
                            reason="popular with everyone")  # fmt: skip
            for m in picked
        ]
        return Recommendation(
            user_id=user_id, k=k, items=items, cold_start=user_id not in b.history, degraded=why is not None,
            degraded_reason=why, model_version=b.versions.get("ranker"), index_version=b.versions.get("index"),
        )  # fmt: skip

    # -- the other endpoints ------------------------------------------------------------------------
    def movie(self, store: OnlineStore | None, movie_id: int) -> Movie | None:
        row = store.get("item", [movie_id])[0] if store is not None else None
        if row is None and bundle_lacks(self.bundle, movie_id):
            return None
        return Movie(**movie_fields(movie_id, row, self.bundle))

    def similar(self, store: OnlineStore | None, movie_id: int, k: int) -> SimilarMovies | None:
        b = self.bundle
        query_row = store.get("item", [movie_id])[0] if store is not None else None
        if query_row is None and bundle_lacks(b, movie_id):
            return None
        genres = list(query_row.get("genres") or []) if query_row else None
        found = b.similar.similar(movie_id, k, genres=genres if bundle_lacks(b, movie_id) else None)
        ids = found.movie_ids.tolist()
        rows = store.get("item", ids) if store is not None and ids else [None] * len(ids)
        items = [SimilarItem(**movie_fields(m, row, b), score=round(float(s), 6)) for m, row, s in zip(ids, rows, found.scores.tolist())]
        return SimilarMovies(movie_id=movie_id, movie=Movie(**movie_fields(movie_id, query_row, b)), k=k, items=items,
                             degraded=store is None, degraded_reason="store_unavailable" if store is None else None)  # fmt: skip

    def user(self, store: OnlineStore, user_id: int) -> UserProfile | None:
        b = self.bundle
        row = store.get("user", [user_id])[0]
        events = store.get_history(user_id, 20)
        hist = merge_events(b.history.user(user_id), events, threshold=b.history.threshold)
        if row is None and hist.empty:
            return None
        recent_ids = list(hist.liked[:10])
        recent_rows = store.get("item", recent_ids) if recent_ids else []
        return UserProfile(
            user_id=user_id, known=row is not None,
            features=_jsonable({key: v for key, v in (row or {}).items() if key != STATE_KEY}),  # not the bookkeeping
            recent=[Movie(**movie_fields(m, rw, b)) for m, rw in zip(recent_ids, recent_rows)],
            history=[_jsonable(e) for e in events],
        )  # fmt: skip


def bundle_lacks(bundle: Bundle, movie_id: int) -> bool:
    """True when neither the catalog nor the index knows ``movie_id``."""
    in_catalog = bool(bundle.catalog.rows([movie_id])[0] >= 0)
    return not in_catalog and not (bundle.index is not None and movie_id in bundle.index)


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, v in d.items():
        if isinstance(v, np.generic):
            v = v.item()
        elif isinstance(v, np.ndarray):
            v = v.tolist()
        if isinstance(v, float) and v != v:
            v = None
        out[str(key)] = v
    return out

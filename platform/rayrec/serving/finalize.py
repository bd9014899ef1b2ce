"""Stage 3, rerank: the fused order under MMR diversity, freshness, popularity and business rules,
into the answer with its reasons.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from rayrec.rerank import Candidates
from rayrec.rerank import rerank as rerank_candidates
from rayrec.serving.api import Recommendation, RecommendedItem
from rayrec.serving.bundle import Bundle
from rayrec.serving.movies import movie_fields, year_of
from rayrec.serving.ranking import Ranked, fuse
from rayrec.serving.reasons import Reasons
from rayrec.serving.recall import Recalled

__all__ = ["RerankStage", "RowFields"]

# rerank settings that keep the recall order (filters and business rules still apply)
_RECALL_ORDER = {"diversity": 0.0, "freshness_weight": 0.0, "popularity_weight": 0.0}


class RowFields:
    """What rerank reads of the candidates' item rows (genres, year, rating count), derived once per
    row object: :class:`rayrec.serving.items.ItemRows` hands out one dict per read, until the row is
    read again and found changed. An item the store lacks takes its genres from the catalog. At most
    ``max_items`` items are kept (the oldest first out)."""

    def __init__(self, max_items: int = 200_000) -> None:
        self.max_items = max_items
        self._kept: dict[int, tuple[Any, tuple[str, ...], float, float]] = {}  # id -> (row, genres, year, count)
        self._lock = threading.Lock()  # for the writes (reads of a dict need none)

    def of(self, ids: Sequence[int], rows: Sequence[dict[str, Any] | None], bundle: Bundle) -> tuple[list[tuple[str, ...]], np.ndarray, np.ndarray]:
        """``(genres, years (NaN: unknown), rating counts)`` of the candidates ``ids`` with their ``rows``."""
        kept = self._kept
        genres: list[tuple[str, ...]] = []
        years = np.full(len(ids), np.nan)
        counts = np.zeros(len(ids))
        for i, (m, row) in enumerate(zip(ids, rows)):
            if not row:
                genres.append(tuple(bundle.catalog.genres_of(m)))
                continue
            got = kept.get(m)
            if got is None or got[0] is not row:
                y = year_of(row)
                got = (row, tuple(row.get("genres") or ()), np.nan if y is None else float(y), float(row.get("item_rating_count") or 0))
                with self._lock:
                    kept.pop(m, None)
                    kept[m] = got
                    while len(kept) > self.max_items:
                        kept.pop(next(iter(kept)))
            genres.append(got[1])
            years[i], counts[i] = got[2], got[3]
        return genres, years, counts


class RerankStage:
    """The rerank stage of :class:`rayrec.serving.core.Recommender` over its ``bundle``."""

    bundle: Bundle
    fields: RowFields

    def fused_scores(self, r: Recalled, ranked: Ranked) -> np.ndarray:
        """The order rerank starts from, one score per candidate (higher first)."""
        return self._start(r, ranked)[0].scores

    def _start(self, r: Recalled, ranked: Ranked) -> tuple[Candidates, Any, tuple[np.ndarray, np.ndarray] | None]:
        """What rerank starts from: the candidates with their starting scores, the rerank settings,
        and the candidates' index vectors."""
        b = self.bundle
        n = len(r.ids)
        genres, years, popularity = self.fields.of(r.ids.tolist(), ranked.rows, b)
        vecs = b.item_vectors(r.ids) if n else None
        cat_rows = b.catalog.rows(r.ids)  # -1: added live, after the catalog was built
        genre_matrix = self._genre_matrix(cat_rows, genres)
        if ranked.scores is not None and not r.cold_start:
            scores, cfg = fuse(b, r, ranked.scores, cat_rows < 0, genre_matrix, vecs, popularity), b.rerank
        else:  # the recall order (cold start: the segment order), under the same filters and business rules
            scores = np.linspace(1.0, 0.0, n, dtype=np.float64) if n else np.zeros(0)
            cfg = b.rerank.model_copy(update=_RECALL_ORDER)
        cands = Candidates(
            ids=r.ids, scores=np.asarray(scores, dtype=np.float64), genres=genres,
            years=years, popularity=popularity,
            embeddings=vecs[1] if vecs is not None else None, has_embedding=vecs[0] if vecs is not None else None,
            genre_matrix=genre_matrix,
        )  # fmt: skip
        return cands, cfg, vecs

    def rerank(self, r: Recalled, ranked: Ranked) -> Recommendation:
        """Rerank the scored candidates into the final list, with reasons."""
        b = self.bundle
        t0 = time.perf_counter()
        rows = ranked.rows
        cands, cfg, vecs = self._start(r, ranked)
        genres = cands.genres
        out = rerank_candidates(cands, r.k, cfg, seen=r.seen, now_year=b.now_year)
        reasons = Reasons(self.bundle, r, ranked, vecs)
        items = []
        for pos, score in zip(out.index.tolist(), out.scores.tolist()):
            m = int(r.ids[pos])
            items.append(RecommendedItem(
                **movie_fields(m, rows[pos], b), score=round(float(score), 6),
                rank_score=None if ranked.scores is None else round(float(ranked.scores[pos]), 6),
                paths=list(r.paths[pos]), reason=reasons.reason(pos, genres[pos]),
            ))  # fmt: skip
        degraded = ranked.scores is None and ranked.error == "ranker_failed"
        took = {**r.timings, **ranked.timings, "rerank_ms": (time.perf_counter() - t0) * 1e3}
        return Recommendation(
            user_id=r.user_id, k=r.k, items=items, cold_start=r.cold_start, degraded=degraded,
            degraded_reason=ranked.error if degraded else None,
            # what served this request: the ranker that scored it, the index that recalled it
            model_version=ranked.ranker_version or b.versions.get("ranker"),
            index_version=r.versions.get("index", b.versions.get("index")),
            took_ms=round(sum(v for key, v in took.items() if key != "batch"), 3),
            timings={key: round(v, 3) for key, v in took.items()},
        )  # fmt: skip

    def _genre_matrix(self, rows: np.ndarray, genres: Sequence[Sequence[str]]) -> np.ndarray:
        """(N, G) multi-hot over the catalog's genres for the candidates at catalog ``rows``, plus the
        genres the store gives for items added after the catalog was built (row -1)."""
        cat = self.bundle.catalog
        out: np.ndarray = cat.genre_matrix[np.maximum(rows, 0)].copy()
        for i in np.flatnonzero(rows < 0).tolist():
            out[i] = 0
            for g in genres[i]:
                if g in cat.genre_names:
                    out[i, cat.genre_names.index(g)] = 1
        return out

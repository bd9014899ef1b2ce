"""Similar items: an item's nearest items by embedding, by genre overlap when it has no embedding.

Serving's "more like this" and the item-to-item explanations use it. Items added live to the index
(cold-start items with a vector) are found by embedding at once; an item without a vector (not in
the index) gets the catalog items with the highest Jaccard overlap of genres, ties broken by
popularity, so every catalog item has an answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from rayrec.retrieval.catalog import ItemCatalog, Popularity
from rayrec.retrieval.index import ItemIndex

__all__ = ["SimilarItems", "Similar"]


@dataclass(frozen=True)
class Similar:
    """Items similar to ``movie_id``, best first, and how they were found."""

    movie_id: int
    movie_ids: np.ndarray  # (n,) int64
    scores: np.ndarray  # (n,) float32: cosine for "embedding", Jaccard of genres for "genre"
    source: Literal["embedding", "genre", "none"]


class SimilarItems:
    """``similar(movie_id, k)``: nearest items by embedding, falling back to genre overlap."""

    def __init__(self, index: ItemIndex | None, catalog: ItemCatalog, popularity: Popularity | None = None) -> None:
        self.index, self.catalog = index, catalog
        counts = popularity.counts() if popularity is not None else catalog.rating_count
        # popularity tie-break in (0, 1): never outweighs one genre more in common
        self._tiebreak = counts / (float(counts.max(initial=0.0)) + 1.0) * 1e-3
        self._sizes = catalog.genre_matrix.sum(axis=1).astype(np.float64)

    def __call__(self, movie_id: int, k: int = 10, *, genres: Sequence[str] | None = None) -> Similar:
        return self.similar(movie_id, k, genres=genres)

    def similar(self, movie_id: int, k: int = 10, *, genres: Sequence[str] | None = None) -> Similar:
        """Up to ``k`` items similar to ``movie_id`` (never itself). ``genres`` describes an item
        unknown to the catalog (a cold-start item) for the genre fallback."""
        movie_id = int(movie_id)
        if k <= 0:
            return Similar(movie_id, np.zeros(0, np.int64), np.zeros(0, np.float32), "none")
        if self.index is not None and movie_id in self.index:
            _, vec = self.index.vectors([movie_id])
            ids, scores = self.index.search(vec, k + 1)
            keep = (ids[0] >= 0) & (ids[0] != movie_id)
            return Similar(movie_id, ids[0][keep][:k], scores[0][keep][:k], "embedding")
        return self._by_genre(movie_id, k, genres)

    def _by_genre(self, movie_id: int, k: int, genres: Sequence[str] | None) -> Similar:
        wanted = tuple(genres) if genres is not None else self.catalog.genres_of(movie_id)
        cols = [self.catalog.genre_names.index(g) for g in wanted if g in self.catalog.genre_names]
        if not cols:
            return Similar(movie_id, np.zeros(0, np.int64), np.zeros(0, np.float32), "none")
        inter = self.catalog.genre_matrix[:, cols].sum(axis=1).astype(np.float64)  # (N,)
        union = self._sizes + len(cols) - inter
        jaccard = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        score = np.where(inter > 0, jaccard + self._tiebreak, -np.inf)
        own = self.catalog.rows([movie_id])[0]
        if own >= 0:
            score[own] = -np.inf
        n = int(min(k, np.isfinite(score).sum()))
        if n == 0:
            return Similar(movie_id, np.zeros(0, np.int64), np.zeros(0, np.float32), "none")
        top = np.argpartition(-score, n - 1)[:n] if n < len(score) else np.arange(len(score))
        top = top[np.lexsort((top, -score[top]))][:n]
        return Similar(movie_id, self.catalog.movie_ids[top], jaccard[top].astype(np.float32), "genre")

"""Why an item is on a user's list, in a few words."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rayrec.serving.bundle import Bundle
from rayrec.serving.ranking import REASON_SEEDS, Ranked
from rayrec.serving.recall import Recalled

__all__ = ["Reasons"]


class Reasons:
    """Short explanations: the recent like closest to the item ("because you liked X"), the
    favourite genre that brought it, or its popularity."""

    def __init__(
        self, bundle: Bundle, r: Recalled, ranked: Ranked, cand_vecs: tuple[np.ndarray, np.ndarray] | None
    ) -> None:
        b = bundle
        self.r, self.b = r, b
        seeds = list(r.liked[:REASON_SEEDS])
        self.seed_titles = [
            (row.get("title") if row else None) or b.catalog.title_of(m) or f"movie {m}"
            for m, row in zip(seeds, ranked.liked_rows)
        ]
        seed_rows = b.catalog.rows(seeds) if seeds else np.zeros(0, dtype=np.int64)
        self.seed_genres = [set(b.catalog.genres[i]) if i >= 0 else set() for i in seed_rows.tolist()]
        self.seed_vecs: np.ndarray | None = None
        self.cand_vecs = cand_vecs
        if seeds and b.index is not None and cand_vecs is not None:
            found, vecs = b.index.vectors(seeds)
            if found.any():
                self.seed_vecs = np.where(found[:, None], vecs, -1.0)

    def _closest_seed(self, pos: int, genres: Sequence[str]) -> int | None:
        if not self.seed_titles:
            return None
        if self.seed_vecs is not None and self.cand_vecs is not None and self.cand_vecs[0][pos]:
            sims = self.seed_vecs @ self.cand_vecs[1][pos]
            return int(np.argmax(sims))
        g = set(genres)
        overlap = [len(g & s) / max(1, len(g | s)) for s in self.seed_genres]
        best = int(np.argmax(overlap))
        return best if overlap[best] > 0 else None

    def reason(self, pos: int, genres: Sequence[str]) -> str:
        paths = self.r.paths[pos]
        if "embedding" in paths or "item2item" in paths or "ease" in paths:  # found through the user's likes
            seed = self._closest_seed(pos, genres)
            if seed is not None:
                return f"because you liked {self.seed_titles[seed]}"
            return "matches your taste"
        if "genre" in paths:
            shared = [g for g in self.r.genres if g in genres]
            if shared:
                return f"because you like {shared[0]} movies"
        if "popular_recent" in paths:
            return "trending lately"
        if "cold_start" in paths:
            liked = [g for g in (*self.r.declared_genres, *self.r.genres) if g in genres]
            if liked:
                return f"popular with {liked[0]} fans at this time of day"
            return "popular at this time of day: rate a few movies to personalise"
        if self.r.cold_start:
            return "popular with everyone: rate a few movies to personalise"
        seed = self._closest_seed(pos, genres)
        if seed is not None:
            return f"popular, and like {self.seed_titles[seed]}"
        return "popular with everyone"

"""Stage 2, ranking: the candidates' item rows (one store call per batch of requests) and the ranker's
scores (one forward pass), then the fusion of those scores with the recall order and the user's
newest likes into the order rerank starts from.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rayrec.models.inputs import user_columns
from rayrec.retrieval.ease import rated_history
from rayrec.serving.bundle import Bundle
from rayrec.serving.items import ItemRows
from rayrec.serving.recall import Recalled
from rayrec.store.base import OnlineStore

__all__ = ["Ranked", "RankStage", "fuse", "fresh_affinity", "percentile", "REASON_SEEDS"]

log = logging.getLogger(__name__)

REASON_SEEDS = 5  # recent likes an explanation may point to (their rows are read with the candidates')


@dataclass
class Ranked:
    """Ranker output for one request: item rows (aligned with ``Recalled.ids``), rows of the recent
    likes, and scores (None when the ranker failed or is not loaded, with the reason)."""

    rows: list[dict[str, Any] | None]
    liked_rows: list[dict[str, Any] | None]
    scores: np.ndarray | None
    error: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    ranker_version: str | None = None  # of the ranker that scored (None: not scored)


def percentile(x: np.ndarray) -> np.ndarray:
    """Each score's rank among the candidates in [0, 1] (1 = best)."""
    x = np.asarray(x, dtype=np.float64)
    if len(x) < 2:
        return np.ones(len(x))
    return np.argsort(np.argsort(x, kind="stable"), kind="stable") / (len(x) - 1)


class RankStage:
    """The ranking stage of :class:`rayrec.serving.core.Recommender` over its ``bundle``."""

    bundle: Bundle
    items: ItemRows

    def fetch(self, store: OnlineStore, batch: Sequence[Recalled]) -> list[tuple[list[Any], list[Any]]]:
        """Item rows of every request in ``batch`` (candidates, then recent likes), one store call."""
        unique = self._wanted(batch)
        got = dict(zip(unique, self.items.get(store, unique))) if unique else {}
        return self._per_request(batch, got)

    def fetch_kept(self, batch: Sequence[Recalled]) -> list[tuple[list[Any], list[Any]]] | None:
        """:meth:`fetch` from the item cache alone, when it holds every row fresh (no store call);
        else None."""
        unique = self._wanted(batch)
        rows = self.items.kept(unique)
        return None if rows is None else self._per_request(batch, dict(zip(unique, rows)))

    def _wanted(self, batch: Sequence[Recalled]) -> list[int]:
        wanted: list[int] = []
        for r in batch:
            wanted += r.ids.tolist()
            wanted += list(r.liked[:REASON_SEEDS])
        self.items.ttl_s = self.bundle.config.item_cache_s
        return list(dict.fromkeys(wanted))

    @staticmethod
    def _per_request(batch: Sequence[Recalled], got: dict[int, Any]) -> list[tuple[list[Any], list[Any]]]:
        return [([got[m] for m in r.ids.tolist()], [got[m] for m in r.liked[:REASON_SEEDS]]) for r in batch]

    def score(self, batch: Sequence[Recalled], rows: Sequence[list[Any]]) -> tuple[list[np.ndarray] | None, str | None]:
        """Ranker probabilities of every request's candidates in one forward pass; ``(None, why)``
        when the ranker is missing or fails (the caller then keeps the recall order)."""
        ranker = self.bundle.ranker
        if ranker is None:
            return None, "ranker_unavailable"
        try:
            users = [
                r.user_inputs if r.user_inputs is not None and r.user_inputs_spec == ranker.spec_hash
                else ranker.encode_user(user_columns(r.user_id, r.user_row, r.liked, r.genres))
                for r in batch
            ]  # fmt: skip
            # what a ranker's ``ease_score`` input sums over: the movies the ease recall path sums over
            histories = [rated_history(r.seen, r.liked) for r in batch] if ranker.ease is not None else None
            return ranker.score_many(users, [(r.ids.tolist(), rw) for r, rw in zip(batch, rows)], histories), None
        except Exception:
            log.exception("ranker failed on a batch of %d requests; answering in recall order", len(batch))
            return None, "ranker_failed"

    def rank_fetched(self, batch: Sequence[Recalled], fetched: Sequence[tuple[list[Any], list[Any]]], store_ms: float = 0.0) -> list[Ranked]:
        """Score a batch whose item rows were fetched already (pure compute)."""
        t1 = time.perf_counter()
        scores, error = self.score(batch, [f[0] for f in fetched])
        t2 = time.perf_counter()
        timings = {"store_items_ms": store_ms, "rank_ms": (t2 - t1) * 1e3, "batch": float(len(batch))}
        return [
            Ranked(rows=f[0], liked_rows=f[1], scores=None if scores is None else scores[i], error=error, timings=timings,
                   ranker_version=None if scores is None else self.bundle.versions.get("ranker"))  # fmt: skip
            for i, f in enumerate(fetched)
        ]


def fuse(
    bundle: Bundle,
    r: Recalled,
    rank_scores: np.ndarray,
    live: np.ndarray,
    genre_matrix: np.ndarray,
    vecs: tuple[np.ndarray, np.ndarray] | None,
    popularity: np.ndarray | None = None,
) -> np.ndarray:
    """The order rerank starts from: with a ``blend`` (:mod:`rayrec.serving.blend`), its probabilities
    scaled to [0, 1] (``popularity``: the candidates' rating counts, one of its features); otherwise the
    ranker's scores, mixed as percentiles among the candidates (so scales do not matter) with

    - the recall order, with weight ``1 − rank_weight``;
    - the recall order alone for items added live (not in the catalog): the ranker has no
      ratings or id embedding for them, as it has none for a cold user;
    - with ``fresh_weight``, the candidates' affinity to the likes the user posted since the batch
      data (``fresh``): the ranker sees those only as five recent ids, and the newest interest
      should show in the very next list."""
    cfg = bundle.config
    n = len(r.ids)
    fresh = bool(r.fresh) and cfg.fresh_weight > 0
    if cfg.rank_weight >= 1.0 and not fresh and not live.any() and not cfg.blend:
        return np.asarray(rank_scores, dtype=np.float64)
    recall_order = np.linspace(1.0, 0.0, n)
    if cfg.blend:
        from rayrec.serving.blend import blend_scores

        p = blend_scores(bundle, r, rank_scores, popularity if popularity is not None else np.zeros(n), cfg.blend)
        span = float(p.max() - p.min()) if n else 0.0
        base = (p - p.min()) / span if span > 0 else recall_order.copy()
    else:
        base = cfg.rank_weight * percentile(rank_scores) + (1.0 - cfg.rank_weight) * recall_order
    base[live] = recall_order[live]
    affinity = fresh_affinity(bundle, r.fresh[: cfg.fresh_seeds], genre_matrix, vecs) if fresh else None
    if affinity is None:
        return base
    return (1.0 - cfg.fresh_weight) * base + cfg.fresh_weight * percentile(affinity)

def fresh_affinity(
    bundle: Bundle, seeds: Sequence[int], genre_matrix: np.ndarray, vecs: tuple[np.ndarray, np.ndarray] | None
) -> np.ndarray | None:
    """How close each candidate is to the fresh likes ``seeds``: the mean of its genre affinity
    (cosine between its genres and the seeds' genre profile) and its embedding affinity (the best
    cosine to a seed in the index's space), each as a percentile. None when no seed is known."""
    b = bundle
    parts: list[np.ndarray] = []
    rows = b.catalog.rows(list(seeds))
    known = rows[rows >= 0]
    if len(known):
        profile = b.catalog.genre_matrix[known].sum(axis=0).astype(np.float64)
        g = genre_matrix.astype(np.float64)
        denom = np.linalg.norm(g, axis=1) * np.linalg.norm(profile)
        parts.append(percentile(np.divide(g @ profile, denom, out=np.zeros(len(g)), where=denom > 0)))
    if vecs is not None and b.index is not None:
        found, seed_vecs = b.index.vectors(list(seeds))
        if found.any():
            sims = (vecs[1] @ seed_vecs[found].T).max(axis=1)
            parts.append(percentile(np.where(vecs[0], sims, -1.0)))
    return np.mean(parts, axis=0) if parts else None

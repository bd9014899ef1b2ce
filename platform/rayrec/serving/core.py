"""Recall → rank → rerank in one process: the serving logic, free of Ray.

The Serve deployments call these stages (in one replica, or spread over Recall / Ranker / Reranker
deployments), and the compute-floor benchmark calls :meth:`Recommender.recommend` directly. Each stage
takes and returns plain, picklable data (:class:`Recalled`, :class:`Ranked`), so a stage can run
behind a DeploymentHandle unchanged.

Store reads per ``/recommend``: the user row and the user's online events in ``recall``, then one
batched ``get("item", …)`` for the candidates (and the user's recent likes, for the reasons) in
``rank``, which reads the rows of every request of a batch in a single call.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from rayrec.realtime import STATE_KEY, ColdContext, is_cold
from rayrec.rerank import Candidates
from rayrec.rerank import rerank as rerank_candidates
from rayrec.retrieval.state import UserState
from rayrec.serving.api import Movie, Recommendation, RecommendedItem, SimilarItem, SimilarMovies, UserProfile
from rayrec.serving.bundle import Bundle
from rayrec.serving.history import merge_events
from rayrec.serving.items import ItemRows
from rayrec.models.inputs import user_columns
from rayrec.store.base import OnlineStore

__all__ = ["Recalled", "Ranked", "Recommender", "REASON_SEEDS", "HISTORY_LIMIT"]

log = logging.getLogger(__name__)

REASON_SEEDS = 5  # recent likes an explanation may point to
COLD_LIKES = 5  # below this many likes (and ratings) a user also gets the cold-start path
HISTORY_LIMIT = 200  # online events read per request
FRESH_GENRES = 2  # genres of the fresh likes that lead the genre path
# rerank settings that keep the recall order (filters and business rules still apply)
_RECALL_ORDER = {"diversity": 0.0, "freshness_weight": 0.0, "popularity_weight": 0.0}


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
        """What the rank stage needs, without the seen set and paths (smaller to send to a Ranker
        deployment)."""
        return replace(self, seen=frozenset(), paths=[], recall_scores=self.recall_scores[:0])


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


def _percentile(x: np.ndarray) -> np.ndarray:
    """Each score's rank among the candidates in [0, 1] (1 = best)."""
    x = np.asarray(x, dtype=np.float64)
    if len(x) < 2:
        return np.ones(len(x))
    return np.argsort(np.argsort(x, kind="stable"), kind="stable") / (len(x) - 1)


def _year(row: dict[str, Any] | None) -> int | None:
    y = row.get("item_year") if row else None
    return int(y) if isinstance(y, (int, float)) and y == y else None


def _movie(movie_id: int, row: dict[str, Any] | None, bundle: Bundle) -> dict[str, Any]:
    """Movie fields from a store row, or from the in-memory catalog when the store lacks the item."""
    if row is not None:
        count, mean = row.get("item_rating_count"), row.get("item_rating_mean")
        return {
            "movie_id": int(movie_id), "title": row.get("title"), "genres": list(row.get("genres") or []),
            "year": _year(row), "rating_count": int(count) if count is not None else None,
            "rating_mean": float(mean) if mean is not None else None,
        }  # fmt: skip
    return {"movie_id": int(movie_id), "title": bundle.catalog.title_of(movie_id),
            "genres": list(bundle.catalog.genres_of(movie_id))}  # fmt: skip


class Recommender:
    """The serving core over one :class:`Bundle` (swap ``bundle`` to hot-swap artifacts)."""

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle
        self.items = ItemRows(bundle.config.item_cache_s)  # outlives bundle swaps: it holds store rows

    # -- stage 1: recall --------------------------------------------------------------------------
    def recall(self, store: OnlineStore, user_id: int, k: int, context: ColdContext | None = None) -> Recalled:
        """Read the user (row and online events, two store calls), then recall candidates."""
        t0 = time.perf_counter()
        row, events = self.read_user(store, user_id)
        out = self.recall_from(user_id, k, row, events, context)
        out.timings["store_user_ms"] = (time.perf_counter() - t0) * 1e3 - out.timings["recall_ms"]
        return out

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
        if cold:
            ids, scores, paths = self._cold_first(ids.tolist(), scores.tolist(), paths, row, k, total, hist.seen, context)
        t2 = time.perf_counter()
        return Recalled(
            user_id=user_id, k=k, known=row is not None, user_row=row, liked=hist.liked, genres=genres,
            seen=hist.seen, ids=np.asarray(ids, dtype=np.int64), recall_scores=np.asarray(scores, dtype=np.float32),
            paths=paths, cold_start=cold, declared_genres=tuple(context.genres) if context else (),
            fresh=hist.fresh, timings={"recall_ms": (t2 - t1) * 1e3}, user_inputs=inputs,
            user_inputs_spec=b.tower.spec_hash if inputs is not None and b.tower is not None else None,
            versions=dict(b.versions),
        )  # fmt: skip

    def _cold_first(
        self,
        ids: list[int],
        scores: list[float],
        paths: list[tuple[str, ...]],
        row: dict[str, Any] | None,
        k: int,
        total: int,
        seen: frozenset[int],
        context: ColdContext | None,
    ) -> tuple[np.ndarray, np.ndarray, list[tuple[str, ...]]]:
        """The cold-start picks first, then the other candidates; a pick another path found too moves
        up, crediting both."""
        ctx = context or ColdContext()
        picks = self.bundle.cold.recommend(max(2 * k, total // 4), genres=ctx.genres, hour=ctx.hour, row=row, exclude=seen)
        where = {m: i for i, m in enumerate(ids)}
        paths = list(paths)
        head: list[tuple[int, float, tuple[str, ...]]] = []
        for m, sc in picks:
            if m in where:
                i = where[m]
                head.append((m, float(sc), ("cold_start", *paths[i])))
                paths[i] = ()
            else:
                head.append((m, float(sc), ("cold_start",)))
        merged = head + [(m, sc, p) for m, sc, p in zip(ids, scores, paths) if p]
        return (np.asarray([m for m, _, _ in merged], dtype=np.int64), np.asarray([sc for _, sc, _ in merged]),
                [p for _, _, p in merged])  # fmt: skip

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

    # -- stage 2: rank ----------------------------------------------------------------------------
    def fetch(self, store: OnlineStore, batch: Sequence[Recalled]) -> list[tuple[list[Any], list[Any]]]:
        """Item rows of every request in ``batch`` (candidates, then recent likes), one store call."""
        wanted: list[int] = []
        for r in batch:
            wanted += r.ids.tolist()
            wanted += list(r.liked[:REASON_SEEDS])
        unique = list(dict.fromkeys(wanted))
        self.items.ttl_s = self.bundle.config.item_cache_s
        got = dict(zip(unique, self.items.get(store, unique))) if unique else {}
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
            return ranker.score_many(users, [(r.ids.tolist(), rw) for r, rw in zip(batch, rows)]), None
        except Exception:
            log.exception("ranker failed on a batch of %d requests; answering in recall order", len(batch))
            return None, "ranker_failed"

    def rank(self, store: OnlineStore, batch: Sequence[Recalled]) -> list[Ranked]:
        """Fetch item rows (one store call) and score them (one forward pass) for a batch of requests.
        Store errors propagate (the caller degrades); ranker errors give ``scores=None``."""
        t0 = time.perf_counter()
        fetched = self.fetch(store, batch)
        return self.rank_fetched(batch, fetched, store_ms=(time.perf_counter() - t0) * 1e3)

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

    # -- stage 3: rerank ----------------------------------------------------------------------------
    def fused_scores(self, r: Recalled, ranked: Ranked) -> np.ndarray:
        """The order rerank starts from, one score per candidate (higher first)."""
        return self._start(r, ranked)[0].scores

    def _start(self, r: Recalled, ranked: Ranked) -> tuple[Candidates, Any, tuple[np.ndarray, np.ndarray] | None]:
        """What rerank starts from: the candidates with their starting scores, the rerank settings,
        and the candidates' index vectors."""
        b = self.bundle
        n = len(r.ids)
        rows = ranked.rows
        genres: list[list[str]] = []
        years = np.full(n, np.nan)
        popularity = np.zeros(n)
        for i, (m, row) in enumerate(zip(r.ids.tolist(), rows)):  # one pass over the rows
            if row:
                genres.append(list(row.get("genres") or ()))
                y = _year(row)
                if y is not None:
                    years[i] = y
                popularity[i] = row.get("item_rating_count") or 0
            else:
                genres.append(list(b.catalog.genres_of(m)))
        vecs = b.item_vectors(r.ids) if n else None
        cat_rows = b.catalog.rows(r.ids)  # -1: added live, after the catalog was built
        genre_matrix = self._genre_matrix(cat_rows, genres)
        if ranked.scores is not None and not r.cold_start:
            scores, cfg = self._fused(r, ranked.scores, cat_rows < 0, genre_matrix, vecs), b.rerank
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
        reasons = _Reasons(self, r, ranked, vecs)
        items = []
        for pos, score in zip(out.index.tolist(), out.scores.tolist()):
            m = int(r.ids[pos])
            items.append(RecommendedItem(
                **_movie(m, rows[pos], b), score=round(float(score), 6),
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

    def _fused(
        self,
        r: Recalled,
        rank_scores: np.ndarray,
        live: np.ndarray,
        genre_matrix: np.ndarray,
        vecs: tuple[np.ndarray, np.ndarray] | None,
    ) -> np.ndarray:
        """The order rerank starts from: the ranker's scores, mixed as percentiles among the
        candidates (so scales do not matter) with

        - the recall order, with weight ``1 − rank_weight``;
        - the recall order alone for items added live (not in the catalog): the ranker has no
          ratings or id embedding for them, as it has none for a cold user;
        - with ``fresh_weight``, the candidates' affinity to the likes the user posted since the batch
          data (``fresh``): the ranker sees those only as five recent ids, and the newest interest
          should show in the very next list."""
        cfg = self.bundle.config
        n = len(r.ids)
        fresh = bool(r.fresh) and cfg.fresh_weight > 0
        if cfg.rank_weight >= 1.0 and not fresh and not live.any():
            return np.asarray(rank_scores, dtype=np.float64)
        recall_order = np.linspace(1.0, 0.0, n)
        base = cfg.rank_weight * _percentile(rank_scores) + (1.0 - cfg.rank_weight) * recall_order
        base[live] = recall_order[live]
        affinity = self._fresh_affinity(r.fresh[: cfg.fresh_seeds], genre_matrix, vecs) if fresh else None
        if affinity is None:
            return base
        return (1.0 - cfg.fresh_weight) * base + cfg.fresh_weight * _percentile(affinity)

    def _fresh_affinity(
        self, seeds: Sequence[int], genre_matrix: np.ndarray, vecs: tuple[np.ndarray, np.ndarray] | None
    ) -> np.ndarray | None:
        """How close each candidate is to the fresh likes ``seeds``: the mean of its genre affinity
        (cosine between its genres and the seeds' genre profile) and its embedding affinity (the best
        cosine to a seed in the index's space), each as a percentile. None when no seed is known."""
        b = self.bundle
        parts: list[np.ndarray] = []
        rows = b.catalog.rows(list(seeds))
        known = rows[rows >= 0]
        if len(known):
            profile = b.catalog.genre_matrix[known].sum(axis=0).astype(np.float64)
            g = genre_matrix.astype(np.float64)
            denom = np.linalg.norm(g, axis=1) * np.linalg.norm(profile)
            parts.append(_percentile(np.divide(g @ profile, denom, out=np.zeros(len(g)), where=denom > 0)))
        if vecs is not None and b.index is not None:
            found, seed_vecs = b.index.vectors(list(seeds))
            if found.any():
                sims = (vecs[1] @ seed_vecs[found].T).max(axis=1)
                parts.append(_percentile(np.where(vecs[0], sims, -1.0)))
        return np.mean(parts, axis=0) if parts else None

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

    # -- all stages, in process ---------------------------------------------------------------------
    def recommend(self, store: OnlineStore, user_id: int, k: int, context: ColdContext | None = None) -> Recommendation:
        """The whole chain in this thread; store failures give the popularity answer."""
        from rayrec.store.base import StoreError

        t = time.perf_counter()
        try:
            recalled = self.recall(store, user_id, k, context)
            ranked = self.rank(store, [recalled])[0]
        except StoreError as e:
            log.warning("store unavailable, answering from popularity: %s", e)
            return self.popular(user_id, k, "store_unavailable")
        out = self.rerank(recalled, ranked)
        out.took_ms = round((time.perf_counter() - t) * 1e3, 3)
        return out

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
        return Movie(**_movie(movie_id, row, self.bundle))

    def similar(self, store: OnlineStore | None, movie_id: int, k: int) -> SimilarMovies | None:
        b = self.bundle
        query_row = store.get("item", [movie_id])[0] if store is not None else None
        if query_row is None and bundle_lacks(b, movie_id):
            return None
        genres = list(query_row.get("genres") or []) if query_row else None
        found = b.similar.similar(movie_id, k, genres=genres if bundle_lacks(b, movie_id) else None)
        ids = found.movie_ids.tolist()
        rows = store.get("item", ids) if store is not None and ids else [None] * len(ids)
        items = [SimilarItem(**_movie(m, row, b), score=round(float(s), 6)) for m, row, s in zip(ids, rows, found.scores.tolist())]
        return SimilarMovies(movie_id=movie_id, movie=Movie(**_movie(movie_id, query_row, b)), k=k, items=items,
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
            recent=[Movie(**_movie(m, rw, b)) for m, rw in zip(recent_ids, recent_rows)],
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


class _Reasons:
    """Short explanations: the recent like closest to the item ("because you liked X"), the
    favourite genre that brought it, or its popularity."""

    def __init__(
        self, core: Recommender, r: Recalled, ranked: Ranked, cand_vecs: tuple[np.ndarray, np.ndarray] | None
    ) -> None:
        b = core.bundle
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

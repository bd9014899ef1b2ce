"""Recall paths: each answers "up to k items for this user, best first, none they have seen".

One interface, :class:`RecallPath` (``name``, ``recall(user, k) -> PathResult``), four kinds:

- :class:`EmbeddingRecall`: nearest items to the user vector (the user tower's output, or the mean
  of the user's recent positives' item vectors, as in the course);
- :class:`ItemToItemRecall`: neighbours of the user's last positives, summed over the seeds with a
  recency decay (items close to several recent likes come first). Neighbours come from the item
  index rather than a co-occurrence table: one structure answers every neighbour query, items added
  live have neighbours at once, and embeddings fit on co-ratings (the retriever's, or PureSVD's
  ``V·S``) already encode co-occurrence without an items × items table to build and refresh;
- :class:`PopularRecall`: most rated items before ``as_of``, over all time or a recent window;
- :class:`GenreRecall`: the most rated items of the user's favourite genres, the quota shared among
  the genres by preference rank;
- :class:`NewItemRecall`: items added live (not in the catalog the models were trained on) that are
  among the nearest items of the user's latest likes or of the user vector: items with no ratings yet
  reach the users they suit before any rebuild.

Paths are pure functions of the :class:`UserState` (and the index / ratings they were built with),
so the same objects serve online requests and offline "as of time t" evaluation.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from rayrec.retrieval.catalog import ItemCatalog, Popularity
from rayrec.retrieval.index import ItemIndex
from rayrec.retrieval.state import UserState

__all__ = [
    "PathResult",
    "RecallPath",
    "EmbeddingRecall",
    "ItemToItemRecall",
    "PopularRecall",
    "GenreRecall",
    "NewItemRecall",
]

DAY_S = 86_400


@dataclass(frozen=True)
class PathResult:
    """Items of one path, best first: ``movie_ids`` (n,) int64 and their ``scores`` (n,) float32.
    Scores order items within a path; they are not comparable across paths."""

    movie_ids: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.movie_ids)

    @classmethod
    def empty(cls) -> PathResult:
        return cls(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))


#: the embedding path first searches this many times the items it needs (then deeper if the user has
#: seen too many of them)
FIRST_DEPTH = 2


class RecallPath(ABC):
    """A source of candidates. ``recall`` returns at most ``k`` items, none in ``user.seen``."""

    name: str
    #: ``recall(user, k)`` is the first k items of ``recall(user, k2)`` for any k2 > k: then a caller
    #: wanting both asks once, for k2. (Not so for paths that allocate by k, such as genre.)
    prefix_stable: bool = False

    @abstractmethod
    def recall(self, user: UserState, k: int) -> PathResult: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def _unseen(ids: np.ndarray, scores: np.ndarray, user: UserState, k: int, *, distinct: bool = False) -> PathResult:
    """Keep valid (≥ 0) ids ``user`` has not seen, in order, first occurrence only, at most k.
    ``distinct``: the ids are known to hold no repeats (skips that check)."""
    keep = ids >= 0
    if user.seen:
        keep &= ~_isin_sorted(ids, user.seen_array)
    ids, scores = ids[keep], scores[keep]
    if not distinct:
        _, first = np.unique(ids, return_index=True)
        if len(first) != len(ids):
            first.sort()
            ids, scores = ids[first], scores[first]
    return PathResult(ids[:k].astype(np.int64, copy=False), scores[:k].astype(np.float32, copy=False))


def _isin_sorted(ids: np.ndarray, sorted_values: np.ndarray) -> np.ndarray:
    """``np.isin(ids, sorted_values)`` for a sorted array, by binary search (no sort per call)."""
    pos = np.searchsorted(sorted_values, ids)
    return sorted_values[np.minimum(pos, len(sorted_values) - 1)] == ids


def _ranked_rows(scores: np.ndarray) -> np.ndarray:
    """Every row with a positive score, best first (ties: lower row first)."""
    order = np.argsort(-scores, kind="stable")
    return order[scores[order] > 0]


class _KeptRankings:
    """Rankings computed for online requests (``as_of`` None: every request sees the same counts),
    kept while the count arrays they came from are the same objects (Popularity caches them)."""

    def __init__(self) -> None:
        self._kept: dict[str | None, tuple[tuple[np.ndarray, ...], np.ndarray]] = {}

    def get(self, key: str | None, sources: tuple[np.ndarray, ...], compute: Callable[[], np.ndarray]) -> np.ndarray:
        hit = self._kept.get(key)
        if hit is not None and len(hit[0]) == len(sources) and all(a is b for a, b in zip(hit[0], sources)):
            return hit[1]
        out = compute()
        self._kept[key] = (sources, out)
        return out


def _top_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """Row positions of the k highest scores, best first (ties: lower row first)."""
    k = min(k, len(scores))
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    part = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
    return part[np.lexsort((part, -scores[part]))]


class EmbeddingRecall(RecallPath):
    """Nearest items to the user's vector. Without ``user.vector`` and with ``fallback="recent_mean"``
    the query is the normalised mean of the item vectors of the user's ``n_recent`` latest positives."""

    prefix_stable = True

    def __init__(
        self,
        index: ItemIndex,
        *,
        fallback: Literal["recent_mean", "none"] = "recent_mean",
        n_recent: int = 20,
        name: str = "embedding",
    ) -> None:
        if fallback not in ("recent_mean", "none"):
            raise ValueError(f"fallback must be 'recent_mean' or 'none', got {fallback!r}")
        self.index, self.fallback, self.n_recent, self.name = index, fallback, n_recent, name

    def query(self, user: UserState) -> np.ndarray | None:
        """The (D,) query vector for ``user``, or None when there is nothing to go on."""
        if user.vector is not None:
            return np.asarray(user.vector, dtype=np.float32).reshape(-1)
        if self.fallback == "none" or not user.recent_positives:
            return None
        found, vecs = self.index.vectors(list(user.recent_positives[: self.n_recent]))
        if not found.any():
            return None
        mean = vecs[found].mean(axis=0)
        norm = float(np.linalg.norm(mean))
        return mean / norm if norm > 0 else None

    def recall(self, user: UserState, k: int) -> PathResult:
        q = self.query(user)
        if q is None or k <= 0:
            return PathResult.empty()
        # ``k`` unseen items lie within the first ``k + |seen|``, and for most users well inside the
        # first ``2k``, so that is asked first and the full depth only when it held too few unseen ones.
        # (62,000 items, the merger's k 100: a quarter of the users have seen more than k, up to 1,200
        # items, and searched that much deeper; 1.4% of users need more than 2k)
        deep = k + len(user.seen)
        first = min(deep, FIRST_DEPTH * k)
        ids, scores = self.index.search(q[None, :], first)
        out = _unseen(ids[0], scores[0], user, k, distinct=True)  # (a movie id has one live row)
        if len(out) < k and first < deep and ids[0, -1] >= 0:  # (-1: the index holds no more)
            ids, scores = self.index.search(q[None, :], deep)
            out = _unseen(ids[0], scores[0], user, k, distinct=True)
        return out


class ItemToItemRecall(RecallPath):
    """Neighbours (by embedding, through the index) of the user's ``n_seeds`` latest positives.
    An item's score is Σ over seeds of ``decay**seed_rank × similarity``, summed over each seed's
    ``max(k, depth) + |seen| + 1`` nearest items: every seed list holds at least ``k`` unseen items,
    and the asks of one request for any ``k ≤ depth`` share one computation (the last user's sums
    are kept, per thread)."""

    def __init__(
        self, index: ItemIndex, *, n_seeds: int = 5, decay: float = 0.8, depth: int = 128, name: str = "item2item"
    ) -> None:
        self.index, self.n_seeds, self.decay, self.depth, self.name = index, n_seeds, decay, depth, name
        self._last = threading.local()  # this thread's last sums: (user, depth, ids, scores)

    def _neighbours(self, user: UserState, depth: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The seeds' ``depth`` nearest items ``(ids, sims)``, each (S, depth); None without seeds.
        The index keeps each seed's list: the next requests with the same seeds cost no search."""
        seeds = [m for m in user.recent_positives[: self.n_seeds * 2] if m in self.index][: self.n_seeds]
        if not seeds:
            return None
        return self.index.neighbours(seeds, depth)

    def _sums(self, user: UserState, depth: int) -> PathResult | None:
        """Every unseen neighbour by its decayed similarity sum, best first; None without seeds."""
        last = getattr(self._last, "value", None)
        if last is not None and last[0] is user and last[1] == depth:
            out: PathResult | None = last[2]
            return out
        got = self._neighbours(user, depth)
        out = None
        if got is not None:
            ids, sims = got  # (S, depth)
            weights = (self.decay ** np.arange(len(ids), dtype=np.float32))[:, None]
            flat_ids, flat_scores = ids.reshape(-1), (sims * weights).reshape(-1)
            valid = flat_ids >= 0
            uniq, inv = np.unique(flat_ids[valid], return_inverse=True)
            total = np.bincount(inv, weights=flat_scores[valid], minlength=len(uniq))
            order = np.argsort(-total, kind="stable")  # ties: the lower id first (uniq is sorted)
            out = _unseen(uniq[order], total[order], user, len(order), distinct=True)
        self._last.value = (user, depth, out)
        return out

    def recall(self, user: UserState, k: int) -> PathResult:
        if k <= 0 or not user.recent_positives:
            return PathResult.empty()
        got = self._sums(user, max(k, self.depth) + len(user.seen) + 1)
        if got is None:
            return PathResult.empty()
        return PathResult(got.movie_ids[:k], got.scores[:k])


class PopularRecall(RecallPath):
    """The most rated items before ``user.as_of``. With ``window_days``, counts over that trailing
    window come first and all-time counts break ties (so the quota fills even in a quiet window)."""

    prefix_stable = True

    def __init__(self, popularity: Popularity, *, window_days: float | None = None, name: str | None = None) -> None:
        self.popularity = popularity
        self._kept = _KeptRankings()
        self.window_s = None if window_days is None else int(window_days * DAY_S)
        self.name = name or ("popular" if window_days is None else "popular_recent")

    def _counts(self, as_of: int | None) -> tuple[np.ndarray, ...]:
        """All-time counts, and the window's counts when there is a window."""
        total = self.popularity.counts(as_of)
        return (total,) if self.window_s is None else (total, self.popularity.counts(as_of, self.window_s))

    @staticmethod
    def _combine(counts: tuple[np.ndarray, ...]) -> np.ndarray:
        if len(counts) == 1:
            return counts[0]
        total, recent = counts
        return recent + total / (float(total.max(initial=0.0)) + 1.0)

    def scores(self, as_of: int | None) -> np.ndarray:
        return self._combine(self._counts(as_of))

    def recall(self, user: UserState, k: int) -> PathResult:
        if k <= 0:
            return PathResult.empty()
        counts = self._counts(user.as_of)
        s = self._combine(counts)
        if user.as_of is None:  # online: one ranking of the whole catalog, kept while counts are the same
            rows = self._kept.get(None, counts, lambda: _ranked_rows(s))[: k + len(user.seen)]
        else:
            rows = _top_rows(s, k + len(user.seen))
            rows = rows[s[rows] > 0]
        ids = self.popularity.catalog.movie_ids[rows]
        return _unseen(ids, s[rows].astype(np.float32), user, k)


class GenreRecall(RecallPath):
    """The most rated items (before ``user.as_of``) of the user's favourite genres. Genre i of n gets
    a share of k proportional to ``n - i``; unused shares go round-robin to the other genres."""

    def __init__(self, popularity: Popularity, *, name: str = "genre") -> None:
        self.popularity, self.name = popularity, name
        self._kept = _KeptRankings()  # per genre
        self._last = threading.local()  # this thread's last user: (user, counts, depth, lists)

    @property
    def catalog(self) -> ItemCatalog:
        return self.popularity.catalog

    def _ranked(self, genre: str, counts: np.ndarray, keep: bool) -> np.ndarray:
        """Rows of ``genre``'s rated items, most rated first (ties: lower row first); with ``keep``
        (counts as of now, the same for every online request) the ranking is kept for the next call."""

        def compute() -> np.ndarray:
            rows = self.catalog.genre_rows(genre)
            return rows[_ranked_rows(counts[rows])]

        return self._kept.get(genre, (counts,), compute) if keep else compute()

    def _unseen_lists(self, user: UserState, genres: list[str], counts: np.ndarray, depth: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per genre, the unseen items among its ``depth`` most rated, with their counts. The last
        user's lists are kept (this thread's), made at least ``128 + |seen|`` deep: the merger asks a
        path more than once per request, and shorter lists are cut from longer ones by rank."""
        last = getattr(self._last, "value", None)
        if last is None or last[0] is not user or last[1] is not counts or last[2] < depth:
            seen = user.seen_array
            made = max(depth, 128 + len(seen))
            lists = []
            for g in genres:
                top = self._ranked(g, counts, user.as_of is None)[:made]
                keep = ~_isin_sorted(self.catalog.movie_ids[top], seen) if len(seen) else np.ones(len(top), dtype=bool)
                pos = np.flatnonzero(keep)
                lists.append((self.catalog.movie_ids[top[pos]], counts[top[pos]], pos))
            last = (user, counts, made, lists)
            self._last.value = last
        if last[2] == depth:
            return [(ids, sc) for ids, sc, _ in last[3]]
        out = []
        for ids, sc, pos in last[3]:
            n = int(np.searchsorted(pos, depth))  # those ranked above ``depth``
            out.append((ids[:n], sc[:n]))
        return out

    def recall(self, user: UserState, k: int) -> PathResult:
        genres = [g for g in user.genres if len(self.catalog.genre_rows(g))]
        if k <= 0 or not genres:
            return PathResult.empty()
        counts = self.popularity.counts(user.as_of)
        lists = self._unseen_lists(user, genres, counts, k + len(user.seen))
        weights = np.arange(len(genres), 0, -1, dtype=np.float64)
        shares = _largest_remainder(k, weights)
        taken: dict[int, float] = {}
        cursor = [0] * len(lists)

        def take(i: int, n: int) -> int:
            ids, sc = lists[i]
            got = 0
            while got < n and cursor[i] < len(ids):
                m = int(ids[cursor[i]])
                if m not in taken:
                    taken[m] = float(sc[cursor[i]])
                    got += 1
                cursor[i] += 1
            return got

        for i, share in enumerate(shares):
            take(i, int(share))
        while len(taken) < k and any(cursor[i] < len(lists[i][0]) for i in range(len(lists))):
            for i in range(len(lists)):
                if len(taken) >= k:
                    break
                take(i, 1)
        ids = np.fromiter(taken.keys(), dtype=np.int64, count=len(taken))
        return PathResult(ids, np.fromiter(taken.values(), dtype=np.float32, count=len(taken)))


def _largest_remainder(k: int, weights: np.ndarray) -> np.ndarray:
    """Integer shares of k proportional to weights, summing to k (largest remainder method)."""
    exact = k * weights / weights.sum()
    shares = np.floor(exact).astype(np.int64)
    rest = k - int(shares.sum())
    if rest > 0:
        shares[np.argsort(-(exact - shares), kind="stable")[:rest]] += 1
    return shares


class NewItemRecall(RecallPath):
    """Items inserted into the index live (their ids are not in ``catalog``) that would be among the
    ``neighbours`` nearest items of one of the user's ``n_seeds`` latest positives, or of the user
    vector. Scored by how far inside that neighbourhood they are (the best margin over the
    neighbourhood's last similarity). Nothing to do, and no search, while no item was added live."""

    prefix_stable = True

    def __init__(
        self, index: ItemIndex, catalog: ItemCatalog, *, n_seeds: int = 5, neighbours: int = 50, name: str = "new_items"
    ) -> None:
        self.index, self.catalog, self.n_seeds, self.neighbours, self.name = index, catalog, n_seeds, neighbours, name
        self._cache: tuple[int, np.ndarray, np.ndarray] = (-1, np.zeros(0, np.int64), np.zeros((0, index.dim), np.float32))

    def live_items(self) -> tuple[np.ndarray, np.ndarray]:
        """``(movie_ids, vectors)`` of the items the index holds and the catalog does not."""
        written = self.index.rows_written
        if self._cache[0] != written:
            ids = self.index.movie_ids
            ids = ids[self.catalog.rows(ids) < 0]
            _, vecs = self.index.vectors(ids)
            self._cache = (written, ids, vecs)
        return self._cache[1], self._cache[2]

    def recall(self, user: UserState, k: int) -> PathResult:
        ids, vecs = self.live_items()
        if k <= 0 or not len(ids):
            return PathResult.empty()
        queries = []
        if user.recent_positives:
            found, seed_vecs = self.index.vectors(list(user.recent_positives[: self.n_seeds * 2]))
            queries.append(seed_vecs[found][: self.n_seeds])
        if user.vector is not None:
            queries.append(np.asarray(user.vector, dtype=np.float32).reshape(1, -1))
        q = np.concatenate(queries) if queries else np.zeros((0, self.index.dim), np.float32)
        if not len(q):
            return PathResult.empty()
        _, near = self.index.search(q, self.neighbours)
        edge = near[:, -1]  # each query's k-th similarity (-inf when the index holds fewer items)
        margin = (q @ vecs.T - edge[:, None]).max(axis=0)  # (L,)
        keep = margin >= 0
        order = np.argsort(-margin[keep], kind="stable")
        return _unseen(ids[keep][order], margin[keep][order].astype(np.float32), user, k)

"""The item index: a faiss index over item embeddings, keyed by movie id.

One class, :class:`ItemIndex`, wraps any faiss factory string (``Flat`` exact, ``HNSW32``, ``IVF…``,
``LSH`` for comparison). Vectors are L2-normalised, so the metric is the inner product (cosine);
factories faiss builds only for L2 (LSH) use L2, and their distances are turned into scores that
still sort best first (``1 - d / 2``, the cosine for unit vectors when ``d`` is the squared L2).

The index keeps its own row → movie id array instead of an ``IndexIDMap`` so that every factory,
HNSW included, supports live inserts the same way: a new row is appended; re-adding a known movie id
appends the new vector and retires the old row (its id becomes -1 and is dropped from results).
The unit vectors are also kept (rows of a float32 matrix) so paths can look up an item's vector
whatever the factory's storage is.

Item-to-item questions ("the nearest items of item m") are answered by :meth:`ItemIndex.neighbours`,
which keeps each item's list until the index changes: online, the same seeds come back request after
request (a user's recent likes, popular movies), and a kept list costs a lookup instead of a search.

An exact (``Flat``) index answers a few queries at a time by one BLAS product over those vectors:
the same inner products, faster than faiss's one-vector-at-a-time scan below its BLAS threshold.

Threading: searches share a read lock and run concurrently (faiss releases the GIL); ``add`` takes the
write lock. Queries of a few vectors run on one OpenMP thread: on a small, busy machine faiss's
thread team costs milliseconds per call, far more than the search itself.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import faiss
import numpy as np
from threadpoolctl import threadpool_limits

__all__ = ["ItemIndex", "resolve_factory", "default_search_params", "normalize", "measure"]

SMALL_BATCH = 16  # queries up to this many run single-threaded (see the module docstring)
NEIGHBOUR_STEP = 128  # kept neighbour lists are this many deep, or a multiple of it
NEIGHBOUR_MAX_DEPTH = 4096  # deeper lists are searched each time, not kept
NEIGHBOUR_SLOTS = 8_000_000  # neighbours kept in all (8 bytes each: at most 64 MB)


def normalize(vectors: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation to float32 (zero rows stay zero)."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected a (N, D) matrix of vectors, got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def resolve_factory(factory: str, n: int) -> str:
    """The concrete faiss factory string for ``n`` vectors. Shorthands: ``HNSW`` → ``HNSW32``;
    ``IVF`` → ``IVF<nlist>,Flat`` with ``nlist ≈ sqrt(n)`` (at least 1, at most n/39 so k-means has
    the ~39 points per centroid faiss asks for)."""
    f = factory.strip()
    if f == "HNSW":
        return "HNSW32"
    if f == "IVF":
        nlist = int(max(1, min(round(math.sqrt(max(n, 1))), max(n, 1) // 39)))
        return f"IVF{nlist},Flat"
    return f


def default_search_params(factory: str) -> str:
    """Search-time knobs when none are given: ``efSearch=128`` for HNSW, ``nprobe`` = 1/16 of the
    lists (at least 16) for IVF; nothing for exact or LSH indexes. On the synthetic catalogs of
    tests/perf/bench_index.py (10k–1M items) these gave recall@100 of 0.95–0.998 against exact search;
    raise them for more recall at a lower QPS."""
    if "HNSW" in factory:
        return "efSearch=128"
    m = re.search(r"IVF(\d+)", factory)
    if m:
        nlist = int(m.group(1))
        return f"nprobe={min(nlist, max(16, nlist // 16))}"
    return ""


def _metric(factory: str) -> int:
    return faiss.METRIC_L2 if "LSH" in factory else faiss.METRIC_INNER_PRODUCT


class _RWLock:
    """Many readers or one writer; a waiting writer blocks new readers (no writer starvation)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class ItemIndex:
    """Nearest items by inner product over unit item vectors, keyed by movie id.

    Build one with :meth:`build`, or load a published one with ``rayrec.retrieval.load_index``.
    ``search`` answers ``(movie_ids (B, k) int64, -1 where fewer than k; scores (B, k) float32)``.
    """

    def __init__(
        self,
        index: faiss.Index,
        movie_ids: np.ndarray,
        vectors: np.ndarray,
        *,
        factory: str,
        search_params: str = "",
        meta: dict[str, Any] | None = None,
    ) -> None:
        movie_ids = np.asarray(movie_ids, dtype=np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if index.ntotal != len(movie_ids) or len(vectors) != len(movie_ids):
            raise ValueError(
                f"index holds {index.ntotal} vectors but {len(movie_ids)} movie ids and {len(vectors)} vectors were given"
            )
        self._index = index
        self._metric = int(index.metric_type)
        # an exact inner-product index: small query batches are scanned by BLAS instead (see _scan)
        self._exact = isinstance(faiss.downcast_index(index), faiss.IndexFlat) and self._metric == faiss.METRIC_INNER_PRODUCT
        self.factory = factory
        self.search_params = search_params
        self.meta: dict[str, Any] = dict(meta or {})
        self._lock = _RWLock()
        # growable row arrays (capacity doubles); rows [0, _n) are live or retired (id -1)
        self._n = len(movie_ids)
        self._ids = movie_ids.copy()
        self._vectors = vectors.copy()
        self._row_of: dict[int, int] = {}
        for row, mid in enumerate(movie_ids.tolist()):
            if mid >= 0:
                self._row_of[mid] = row  # a duplicate id keeps its last row
        self._retired = self._n - len(self._row_of)
        self._sort_rows()
        if self._retired:
            keep = np.zeros(self._n, dtype=bool)
            keep[list(self._row_of.values())] = True
            self._ids[~keep] = -1
        if search_params:
            faiss.ParameterSpace().set_index_parameters(index, search_params)
        # movie id -> (ids, scores) of its nearest items, valid while ``_n`` equals ``_kept_n``
        self._kept: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._kept_n = self._n
        self._kept_slots = 0
        self._kept_lock = threading.Lock()

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        movie_ids: np.ndarray,
        vectors: np.ndarray,
        factory: str = "Flat",
        *,
        search_params: str | None = None,
        ef_construction: int | None = None,
        train_size: int | None = None,
        seed: int = 0,
    ) -> ItemIndex:
        """A new index over ``vectors`` (normalised here), one row per movie id.

        ``factory`` is a faiss factory string or a shorthand of :func:`resolve_factory`;
        ``search_params`` a faiss ParameterSpace string (``"efSearch=128"``, ``"nprobe=16"``), by
        default :func:`default_search_params`. IVF-style indexes train on at most ``train_size``
        vectors (default 64 per list, sampled with ``seed``)."""
        movie_ids = np.asarray(movie_ids, dtype=np.int64)
        x = normalize(vectors)
        if len(movie_ids) != len(x):
            raise ValueError(f"{len(movie_ids)} movie ids but {len(x)} vectors")
        if len(np.unique(movie_ids)) != len(movie_ids):
            raise ValueError("movie ids must be unique")
        concrete = resolve_factory(factory, len(x))
        try:
            index = faiss.index_factory(x.shape[1], concrete, _metric(concrete))
        except RuntimeError as e:
            raise ValueError(f"faiss cannot build factory {concrete!r}: {str(e).splitlines()[-1]}") from e
        if ef_construction is not None and hasattr(faiss.downcast_index(index), "hnsw"):
            faiss.downcast_index(index).hnsw.efConstruction = int(ef_construction)
        if not index.is_trained:
            ivf = faiss.try_extract_index_ivf(index)
            size = train_size or (64 * ivf.nlist if ivf is not None else 100_000)
            sample = x
            if len(x) > size:
                rng = np.random.default_rng(seed)
                sample = x[np.sort(rng.choice(len(x), size, replace=False))]
            index.train(sample)
        index.add(x)
        params = default_search_params(concrete) if search_params is None else search_params
        return cls(index, movie_ids, x, factory=concrete, search_params=params)

    def set_search_params(self, search_params: str) -> None:
        """Change the search-time knobs (e.g. ``"efSearch=256"``) of the built index."""
        with self._lock.write():
            if search_params:
                faiss.ParameterSpace().set_index_parameters(self._index, search_params)
            self.search_params = search_params
        with self._kept_lock:  # neighbour lists searched with the old knobs
            self._kept, self._kept_slots = {}, 0

    # -- reads --------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self._index.d)

    def __len__(self) -> int:
        """Live items (retired rows not counted)."""
        return len(self._row_of)

    def __contains__(self, movie_id: object) -> bool:
        return isinstance(movie_id, (int, np.integer)) and int(movie_id) in self._row_of

    @property
    def movie_ids(self) -> np.ndarray:
        """Live movie ids in row order."""
        with self._lock.read():
            ids = self._ids[: self._n]
            return ids[ids >= 0].copy()

    @property
    def rows_written(self) -> int:
        """Rows ever written (built plus inserted live, retired ones included): it changes whenever
        an item is added, so callers can cache what they derive from the live items."""
        return self._n

    @property
    def faiss_index(self) -> faiss.Index:
        return self._index

    def _sort_rows(self) -> None:
        """The live ids sorted, with their rows: vector lookups by binary search (under the write
        lock, or before the index is shared)."""
        ids = np.fromiter(self._row_of.keys(), dtype=np.int64, count=len(self._row_of))
        rows = np.fromiter(self._row_of.values(), dtype=np.int64, count=len(self._row_of))
        order = np.argsort(ids, kind="stable")
        self._sorted_ids, self._sorted_rows = ids[order], rows[order]

    def _rows(self, movie_ids: np.ndarray | list[int]) -> np.ndarray:
        """Each movie id's row, -1 where unknown (under the read lock)."""
        ids = np.asarray(movie_ids, dtype=np.int64).reshape(-1)
        if not len(self._sorted_ids):
            return np.full(len(ids), -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self._sorted_ids, ids), len(self._sorted_ids) - 1)
        return np.where(self._sorted_ids[pos] == ids, self._sorted_rows[pos], -1)

    def vectors(self, movie_ids: np.ndarray | list[int]) -> tuple[np.ndarray, np.ndarray]:
        """``(found (N,) bool, vectors (N, D) float32)`` of the given movie ids; zeros where unknown."""
        with self._lock.read():
            rows = self._rows(movie_ids)
            found = rows >= 0
            out = np.zeros((len(rows), self.dim), dtype=np.float32)
            out[found] = self._vectors[rows[found]]
        return found, out

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest items of each query vector: ``(movie_ids (B, k) int64, scores (B, k)
        float32)``, best first, ``-1`` / ``-inf`` past the last result. Queries are used as given
        (normalise them for cosine scores)."""
        q = np.ascontiguousarray(vectors, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"queries must be (B, {self.dim}), got shape {np.shape(vectors)}")
        if k < 1:
            raise ValueError(f"k must be ≥ 1, got {k}")
        if self._exact and len(q) <= SMALL_BATCH:
            return self._scan(q, k)
        with self._lock.read():
            fetch = min(k + self._retired, max(self._n, 1))
            if len(q) <= SMALL_BATCH:
                before = faiss.omp_get_max_threads()
                faiss.omp_set_num_threads(1)
                try:
                    dist, rows = self._index.search(q, fetch)
                finally:
                    faiss.omp_set_num_threads(before)
            else:
                dist, rows = self._index.search(q, fetch)
            ids = np.where(rows >= 0, self._ids[np.maximum(rows, 0)], -1)
        scores = dist.astype(np.float32, copy=False) if self._metric == faiss.METRIC_INNER_PRODUCT else 1.0 - dist / 2.0
        scores = np.where(ids >= 0, scores, -np.inf).astype(np.float32)
        if fetch != k or self._retired:
            ids, scores = _compact(ids, scores, k)
        return ids, scores

    def _scan(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact search of a few queries as one BLAS product over the kept unit vectors: what a
        ``Flat`` faiss index computes, about 3x faster for a single query on a small machine (faiss
        scans one vector at a time below its BLAS threshold). Ties go to the lower row."""
        with self._lock.read():
            n = self._n
            s = q @ self._vectors[:n].T  # (B, n)
            if self._retired:
                s[:, self._ids[:n] < 0] = -np.inf
            kk = min(k, n)
            if kk < n:
                part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
                part.sort(axis=1)
            else:
                part = np.broadcast_to(np.arange(n), (len(q), n))
            top = np.take_along_axis(s, part, axis=1)
            order = np.argsort(-top, axis=1, kind="stable")
            rows = np.take_along_axis(part, order, axis=1)
            ids = self._ids[rows]
        scores = np.take_along_axis(top, order, axis=1).astype(np.float32)
        ids = np.where(np.isneginf(scores), -1, ids)
        if kk < k:
            ids = np.pad(ids, ((0, 0), (0, k - kk)), constant_values=-1)
            scores = np.pad(scores, ((0, 0), (0, k - kk)), constant_values=-np.inf)
        return ids, scores

    def neighbours(self, movie_ids: np.ndarray | list[int], depth: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``depth`` nearest items of each given item, as ``search(vectors(movie_ids), depth)``
        answers (the item itself normally comes first): ``(movie_ids (S, depth), scores (S, depth))``,
        ``-1`` / ``-inf`` for unknown items and past the last result.

        Lists are kept per item, searched a little deeper than asked (a multiple of
        ``NEIGHBOUR_STEP``) so that a later, deeper question is answered from them too; they are
        dropped when an item is added. Best-first results cut at ``depth`` are what a search for
        ``depth`` returns (up to ties, and for HNSW up to its search depth following ``k``)."""
        ids = np.asarray(movie_ids, dtype=np.int64).reshape(-1)
        if depth < 1:
            raise ValueError(f"depth must be ≥ 1, got {depth}")
        out_ids = np.full((len(ids), depth), -1, dtype=np.int64)
        out_scores = np.full((len(ids), depth), -np.inf, dtype=np.float32)
        with self._kept_lock:
            written = self._n
            if self._kept_n != written:
                self._kept, self._kept_n, self._kept_slots = {}, written, 0
            lists = [self._kept.get(m) for m in ids.tolist()]
        todo = [i for i, got in enumerate(lists) if got is None or len(got[0]) < depth]
        if todo:
            found, vecs = self.vectors(ids[todo])
            rows = [i for i, f in zip(todo, found.tolist()) if f]
            if rows:
                deep = -(-depth // NEIGHBOUR_STEP) * NEIGHBOUR_STEP
                keep = deep <= NEIGHBOUR_MAX_DEPTH
                got_ids, got_scores = self.search(vecs[found], deep if keep else depth)
                with self._kept_lock:
                    keep = keep and self._kept_n == written == self._n  # no add meanwhile
                    small = keep and (not len(got_ids) or int(got_ids.max()) < 2**31)  # ids kept as int32
                    for j, i in enumerate(rows):
                        lists[i] = (got_ids[j].astype(np.int32) if small else got_ids[j], got_scores[j])
                        if keep:
                            self._keep(int(ids[i]), lists[i])
        for i, got in enumerate(lists):
            if got is not None:
                n = min(depth, len(got[0]))
                out_ids[i, :n], out_scores[i, :n] = got[0][:n], got[1][:n]
        return out_ids, out_scores

    def _keep(self, movie_id: int, entry: tuple[np.ndarray, np.ndarray]) -> None:
        """Keep one neighbour list (under ``_kept_lock``), dropping the oldest past the budget."""
        old = self._kept.pop(movie_id, None)
        if old is not None:
            self._kept_slots -= len(old[0])
        while self._kept and self._kept_slots + len(entry[0]) > NEIGHBOUR_SLOTS:
            _, dropped = self._kept.pop(next(iter(self._kept)))
            self._kept_slots -= len(dropped[0])
        self._kept[movie_id] = entry
        self._kept_slots += len(entry[0])

    # -- writes -------------------------------------------------------------------------------
    def add(self, movie_ids: np.ndarray | list[int], vectors: np.ndarray) -> None:
        """Insert items live (cold-start items), without a rebuild. Vectors are normalised here.
        A movie id already present is replaced: its old row is retired and never returned again."""
        ids = np.asarray(movie_ids, dtype=np.int64).reshape(-1)
        x = normalize(np.asarray(vectors, dtype=np.float32).reshape(len(ids), -1))
        if x.shape[1] != self.dim:
            raise ValueError(f"vectors must have dimension {self.dim}, got {x.shape[1]}")
        if (ids < 0).any():
            raise ValueError("movie ids must be ≥ 0")
        if len(np.unique(ids)) != len(ids):
            raise ValueError("movie ids of one add must be unique")
        if not len(ids):
            return
        with self._lock.write():
            self._reserve(self._n + len(ids))
            start = self._n
            self._index.add(x)
            self._ids[start : start + len(ids)] = ids
            self._vectors[start : start + len(ids)] = x
            self._n += len(ids)
            for offset, mid in enumerate(ids.tolist()):
                old = self._row_of.get(mid)
                if old is not None:
                    self._ids[old] = -1
                    self._retired += 1
                self._row_of[mid] = start + offset
            self._sort_rows()

    def _reserve(self, n: int) -> None:
        if n <= len(self._ids):
            return
        cap = max(n, 2 * len(self._ids), 16)
        ids = np.full(cap, -1, dtype=np.int64)
        ids[: self._n] = self._ids[: self._n]
        vecs = np.zeros((cap, self.dim), dtype=np.float32)
        vecs[: self._n] = self._vectors[: self._n]
        self._ids, self._vectors = ids, vecs

    def snapshot(self) -> tuple[faiss.Index, np.ndarray, np.ndarray]:
        """A consistent copy ``(faiss index, row movie ids, row vectors)`` for saving."""
        with self._lock.read():
            index = faiss.clone_index(self._index)
            return index, self._ids[: self._n].copy(), self._vectors[: self._n].copy()

    def __repr__(self) -> str:
        return f"ItemIndex(factory={self.factory!r}, n={len(self)}, dim={self.dim}, search_params={self.search_params!r})"


def _compact(ids: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Drop -1 holes (retired rows) keeping order, then cut/pad each row to k."""
    out_ids = np.full((len(ids), k), -1, dtype=np.int64)
    out_scores = np.full((len(ids), k), -np.inf, dtype=np.float32)
    for i in range(len(ids)):
        keep = ids[i] >= 0
        row_ids, row_scores = ids[i][keep][:k], scores[i][keep][:k]
        out_ids[i, : len(row_ids)] = row_ids
        out_scores[i, : len(row_ids)] = row_scores
    return out_ids, out_scores


def measure(index: ItemIndex, queries: np.ndarray, k: int = 100, *, latency_queries: int = 200) -> dict[str, Any]:
    """Recall@k of ``index`` against exact inner-product search over the same vectors, and its query
    latency: single-query p50/p99 (ms) over ``latency_queries`` queries on one thread (as a serving
    replica searches) and batched QPS (all queries in one call). Recall per query is
    |approx ∩ exact| / |exact|, averaged."""
    _, ids_row, vecs = index.snapshot()
    live = ids_row >= 0
    exact = faiss.IndexFlatIP(index.dim)
    exact.add(np.ascontiguousarray(vecs[live]))
    live_ids = ids_row[live]
    q = np.ascontiguousarray(queries, dtype=np.float32)
    kk = min(k, int(live.sum()))
    _, rows = exact.search(q, kk)
    truth = np.where(rows >= 0, live_ids[np.maximum(rows, 0)], -1)
    t = time.perf_counter()
    got, _ = index.search(q, kk)
    batch_s = time.perf_counter() - t
    hits = [len(np.intersect1d(g[g >= 0], e[e >= 0])) / max(1, int((e >= 0).sum())) for g, e in zip(got, truth)]
    lat = []
    with threadpool_limits(limits=1):  # one BLAS thread, as in a serving replica (faiss: see search)
        for row in q[:latency_queries]:
            t = time.perf_counter()
            index.search(row[None, :], kk)
            lat.append((time.perf_counter() - t) * 1000.0)
    lat_a = np.asarray(lat) if lat else np.zeros(1)
    return {
        f"recall_at_{k}": float(np.mean(hits)) if hits else float("nan"),
        "recall_k": kk,
        "recall_queries": len(q),
        "latency_ms": {
            "p50": float(np.percentile(lat_a, 50)),
            "p99": float(np.percentile(lat_a, 99)),
            "mean": float(lat_a.mean()),
            "queries": len(lat),
        },
        "batch_qps": float(len(q) / batch_s) if batch_s > 0 else float("inf"),
        "threads": int(faiss.omp_get_max_threads()),
    }

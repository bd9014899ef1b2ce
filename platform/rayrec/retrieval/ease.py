"""The ``ease`` recall path: a linear item-to-item model over the user's whole history.

EASE (Steck, 2019) learns item-item weights ``B`` in closed form, ``B = I − P · diag(1/diag(P))`` with
``P = (XᵀX + λI)⁻¹`` over the binary user × item matrix ``X`` of the training ratings, and scores an
item by the sum of its weights from every item the user has rated. The item-to-item path looks at
five recent likes through embedding neighbours; this one reads every rating with weights fit on
co-ratings, which is what makes it the strongest simple model on MovieLens.

Offline (the index job), the weights are kept sparse: the ``top_k × items`` strongest of all (by absolute
value: negative weights matter), at most ``cap × top_k`` from one item, so serving memory is about
``items × top_k`` and a request costs the kept weights of its history's items in additions. Kept by
strength over all items rather than ``top_k`` per item, the same number of weights comes closer to the
exact model: a popular item has many strong weights, a rare one few (the ease path alone on
ml-latest-small's random split, NDCG@10: exact 0.3954, 500 per item 0.3884, 200 on average 0.3940).
With fewer users than items, ``P`` comes through the Woodbury identity (a users × users inverse);
otherwise the items are capped to the ``max_items`` most rated ones (an items × items inverse).
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from rayrec import uri
from rayrec.retrieval.paths import PathResult, RecallPath
from rayrec.retrieval.state import UserState

__all__ = ["ItemWeights", "fit_item_weights", "rated_history", "EaseRecall", "FILE"]

log = logging.getLogger(__name__)

FILE = "ease.npz"
RECENT_SUMS = 4  # histories whose sums an ItemWeights keeps


@dataclass(frozen=True)
class ItemWeights:
    """Sparse item-to-item weights, row by row: item ``items[r]`` gives ``weights[indptr[r]:indptr[r + 1]]``
    to the items at rows ``targets[indptr[r]:indptr[r + 1]]``."""

    items: np.ndarray  # (N,) movieIds, sorted
    indptr: np.ndarray  # (N + 1,) int64
    targets: np.ndarray  # (nnz,) int32 rows into ``items``
    weights: np.ndarray  # (nnz,) float32
    lam: float
    # the last few histories' sums: a request sums its user's history in recall (the ease path) and again
    # when its candidates are blended (rayrec.serving.blend), half a millisecond each
    _recent: dict[bytes, tuple[np.ndarray, np.ndarray, np.ndarray] | None] = field(default_factory=dict, init=False, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:  # the sums and their lock stay behind
        return {key: v for key, v in self.__dict__.items() if key not in ("_recent", "_lock")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _recent={}, _lock=threading.Lock())

    @classmethod
    def from_rows(cls, items: np.ndarray, targets: np.ndarray, weights: np.ndarray, lam: float) -> ItemWeights:
        """From padded (N, K) rows, -1 marking no target (the layout of files before the weights were
        ragged)."""
        targets, weights = np.asarray(targets), np.asarray(weights)
        ok = targets >= 0
        indptr = np.concatenate([[0], np.cumsum(ok.sum(axis=1))]).astype(np.int64)
        return cls(np.asarray(items, dtype=np.int64), indptr, targets[ok].astype(np.int32), weights[ok].astype(np.float32), float(lam))

    def pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(source rows, target rows, weights), one entry per kept weight."""
        sources = np.repeat(np.arange(len(self.items), dtype=np.int64), np.diff(self.indptr))
        return sources, self.targets.astype(np.int64), self.weights

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez_compressed(buf, items=self.items, indptr=self.indptr, targets=self.targets, weights=self.weights, lam=np.float64(self.lam))
        return buf.getvalue()

    def save(self, target: str) -> None:
        fs, path = uri.filesystem(target)
        with fs.open_output_stream(path) as f:
            f.write(self.to_bytes())

    @classmethod
    def load(cls, target: str) -> ItemWeights:
        fs, path = uri.filesystem(target)
        with fs.open_input_stream(path) as f:
            z = np.load(io.BytesIO(f.read()))
        if "indptr" not in z:  # padded rows, as earlier versions stored them
            return cls.from_rows(z["items"], z["targets"], z["weights"], float(z["lam"]))
        return cls(z["items"], z["indptr"], z["targets"], z["weights"], float(z["lam"]))

    def _summed(self, history: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(total over the items, reached mask, the history's own rows): every item's weights summed
        over the history items that point to it; None when no history item is known. The arrays are
        shared: read only."""
        key = np.asarray(history, dtype=np.int64).tobytes()
        with self._lock:
            if key in self._recent:
                return self._recent[key]
        out = self._sum(history)
        with self._lock:
            if len(self._recent) >= RECENT_SUMS:
                del self._recent[next(iter(self._recent))]  # the oldest
            self._recent[key] = out
        return out

    def _sum(self, history: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        n = len(self.items)
        pos = np.searchsorted(self.items, history)
        pos = pos[(pos < n) & (self.items[np.minimum(pos, n - 1)] == history)]
        if len(pos) == 0:
            return None
        # the history rows' stretches of the ragged arrays, gathered in one index, summed per target
        # straight into an array over the items (no sort of the gathered targets: 4-6x faster on long
        # histories), then the rows some history item reached
        starts = self.indptr[pos]
        lens = self.indptr[pos + 1] - starts
        at = np.repeat(starts - (np.cumsum(lens) - lens), lens) + np.arange(int(lens.sum()))
        t = self.targets[at]
        total = np.bincount(t, weights=self.weights[at], minlength=n)
        reached = np.zeros(n, dtype=bool)
        reached[t] = True
        return total, reached, pos

    def scores(self, history: np.ndarray, *, unseen: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(rows, scores) of every item some history item points to, summed over the history;
        ``unseen``: without the history's own items (a mask over the rows it already found, not a
        search of the reached items among the history: a third of the ease path's time at 62k items)."""
        summed = self._summed(history)
        if summed is None:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        total, reached, own = summed
        if unseen:
            reached = reached.copy()
            reached[own] = False
        rows = np.flatnonzero(reached)
        return rows.astype(np.int64), total[rows].astype(np.float32)

    def score_of(self, history: np.ndarray, movie_ids: np.ndarray) -> np.ndarray:
        """(N,) float32: each of ``movie_ids``' summed weight from the ``history`` movies (0 when no
        history movie points to it, or the weights do not know it)."""
        out = np.zeros(len(movie_ids), dtype=np.float32)
        summed = self._summed(np.asarray(history, dtype=np.int64))
        if summed is None or not len(movie_ids):
            return out
        ids = np.asarray(movie_ids, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.items, ids), len(self.items) - 1)
        known = self.items[pos] == ids
        out[known] = summed[0][pos[known]]  # an item nothing points to sums to 0
        return out


def rated_history(seen: frozenset[int], recent: Sequence[int]) -> np.ndarray:
    """The movies a user's EASE scores sum over: everything they rated (``seen``), their recent likes
    when that is unknown."""
    history = seen if seen else frozenset(recent)
    return np.fromiter(history, dtype=np.int64, count=len(history))


def fit_item_weights(
    ratings: pd.DataFrame, lam: float, top_k: int = 100, max_items: int = 10_000, block: int = 2048, cap: int = 4
) -> ItemWeights:
    """EASE weights of ``ratings`` (userId, movieId: every rating counts), sparsified to ``top_k`` per
    item on average: the ``top_k × items`` strongest over all items, at most ``cap × top_k`` from one item."""
    counts = ratings["movieId"].value_counts()
    keep = np.sort(counts.index.to_numpy(np.int64)[:max_items])
    r = ratings[ratings["movieId"].isin(keep)]
    users, u = np.unique(r["userId"].to_numpy(np.int64), return_inverse=True)
    i = np.searchsorted(keep, r["movieId"].to_numpy(np.int64))
    n = len(keep)
    if len(users) < n:  # Woodbury: P = (I − Xᵀ (λI + XXᵀ)⁻¹ X) / λ, built a block of rows at a time
        x = np.zeros((len(users), n), dtype=np.float64)
        x[u, i] = 1.0
        kx = np.linalg.solve(x @ x.T + lam * np.eye(len(users)), x)  # (U, N)
        diag = (1.0 - np.einsum("un,un->n", x, kx)) / lam

        def p_rows(a: int, b: int) -> np.ndarray:
            out = -(x[:, a:b].T @ kx) / lam
            out[np.arange(b - a), np.arange(a, b)] += 1.0 / lam
            return out
    else:  # the items × items Gram matrix from a sparse X (users may be many)
        from scipy import sparse

        xs = sparse.csr_matrix((np.ones(len(u)), (u, i)), shape=(len(users), n))
        xs.data[:] = 1.0  # a repeated rating counts once
        p = np.linalg.inv((xs.T @ xs).toarray() + lam * np.eye(n))
        diag = np.diag(p).copy()

        def p_rows(a: int, b: int) -> np.ndarray:
            return p[a:b]

    k = min(top_k, n - 1) if n > 1 else 0
    c = min(cap * k, n - 1)  # the most one item keeps
    # each row's c strongest weights, then the k·n strongest of those over all rows: the strongest either
    # way, a negative weight (rated together less than chance) holds an item back as much as a positive
    # one brings it forward
    cand_t = np.zeros((n, c), dtype=np.int32)
    cand_w = np.zeros((n, c), dtype=np.float32)
    for a in range(0, n, block) if c else ():
        b = min(a + block, n)
        w = -p_rows(a, b) / diag[None, :]  # B[a:b, :] (row i: the weights item i gives to others)
        w[np.arange(b - a), np.arange(a, b)] = 0.0  # B's diagonal is zero
        top = np.argpartition(-np.abs(w), kth=c - 1, axis=1)[:, :c]  # (c < n: B has n - 1 off its diagonal)
        cand_t[a:b] = top
        cand_w[a:b] = np.take_along_axis(w, top, axis=1)
    strength = np.abs(cand_w).reshape(-1)
    strength[(cand_t == np.arange(n, dtype=np.int32)[:, None]).reshape(-1)] = -1.0  # never an item for itself
    m = min(k * n, int((strength >= 0).sum()))
    kept = np.argpartition(-strength, kth=m - 1)[:m] if m else np.zeros(0, dtype=np.int64)
    src = kept // max(c, 1)
    order = np.lexsort((cand_t.reshape(-1)[kept], src))  # row by row, targets ascending
    kept, src = kept[order], src[order]
    indptr = np.concatenate([[0], np.cumsum(np.bincount(src, minlength=n))]).astype(np.int64)
    weights = ItemWeights(keep, indptr, cand_t.reshape(-1)[kept].copy(), cand_w.reshape(-1)[kept].copy(), float(lam))
    log.info("ease weights: %d items, %d users, lambda %g, %d kept (%d per item on average, at most %d)", n, len(users), lam, m, k, c)
    return weights


class EaseRecall(RecallPath):
    """Items by their summed EASE weights from everything the user has rated (``user.seen``; the
    recent likes when the seen set is empty)."""

    prefix_stable = True

    def __init__(self, weights: ItemWeights, *, name: str = "ease") -> None:
        self.weights, self.name = weights, name

    def recall(self, user: UserState, k: int) -> PathResult:
        history = rated_history(user.seen, user.recent_positives)
        if k <= 0 or not len(history):
            return PathResult.empty()
        # with a seen set, the history is that set: leaving out its own items leaves the unseen ones
        rows, scores = self.weights.scores(history, unseen=bool(user.seen))
        ids = self.weights.items[rows]
        if len(ids) > k:
            top = np.argpartition(-scores, kth=k - 1)[:k]
            ids, scores = ids[top], scores[top]
        order = np.lexsort((ids, -scores))
        return PathResult(ids[order].astype(np.int64), scores[order].astype(np.float32))

"""Simple, strong baselines scored beside the served list: most-popular, item-kNN and EASE.

All three read the known interactions as a binary user × item matrix (every known rating counts, as a
click would) and recommend each user's top unseen items.

- **most-popular**: items by number of known interactions.
- **item-kNN**: cosine similarity between item columns, each item keeping its ``neighbours`` nearest;
  a user's score for an item is the sum of its similarities to the user's items.
- **EASE** (Steck, 2019): the closed-form item-item model ``B = I − P · diag(1 / diag(P))`` with
  ``P = (XᵀX + λI)⁻¹``. With fewer users than items, ``P`` comes from the Woodbury identity through a
  users × users inverse, so every λ of the tuning grid costs one small solve. λ is tuned on a
  validation split of the known part made by the same protocol.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["Interactions", "most_popular", "item_knn", "ease_scores", "tune_ease", "top_unseen"]


@dataclass(frozen=True)
class Interactions:
    """Known interactions as a dense binary matrix over the users and items that have any."""

    users: np.ndarray  # (U,) userIds, sorted
    items: np.ndarray  # (N,) movieIds, sorted
    matrix: np.ndarray  # (U, N) float32 in {0, 1}

    @classmethod
    def of(cls, ratings: pd.DataFrame) -> Interactions:
        users, u = np.unique(ratings["userId"].to_numpy(np.int64), return_inverse=True)
        items, i = np.unique(ratings["movieId"].to_numpy(np.int64), return_inverse=True)
        x = np.zeros((len(users), len(items)), dtype=np.float32)
        x[u, i] = 1.0
        return cls(users, items, x)

    def rows(self, user_ids: np.ndarray) -> np.ndarray:
        """(len(user_ids), N) rows of the given users (zeros for a user without interactions)."""
        pos = np.searchsorted(self.users, user_ids)
        pos = np.minimum(pos, len(self.users) - 1)
        found = self.users[pos] == user_ids
        return np.where(found[:, None], self.matrix[pos], 0.0).astype(np.float32)


def top_unseen(scores: np.ndarray, seen: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """(U, k) movieIds of the best-scored items that are not ``seen`` (U, N bool), best first."""
    s = np.where(seen, -np.inf, scores.astype(np.float64))
    k = min(k, s.shape[1])
    part = np.argpartition(-s, kth=k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(s, part, axis=1)
    order = np.lexsort((part, -vals), axis=1)
    top = np.take_along_axis(part, order, axis=1)
    out = items[top]
    return np.where(np.isfinite(np.take_along_axis(s, top, axis=1)), out, -1)


def most_popular(x: Interactions) -> Callable[[np.ndarray], np.ndarray]:
    counts = x.matrix.sum(axis=0)
    return lambda rows: np.broadcast_to(counts, rows.shape)


def item_knn(x: Interactions, neighbours: int = 100) -> Callable[[np.ndarray], np.ndarray]:
    norms = np.sqrt(x.matrix.sum(axis=0))
    norms[norms == 0] = 1.0
    sim = (x.matrix.T @ x.matrix) / norms[:, None] / norms[None, :]  # (N, N) cosine
    np.fill_diagonal(sim, 0.0)
    if neighbours < sim.shape[1]:
        cut = np.partition(sim, -neighbours, axis=1)[:, -neighbours][:, None]
        sim = np.where(sim >= cut, sim, 0.0).astype(np.float32)
    return lambda rows: rows @ sim.T


def _ease_parts(x: np.ndarray, lam: float) -> tuple[Callable[[np.ndarray], np.ndarray], np.ndarray]:
    """(v ↦ v·P, diag(P)) for P = (XᵀX + λI)⁻¹, by whichever side of X is smaller."""
    x = x.astype(np.float64)
    n_users, n_items = x.shape
    if n_users < n_items:  # Woodbury: P = (I − Xᵀ (λI + XXᵀ)⁻¹ X) / λ
        k = np.linalg.inv(x @ x.T + lam * np.eye(n_users))
        kx = k @ x  # (U, N)
        diag = (1.0 - np.einsum("un,un->n", x, kx)) / lam
        return (lambda v: (v - (v @ x.T) @ kx) / lam), diag
    p = np.linalg.inv(x.T @ x + lam * np.eye(n_items))
    return (lambda v: v @ p), np.diag(p).copy()


def ease_scores(x: Interactions, lam: float) -> Callable[[np.ndarray], np.ndarray]:
    """Scorer of EASE with regularisation ``lam``: rows (b, N) → scores (b, N) = rows · B."""
    times_p, diag = _ease_parts(x.matrix, lam)
    # rows · B = rows − (rows · P) / diag(P), except that B's diagonal is 0, which only touches seen items
    return lambda rows: rows - times_p(rows.astype(np.float64)) / diag[None, :]


def tune_ease(
    fit: pd.DataFrame,
    valid_users: np.ndarray,
    valid_items: np.ndarray,
    lambdas: Sequence[float] = (50, 100, 200, 400, 800, 1600, 3200),
    k: int = 10,
) -> tuple[float, dict[float, float]]:
    """λ with the best NDCG@k of EASE fitted on ``fit`` and scored on the relevant pairs
    (``valid_users``, ``valid_items``); returns it and the NDCG of every λ."""
    from rayrec.evaluation.topn import Relevance, list_metrics

    x = Interactions.of(fit)
    rel = Relevance.of(x.users, valid_users, valid_items)
    rows = x.rows(rel.user_ids)
    seen = rows > 0
    out: dict[float, float] = {}
    for lam in lambdas:
        lists = top_unseen(ease_scores(x, float(lam))(rows), seen, x.items, k)
        out[float(lam)] = list_metrics(lists, rel, ks=(k,), catalog_size=len(x.items))[f"ndcg@{k}"]
    best = max(out, key=lambda lam: out[lam])
    return best, out

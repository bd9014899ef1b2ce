"""Quality of top-N lists against held-out interactions, vectorised over users.

A list set is a ``(U, K)`` array of movie ids, best first, padded with ``-1`` where a list is shorter
than ``K``; relevance is a set of ``(user position, movieId)`` pairs. Every metric is a mean over the
``U`` users (each of whom has at least one relevant item):

- ``ndcg@k``: binary-gain DCG over the ideal DCG of ``min(|relevant|, k)`` hits;
- ``precision@k``, ``recall@k`` (hits over ``|relevant|``), ``hitrate@k`` (at least one hit);
- ``map@k``: mean of precision at each hit, over ``min(|relevant|, k)``;
- ``coverage@k``: share of the catalog shown to at least one user;
- ``diversity@k``: intra-list diversity, the mean pairwise genre cosine distance inside a list;
- ``novelty@k``: mean self-information ``-log2(share of users who interacted)`` of the shown items.

No Python loop runs over users: hits are found by one ``np.isin`` over packed (user, item) keys.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Relevance", "list_metrics", "pack_lists"]


def _keys(user_pos: np.ndarray, items: np.ndarray) -> np.ndarray:
    return (np.asarray(user_pos, dtype=np.int64) << 32) | (np.asarray(items, dtype=np.int64) & 0xFFFFFFFF)


@dataclass(frozen=True)
class Relevance:
    """The relevant held-out items of ``U`` evaluated users (positions ``0..U-1`` are ``user_ids``)."""

    user_ids: np.ndarray  # (U,) userId of each evaluated user
    pairs_user: np.ndarray  # (R,) user position of each relevant pair
    pairs_item: np.ndarray  # (R,) movieId of each relevant pair

    @classmethod
    def of(cls, user_ids: np.ndarray, rel_users: np.ndarray, rel_items: np.ndarray) -> Relevance:
        """From parallel (userId, movieId) arrays; users without a relevant item are dropped, and the
        evaluated users are the distinct users left, in ascending id order."""
        rel_users = np.asarray(rel_users, dtype=np.int64)
        ok = np.isin(rel_users, np.asarray(user_ids, dtype=np.int64))
        users = np.unique(rel_users[ok])
        pos = np.searchsorted(users, rel_users[ok])
        keys = np.unique(_keys(pos, np.asarray(rel_items, dtype=np.int64)[ok]))
        return cls(users, (keys >> 32).astype(np.int64), (keys & 0xFFFFFFFF).astype(np.int64))

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    def counts(self) -> np.ndarray:
        """(U,) number of relevant items per user."""
        return np.bincount(self.pairs_user, minlength=self.n_users)

    def hits(self, lists: np.ndarray) -> np.ndarray:
        """(U, K) bool: is the item at each list position relevant to that list's user."""
        u = np.broadcast_to(np.arange(lists.shape[0])[:, None], lists.shape)
        return np.isin(_keys(u, lists), _keys(self.pairs_user, self.pairs_item)) & (lists >= 0)


def pack_lists(lists: Sequence[Sequence[int]], k: int) -> np.ndarray:
    """(U, k) int64 array from ragged lists, truncated to ``k`` and padded with -1."""
    out = np.full((len(lists), k), -1, dtype=np.int64)
    for i, items in enumerate(lists):
        row = list(items)[:k]
        out[i, : len(row)] = row
    return out


def _ild(lists: np.ndarray, genres: Mapping[int, Sequence[str]]) -> float:
    """Mean over lists of the mean pairwise genre cosine distance (lists of < 2 items are skipped)."""
    names = sorted({g for gs in genres.values() for g in gs})
    if not names:
        return 0.0
    col = {g: i for i, g in enumerate(names)}
    uniq = np.unique(lists[lists >= 0])
    mat = np.zeros((len(uniq) + 1, len(names)), dtype=np.float32)  # last row: padding
    for r, m in enumerate(uniq.tolist()):
        for g in genres.get(m, ()):
            mat[r, col[g]] = 1.0
    norms = np.linalg.norm(mat, axis=1, keepdims=True)
    mat = np.divide(mat, norms, out=np.zeros_like(mat), where=norms > 0)
    rows = np.where(lists >= 0, np.searchsorted(uniq, lists), len(uniq))
    out, n = 0.0, 0
    for start in range(0, len(rows), 4096):  # bounded memory: (b, K, G) at a time
        x = mat[rows[start : start + 4096]]  # (b, K, G)
        valid = (lists[start : start + 4096] >= 0).astype(np.float32)  # (b, K)
        sims = np.einsum("bkg,bjg->bkj", x, x)  # (b, K, K)
        pair = valid[:, :, None] * valid[:, None, :]
        idx = np.arange(pair.shape[1])
        pair[:, idx, idx] = 0.0
        npairs = pair.sum((1, 2))
        keep = npairs > 0
        dist = ((1.0 - sims) * pair).sum((1, 2))
        out += float((dist[keep] / npairs[keep]).sum())
        n += int(keep.sum())
    return out / n if n else 0.0


def list_metrics(
    lists: np.ndarray,
    rel: Relevance,
    *,
    ks: Sequence[int] = (10,),
    catalog_size: int,
    popularity: Mapping[int, float] | None = None,
    n_train_users: int | None = None,
    genres: Mapping[int, Sequence[str]] | None = None,
) -> dict[str, float]:
    """Metrics of ``lists`` (U, K) against ``rel`` at each ``k`` in ``ks`` (``k ≤ K``).

    ``popularity`` (movieId → interacting users) and ``n_train_users`` give novelty; ``genres`` gives
    intra-list diversity. Metrics need at least one user."""
    if lists.shape[0] != rel.n_users:
        raise ValueError(f"{lists.shape[0]} lists for {rel.n_users} evaluated users")
    if max(ks) > lists.shape[1]:
        raise ValueError(f"lists hold {lists.shape[1]} items, fewer than k={max(ks)}")
    n_rel = rel.counts().astype(np.float64)
    hits = rel.hits(lists).astype(np.float64)
    out: dict[str, float] = {"users": float(rel.n_users)}
    for k in ks:
        h = hits[:, :k]
        disc = 1.0 / np.log2(np.arange(2, k + 2))
        ideal = np.cumsum(disc)[np.minimum(n_rel, k).astype(np.int64) - 1]
        found = h.sum(1)
        prec_at = np.cumsum(h, axis=1) / np.arange(1, k + 1)
        shown = lists[:, :k]
        out[f"ndcg@{k}"] = float(((h * disc).sum(1) / ideal).mean())
        out[f"precision@{k}"] = float((found / k).mean())
        out[f"recall@{k}"] = float((found / n_rel).mean())
        out[f"map@{k}"] = float(((prec_at * h).sum(1) / np.minimum(n_rel, k)).mean())
        out[f"hitrate@{k}"] = float((found > 0).mean())
        out[f"coverage@{k}"] = float(len(np.unique(shown[shown >= 0])) / max(catalog_size, 1))
        if popularity is not None and n_train_users:
            pop = np.array([popularity.get(m, 0.0) for m in shown.reshape(-1).tolist()]).reshape(shown.shape)
            info = -np.log2(np.maximum(pop, 1.0) / n_train_users)
            mask = shown >= 0
            out[f"novelty@{k}"] = float(info[mask].mean()) if mask.any() else 0.0
        if genres is not None:
            out[f"diversity@{k}"] = _ild(shown, genres)
    return out

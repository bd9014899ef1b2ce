"""The ranker's ``ease_score`` input: how strongly the movies a user rated before a row's time point
to the row's movie, by EASE weights (:mod:`rayrec.retrieval.ease`).

At serving the ranker orders recall's candidates, and a candidate's EASE score over everything the
user has rated is the strongest single sign of what they take next; with it as an input, the ranker
learns how far to trust it beside its own features, instead of ranking the candidates from ids and
statistics alone. Two rules keep the training feature what serving will compute:

- **point in time**: a row at time t sums the weights from the user's ratings strictly before t, as
  serving sums those of every rating so far (a rated row's own movie is never in its history);
- **cross-fitted**: EASE fit on a user's own ratings reproduces them (its closed form fits each
  user's row of the matrix), so a rated row would score high *because* it was rated, and the ranker
  would learn to trust the score far more than it deserves on a candidate nobody has rated yet. The
  users are split into ``folds``; a user's rows are scored with weights fit on the other folds'
  ratings only. Serving uses weights fit on every rating with the same λ and sparsity (stored with
  the ranker's version as :data:`rayrec.models.ranker.EASE_FILE`, summed by
  :meth:`ItemWeights.score_of`).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from rayrec.arrays import searchsorted, unique
from rayrec.retrieval.ease import fit_item_weights

__all__ = ["EaseFeature"]

log = logging.getLogger(__name__)

_ROW_CHUNK = 4096  # a user's rows scored at once (a history × rows block of weights)


class EaseFeature:
    """Cross-fitted, point-in-time EASE scores of (user, movie, time) rows (see the module docstring)."""

    def __init__(
        self, ratings: pd.DataFrame, lam: float = 400.0, top_k: int = 100, folds: int = 4, max_items: int = 10_000, seed: int = 0
    ) -> None:
        from scipy import sparse

        if folds < 2:
            raise ValueError(f"folds must be ≥ 2 (a user's rows are scored by weights fit without them), got {folds}")
        users = ratings["userId"].to_numpy(np.int64)
        movies = ratings["movieId"].to_numpy(np.int64)
        ts = ratings["timestamp"].to_numpy(np.int64)
        self.items = unique(movies)
        self.users = unique(users)
        self.fold_of = np.random.default_rng(seed).permutation(len(self.users)) % folds  # by user row
        user_fold = self.fold_of[searchsorted(self.users, users)]
        n = len(self.items)
        self.weights: list[sparse.csr_matrix] = []
        for f in range(folds):
            rest = ratings[user_fold != f]
            w = fit_item_weights(rest[["userId", "movieId"]], lam, top_k=top_k, max_items=max_items)
            src = np.searchsorted(self.items, w.items)  # the fold's items in the global order
            sources, targets, values = w.pairs()
            self.weights.append(sparse.csr_matrix((values, (src[sources], src[targets])), shape=(n, n), dtype=np.float32))
        # every user's ratings by time: user i's are [start[i], start[i + 1])
        order = np.lexsort((ts, users))
        self.hist_items = np.searchsorted(self.items, movies[order])
        self.hist_ts = ts[order]
        self.start = np.searchsorted(users[order], self.users)
        self.start = np.append(self.start, len(order))
        log.info("ease feature: %d users in %d folds, %d items, lambda %g, top %d", len(self.users), folds, n, lam, top_k)

    def score(self, rows: pd.DataFrame) -> np.ndarray:
        """(N,) float32 scores of ``rows`` (userId, movieId, timestamp); 0 for an unknown user or movie."""
        out = np.zeros(len(rows), dtype=np.float32)
        if not len(rows):
            return out
        users = rows["userId"].to_numpy(np.int64)
        movies = rows["movieId"].to_numpy(np.int64)
        ts = rows["timestamp"].to_numpy(np.int64)
        upos = np.minimum(searchsorted(self.users, users), len(self.users) - 1)
        mpos = np.minimum(searchsorted(self.items, movies), len(self.items) - 1)
        ok = (self.users[upos] == users) & (self.items[mpos] == movies)
        idx = np.flatnonzero(ok)
        by_user = idx[np.argsort(upos[idx], kind="stable")]
        bounds = np.flatnonzero(np.diff(upos[by_user])) + 1
        for group in np.split(by_user, bounds) if len(by_user) else []:
            u = int(upos[group[0]])
            a, b = int(self.start[u]), int(self.start[u + 1])
            hist, hist_ts = self.hist_items[a:b], self.hist_ts[a:b]
            weights = self.weights[int(self.fold_of[u])][hist]  # (H, n) the user's sources
            for c in range(0, len(group), _ROW_CHUNK):
                part = group[c : c + _ROW_CHUNK]
                block = weights[:, mpos[part]].toarray()  # (H, R)
                before = hist_ts[:, None] < ts[part][None, :]
                out[part] = (block * before).sum(axis=0)
        return out

    def top_unrated(self, user_ids: np.ndarray, at: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """For each (user, time): the ``n`` movies with the highest scores from the user's ratings before
        that time, none of them rated before it (what the ease recall path would offer then; only movies
        the history reaches). Returns (the input each belongs to (M,), movie ids (M,)), best first."""
        src: list[np.ndarray] = []
        found: list[np.ndarray] = []
        upos = np.minimum(np.searchsorted(self.users, user_ids), len(self.users) - 1)
        for i, (u, t) in enumerate(zip(upos.tolist(), np.asarray(at, dtype=np.int64).tolist())):
            if self.users[u] != user_ids[i]:
                continue
            a, b = int(self.start[u]), int(self.start[u + 1])
            hist = self.hist_items[a:b][self.hist_ts[a:b] < t]
            if not len(hist):
                continue
            scores = np.asarray(self.weights[int(self.fold_of[u])][hist].sum(axis=0), dtype=np.float32).ravel()
            scores[hist] = 0.0  # rated before t: never offered
            reached = np.flatnonzero(scores != 0)
            if not len(reached):
                continue
            k = min(n, len(reached))
            top = reached[np.argpartition(-scores[reached], k - 1)[:k]]
            top = top[np.argsort(-scores[top], kind="stable")]
            src.append(np.full(k, i, dtype=np.int64))
            found.append(self.items[top])
        if not src:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(src), np.concatenate(found)

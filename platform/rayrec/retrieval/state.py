"""What recall knows about a user at one moment: the :class:`UserState`.

Online, serving builds it from the online store (latest features, recent history, the user tower's
vector). Offline, :func:`user_states_as_of` derives it from the ratings strictly before each user's
time ``t`` (their train/test boundary), so "what would we retrieve for user u as of t" runs the same
recall code with nothing from t onwards.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from rayrec.features.pointintime import LABEL_THRESHOLD
from rayrec.retrieval.catalog import ItemCatalog

__all__ = ["UserState", "user_states_as_of", "THRESHOLD", "N_GENRES"]

THRESHOLD = LABEL_THRESHOLD  # a rating at or above it is a positive (the default label)
N_GENRES = 5  # favourite genres kept, as in the features' user_genres


@dataclass(frozen=True)
class UserState:
    """A user as recall sees them at time ``as_of`` (Unix seconds; None = now / end of the data).

    ``recent_positives``: items rated ≥ 3.5, most recent first. ``seen``: every item the user rated
    (never recalled again). ``genres``: favourite genres, best first (top genres of prior positives).
    ``vector``: the user tower's output, or None (the embedding path then falls back to the mean of
    the recent positives' item vectors, when configured to)."""

    user_id: int
    recent_positives: tuple[int, ...] = ()
    seen: frozenset[int] = frozenset()
    genres: tuple[str, ...] = ()
    vector: np.ndarray | None = field(default=None, compare=False, repr=False)
    as_of: int | None = None
    # what the cold-start path reads: the genres a new user declared, the local hour, the store row
    declared_genres: tuple[str, ...] = ()
    hour: int | None = None
    row: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)

    @cached_property
    def seen_array(self) -> np.ndarray:
        """``seen`` as a sorted int64 array (built once per state: every path filters by it)."""
        return np.sort(np.fromiter(self.seen, dtype=np.int64, count=len(self.seen)))

    def with_vector(self, vector: np.ndarray | None) -> UserState:
        return replace(self, vector=None if vector is None else np.asarray(vector, dtype=np.float32).reshape(-1))

    @classmethod
    def from_features(
        cls,
        row: Mapping[str, Any],
        *,
        seen: Iterable[int] = (),
        recent_positives: Iterable[int] | None = None,
        vector: np.ndarray | None = None,
        as_of: int | None = None,
    ) -> UserState:
        """From an online-store user row (``userId``, ``user_recent_items``, ``user_genres``) plus the
        user's seen items (e.g. the store history). ``recent_positives`` overrides the row's five."""
        recent = (row.get("user_recent_items") or []) if recent_positives is None else recent_positives
        seen_set = frozenset(int(m) for m in seen) | frozenset(int(m) for m in recent)
        return cls(
            user_id=int(row["userId"]),
            recent_positives=tuple(int(m) for m in recent),
            seen=seen_set,
            genres=tuple(str(g) for g in (row.get("user_genres") or [])),
            vector=None if vector is None else np.asarray(vector, dtype=np.float32).reshape(-1),
            as_of=as_of,
        )


def user_states_as_of(
    ratings: pd.DataFrame,
    as_of: Mapping[int, int] | pd.Series,
    catalog: ItemCatalog,
    *,
    threshold: float = THRESHOLD,
    max_recent: int = 50,
    n_genres: int = N_GENRES,
) -> dict[int, UserState]:
    """One :class:`UserState` per user of ``as_of`` (userId → t), from ``ratings`` (userId, movieId,
    rating, timestamp) strictly before that user's t. Recent positives are ordered by time, most
    recent first (ties: higher movieId first, as the features pipeline orders them), at most
    ``max_recent``; favourite genres count the full genre lists of prior positives (ties by name)."""
    t = pd.Series(as_of, dtype="int64") if not isinstance(as_of, pd.Series) else as_of.astype("int64")
    t.index = t.index.astype("int64")
    r = pd.DataFrame(
        {
            "userId": ratings["userId"].to_numpy(np.int64),
            "movieId": ratings["movieId"].to_numpy(np.int64),
            "rating": ratings["rating"].to_numpy(np.float64),
            "timestamp": ratings["timestamp"].to_numpy(np.int64),
        }
    )
    r = r[r["userId"].isin(t.index)]
    r = r[r["timestamp"].to_numpy() < t.reindex(r["userId"]).to_numpy()]
    r = r.sort_values(["userId", "timestamp", "movieId"], ascending=[True, False, False], kind="stable")
    seen = r.groupby("userId", sort=False)["movieId"].agg(frozenset)
    pos = r[r["rating"].to_numpy() >= threshold]
    recent = pos.groupby("userId", sort=False)["movieId"].agg(lambda s: tuple(s.iloc[:max_recent].tolist()))
    genres = _favourite_genres(pos, catalog, n_genres)
    out: dict[int, UserState] = {}
    for user_id, when in t.items():
        u = int(user_id)
        out[u] = UserState(
            user_id=u,
            recent_positives=recent.get(u, ()),
            seen=seen.get(u, frozenset()),
            genres=genres.get(u, ()),
            as_of=int(when),
        )
    return out


def _favourite_genres(pos: pd.DataFrame, catalog: ItemCatalog, n: int) -> dict[int, tuple[str, ...]]:
    rows = catalog.rows(pos["movieId"].to_numpy(np.int64))
    known = rows >= 0
    if not known.any() or not catalog.genre_names:
        return {}
    users, u_idx = np.unique(pos["userId"].to_numpy(np.int64)[known], return_inverse=True)
    counts = np.zeros((len(users), len(catalog.genre_names)), dtype=np.int64)
    np.add.at(counts, u_idx, catalog.genre_matrix[rows[known]].astype(np.int64))
    order = np.argsort(-counts, axis=1, kind="stable")[:, :n]  # genre_names sorted: ties by name
    names = np.asarray(catalog.genre_names, dtype=object)
    out = {}
    for u, o, c in zip(users.tolist(), order, np.take_along_axis(counts, order, axis=1)):
        out[u] = tuple(names[o[c > 0]].tolist())
    return out

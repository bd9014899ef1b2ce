"""User cold start: popularity within segments (genre × hour of day), blended with a user's first events.

A user with no history still gets a list, never an empty one. :class:`ColdStart` counts positive
ratings per movie and hour-of-day bucket (built once from the ratings of a features version). A
request may declare favourite genres and the local hour; the score of a movie is

    match(movie) × log1p(positives in the hour's bucket + smoothing × positives over all hours / buckets)

where ``match`` is the weight of the movie's genres among the user's genre preferences: the declared
genres, blended with the genres of the user's own positive ratings as they arrive (their share grows
with each positive: ``n / (n + prior_events)``). Without any genre every movie matches equally (plain
popularity at that hour). Movies the user rated are never returned; when the matching movies run out
the list is filled with the most popular others, then with the rest of the catalog.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

from rayrec.features.pointintime import LABEL_THRESHOLD
from rayrec.realtime.stats import STATE_KEY, as_list, seen_items

__all__ = ["ColdStart", "ColdContext", "is_cold", "hour_bucket"]


class ColdContext(BaseModel):
    """What a caller may declare about a new user (``GET /recommend?genres=Comedy,Drama&hour=21``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    genres: list[str] = Field(default_factory=list, max_length=20, description="favourite genres, any order")
    hour: int | None = Field(
        default=None, ge=0, le=23, description="the user's local hour of day; now (UTC) if omitted"
    )

    @field_validator("genres", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        if isinstance(v, str):  # "Comedy,Drama" from a query string
            return [g.strip() for g in v.split(",") if g.strip()]
        return v


def hour_bucket(hour: int | np.ndarray, buckets: int) -> Any:
    """Bucket of an hour of day (0..23): ``buckets`` equal slices of the day."""
    return (np.asarray(hour) * buckets) // 24


def is_cold(row: Mapping[str, Any] | None, min_ratings: int = 5) -> bool:
    """A user the personalised paths cannot serve well yet: no row, or fewer than ``min_ratings``
    ratings (batch and real-time ones)."""
    return row is None or int(row.get("user_rating_count") or 0) < min_ratings


class ColdStart:
    """Popular movies per hour-of-day bucket, filtered and weighted by genres (module docstring).

    Build with :meth:`build` (ratings + catalog) or :meth:`from_features`; :meth:`recommend` answers
    in about a millisecond on a 10k-movie catalog (numpy over the whole catalog)."""

    def __init__(
        self,
        movie_ids: np.ndarray,
        genre_names: Sequence[str],
        genre_matrix: np.ndarray,
        positives: np.ndarray,
        *,
        smoothing: float = 1.0,
        prior_events: float = 3.0,
        threshold: float = LABEL_THRESHOLD,
    ) -> None:
        self.movie_ids = np.asarray(movie_ids, dtype=np.int64)  # (N,)
        self.genre_names = list(genre_names)
        self._col = {g: j for j, g in enumerate(self.genre_names)}
        self.genre_matrix = np.asarray(genre_matrix, dtype=np.float32)  # (N, G) multi-hot
        self.positives = np.asarray(positives, dtype=np.float64)  # (N, B) positives per hour bucket
        self.buckets = self.positives.shape[1]
        self.smoothing = smoothing
        self.prior_events = prior_events
        self.threshold = threshold
        total = self.positives.sum(axis=1)
        # (N, B) log-popularity per bucket, smoothed towards the all-hours count
        self._pop = np.log1p(self.positives + smoothing * total[:, None] / self.buckets)
        self._row_of = {int(m): i for i, m in enumerate(self.movie_ids.tolist())}

    @classmethod
    def build(
        cls,
        ratings: pd.DataFrame,
        catalog: Any,
        *,
        threshold: float = LABEL_THRESHOLD,
        buckets: int = 4,
        tz_offset_hours: int = 0,
        **kwargs: Any,
    ) -> ColdStart:
        """From ratings (movieId, rating, timestamp in Unix seconds) and an ``ItemCatalog``
        (movie_ids, genre_names, genre_matrix). Hours are UTC shifted by ``tz_offset_hours``."""
        if not 1 <= buckets <= 24 or 24 % buckets:
            raise ValueError(f"buckets must divide 24 (1, 2, 3, 4, 6, 8, 12 or 24), got {buckets}")
        movie_ids = np.asarray(catalog.movie_ids, dtype=np.int64)
        pos = ratings[ratings["rating"].to_numpy(np.float64) >= threshold]
        rows = catalog.rows(pos["movieId"].to_numpy(np.int64))
        hours = ((pos["timestamp"].to_numpy(np.int64) // 3600 + tz_offset_hours) % 24).astype(np.int64)
        keep = rows >= 0
        counts = np.zeros((len(movie_ids), buckets), dtype=np.float64)
        np.add.at(counts, (rows[keep], hour_bucket(hours[keep], buckets)), 1.0)
        return cls(movie_ids, catalog.genre_names, catalog.genre_matrix, counts, threshold=threshold, **kwargs)

    @classmethod
    def from_features(cls, features_path: str, **kwargs: Any) -> ColdStart:
        """From a features version folder: its ``ratings/`` and ``online/items.parquet``."""
        from rayrec.retrieval.catalog import ItemCatalog, read_ratings

        return cls.build(read_ratings(features_path), ItemCatalog.load(features_path), **kwargs)

    def genre_weights(self, genres: Iterable[str] = (), row: Mapping[str, Any] | None = None) -> np.ndarray:
        """(G,) weights summing to 1 (all zero: no preference): declared ``genres`` blended with the
        genres of the user's positives from their store ``row``."""
        declared = np.zeros(len(self.genre_names))
        for g in genres:
            j = self._col.get(g)
            if j is not None:
                declared[j] = 1.0
        learned = np.zeros(len(self.genre_names))
        n_pos = 0.0
        state = (row or {}).get(STATE_KEY) or {}
        counts = state.get("genres")
        if counts:
            for g, c in counts.items():
                j = self._col.get(g)
                if j is not None:
                    learned[j] += float(c)
            limit = 2 * self.threshold - 1e-9  # ratings are stored as half-stars
            n_pos = float(sum(1 for h in state.get("half", ()) if h >= limit))
            n_pos = max(n_pos, float(len(state.get("recent", ()))))
        elif row and len(as_list(row.get("user_genres"))):  # a batch row: its top genres, best first
            top = as_list(row["user_genres"])
            for i, g in enumerate(top):
                j = self._col.get(g)
                if j is not None:
                    learned[j] = float(len(top) - i)
            n_pos = float(row.get("user_rating_count") or 0)
        if declared.sum():
            declared /= declared.sum()
        if learned.sum():
            learned /= learned.sum()
            share = n_pos / (n_pos + self.prior_events) if declared.sum() else 1.0
            return (1.0 - share) * declared + share * learned
        return declared

    def recommend(
        self,
        k: int = 10,
        *,
        genres: Iterable[str] = (),
        hour: int | None = None,
        row: Mapping[str, Any] | None = None,
        exclude: Iterable[int] = (),
    ) -> list[tuple[int, float]]:
        """The top ``k`` ``(movie_id, score)`` for a new or nearly new user, best first; never empty
        while the catalog holds a movie the user has not rated. ``row``: the user's store row, if any
        (its positives' genres are blended in and its rated movies excluded, with ``exclude``)."""
        if k <= 0 or not len(self.movie_ids):
            return []
        if hour is None:
            hour = time.gmtime().tm_hour
        b = int(hour_bucket(int(hour) % 24, self.buckets))
        pop = self._pop[:, b]
        w = self.genre_weights(genres, row)
        if w.any():
            match = self.genre_matrix @ w.astype(np.float32)
            score = match * pop
        else:
            match = np.ones(len(pop), dtype=np.float32)
            score = pop.copy()
        banned = set(int(m) for m in exclude) | seen_items(row)
        # tiers: matching and popular, then popular others, then the rest of the catalog
        tier = np.where(match > 0, 2.0, 0.0) + (pop > 0)
        key = tier * 1e6 + score
        for m in banned:
            i = self._row_of.get(m)
            if i is not None:
                key[i] = -np.inf
        n = min(k, int(np.isfinite(key).sum()))
        if n == 0:
            return []
        top = np.argpartition(-key, n - 1)[:n]
        top = top[np.lexsort((self.movie_ids[top], -key[top]))]
        return [(int(self.movie_ids[i]), float(score[i])) for i in top]

"""What a user has done, for serving: batch ratings plus the events received online.

Recall must never return an item the user has already rated, and the embedding and item-to-item
paths start from the user's latest likes. The online store's user row keeps only the last five
likes, so :class:`RatingHistory` holds every rating of a features version (``ratings/``) in compact
sorted arrays, and :func:`merge_events` lays the events of the store's history on top (a rating
posted a second ago counts at once).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rayrec.features.pointintime import LABEL_THRESHOLD
import numpy as np
import pandas as pd

__all__ = ["RatingHistory", "UserHistory", "merge_events", "THRESHOLD"]

THRESHOLD = LABEL_THRESHOLD  # the default; the bundle passes its features spec's label threshold


@dataclass(frozen=True)
class UserHistory:
    """One user's history: ``seen`` (every rated or clicked item), ``liked`` (items rated at or
    above the threshold, most recent first) and ``fresh`` (the likes among them that came as online
    events, not yet in the batch data the models were trained on; most recent first)."""

    seen: frozenset[int]
    liked: tuple[int, ...]
    online_events: int = 0
    fresh: tuple[int, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.seen


class RatingHistory:
    """All batch ratings, grouped by user and newest first within a user (CSR-style arrays)."""

    def __init__(self, ratings: pd.DataFrame, threshold: float = THRESHOLD) -> None:
        users = ratings["userId"].to_numpy(np.int64)
        order = np.lexsort((-ratings["movieId"].to_numpy(np.int64), -ratings["timestamp"].to_numpy(np.int64), users))
        self.threshold = threshold
        self._movies = ratings["movieId"].to_numpy(np.int64)[order]
        self._liked = ratings["rating"].to_numpy(np.float64)[order] >= threshold
        sorted_users = users[order]
        self._users, starts = np.unique(sorted_users, return_index=True)
        self._starts = np.append(starts, len(sorted_users)).astype(np.int64)

    @classmethod
    def empty(cls) -> RatingHistory:
        return cls(pd.DataFrame({"userId": [], "movieId": [], "rating": [], "timestamp": []}))

    def __len__(self) -> int:
        return len(self._users)

    def __contains__(self, user_id: object) -> bool:
        return isinstance(user_id, (int, np.integer)) and self._span(int(user_id)) is not None

    def _span(self, user_id: int) -> tuple[int, int] | None:
        i = int(np.searchsorted(self._users, user_id))
        if i < len(self._users) and self._users[i] == user_id:
            return int(self._starts[i]), int(self._starts[i + 1])
        return None

    def user(self, user_id: int, max_liked: int = 50) -> UserHistory:
        span = self._span(user_id)
        if span is None:
            return UserHistory(frozenset(), ())
        movies = self._movies[span[0] : span[1]]
        liked = movies[self._liked[span[0] : span[1]]][:max_liked]
        return UserHistory(frozenset(movies.tolist()), tuple(liked.tolist()))


def _event_fields(e: Mapping[str, Any]) -> tuple[int | None, str, float | None, int | None]:
    """(movie id, kind, rating, timestamp) of a history event, whichever spelling the writer used;
    None for a field that is absent or not a number."""
    kind = str(e.get("kind", e.get("type", "rating")))
    value = e.get("value", e.get("rating"))
    try:
        rating = float(value) if value is not None else None
    except (TypeError, ValueError):
        rating = None
    return _int(e.get("movie_id", e.get("movieId"))), kind, rating, _int(e.get("timestamp", e.get("ts")))


def _int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _in_time_order(events: Sequence[Mapping[str, Any]]) -> list[tuple[int, str, float | None]]:
    """(movie, kind, rating) of the events with a movie, in the order the user row's features take
    them (:mod:`rayrec.realtime.stats`, and the batch before it): by timestamp, ties by movie id,
    events of the same movie and second in arrival order. An event without a timestamp counts as
    of the one before it."""
    keyed: list[tuple[int, int, int, str, float | None]] = []
    last = 0
    for i, e in enumerate(events):
        movie, kind, value, ts = _event_fields(e)
        last = last if ts is None else ts
        if movie is not None:
            keyed.append((last, movie, i, kind, value))
    keyed.sort()
    return [(movie, kind, value) for _, movie, _, kind, value in keyed]


def merge_events(
    base: UserHistory, events: Sequence[Mapping[str, Any]], threshold: float = THRESHOLD, max_liked: int = 50
) -> UserHistory:
    """``base`` with online events (oldest first, as the store returns them) laid on top: every
    event's item is seen; a rating at or above the threshold is the newest like, and a later low
    rating of an item takes it out of the likes. "Later" is the timestamp's order, ties by movie
    id, as in the user row the real-time updater writes: the likes the ranker and the user tower
    are given here are the row's ``user_recent_items`` when both are up to date."""
    if not events:
        return base
    seen = set(base.seen)
    liked = list(base.liked)
    fresh: list[int] = []
    for movie, kind, value in _in_time_order(events):
        seen.add(movie)
        if kind == "rating" and value is not None:
            for likes in (liked, fresh):
                if movie in likes:
                    likes.remove(movie)
                if value >= threshold:
                    likes.insert(0, movie)
    return UserHistory(frozenset(seen), tuple(liked[:max_liked]), online_events=len(events), fresh=tuple(fresh[:max_liked]))

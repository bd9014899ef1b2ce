"""Sampled negatives for the top-N ranker: items the user never rated, at the time of a rated row.

For every rated training row (user u at time t), ``n`` movies u never rated, from two sources:

- *what others picked around t* (``hard`` share): the movie of a random rating among the ``window``
  ratings nearest in time to t. Popular-at-t movies come often, as they do among recall's candidates,
  so the ranker learns what sets the user's pick apart from what everyone was rating then;
- *anything in the catalog at t* (the rest): a movie drawn uniformly among those someone had rated
  before t. Against these the ranker learns that popular movies are picked more than obscure ones.

Both draw only from movies that existed at t, so a negative looks as new or as old as the positive
beside it: sampling by all-time popularity would make "not yet a hit" mean "picked", and the ranker
would learn the clock instead of the taste. A negative row keeps the row's user features (u's state
at t) and takes the movie's features *as of t*, by the same point-in-time rule as the features
pipeline: count, mean and std of the movie's ratings strictly before t, plus its static attributes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from rayrec.arrays import searchsorted, unique
from rayrec.features.pointintime import ITEM_FEATURES, USER_FEATURES, attach_movie_attributes

__all__ = ["ItemTimeline", "NegativeSampler", "add_negatives"]

_SHIFT = np.int64(1) << np.int64(32)


class ItemTimeline:
    """Every movie's ratings sorted by time, for point-in-time statistics at any instant."""

    def __init__(self, ratings: pd.DataFrame) -> None:
        movies = ratings["movieId"].to_numpy(np.int64)
        self.items, pos = np.unique(movies, return_inverse=True)
        ts = ratings["timestamp"].to_numpy(np.int64)
        r = ratings["rating"].to_numpy(np.float64)
        order = np.lexsort((ts, pos))
        self.keys = pos[order].astype(np.int64) * _SHIFT + ts[order]
        self.csum = np.zeros((len(order) + 1, 2))
        np.cumsum(np.stack([r[order], r[order] ** 2], axis=1), axis=0, out=self.csum[1:])
        self.start = np.searchsorted(self.keys, np.arange(len(self.items), dtype=np.int64) * _SHIFT)
        self.counts = np.bincount(pos, minlength=len(self.items))

    def count_before(self, movie_ids: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Each movie's number of ratings strictly before each ts (the count of :meth:`stats`)."""
        pos = np.minimum(searchsorted(self.items, movie_ids), len(self.items) - 1)
        known = self.items[pos] == movie_ids
        end = searchsorted(self.keys, pos.astype(np.int64) * _SHIFT + ts, side="left")
        return np.where(known, end - self.start[pos], 0)

    def stats(self, movie_ids: np.ndarray, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(count, mean, std) of each movie's ratings strictly before each ts; NaN mean/std at count 0."""
        pos = searchsorted(self.items, movie_ids)
        pos = np.minimum(pos, len(self.items) - 1)
        known = self.items[pos] == movie_ids
        end = searchsorted(self.keys, pos.astype(np.int64) * _SHIFT + ts, side="left")
        first = self.start[pos]
        count = np.where(known, end - first, 0)
        s = self.csum[end] - self.csum[first]
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(count > 0, s[:, 0] / np.maximum(count, 1), np.nan)
            var = np.where(count > 0, s[:, 1] / np.maximum(count, 1) - mean * mean, np.nan)
        return count.astype(np.int64), mean, np.sqrt(np.clip(var, 0.0, None))


class NegativeSampler:
    """What sampling needs of every rating a features version knows (the exclusions and the movies'
    timelines), built once and used for any number of row chunks (:meth:`add`)."""

    def __init__(self, ratings: pd.DataFrame, movies: pd.DataFrame) -> None:
        self.movies = movies
        self.timeline = ItemTimeline(ratings)
        self.rated = unique(ratings["userId"].to_numpy(np.int64) * _SHIFT + ratings["movieId"].to_numpy(np.int64))
        by_time = np.argsort(ratings["timestamp"].to_numpy(np.int64), kind="stable")
        self.times = ratings["timestamp"].to_numpy(np.int64)[by_time]
        self.movies_by_time = ratings["movieId"].to_numpy(np.int64)[by_time]
        # movies in order of their first rating: those available at t are a prefix
        first_ts = np.full(len(self.timeline.items), np.iinfo(np.int64).max)
        np.minimum.at(first_ts, searchsorted(self.timeline.items, self.movies_by_time), self.times)
        self.debut = np.argsort(first_ts, kind="stable")
        self.debut_ts = first_ts[self.debut]

    def add(self, rows: pd.DataFrame, n: int, *, hard: float = 0.5, window: int = 2000, seed: int | list[int] = 0) -> pd.DataFrame:
        """``rows`` (rated samples, ``interact`` = 1) and ``n`` sampled unrated movies per row
        (``interact`` = 0, ``label`` = 0), in one frame."""
        out = rows.assign(interact=np.float32(1.0))
        if n <= 0 or rows.empty:
            return out
        timeline, times, movies_by_time = self.timeline, self.times, self.movies_by_time
        rng = np.random.default_rng(seed)
        src = np.repeat(np.arange(len(rows)), n)
        users = rows["userId"].to_numpy(np.int64)[src]
        ts = rows["timestamp"].to_numpy(np.int64)[src]

        def draw(size: int, at: np.ndarray, local: np.ndarray) -> np.ndarray:
            out = np.empty(size, dtype=np.int64)
            pos = searchsorted(times, at)
            near = np.clip(pos + rng.integers(-window, window, size=size), 0, len(times) - 1)
            out[local] = movies_by_time[near[local]]
            available = np.maximum(searchsorted(self.debut_ts, at, side="left"), 1)
            pick = (rng.random(size) * available).astype(np.int64)
            out[~local] = timeline.items[self.debut[pick[~local]]]
            return out

        local = rng.random(len(src)) < hard
        picks = draw(len(src), ts, local)

        def unfit(which: np.ndarray) -> np.ndarray:
            # a movie the user rated, or one nobody had rated yet at t (not in the catalog then)
            keys = users[which] * _SHIFT + picks[which]
            at = np.minimum(searchsorted(self.rated, keys), max(len(self.rated) - 1, 0))
            rated = self.rated[at] == keys if len(self.rated) else np.zeros(len(keys), dtype=bool)
            return rated | (timeline.count_before(picks[which], ts[which]) == 0)

        bad = unfit(np.arange(len(picks)))
        for _ in range(5):  # redraw unfit picks (only those); the few left after five tries are dropped
            redo = np.flatnonzero(bad)
            if not len(redo):
                break
            picks[redo] = draw(len(redo), ts[redo], local[redo])
            bad[redo] = unfit(redo)
        src, picks = src[~bad], picks[~bad]
        neg = self.pairs_at(rows, src, picks)
        neg["rating"] = np.float32(np.nan)
        neg["label"] = np.int64(0) if out["label"].dtype.kind in "iu" else out["label"].dtype.type(0)
        neg["interact"] = np.float32(0.0)
        cols = [c for c in neg.columns if c in out.columns or c in ITEM_FEATURES]
        return pd.concat([out, neg[cols]], ignore_index=True)

    def pairs_at(self, rows: pd.DataFrame, src: np.ndarray, movies: np.ndarray) -> pd.DataFrame:
        """Rows pairing ``rows.iloc[src]``'s user (its features, as of its time) with ``movies``, each
        movie's features as of that time (count, mean and std of its ratings strictly before it)."""
        user_cols = ["userId", "timestamp", *[c for c in USER_FEATURES if c in rows.columns]]
        user_cols += [c for c in ("history_items",) if c in rows.columns]
        out = rows[user_cols].iloc[src].reset_index(drop=True)
        out["movieId"] = movies
        count, mean, std = self.timeline.stats(movies, out["timestamp"].to_numpy(np.int64))
        out["item_rating_count"] = count
        out["item_rating_mean"] = mean
        out["item_rating_std"] = std
        # item genres as the rows hold theirs: kept in Arrow (the training data's samples), the negatives
        # concatenate with the rated rows without turning every list of the chunk into Python objects
        kept = rows["item_genres"].dtype if "item_genres" in rows.columns else None
        return attach_movie_attributes(out, self.movies, kept.pyarrow_dtype if isinstance(kept, pd.ArrowDtype) else None)


def add_negatives(
    rows: pd.DataFrame,
    ratings: pd.DataFrame,
    movies: pd.DataFrame,
    n: int,
    *,
    hard: float = 0.5,
    window: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """``rows`` (rated samples, ``interact`` = 1) and ``n`` sampled unrated movies per row
    (``interact`` = 0, ``label`` = 0), in one frame. ``ratings`` (userId, movieId, rating, timestamp)
    are every rating the features version knows: the exclusions and the movies' timelines."""
    return NegativeSampler(ratings, movies).add(rows, n, hard=hard, window=window, seed=seed)

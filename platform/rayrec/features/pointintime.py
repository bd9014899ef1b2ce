"""Point-in-time features, vectorised over a block that holds *all* rows of each of its keys.

A sample's features use only ratings strictly before it: same user (or same item) and a strictly
smaller timestamp. Ratings that share a timestamp never see each other, so the result does not depend
on how ties happen to be ordered. The same functions also give the "latest" features served online:
each key gets one extra *sentinel* row at the end of time, whose point-in-time features are the
features as of the end of the data. One code path, offline and online.

These are plain pandas/numpy functions so unit tests reach them without Ray; the Ray Data pipeline
calls them per block after a hash repartition on the key.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from rayrec.arrays import unique

__all__ = [
    "last_share",
    "SENTINEL_TS",
    "N_USER_GENRES",
    "N_RECENT_ITEMS",
    "N_ITEM_GENRES",
    "USER_FEATURES",
    "ITEM_FEATURES",
    "prior_sums",
    "item_totals",
    "item_pass",
    "user_pass",
    "user_totals",
]

SENTINEL_TS = np.iinfo(np.int64).max  # "after every rating": a sentinel sees a key's whole history
LABEL_THRESHOLD = 3.5  # the default label: a rating at or above it is a positive (the spec records the one used)
N_USER_GENRES = 5
N_RECENT_ITEMS = 5
N_ITEM_GENRES = 3

USER_FEATURES = (
    "user_rating_count",
    "user_rating_mean",
    "user_rating_std",
    "user_year_mean",
    "user_year_std",
    "user_genres",
    "user_recent_items",
)
ITEM_FEATURES = ("item_rating_count", "item_rating_mean", "item_rating_std", "item_year", "item_genres")

_YEAR_ORIGIN = 1900.0  # centre years before summing squares, keeping the variance well conditioned


def prior_sums(keys: np.ndarray, ts: np.ndarray, values: np.ndarray) -> np.ndarray:
    """For rows sorted by (key, ts): per row, the sum of ``values`` over rows of the same key with a
    strictly smaller ts. ``values`` may be 1-D (N,) or 2-D (N, K); the result has the same shape."""
    n = len(keys)
    if n == 0:
        return np.zeros_like(values)
    acc_dtype = np.float64 if values.dtype.kind == "f" else np.int64
    csum = np.zeros((n + 1,) + values.shape[1:], dtype=acc_dtype)
    np.cumsum(values, axis=0, dtype=acc_dtype, out=csum[1:])  # csum[j] = sum of values[:j]
    idx = np.arange(n)
    new_key = np.ones(n, dtype=bool)
    new_key[1:] = keys[1:] != keys[:-1]
    new_tie = new_key.copy()
    new_tie[1:] |= ts[1:] != ts[:-1]
    key_start = np.maximum.accumulate(np.where(new_key, idx, 0))
    tie_start = np.maximum.accumulate(np.where(new_tie, idx, 0))
    return csum[tie_start] - csum[key_start]


def _moments(count: np.ndarray, s: np.ndarray, ss: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population std from count, sum and sum of squares; NaN where count is 0."""
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, s / np.maximum(count, 1), np.nan)
        var = np.where(count > 0, ss / np.maximum(count, 1) - mean * mean, np.nan)
    return mean, np.sqrt(np.clip(var, 0.0, None))  # clip: rounding can make a zero variance negative


def _sorted(df: pd.DataFrame, key: str) -> pd.DataFrame:
    order = np.lexsort((df["movieId"].to_numpy(), df["timestamp"].to_numpy(), df[key].to_numpy()))
    return df.iloc[order].reset_index(drop=True)


def _with_sentinels(df: pd.DataFrame, key: str) -> pd.DataFrame:
    """Append one sentinel row per key (timestamp at the end of time, no rating)."""
    keys = unique(df[key].to_numpy())
    s = pd.DataFrame({key: keys, "timestamp": np.full(len(keys), SENTINEL_TS, dtype=np.int64)})
    other = "movieId" if key == "userId" else "userId"
    s[other] = np.int64(-1)
    s["rating"] = np.float32(np.nan)
    s["sentinel"] = True
    base = df.assign(sentinel=False) if "sentinel" not in df.columns else df
    return pd.concat([base, s[[c for c in s.columns]]], ignore_index=True)


def item_pass(batch: pd.DataFrame, movies: pd.DataFrame, *, sentinels: bool = True) -> pd.DataFrame:
    """Item statistics from prior ratings of the same movie, plus the movie's static attributes.

    ``batch``: ratings (userId, movieId, rating, timestamp) holding every rating of its movies.
    ``movies``: movieId, year, genres (the catalog). With ``sentinels``, one extra row per movie
    (``sentinel=True``) carries the movie's features as of the end of the data.
    """
    df = _with_sentinels(batch, "movieId") if sentinels else batch.assign(sentinel=False)
    df = _sorted(df, "movieId")
    rated = (~df["sentinel"].to_numpy()).astype(np.int64)
    r = np.nan_to_num(df["rating"].to_numpy(np.float64)) * rated
    keys, ts = df["movieId"].to_numpy(), df["timestamp"].to_numpy()
    sums = prior_sums(keys, ts, np.stack([rated.astype(np.float64), r, r * r], axis=1))
    count = sums[:, 0].round().astype(np.int64)
    mean, std = _moments(count, sums[:, 1], sums[:, 2])
    df["item_rating_count"] = count
    df["item_rating_mean"] = mean
    df["item_rating_std"] = std
    return attach_movie_attributes(df, movies)


def item_totals(ratings: pd.DataFrame) -> pd.DataFrame:
    """Per rated movie (ascending movieId): ``item_rating_count``, ``item_rating_mean`` and
    ``item_rating_std`` over all of ``ratings`` (movieId, rating, timestamp): the statistics of
    :func:`item_pass`'s sentinel rows, the same numbers (the same running sums in the same order),
    without computing every rating's own statistics or joining the movies' attributes to every row."""
    movie = ratings["movieId"].to_numpy(np.int64)
    order = np.lexsort((ratings["timestamp"].to_numpy(), movie))  # item_pass's sort, ties as they come
    movie = movie[order]
    starts = np.flatnonzero(np.r_[True, movie[1:] != movie[:-1]]) if len(movie) else np.zeros(0, dtype=np.int64)
    ends = np.r_[starts[1:], len(movie)].astype(np.int64)
    r = np.nan_to_num(ratings["rating"].to_numpy(np.float64))[order]

    def total(values: np.ndarray) -> np.ndarray:  # each movie's sum, as a difference of running sums
        csum = np.zeros(len(values) + 1)
        np.cumsum(values, out=csum[1:])
        return csum[ends] - csum[starts]

    count = total(np.ones(len(movie))).round().astype(np.int64)
    mean, std = _moments(count, total(r), total(r * r))
    return pd.DataFrame({"movieId": movie[starts], "item_rating_count": count, "item_rating_mean": mean, "item_rating_std": std})


def attach_movie_attributes(
    df: pd.DataFrame, movies: pd.DataFrame, genres_as: pa.DataType | None = None, *, genres: bool = True
) -> pd.DataFrame:
    """Join the movie's release year and first genres (static item features) onto rows by movieId.
    With ``genres_as`` (an Arrow list type), ``item_genres`` stays an Arrow column of that type
    (``pd.ArrowDtype``, as the training data keeps its list features) instead of numpy arrays;
    with ``genres=False``, only the year (what the user features read)."""
    cat = movies.set_index("movieId")
    pos = cat.index.get_indexer(df["movieId"].to_numpy())
    known = pos >= 0
    years = cat["year"].to_numpy(dtype=np.float64, na_value=np.nan)
    df["item_year"] = np.where(known, years[np.maximum(pos, 0)], np.nan)
    if not genres:
        return df
    firsts = [list(g)[:N_ITEM_GENRES] for g in cat["genres"]] + [[]]  # one row per movie, last: unknown
    table = pa.array(firsts, pa.large_list(pa.string()))
    taken = pc.take(table, pa.array(np.where(known, pos, len(cat))))
    if genres_as is not None:
        df["item_genres"] = pd.Series(pd.arrays.ArrowExtensionArray(taken.cast(genres_as)), index=df.index)
    else:
        df["item_genres"] = taken.to_numpy(zero_copy_only=False)
    return df


def list_column(lengths: np.ndarray, values: pa.Array) -> np.ndarray:
    """A list column from row lengths and flat values, built by Arrow (no per-row Python): an object
    array of numpy arrays, the form Arrow list columns take in pandas (and that Parquet round-trips)."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), values).to_numpy(zero_copy_only=False)


def _top_genres(counts: np.ndarray, names: Sequence[str], k: int) -> np.ndarray:
    """Per row, up to k genre names with the highest positive counts; ties by name (names sorted)."""
    if counts.shape[1] == 0:
        return list_column(np.zeros(len(counts), np.int64), pa.array([], pa.string()))
    # stable argsort on -count keeps alphabetical order among equal counts
    order = np.argsort(-counts, axis=1, kind="stable")[:, :k]
    keep = np.take_along_axis(counts, order, axis=1) > 0  # row-major: each row's picks in rank order
    values = pc.take(pa.array(list(names), pa.string()), pa.array(order[keep].astype(np.int64)))
    return list_column(keep.sum(axis=1), values)


def user_pass(
    batch: pd.DataFrame,
    movies: pd.DataFrame,
    *,
    threshold: float = LABEL_THRESHOLD,
    test_fraction: float = 0.2,
    min_ratings: int = 5,
    sentinels: bool = True,
) -> pd.DataFrame:
    """User features from prior ratings of the same user, the label and the per-user temporal split.

    ``batch`` holds every rating of its users with ``item_year`` attached (the output of
    :func:`item_pass`); ``movies`` is the catalog, whose full genre lists feed the genre preferences. Adds ``label`` (rating ≥ threshold), ``split`` ("train"/"test":
    each user's last ``test_fraction`` of ratings by time is test; users with fewer than
    ``min_ratings`` stay in train) and the user features. With ``sentinels``, one extra row per user
    carries the user's features as of the end of the data.
    """
    df = _with_sentinels(batch, "userId") if sentinels else batch.assign(sentinel=False)
    df = _sorted(df, "userId")
    rated = ~df["sentinel"].to_numpy()
    rating = df["rating"].to_numpy(np.float64)
    label = rated & (np.nan_to_num(rating) >= threshold)
    keys, ts = df["userId"].to_numpy(), df["timestamp"].to_numpy()

    year = df["item_year"].to_numpy(np.float64) - _YEAR_ORIGIN
    has_year = rated & ~np.isnan(year)
    y = np.where(has_year, year, 0.0)
    r = np.where(rated, rating, 0.0)
    # genre multi-hot of positively rated rows, over the genres present in this block
    gm, names = _genre_matrix(df["movieId"].to_numpy(), label, movies)

    dense = np.stack([rated.astype(np.float64), r, r * r, has_year.astype(np.float64), y, y * y], axis=1)
    sums = prior_sums(keys, ts, dense)
    count = sums[:, 0].round().astype(np.int64)
    mean, std = _moments(count, sums[:, 1], sums[:, 2])
    ycount = sums[:, 3].round().astype(np.int64)
    ymean, ystd = _moments(ycount, sums[:, 4], sums[:, 5])
    df["label"] = label.astype(np.int8)
    df["user_rating_count"] = count
    df["user_rating_mean"] = mean
    df["user_rating_std"] = std
    df["user_year_mean"] = ymean + _YEAR_ORIGIN
    df["user_year_std"] = ystd
    df["user_genres"] = _top_genres(prior_sums(keys, ts, gm), names, N_USER_GENRES)
    df["user_recent_items"] = _recent_positives(keys, ts, label, df["movieId"].to_numpy())
    df["split"] = _split(keys, rated, test_fraction, min_ratings)
    return df


def user_totals(batch: pd.DataFrame, movies: pd.DataFrame, *, threshold: float = LABEL_THRESHOLD) -> pd.DataFrame:
    """One row per user of ``batch``: ``userId`` and the user features as of the end of the data,
    the values :func:`user_pass`'s sentinel rows hold, from per-user totals.

    ``batch`` is as :func:`user_pass` takes it (every rating of its users, ``item_year`` attached). A
    sentinel sees every rating of its user, so its prior sums are the user's totals: this skips the
    prior sums, genre counts and top-genre sorts of every rated row that the user pass computes to
    keep one row per user (at 20M ratings, minutes for 160,000 rows). Sums run in another order, so
    means and deviations agree with the sentinels' to float rounding; the rest is equal."""
    df = _sorted(batch, "userId")
    keys = df["userId"].to_numpy()
    if len(keys) == 0:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in ("userId", *USER_FEATURES)})
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    rating = df["rating"].to_numpy(np.float64)
    label = np.nan_to_num(rating) >= threshold
    year = df["item_year"].to_numpy(np.float64) - _YEAR_ORIGIN
    has_year = ~np.isnan(year)
    y = np.where(has_year, year, 0.0)
    dense = np.stack([np.ones(len(keys)), rating, rating * rating, has_year.astype(np.float64), y, y * y], axis=1)
    sums = np.add.reduceat(dense, starts, axis=0)
    count = sums[:, 0].round().astype(np.int64)
    mean, std = _moments(count, sums[:, 1], sums[:, 2])
    ycount = sums[:, 3].round().astype(np.int64)
    ymean, ystd = _moments(ycount, sums[:, 4], sums[:, 5])
    gm, names = _genre_matrix(df["movieId"].to_numpy(), label, movies)
    genre_counts = np.add.reduceat(gm, starts, axis=0, dtype=np.int64) if gm.shape[1] else gm[starts]
    positives = np.flatnonzero(label)
    first = np.searchsorted(positives, starts)  # each user's first positive, in positives
    return pd.DataFrame(
        {
            "userId": keys[starts],
            "user_rating_count": count,
            "user_rating_mean": mean,
            "user_rating_std": std,
            "user_year_mean": ymean + _YEAR_ORIGIN,
            "user_year_std": ystd,
            "user_genres": _top_genres(genre_counts, names, N_USER_GENRES),
            "user_recent_items": _last_positives(df["movieId"].to_numpy()[positives], first, np.r_[first[1:], len(positives)]),
        }
    )


def _genre_matrix(items: np.ndarray, mask: np.ndarray, movies: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    """Multi-hot (N, G) of each row's movie genres where ``mask``; columns are genre names sorted."""
    names = sorted({g for gl in movies["genres"] for g in gl})
    gidx = {g: i for i, g in enumerate(names)}
    cat = pd.Index(movies["movieId"].to_numpy())
    table = np.zeros((len(cat) + 1, len(names)), dtype=np.int32)  # last row: unknown movie
    for i, gl in enumerate(movies["genres"]):
        for g in gl:
            table[i, gidx[g]] = 1
    pos = cat.get_indexer(items)
    gm = table[np.where(pos >= 0, pos, len(cat))]
    gm[~mask] = 0
    return gm, names


def _recent_positives(
    keys: np.ndarray, ts: np.ndarray, label: np.ndarray, items: np.ndarray
) -> np.ndarray:
    """Per row, the last N_RECENT_ITEMS positively rated items strictly before it, most recent first."""
    n = len(keys)
    npos = prior_sums(keys, ts, label.astype(np.int64))  # positives strictly before, per row
    pos_idx = np.flatnonzero(label)  # sorted rows are grouped by key, so this is grouped too
    pos_items = items[pos_idx]
    # index into pos_items of the key's first positive: positives before the key's first row
    new_key = np.ones(n, dtype=bool)
    new_key[1:] = keys[1:] != keys[:-1]
    first_row = np.maximum.accumulate(np.where(new_key, np.arange(n), 0))
    key_pos_start = np.searchsorted(pos_idx, first_row)
    return _last_positives(pos_items, key_pos_start, key_pos_start + npos)


def _last_positives(pos_items: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Per row, the last N_RECENT_ITEMS of ``pos_items[start:end]``, most recent (last) first."""
    lo = np.maximum(start, end - N_RECENT_ITEMS)
    lengths = end - lo
    # row i lists pos_items[end_i - 1], pos_items[end_i - 2], …, pos_items[lo_i]: most recent first
    step = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    flat = np.repeat(end - 1, lengths) - step
    return list_column(lengths, pa.array(pos_items[flat].astype(np.int64)))


def last_share(keys: np.ndarray, rated: np.ndarray, fraction: float, min_rows: int) -> np.ndarray:
    """Per row, whether it is among its key's last ``fraction`` of ``rated`` rows (keys in runs, each
    run in time order); a key with fewer than ``min_rows`` rated rows has none. The cut of the
    train/test split, and of the training job's validation hold-out."""
    n = len(keys)
    if n == 0:
        return np.zeros(0, dtype=bool)
    _, start, counts = np.unique(keys, return_index=True, return_counts=True)
    n_rated = np.add.reduceat(rated.astype(np.int64), start)
    # rank of each rated row within its key, 0-based
    csum = np.cumsum(rated.astype(np.int64))
    base = np.repeat(csum[start] - rated[start], counts)
    rank = csum - base - 1
    n_key = np.repeat(n_rated, counts)
    n_last = np.where(n_key >= min_rows, np.floor(n_key * fraction + 1e-9).astype(np.int64), 0)
    return rated & (rank >= n_key - n_last)


def _split(keys: np.ndarray, rated: np.ndarray, test_fraction: float, min_ratings: int) -> np.ndarray:
    """"test" for each user's last ``test_fraction`` of rated rows (rows are sorted by time)."""
    split = np.full(len(keys), "train", dtype=object)
    split[last_share(keys, rated, test_fraction, min_ratings)] = "test"
    split[~rated] = "latest"
    return split

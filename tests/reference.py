"""A plain pandas reference for the point-in-time features: one sample at a time, by definition.

Slow on purpose (quadratic): it exists to check the vectorised Ray Data pipeline on small data.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd

THRESHOLD = 3.5


def _stats(values: np.ndarray) -> tuple[int, float, float]:
    if len(values) == 0:
        return 0, float("nan"), float("nan")
    return len(values), float(np.mean(values)), float(np.std(values))


def user_features_at(hist: pd.DataFrame, movies: pd.DataFrame, t: float) -> dict:
    """Features of a user from their ratings ``hist`` strictly before time ``t``."""
    prior = hist[hist["timestamp"] < t].sort_values(["timestamp", "movieId"])
    count, mean, std = _stats(prior["rating"].to_numpy(np.float64))
    years = movies.loc[prior["movieId"], "year"].dropna().to_numpy(np.float64) if count else np.array([])
    _, ymean, ystd = _stats(years)
    pos = prior[prior["rating"] >= THRESHOLD]
    genre_counts = Counter(g for m in pos["movieId"] for g in movies.loc[m, "genres"])
    top = sorted(genre_counts.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
    return {
        "user_rating_count": count,
        "user_rating_mean": mean,
        "user_rating_std": std,
        "user_year_mean": ymean,
        "user_year_std": ystd,
        "user_genres": [g for g, _ in top],
        "user_recent_items": pos["movieId"].tolist()[::-1][:5],
    }


def item_features_at(hist: pd.DataFrame, movies: pd.DataFrame, movie_id: int, t: float) -> dict:
    prior = hist[hist["timestamp"] < t]
    count, mean, std = _stats(prior["rating"].to_numpy(np.float64))
    year = movies.loc[movie_id, "year"] if movie_id in movies.index else None
    genres = list(movies.loc[movie_id, "genres"])[:3] if movie_id in movies.index else []
    return {
        "item_rating_count": count,
        "item_rating_mean": mean,
        "item_rating_std": std,
        "item_year": float("nan") if year is None or pd.isna(year) else float(year),
        "item_genres": genres,
    }


def samples(ratings: pd.DataFrame, movies: pd.DataFrame, test_fraction: float = 0.2, min_ratings: int = 5) -> pd.DataFrame:
    """Every rating with its label, split and point-in-time user and item features."""
    movies = movies.set_index("movieId")
    by_user = {u: g for u, g in ratings.groupby("userId")}
    by_item = {m: g for m, g in ratings.groupby("movieId")}
    rows = []
    for u, g in by_user.items():
        g = g.sort_values(["timestamp", "movieId"])
        n = len(g)
        n_test = int(np.floor(n * test_fraction + 1e-9)) if n >= min_ratings else 0
        for rank, r in enumerate(g.itertuples(index=False)):
            row = {
                "userId": u,
                "movieId": r.movieId,
                "rating": r.rating,
                "timestamp": r.timestamp,
                "label": int(r.rating >= THRESHOLD),
                "split": "test" if rank >= n - n_test else "train",
            }
            row.update(user_features_at(g, movies, r.timestamp))
            row.update(item_features_at(by_item[r.movieId], movies, r.movieId, r.timestamp))
            rows.append(row)
    return pd.DataFrame(rows)


def latest_users(ratings: pd.DataFrame, movies: pd.DataFrame) -> pd.DataFrame:
    movies = movies.set_index("movieId")
    rows = [{"userId": u, **user_features_at(g, movies, float("inf"))} for u, g in ratings.groupby("userId")]
    return pd.DataFrame(rows)


def latest_items(ratings: pd.DataFrame, movies: pd.DataFrame) -> pd.DataFrame:
    cat = movies.set_index("movieId")
    by_item = {m: g for m, g in ratings.groupby("movieId")}
    empty = ratings.iloc[:0]
    rows = [
        {"movieId": m, **item_features_at(by_item.get(m, empty), cat, m, float("inf"))}
        for m in movies["movieId"]
    ]
    return pd.DataFrame(rows)


GENRES = ["Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi"]


def random_dataset(n_users: int = 20, n_items: int = 15, n: int = 250, seed: int = 0, ts_span: int = 40):
    """Small random ratings with many timestamp ties (a narrow ``ts_span``) and a small catalog,
    some movies unrated and some without a year or genres: the corner cases of point-in-time logic."""
    if n > n_users * n_items:
        raise ValueError(f"n={n} ratings cannot fit {n_users} users x {n_items} items without repeats")
    rng = np.random.default_rng(seed)
    pairs = set()
    rows = []
    while len(rows) < n:
        u, m = int(rng.integers(1, n_users + 1)), int(rng.integers(1, n_items + 1)) * 10
        if (u, m) in pairs:
            continue
        pairs.add((u, m))
        rows.append((u, m, float(rng.integers(1, 11)) / 2, int(rng.integers(0, ts_span))))
    ratings = pd.DataFrame(rows, columns=["userId", "movieId", "rating", "timestamp"]).astype(
        {"userId": "int64", "movieId": "int64", "rating": "float32", "timestamp": "int64"}
    )
    ids = np.arange(1, n_items + 3) * 10  # two movies nobody rated
    years = [None if i % 7 == 0 else int(1960 + (i * 13) % 60) for i in range(len(ids))]
    genres = [[] if i % 9 == 0 else sorted(set(rng.choice(GENRES, size=int(rng.integers(1, 5))).tolist())) for i in range(len(ids))]
    movies = pd.DataFrame(
        {
            "movieId": ids.astype(np.int64),
            "title": [f"Movie {i}" for i in ids],
            "year": pd.array(years, dtype="Int64"),
            "genres": genres,
        }
    )
    return ratings, movies


LIST_COLUMNS = ("user_genres", "user_recent_items", "item_genres")


def assert_same_features(got: pd.DataFrame, exp: pd.DataFrame, keys: list[str]) -> None:
    """Row for row equality on ``exp``'s columns: ints, strings and lists exactly, floats to 1e-9
    (the pipeline sums, the reference averages: the last bits may differ)."""
    assert len(got) == len(exp), f"{len(got)} rows, expected {len(exp)}"
    got = got.sort_values(keys).reset_index(drop=True)
    exp = exp.sort_values(keys).reset_index(drop=True)
    for c in exp.columns:
        g, e = got[c], exp[c]
        if c in LIST_COLUMNS:
            bad = [i for i, (a, b) in enumerate(zip(g, e)) if list(a) != list(b)]
        elif e.dtype.kind == "f" or g.dtype.kind == "f":
            a, b = g.to_numpy(np.float64), e.to_numpy(np.float64)
            ok = np.isclose(a, b, rtol=1e-9, atol=1e-9) | (np.isnan(a) & np.isnan(b))
            bad = np.flatnonzero(~ok).tolist()
        else:
            bad = np.flatnonzero(g.to_numpy() != e.to_numpy()).tolist()
        assert not bad, f"column {c}: {len(bad)} mismatches, first rows {[(g[i], e[i]) for i in bad[:3]]}"

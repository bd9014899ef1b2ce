"""Small training data for model and registry tests, built with the features' own pure functions
(no Ray): point-in-time samples, the per-user split and a FeatureSpec fitted on train."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

import reference as ref
from rayrec.features.pointintime import attach_movie_attributes, item_pass, user_pass
from rayrec.features.spec import FeatureSpec, SpecPartial


@dataclass
class Small:
    ratings: pd.DataFrame
    movies: pd.DataFrame
    train: pd.DataFrame
    test: pd.DataFrame
    spec: FeatureSpec
    users: pd.DataFrame  # latest user rows (as the online store holds them)
    items: pd.DataFrame  # latest item rows, the whole catalog


def small(n_users: int = 30, n_items: int = 40, n: int = 700, seed: int = 3) -> Small:
    """Random ratings (no taste in them): the corner cases of the point-in-time logic."""
    ratings, movies = ref.random_dataset(n_users=n_users, n_items=n_items, n=n, seed=seed, ts_span=400)
    return build(ratings, movies)


def learnable(folder, n_users: int = 300, n_items: int = 200, n: int = 12_000, seed: int = 5) -> Small:
    """Ratings of the synthetic generator (latent user and item factors, power-law popularity): data a
    model can learn from, for quality floors."""
    from rayrec.data import SyntheticConfig, generate, read_movielens

    ml = read_movielens(generate(folder, SyntheticConfig(n_users=n_users, n_items=n_items, n_ratings=n, seed=seed)))
    return build(ml.ratings, ml.movies[["movieId", "title", "year", "genres"]])


def build(ratings: pd.DataFrame, movies: pd.DataFrame) -> Small:
    """Samples, split, spec and latest rows of ``ratings``, as the features job computes them."""
    movies = movies.assign(year=movies["year"].astype("float64"))
    by_item = item_pass(ratings, movies, sentinels=True)
    items = by_item[by_item["sentinel"]]
    rows = by_item[~by_item["sentinel"]].drop(columns=["sentinel"])
    by_user = user_pass(rows, movies, sentinels=True)
    users = by_user[by_user["sentinel"]].reset_index(drop=True)
    samples = by_user[~by_user["sentinel"].to_numpy()].reset_index(drop=True)
    train = samples[samples["split"] == "train"].reset_index(drop=True)
    test = samples[samples["split"] == "test"].reset_index(drop=True)
    spec = FeatureSpec.fit(SpecPartial.of(train), label_threshold=3.5)
    cat = pd.DataFrame({"movieId": movies["movieId"].to_numpy(np.int64)})
    cat = cat.join(items.set_index("movieId")[["item_rating_count", "item_rating_mean", "item_rating_std"]], on="movieId")
    cat["item_rating_count"] = cat["item_rating_count"].fillna(0).astype(np.int64)
    cat = attach_movie_attributes(cat, movies)
    return Small(ratings, movies, train, test, spec, users, cat)


def write_version(data: Small, artifacts: str, version: str = "20000101T000000-test00") -> str:
    """Write ``data`` as a features version (the features job's layout: samples, spec, catalog and
    latest online rows) under ``artifacts`` and make it LATEST. The features job itself takes a minute
    of Ray Data start-up even on tiny data; training tests only need its output."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rayrec import uri
    from rayrec.features.pipeline import SAMPLE_COLUMNS
    from rayrec.features.pointintime import USER_FEATURES

    root = uri.join(artifacts, "features")
    path = uri.join(root, version)

    def write(df: pd.DataFrame, *parts: str) -> None:
        target = uri.join(path, *parts)
        uri.makedirs(target.rsplit("/", 1)[0])
        pq.write_table(pa.Table.from_pandas(df.reset_index(drop=True), preserve_index=False), target)

    for split, df in (("train", data.train), ("test", data.test)):
        write(df[list(SAMPLE_COLUMNS)], "samples", split, "part-00000.parquet")
    write(data.movies, "movies.parquet")
    users = data.users[["userId", *USER_FEATURES]].assign(last_timestamp=0)
    write(users.assign(user_genres=[list(g) for g in users["user_genres"]]), "online", "users.parquet")
    genres = data.movies.set_index("movieId")["genres"]
    items = data.items.assign(title="t", genres=[list(genres[m]) for m in data.items["movieId"]])
    write(items, "online", "items.parquet")
    data.spec.save(uri.join(path, "spec.json"))
    uri.set_latest(root, version)
    return path

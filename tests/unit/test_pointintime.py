"""Point-in-time transforms against the by-definition pandas reference, and leakage properties."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import reference as ref
from rayrec.features.pointintime import USER_FEATURES, item_pass, prior_sums, user_pass, user_totals


def run_passes(ratings: pd.DataFrame, movies: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both passes on one block holding every key (what each Ray Data block sees for its keys)."""
    a = item_pass(ratings, movies)
    b = user_pass(a[~a["sentinel"]].drop(columns=["sentinel"]), movies)
    return a, b


def test_prior_sums_excludes_ties_and_later_rows():
    keys = np.array([1, 1, 1, 1, 2, 2])
    ts = np.array([5, 5, 7, 9, 1, 1])
    vals = np.array([1, 10, 100, 1000, 3, 4])
    assert prior_sums(keys, ts, vals).tolist() == [0, 0, 11, 111, 0, 0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_samples_match_reference(seed):
    ratings, movies = ref.random_dataset(seed=seed)
    _, b = run_passes(ratings, movies)
    got = b[~b["sentinel"]]
    exp = ref.samples(ratings, movies)
    ref.assert_same_features(got, exp, ["userId", "movieId"])


def test_latest_features_match_reference():
    ratings, movies = ref.random_dataset(seed=3)
    a, b = run_passes(ratings, movies)
    users = b[b["sentinel"]][ref.latest_users(ratings, movies).columns]
    ref.assert_same_features(users, ref.latest_users(ratings, movies), ["userId"])
    rated = ref.latest_items(ratings, movies)
    rated = rated[rated["movieId"].isin(ratings["movieId"])]
    ref.assert_same_features(a[a["sentinel"]][rated.columns], rated, ["movieId"])


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_user_totals_are_the_sentinel_rows_of_the_user_pass(seed):
    """The end-of-data user state from per-user totals equals the user pass's sentinel rows and the
    reference: ties in time, movies without a year or genres, users without a positive."""
    ratings, movies = ref.random_dataset(seed=seed)
    ratings.loc[ratings["userId"] == 1, "rating"] = 1.0  # a user who liked nothing: no genres, no recent items
    a, b = run_passes(ratings, movies)
    rows = a[~a["sentinel"]].drop(columns=["sentinel"])
    got = user_totals(rows.sample(frac=1.0, random_state=seed), movies)  # any row order
    assert got.columns.tolist() == ["userId", *USER_FEATURES] and got["userId"].is_unique
    sentinels = b[b["sentinel"]][["userId", *USER_FEATURES]]
    ref.assert_same_features(got, sentinels, ["userId"])
    exp = ref.latest_users(ratings, movies)
    ref.assert_same_features(got[exp.columns], exp, ["userId"])
    assert len(got.loc[got["userId"] == 1, "user_recent_items"].iloc[0]) == 0
    assert user_totals(rows.iloc[:0], movies).columns.tolist() == ["userId", *USER_FEATURES]


def test_real_movielens_subset_matches_reference(movielens):
    r = movielens.ratings
    r = r[r["userId"] <= 15].reset_index(drop=True)
    _, b = run_passes(r, movielens.movies)
    ref.assert_same_features(b[~b["sentinel"]], ref.samples(r, movielens.movies), ["userId", "movieId"])


def test_split_is_per_user_last_fraction_by_time():
    ratings, movies = ref.random_dataset(n_users=8, n_items=60, n=200, seed=4, ts_span=10_000)
    _, b = run_passes(ratings, movies)
    s = b[~b["sentinel"]]
    for _, g in s.groupby("userId"):
        g = g.sort_values(["timestamp", "movieId"])
        n_test = int(np.floor(len(g) * 0.2 + 1e-9)) if len(g) >= 5 else 0
        assert (g["split"].iloc[len(g) - n_test :] == "test").all()
        assert (g["split"].iloc[: len(g) - n_test] == "train").all()
        if n_test:
            assert g.loc[g.split == "train", "timestamp"].max() <= g.loc[g.split == "test", "timestamp"].min()


FEATURES = [
    "user_rating_count", "user_rating_mean", "user_rating_std", "user_year_mean", "user_year_std",
    "user_genres", "user_recent_items", "item_rating_count", "item_rating_mean", "item_rating_std",
]  # fmt: skip


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), pick=st.integers(0, 10_000), shift=st.integers(1, 5))
def test_no_feature_uses_its_own_or_a_later_rating(seed, pick, shift):
    """Rewrite every rating at or after one sample's time (values changed, new later ratings added):
    that sample's features must not move. Its own rating is among those rewritten."""
    ratings, movies = ref.random_dataset(n=120, seed=seed, ts_span=30)
    _, before = run_passes(ratings, movies)
    before = before[~before["sentinel"]].set_index(["userId", "movieId"])
    u, m, _, t = ratings.iloc[pick % len(ratings)][["userId", "movieId", "rating", "timestamp"]]
    later = ratings["timestamp"] >= t
    changed = ratings.copy()
    changed.loc[later, "rating"] = (((changed.loc[later, "rating"] * 2 + shift) % 10) + 1) / 2
    extra = pd.DataFrame(
        {"userId": [int(u)] * 2, "movieId": [9990, 9991], "rating": [5.0, 0.5], "timestamp": [int(t), int(t) + 1]}
    ).astype(ratings.dtypes.to_dict())
    _, after = run_passes(pd.concat([changed, extra], ignore_index=True), movies)
    after = after[~after["sentinel"]].set_index(["userId", "movieId"])
    key = (int(u), int(m))
    for f in FEATURES:
        a, b = before.loc[key, f], after.loc[key, f]
        if isinstance(a, (list, np.ndarray)):
            assert list(a) == list(b), f
        else:
            assert (pd.isna(a) and pd.isna(b)) or a == b, f


def test_earlier_rating_does_change_features():
    """The converse, so the property above cannot pass vacuously: an earlier rating is seen."""
    ratings, movies = ref.random_dataset(n=120, seed=5, ts_span=30)
    _, b = run_passes(ratings, movies)
    s = b[~b["sentinel"]]
    row = s[s["user_rating_count"] > 0].iloc[0]
    extra = pd.DataFrame(
        {"userId": [row.userId], "movieId": [9990], "rating": [5.0], "timestamp": [int(row.timestamp) - 1]}
    ).astype(ratings.dtypes.to_dict())
    _, b2 = run_passes(pd.concat([ratings, extra], ignore_index=True), movies)
    s2 = b2[~b2["sentinel"]].set_index(["userId", "movieId"])
    assert s2.loc[(row.userId, row.movieId), "user_rating_count"] == row.user_rating_count + 1


def test_pass_output_round_trips_through_parquet(tmp_path):
    ratings, movies = ref.random_dataset(seed=6)
    _, b = run_passes(ratings, movies)
    b = b[~b["sentinel"]].reset_index(drop=True)
    b.to_parquet(tmp_path / "b.parquet")
    back = pd.read_parquet(tmp_path / "b.parquet")
    for col in ("user_genres", "user_recent_items", "item_genres"):
        assert [list(v) for v in back[col]] == [list(v) for v in b[col]]

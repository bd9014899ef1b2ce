"""The ranker's ``ease_score`` input: point in time and cross-fitted in training, the same sums at
serving, and a ranker that takes it refuses to score without it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from rayrec.models import Ranker, RankerConfig
from rayrec.models.inference import RankerScorer
from rayrec.models.inputs import encode_pairs, to_tensors
from rayrec.retrieval.ease import fit_item_weights
from rayrec.training.ease_feature import EaseFeature
from train_data import small


def _ratings(n_users: int = 40, n_items: int = 30, seed: int = 2) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(1, n_users + 1):
        items = rng.choice(n_items, size=rng.integers(5, 15), replace=False) + 1
        for j, m in enumerate(items):
            rows.append((u, int(m), 4.0, 100 * j + u))
    return pd.DataFrame(rows, columns=["userId", "movieId", "rating", "timestamp"])


def test_a_rows_score_sums_the_weights_from_the_users_earlier_ratings_fit_without_the_user():
    r = _ratings()
    feature = EaseFeature(r, lam=5.0, top_k=29, folds=3)
    rng = np.random.default_rng(0)
    rows = r.sample(60, random_state=0).assign(movieId=rng.integers(1, 31, 60))  # rated and unrated movies
    got = feature.score(rows)
    fold_of = dict(zip(feature.users.tolist(), feature.fold_of.tolist()))
    user_fold = r["userId"].map(fold_of).to_numpy()
    for f in range(3):
        weights = fit_item_weights(r[user_fold != f][["userId", "movieId"]], 5.0, top_k=29)
        for i, (u, m, t) in enumerate(zip(rows["userId"], rows["movieId"], rows["timestamp"])):
            if fold_of[u] != f:
                continue
            mine = r[r["userId"] == u]
            before = mine[mine["timestamp"] < t]["movieId"].to_numpy()  # strictly earlier: never the row itself
            assert got[i] == pytest.approx(float(weights.score_of(before, np.array([m]))[0]), abs=1e-5)
    assert np.any(got != 0)
    # what the user would be offered at a time: the best-scored movies unrated before it
    u, t = int(rows["userId"].iloc[0]), int(r["timestamp"].max()) // 2
    src, top = feature.top_unrated(np.array([u, 999]), np.array([t, t]), 5)
    assert (src == 0).all()  # nothing for an unknown user
    rated = set(r[(r["userId"] == u) & (r["timestamp"] < t)]["movieId"])
    others = np.array(sorted(set(range(1, 31)) - rated))
    every = feature.score(pd.DataFrame({"userId": u, "movieId": others, "timestamp": t}))
    best = sorted(zip(-every, others))[:5]
    assert set(top.tolist()) == {int(m) for s, m in best if s != 0} and not set(top.tolist()) & rated
    # unknown users and movies score 0
    assert feature.score(pd.DataFrame({"userId": [999, 1], "movieId": [1, 999], "timestamp": [10**9, 10**9]})).tolist() == [0, 0]


def test_a_users_own_ratings_do_not_move_their_scores():
    """Cross-fitting: the weights that score a user's rows never saw the user's ratings, so a rating
    added after every row's time (no history change) leaves the user's scores exactly as they were."""
    r = _ratings()
    u = 7
    rows = r[r["userId"] == u]
    unrated = sorted(set(range(1, 31)) - set(rows["movieId"]))[0]
    later = pd.DataFrame({"userId": [u], "movieId": [unrated], "rating": [5.0], "timestamp": [10**9]})
    before = EaseFeature(r, lam=5.0, top_k=29, folds=3).score(rows)
    after = EaseFeature(pd.concat([r, later], ignore_index=True), lam=5.0, top_k=29, folds=3).score(rows)
    np.testing.assert_array_equal(before, after)
    # a single fold would score users with weights fit on their own ratings: refused
    with pytest.raises(ValueError, match="folds"):
        EaseFeature(r, folds=1)


def test_a_ranker_with_the_input_scores_serving_requests_with_the_same_sums():
    data = small()
    torch.manual_seed(0)
    cfg = RankerConfig(hidden=(16,), ease_feature=True, ease_lambda=5.0, ease_top_k=39)
    model = Ranker(cfg, data.spec.sizes).eval()
    rows = data.train.iloc[:8]
    with pytest.raises(ValueError, match="ease_score"):
        model(to_tensors(encode_pairs(data.spec, rows)))
    weights = fit_item_weights(data.ratings[["userId", "movieId"]], 5.0, top_k=39)
    with pytest.raises(ValueError, match="EASE weights"):
        RankerScorer(model, data.spec)
    scorer = RankerScorer(model, data.spec, ease=weights)
    user_row = data.users.iloc[[0]]
    user = scorer.encode_user({c: list(user_row[c]) for c in user_row.columns})
    ids = data.items["movieId"].to_numpy()[:10]
    item_rows = [dict(zip(data.items.columns, vals)) for vals in data.items.iloc[:10].itertuples(index=False)]
    history = data.ratings[data.ratings["userId"] == user_row["userId"].iloc[0]]["movieId"].to_numpy()
    with pytest.raises(ValueError, match="histories"):
        scorer.score_many([user], [(ids.tolist(), item_rows)])
    got = scorer.score_many([user], [(ids.tolist(), item_rows)], [history])[0]
    ease = weights.score_of(history, ids)
    assert np.any(ease != 0)
    want = scorer.score(user_row, data.items.iloc[:10].assign(ease_score=ease))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    moved = scorer.score(user_row, data.items.iloc[:10].assign(ease_score=ease + 1.0))
    assert not np.allclose(moved, want)  # the input reaches the score


def test_candidate_rows_are_what_ease_offered_at_the_users_future_labelled_by_what_they_rated():
    from rayrec.training.jobs import RankerSources, candidate_rows
    from rayrec.training.negatives import NegativeSampler

    data = small(n_users=20, n_items=40, n=500)
    ratings = pd.concat([data.train, data.test])[["userId", "movieId", "rating", "timestamp"]]
    sources = RankerSources(NegativeSampler(ratings, data.movies), EaseFeature(ratings, lam=5.0, top_k=39, folds=2))
    rows = data.train
    out = candidate_rows(rows, sources, 10, 0.25)
    assert len(out) and 0 < out["interact"].mean() < 1
    for u, got in out.groupby("userId"):
        mine = rows[rows["userId"] == u].sort_values("timestamp", kind="stable")
        ahead = min(max(int(np.ceil(len(mine) * 0.25)), 1), len(mine) - 1)
        anchor = mine.iloc[len(mine) - ahead]
        future = mine.iloc[len(mine) - ahead :]
        assert (got["timestamp"] == anchor["timestamp"]).all()
        assert (got["user_rating_count"] == anchor["user_rating_count"]).all()  # the user as of T
        before = set(ratings[(ratings["userId"] == u) & (ratings["timestamp"] < anchor["timestamp"])]["movieId"])
        assert not set(got["movieId"]) & before  # never a movie rated before T
        assert len(got) <= 10 and got["movieId"].is_unique
        want = sources.ease.top_unrated(np.array([u]), np.array([anchor["timestamp"]]), 10)[1]
        assert got["movieId"].tolist() == want.tolist()
        taken = dict(zip(future["movieId"], future["label"]))
        for m, interact, label in zip(got["movieId"], got["interact"], got["label"]):
            assert interact == (1.0 if m in taken else 0.0)
            assert label == taken.get(m, 0)
        np.testing.assert_allclose(got["ease_score"], sources.ease.score(got), rtol=1e-6)
    stats = sources.negatives.timeline.stats(out["movieId"].to_numpy(), out["timestamp"].to_numpy())
    assert (out["item_rating_count"].to_numpy() == stats[0]).all()  # each movie as of T

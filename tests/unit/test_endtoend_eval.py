"""The pieces of the end-to-end evaluation: list metrics against a per-user reference, the protocols'
splits, the baselines (EASE's Woodbury form against the direct inverse), and sampled negatives."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rayrec.evaluation.baselines import Interactions, ease_scores, item_knn, most_popular, top_unseen, tune_ease
from rayrec.evaluation.protocols import split_ratings
from rayrec.evaluation.topn import Relevance, list_metrics, pack_lists
from rayrec.training.negatives import ItemTimeline, add_negatives


def _reference(lists: list[list[int]], relevant: list[set[int]], k: int) -> dict[str, float]:
    """Per-user loop, the textbook definitions."""
    ndcg = prec = rec = ap = hit = 0.0
    for items, rel in zip(lists, relevant):
        top = items[:k]
        gains = [1.0 if m in rel else 0.0 for m in top]
        dcg = sum(g / np.log2(i + 2) for i, g in enumerate(gains))
        idcg = sum(1 / np.log2(i + 2) for i in range(min(len(rel), k)))
        ndcg += dcg / idcg
        prec += sum(gains) / k
        rec += sum(gains) / len(rel)
        found, s = 0, 0.0
        for i, g in enumerate(gains):
            if g:
                found += 1
                s += found / (i + 1)
        ap += s / min(len(rel), k)
        hit += float(any(gains))
    n = len(lists)
    return {"ndcg": ndcg / n, "precision": prec / n, "recall": rec / n, "map": ap / n, "hitrate": hit / n}


def test_list_metrics_match_the_per_user_definitions():
    rng = np.random.default_rng(0)
    users = np.arange(100, 140)
    rel_sets = [set(rng.choice(50, size=rng.integers(1, 8), replace=False).tolist()) for _ in users]
    lists = [rng.permutation(50)[: rng.integers(3, 10)].tolist() for _ in users]  # some shorter than k
    ru = np.concatenate([[u] * len(s) for u, s in zip(users, rel_sets)])
    ri = np.concatenate([sorted(s) for s in rel_sets])
    rel = Relevance.of(users, ru, ri)
    assert rel.user_ids.tolist() == users.tolist()
    got = list_metrics(pack_lists(lists, 10), rel, ks=(10,), catalog_size=50)
    want = _reference(lists, rel_sets, 10)
    for name, value in want.items():
        assert got[f"{name}@10"] == pytest.approx(value, abs=1e-12), name
    assert got["coverage@10"] == pytest.approx(len({m for li in lists for m in li}) / 50)


def test_list_metrics_diversity_and_novelty():
    rel = Relevance.of(np.array([1, 2]), np.array([1, 2]), np.array([10, 20]))
    genres = {10: ("A",), 11: ("A",), 20: ("A",), 21: ("B",)}
    lists = np.array([[10, 11], [20, 21]])
    m = list_metrics(lists, rel, ks=(2,), catalog_size=4, genres=genres, popularity={10: 4, 11: 1, 20: 2, 21: 2}, n_train_users=4)
    assert m["diversity@2"] == pytest.approx(0.5)  # one list of identical genres (0), one of disjoint (1)
    assert m["novelty@2"] == pytest.approx(np.mean([0.0, 2.0, 1.0, 1.0]))


def _ratings(n_users: int = 30, n_items: int = 40, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(1, n_users + 1):
        items = rng.choice(n_items, size=rng.integers(6, 20), replace=False) + 1
        for j, m in enumerate(items):
            rows.append((u, int(m), float(rng.integers(1, 11)) / 2, 1000 + 10 * j + u))
    return pd.DataFrame(rows, columns=["userId", "movieId", "rating", "timestamp"])


def test_temporal_split_holds_out_each_users_latest_fifth():
    r = _ratings()
    split = split_ratings(r, "temporal")
    assert len(split.known) + len(split.heldout) == len(r)
    for u, g in r.groupby("userId"):
        held = split.heldout[split.heldout["userId"] == u]
        assert len(held) == int(np.floor(len(g) * 0.2))
        assert held["timestamp"].min() > split.known[split.known["userId"] == u]["timestamp"].max()
    assert (split.relevant.merge(split.heldout, on=["userId", "movieId"])["rating"] >= 3.5).all()


def test_random_split_is_seeded_and_counts_every_heldout_item_relevant():
    r = _ratings()
    a, b = split_ratings(r, "random"), split_ratings(r, "random")
    pd.testing.assert_frame_equal(a.heldout, b.heldout)
    assert len(a.relevant) == len(a.heldout)
    with pytest.raises(ValueError, match="unknown protocol"):
        split_ratings(r, "leave-one-out")


def test_ease_woodbury_equals_the_direct_inverse():
    r = _ratings(n_users=20, n_items=40)  # fewer users than items: the Woodbury side
    x = Interactions.of(r)
    lam = 7.0
    p = np.linalg.inv(x.matrix.T.astype(np.float64) @ x.matrix + lam * np.eye(x.matrix.shape[1]))
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    got = ease_scores(x, lam)(x.matrix)
    want = x.matrix @ b
    unseen = x.matrix == 0
    np.testing.assert_allclose(got[unseen], want[unseen], atol=1e-9)


def test_baselines_rank_unseen_items_only_and_ease_tuning_picks_the_best_lambda():
    r = _ratings()
    x = Interactions.of(r)
    seen = x.matrix > 0
    for scorer in (most_popular(x), item_knn(x, 10), ease_scores(x, 10.0)):
        top = top_unseen(scorer(x.matrix), seen, x.items, 5)
        for row, u in enumerate(x.users.tolist()):
            assert not set(top[row].tolist()) & set(r[r["userId"] == u]["movieId"].tolist())
    split = split_ratings(r, "random")
    rel = split.relevant
    best, grid = tune_ease(split.known, rel["userId"].to_numpy(), rel["movieId"].to_numpy(), lambdas=(1, 10, 100))
    assert grid[best] == max(grid.values())


def test_negatives_are_unrated_catalog_movies_with_point_in_time_statistics():
    r = _ratings()
    movies = pd.DataFrame({"movieId": np.arange(1, 41), "year": 2000, "genres": [["Drama"]] * 40})
    rows = r.assign(label=(r["rating"] >= 3.5).astype(np.int8), user_rating_count=0)
    out = add_negatives(rows, r, movies, 3, seed=1)
    neg = out[out["interact"] == 0]
    assert len(out[out["interact"] == 1]) == len(rows)
    assert len(neg) > 2 * len(rows)
    rated = set(zip(r["userId"], r["movieId"]))
    assert not any((u, m) in rated for u, m in zip(neg["userId"], neg["movieId"]))
    assert (neg["label"] == 0).all()
    assert (neg["item_rating_count"] > 0).all()  # only movies already rated by someone at t
    for _, row in neg.sample(50, random_state=0).iterrows():  # each statistic from ratings strictly before t
        before = r[(r["movieId"] == row["movieId"]) & (r["timestamp"] < row["timestamp"])]["rating"]
        assert row["item_rating_count"] == len(before)
        assert row["item_rating_mean"] == pytest.approx(before.mean())
    timeline = ItemTimeline(r)
    c, _, _ = timeline.stats(np.array([999]), np.array([10**9]))
    assert c.tolist() == [0]  # an unknown movie has no history
    rng = np.random.default_rng(0)
    movies_q, ts_q = rng.integers(1, 45, 500), rng.integers(r["timestamp"].min() - 5, r["timestamp"].max() + 5, 500)
    assert (timeline.count_before(movies_q, ts_q) == timeline.stats(movies_q, ts_q)[0]).all()


@pytest.mark.parametrize("n_users", [20, 60])  # Woodbury (fewer users than items) and the direct inverse
def test_ease_recall_path_ranks_as_dense_ease(n_users):
    from rayrec.retrieval.ease import EaseRecall, fit_item_weights
    from rayrec.retrieval.state import UserState

    r = _ratings(n_users=n_users, n_items=40, seed=4)
    x = Interactions.of(r)
    lam = 5.0
    weights = fit_item_weights(r, lam, top_k=len(x.items) - 1)  # no sparsification: exact EASE
    dense = ease_scores(x, lam)(x.matrix)
    for row, u in enumerate(x.users.tolist()[:10]):
        seen = frozenset(r[r["userId"] == u]["movieId"].tolist())
        got = EaseRecall(weights).recall(UserState(user_id=u, seen=seen), 5)
        want = top_unseen(dense[row : row + 1], x.matrix[row : row + 1] > 0, x.items, 5)[0]
        assert got.movie_ids.tolist() == want.tolist()
        assert not set(got.movie_ids.tolist()) & seen
    sparse = fit_item_weights(r, lam, top_k=3)  # sparsified: 3 weights an item on average
    assert len(sparse.targets) == 3 * len(x.items) and sparse.indptr[-1] == len(sparse.targets)
    sources, targets, _ = sparse.pairs()
    assert (sources != targets).all()  # never an item for itself
    # a history's scores are the kept weights summed per target, row by row (an unknown item adds nothing)
    history = np.asarray([*x.items[[0, 3, 7, 11]].tolist(), 10_000], dtype=np.int64)
    want_sum: dict[int, float] = {}
    for m in history[:-1].tolist():
        row = int(np.searchsorted(sparse.items, m))
        a, b = int(sparse.indptr[row]), int(sparse.indptr[row + 1])
        for t, w in zip(sparse.targets[a:b].tolist(), sparse.weights[a:b].tolist()):
            want_sum[t] = want_sum.get(t, 0.0) + w
    rows, scores = sparse.scores(history)
    assert rows.tolist() == sorted(want_sum)
    np.testing.assert_allclose(scores, [want_sum[t] for t in sorted(want_sum)], rtol=1e-6)
    # ``unseen``: the same, less the history's own items (reached here: every item points to every other)
    rows_all, scores_all = weights.scores(history)
    own = set(np.searchsorted(weights.items, history[:-1]).tolist())
    assert own <= set(rows_all.tolist())
    rows_unseen, scores_unseen = weights.scores(history, unseen=True)
    keep = np.array([t not in own for t in rows_all.tolist()])
    assert rows_unseen.tolist() == rows_all[keep].tolist()
    np.testing.assert_array_equal(scores_unseen, scores_all[keep])
    # the kept sums are shared: a later call without ``unseen`` still sees the history's items
    assert weights.scores(history)[0].tolist() == rows_all.tolist()


def test_ease_sums_skip_missing_targets_and_keep_zero_weights():
    from rayrec.retrieval.ease import ItemWeights

    # item 10 points to 20 (0.5) and 30 (0.0: reached, sums to 0); 20 to 10 and nothing else (-1); 30 to nothing
    w = ItemWeights.from_rows(np.array([10, 20, 30], dtype=np.int64), np.array([[1, 2], [0, -1], [-1, -1]], dtype=np.int32),
                              np.array([[0.5, 0.0], [0.25, 9.0], [7.0, 7.0]], dtype=np.float32), 1.0)  # fmt: skip
    assert w.indptr.tolist() == [0, 2, 3, 3] and w.targets.tolist() == [1, 2, 0]
    rows, scores = w.scores(np.array([10, 20, 30, 99], dtype=np.int64))
    assert rows.tolist() == [0, 1, 2] and scores.tolist() == [0.25, 0.5, 0.0], "a -1 target adds nothing, a 0 weight still reaches"
    rows, scores = w.scores(np.array([30], dtype=np.int64))
    assert rows.tolist() == [] and scores.tolist() == []
    assert w.score_of(np.array([10, 20]), np.array([30, 10, 20, 99])).tolist() == [0.0, 0.25, 0.5, 0.0]


def test_ease_sums_of_a_recent_history_are_reused_and_pickling_leaves_them_behind():
    import pickle

    from rayrec.retrieval.ease import RECENT_SUMS, fit_item_weights

    w = fit_item_weights(_ratings(), 10.0, top_k=4)
    a, b = w.items[[0, 3, 7]], w.items[[1, 2]]
    first = w.score_of(a, w.items)
    assert w.score_of(a, w.items).tolist() == first.tolist() and len(w._recent) == 1  # the same history: one sum
    other = w.score_of(b, w.items)
    assert other.tolist() != first.tolist() and len(w._recent) == 2
    for i in range(RECENT_SUMS + 2):  # the oldest sums make room
        w.scores(w.items[[i]])
    assert len(w._recent) == RECENT_SUMS and a.tobytes() not in w._recent
    assert w.score_of(a, w.items).tolist() == first.tolist()  # summed again, the same
    back = pickle.loads(pickle.dumps(w))
    assert back._recent == {} and back.score_of(b, w.items).tolist() == other.tolist()
    np.testing.assert_array_equal(back.targets, w.targets)


def test_ease_weights_round_trip(tmp_path):
    from rayrec.retrieval.ease import ItemWeights, fit_item_weights

    w = fit_item_weights(_ratings(), 10.0, top_k=4)
    w.save(str(tmp_path / "ease.npz"))
    back = ItemWeights.load(str(tmp_path / "ease.npz"))
    assert back.lam == 10.0 and np.array_equal(back.items, w.items) and np.array_equal(back.targets, w.targets)
    np.testing.assert_array_equal(back.indptr, w.indptr)
    np.testing.assert_array_equal(back.weights, w.weights)
    # a file of padded rows (-1: no target), as earlier versions wrote them, loads as the same weights
    sources, targets, values = w.pairs()
    width = int(np.diff(w.indptr).max())
    padded_t = np.full((len(w.items), width), -1, dtype=np.int32)
    padded_w = np.zeros((len(w.items), width), dtype=np.float32)
    at = np.arange(len(targets)) - w.indptr[sources]
    padded_t[sources, at], padded_w[sources, at] = targets, values
    np.savez_compressed(tmp_path / "old.npz", items=w.items, targets=padded_t, weights=padded_w, lam=np.float64(10.0))
    old = ItemWeights.load(str(tmp_path / "old.npz"))
    assert np.array_equal(old.indptr, w.indptr) and np.array_equal(old.targets, w.targets)
    np.testing.assert_array_equal(old.weights, w.weights)


@pytest.mark.parametrize("top_k", [2, 5])
def test_ease_weights_kept_are_the_strongest_over_all_items_capped_per_item(top_k):
    """The kept weights are the exact model's, the top_k × items strongest by absolute value over
    every item, except that no item keeps more than 4 × top_k: a weight is dropped only for being weaker
    than every kept one, or for coming from an item that already keeps its 4 × top_k strongest."""
    from rayrec.retrieval.ease import fit_item_weights

    r = _ratings(n_users=25, n_items=40, seed=7)
    x = Interactions.of(r)
    lam = 5.0
    n = len(x.items)
    dense = ease_scores(x, lam)(np.eye(n, dtype=np.float32))  # row i: B[i, :] (the diagonal aside)
    np.fill_diagonal(dense, 0.0)
    w = fit_item_weights(r, lam, top_k=top_k)
    sources, targets, values = w.pairs()
    assert len(values) == top_k * n
    np.testing.assert_allclose(values, dense[sources, targets], rtol=1e-4, atol=1e-6)
    per_item = np.diff(w.indptr)
    assert per_item.max() <= 4 * top_k and per_item.min() < top_k < per_item.max()  # ragged, not top_k each
    kept = np.zeros((n, n), dtype=bool)
    kept[sources, targets] = True
    weakest = np.abs(values).min()
    off = ~np.eye(n, dtype=bool)
    dropped = off & ~kept
    full = per_item == 4 * top_k
    assert (np.abs(dense[dropped & ~full[:, None]]) <= weakest + 1e-6).all()
    for i in np.flatnonzero(full):  # a capped item keeps its own strongest
        assert np.abs(dense[i, dropped[i]]).max() <= np.abs(dense[i, kept[i]]).min() + 1e-6
    assert all((np.diff(targets[a:b]) > 0).all() for a, b in zip(w.indptr[:-1], w.indptr[1:]))  # targets ascending


def test_ease_path_lambda_is_tuned_on_the_named_protocols_split(tmp_path):
    """The index job tunes the ease path's λ on a split of the features' ratings by the protocol it is
    told, with that protocol's relevance (what the evaluation's EASE baseline is tuned on), and fits
    the served weights on every rating; an unknown split is refused, naming the setting."""
    from rayrec.retrieval.build import IndexConfig, ease_weights
    from rayrec.retrieval.ease import fit_item_weights

    rng = np.random.default_rng(3)
    r = _ratings()
    r = r.assign(rating=rng.choice([1.0, 2.5, 4.0, 5.0], size=len(r)), timestamp=rng.permutation(len(r)).astype(np.int64))
    features = tmp_path / "features"
    (features / "ratings").mkdir(parents=True)
    r.to_parquet(features / "ratings" / "part-00000.parquet")
    lambdas = (1.0, 10.0, 100.0, 1000.0)
    grids = []
    for protocol in ("random", "temporal"):
        weights, tuning = ease_weights(str(features), IndexConfig(artifacts=str(tmp_path), ease_lambdas=lambdas, ease_top_k=4, ease_validation=protocol))
        split = split_ratings(r, protocol)
        rel = split.relevant
        best, grid = tune_ease(split.known, rel["userId"].to_numpy(), rel["movieId"].to_numpy(), lambdas=lambdas)
        assert tuning["validation"] == protocol and tuning["lambda"] == best
        assert tuning["valid_ndcg@10"] == {str(k): v for k, v in grid.items()}
        grids.append(grid)
        want = fit_item_weights(r, best, top_k=4)  # served weights: every rating, not the split's known part
        np.testing.assert_array_equal(weights.targets, want.targets)
        np.testing.assert_array_equal(weights.weights, want.weights)
    assert grids[0] != grids[1]  # the split named is the one scored
    # "features": the features' own samples, fit on train, relevant = liked test rows
    r = r.assign(label=(r["rating"] >= 3.5).astype(np.int64))
    late = r["timestamp"] >= r["timestamp"].quantile(0.8)
    for part, rows in (("train", r[~late]), ("test", r[late])):
        (features / "samples" / part).mkdir(parents=True)
        rows.to_parquet(features / "samples" / part / "part-00000.parquet")
    weights, tuning = ease_weights(str(features), IndexConfig(artifacts=str(tmp_path), ease_lambdas=lambdas, ease_top_k=4))
    liked = r[late & (r["label"] == 1)]
    best, grid = tune_ease(r[~late], liked["userId"].to_numpy(), liked["movieId"].to_numpy(), lambdas=lambdas)
    assert tuning["validation"] == "features" and tuning["lambda"] == best and tuning["valid_ndcg@10"] == {str(k): v for k, v in grid.items()}
    np.testing.assert_array_equal(weights.weights, fit_item_weights(r, best, top_k=4).weights)
    with pytest.raises(ValueError, match="ease_validation"):
        IndexConfig(artifacts=str(tmp_path), ease_validation="weekly")


def test_tuned_settings_merge_into_the_serving_settings_and_given_ones_are_refused(capsys):
    """The tuner's vote and rank_weight go over the caller's serving settings without dropping any (other
    paths' votes, quotas, rerank); settings the tuner chooses may not be given with --tune."""
    from pipelines.evaluate import main
    from rayrec.evaluation.endtoend import _with_vote, tuned_in
    from rayrec.serving.bundle import ServingConfig

    given = {"candidates": 120, "rerank": {"diversity": 0.2}, "recall": {"quotas": {"ease": 60, "embedding": 60}, "weights": {"embedding": 2.0}}}
    got = ServingConfig.model_validate(_with_vote(given, 16.0, 0.5))
    assert got.rank_weight == 0.5 and got.candidates == 120 and got.rerank.diversity == 0.2
    assert got.recall.weights == {"embedding": 2.0, "ease": 16.0} and got.recall.quotas == {"ease": 60, "embedding": 60}
    assert tuned_in(given) == []
    assert tuned_in({"rank_weight": 0.3, "recall": {"weights": {"ease": 2}}}) == ["rank_weight", "recall.weights.ease"]
    for serving in ('{"rank_weight": 0.3}', '{"recall": {"weights": {"ease": 2}}}'):
        with pytest.raises(SystemExit) as e:
            main(["--tune", "--serving", serving, "--dataset", "synthetic"])
        assert e.value.code == 2
        assert "--tune chooses" in capsys.readouterr().err

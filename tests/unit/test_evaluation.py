"""Metrics against references: scikit-learn for the classification metrics, a per-user brute force
for the retrieval metrics and the task construction."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from rayrec.evaluation import (
    accuracy,
    build_task,
    classification_metrics,
    evaluate,
    logloss,
    popularity_scores,
    pr_auc,
    roc_auc,
    top_k,
)

sk = pytest.importorskip("sklearn.metrics")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 500)
    p = np.round(np.clip(0.3 * y + rng.random(500) * 0.7, 0, 1), 2)  # rounded: many ties
    assert roc_auc(y, p) == pytest.approx(sk.roc_auc_score(y, p), abs=1e-12)
    assert pr_auc(y, p) == pytest.approx(sk.average_precision_score(y, p), abs=1e-12)
    assert logloss(y, p) == pytest.approx(sk.log_loss(y, np.clip(p, 1e-7, 1 - 1e-7)), abs=1e-9)
    assert accuracy(y, p) == pytest.approx(sk.accuracy_score(y, p >= 0.5))
    m = classification_metrics(y, p)
    assert m["rows"] == 500 and m["positive_rate"] == pytest.approx(y.mean())


def test_auc_edge_cases():
    assert math.isnan(roc_auc([1, 1], [0.2, 0.4]))
    assert roc_auc([0, 1], [0.1, 0.9]) == 1.0
    assert roc_auc([0, 1], [0.5, 0.5]) == 0.5
    with pytest.raises(ValueError, match="differ in length"):
        roc_auc([0, 1], [0.5])


def _ratings(rng, n_users, n_items, n):
    pairs = {(int(rng.integers(1, n_users + 1)), int(rng.integers(1, n_items + 1))) for _ in range(n)}
    df = pd.DataFrame(sorted(pairs), columns=["userId", "movieId"])
    df["rating"] = rng.integers(1, 11, len(df)) / 2
    return df


def _reference(history, heldout, catalog, scores_by_user, k_list, threshold):
    """Per user: drop seen items, rank the rest, compare with the relevant held-out items."""
    out = {f"recall@{k}": [] for k in k_list} | {"ndcg@10": [], "hitrate@10": []}
    covered = {k: set() for k in k_list}
    for u, g in heldout.groupby("userId"):
        seen = set(history.loc[history["userId"] == u, "movieId"])
        rel = set(g.loc[g["rating"] >= threshold, "movieId"]) - seen
        rel &= set(catalog)
        if not rel:
            continue
        s = scores_by_user(u)
        cand = sorted((m for m in catalog if m not in seen), key=lambda m: (-s[m], list(catalog).index(m)))
        for k in k_list:
            out[f"recall@{k}"].append(len(rel & set(cand[:k])) / len(rel))
            covered[k] |= set(cand[:k])
        dcg = sum(1 / math.log2(i + 2) for i, m in enumerate(cand[:10]) if m in rel)
        idcg = sum(1 / math.log2(i + 2) for i in range(min(len(rel), 10)))
        out["ndcg@10"].append(dcg / idcg)
        out["hitrate@10"].append(float(any(m in rel for m in cand[:10])))
    res = {k: float(np.mean(v)) for k, v in out.items()}
    res.update({f"coverage@{k}": len(covered[k]) / len(catalog) for k in k_list})
    res["users"] = float(len(out["ndcg@10"]))
    return res


@pytest.mark.parametrize("seed", [0, 1])
def test_retrieval_metrics_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    history = _ratings(rng, 25, 60, 500)
    heldout = _ratings(rng, 25, 70, 200)  # some held-out movies are not in the catalog
    heldout = heldout.merge(history[["userId", "movieId"]], how="left", indicator=True)
    heldout = heldout[heldout["_merge"] == "left_only"].drop(columns="_merge")
    catalog = np.arange(1, 61) * 1  # movieIds 1..60
    item_vec = rng.normal(size=(61, 4))
    user_vec = rng.normal(size=(26, 4))
    task = build_task(history, heldout, catalog, threshold=3.5)
    scorer = lambda pos: user_vec[task.user_ids[pos]] @ item_vec[catalog].T  # noqa: E731
    got = evaluate(task, scorer, ks=(5, 20), ndcg_k=10, hit_k=10, batch_users=7)
    exp = _reference(history, heldout, catalog, lambda u: {m: user_vec[u] @ item_vec[m] for m in catalog}, (5, 20), 3.5)
    for key, value in exp.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key


@pytest.mark.parametrize("seed, n_items", [(0, 400), (1, 400), (2, 30)])
def test_scores_every_user_shares_give_the_lists_of_scoring_the_whole_catalog(seed, n_items, monkeypatch):
    """A popularity baseline's scores are one array for every user: its lists come from the first
    items of one order of the catalog (ties by position, seen items masked), and every metric is the
    one of scoring the whole catalog for each user; a catalog too small for the shortcut is scored whole."""
    from rayrec.evaluation import retrieval

    rng = np.random.default_rng(seed)
    history = _ratings(rng, 40, n_items, 40 * n_items // (12 if n_items > 100 else 2))  # small: users saw half of it
    heldout = _ratings(rng, 40, n_items, 600)
    heldout = heldout.merge(history[["userId", "movieId"]], how="left", indicator=True)
    heldout = heldout[heldout["_merge"] == "left_only"].drop(columns="_merge")
    catalog = np.arange(1, n_items + 1)
    pop = rng.integers(0, 6, size=n_items).astype(np.float32)  # few values: ties everywhere
    task = build_task(history, heldout, catalog, threshold=3.5)
    widths: list[int] = []
    real_top_k = retrieval.top_k
    monkeypatch.setattr(retrieval, "top_k", lambda scores, k: widths.append(scores.shape[1]) or real_top_k(scores, k))
    got = evaluate(task, pop, ks=(5, 20), batch_users=9)
    shortcut = widths[:]
    whole = evaluate(task, lambda pos: np.broadcast_to(pop, (len(pos), n_items)), ks=(5, 20), batch_users=9)
    assert got == whole
    exp = _reference(history, heldout, catalog, lambda u: dict(zip(catalog.tolist(), pop.tolist())), (5, 20), 3.5)
    for key, value in exp.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key
    if n_items > 100:  # the shortcut's columns: the order's first kmax + (the most a batch's user saw)
        assert max(shortcut) < n_items and len(shortcut) == -(-task.n_users // 9)
    else:
        assert set(shortcut) == {n_items}
    with pytest.raises(ValueError, match="shape"):
        evaluate(task, pop[:-1])


def test_task_excludes_seen_items_and_users_without_relevant_items():
    history = pd.DataFrame({"userId": [1, 1, 2], "movieId": [10, 20, 10], "rating": [4.0, 2.0, 5.0]})
    heldout = pd.DataFrame({"userId": [1, 1, 2, 3], "movieId": [30, 40, 20, 30], "rating": [4.0, 1.0, 3.0, 5.0]})
    task = build_task(history, heldout, np.array([10, 20, 30, 40]), threshold=3.5)
    assert task.user_ids.tolist() == [1, 3]  # user 2's only held-out item is not liked
    assert task.item_ids[task.relevant_of(0)].tolist() == [30]
    assert task.item_ids[task.seen_of(0)].tolist() == [10, 20]
    assert task.seen_of(1).tolist() == []
    # a seen item never reaches the top, whatever its score
    scores = np.array([[100.0, 90.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    m = evaluate(task, lambda pos: scores[pos], ks=(1,), ndcg_k=1, hit_k=1)
    # user 1: 10 and 20 are masked, so 30 ranks first (a hit); user 3: all tied, 10 ranks first (a miss)
    assert m["recall@1"] == 0.5
    assert m["users"] == 2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_task_holds_each_users_seen_and_relevant_catalog_items_by_definition(seed):
    """The task against sets built row by row: repeated ratings, movies outside the catalog, users
    only in the held-out ratings, a held-out movie the user had already rated."""
    rng = np.random.default_rng(seed)
    history = pd.concat([_ratings(rng, 30, 80, 600)] * 2)  # every pair twice
    heldout = pd.concat([_ratings(rng, 40, 90, 300), history.iloc[:20].assign(rating=5.0)])
    catalog = rng.permutation(np.arange(1, 71))  # not sorted; movies 71-90 are unknown
    task = build_task(history, heldout, catalog, threshold=3.5)
    want = {}
    for u in sorted(set(heldout["userId"])):
        seen = {m for m in history.loc[history["userId"] == u, "movieId"] if m in set(catalog)}
        liked = heldout[(heldout["userId"] == u) & (heldout["rating"] >= 3.5)]["movieId"]
        rel = {m for m in liked if m in set(catalog)} - seen
        if rel:
            want[u] = (seen, rel)
    assert task.user_ids.tolist() == sorted(want) and task.user_ids.dtype == np.int64
    for i, u in enumerate(task.user_ids):
        seen, rel = task.item_ids[task.seen_of(i)], task.item_ids[task.relevant_of(i)]
        assert set(seen) == want[u][0] and len(seen) == len(want[u][0])
        assert set(rel) == want[u][1] and len(rel) == len(want[u][1])
        assert np.all(np.diff(task.seen_of(i)) > 0) and np.all(np.diff(task.relevant_of(i)) > 0)  # sorted positions
    empty = build_task(history.iloc[:0], heldout.iloc[:0], catalog, threshold=3.5)
    assert empty.n_users == 0 and empty.seen_indptr.tolist() == [0]


def test_top_k_orders_best_first_with_stable_ties():
    s = np.array([[0.1, 0.5, 0.5, 0.9, -1.0]])
    assert top_k(s, 3).tolist() == [[3, 1, 2]]
    assert top_k(s, 10).shape == (1, 5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_top_k_equals_a_full_sort_by_score_then_position(dtype):
    """Continuous scores, scores with many ties (most straddling the k-th place), masked -inf
    columns, a row with fewer finite scores than k: each row's top k is that of a full stable sort
    (and with a NaN, the other rows')."""
    rng = np.random.default_rng(0)
    cont = rng.standard_normal((40, 300))
    tied = rng.integers(0, 6, (40, 300)).astype(float)
    tied[:, rng.integers(0, 300, 50)] = -np.inf
    tied[3, 5:] = -np.inf
    nan = cont.copy()
    nan[7, 11] = np.nan
    for name, scores in (("continuous", cont), ("tied", tied), ("nan", nan)):
        scores = scores.astype(dtype)
        for k in (1, 10, 100, 300):
            want = np.argsort(-np.nan_to_num(scores, nan=-np.inf), axis=1, kind="stable")[:, :k]
            got = top_k(scores, k)
            if name == "nan":  # numpy's partition: its own picks among ties, and NaN's place
                got, want = np.delete(got, 7, axis=0), np.delete(want, 7, axis=0)
            assert np.array_equal(got, want), (name, k)


def test_popularity_counts_training_ratings_per_catalog_item():
    history = pd.DataFrame({"userId": [1, 2, 3, 1], "movieId": [5, 5, 7, 9]})
    assert popularity_scores(history, np.array([7, 5, 8])).tolist() == [1.0, 2.0, 0.0]

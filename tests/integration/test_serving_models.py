"""The serving core with both registered models, in process: the ranker scores every candidate of a
batch of requests in one forward pass, the user tower queries the index, and the lists follow the
scores. The models are the session's tiny ones: these tests check the plumbing and properties that
hold for any model, not recommendation quality."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
import torch

from rayrec.features.spec import FeatureSpec
from rayrec.models.ranker import Ranker, RankerConfig
from rayrec.models.two_tower import TwoTower, TwoTowerConfig
from rayrec.serving import Ranked, Recalled, RecommenderService, ServingConfig, load_bundle
from rayrec.models.inference import RankerScorer, TowerEncoder
from rayrec.models.inputs import item_columns, user_columns
from rayrec.store import open_store


# rerank that keeps the order it is given
PLAIN = {"diversity": 0.0, "freshness_weight": 0.0, "popularity_weight": 0.0, "max_per_genre": None}


def service(serving_artifacts: Any, bundle: Any) -> RecommenderService:
    """The one way in to the stages (its store reads under the deadline), logging no impressions."""
    return RecommenderService(serving_artifacts.artifacts, open_store(serving_artifacts.store), bundle)


def recall(svc: RecommenderService, user: int, k: int) -> Recalled:
    return asyncio.run(svc.recall_local(user, k))


def rank(svc: RecommenderService, batch: list[Recalled]) -> list[Ranked]:
    return asyncio.run(svc.rank_batch(batch))


@pytest.fixture(scope="module")
def wired(serving_artifacts):
    torch.manual_seed(0)
    cfg = ServingConfig(fresh_weight=0.0, rank_weight=1.0, rerank=PLAIN, impressions=False)
    bundle = load_bundle(serving_artifacts.artifacts, cfg)
    assert bundle.ranker is not None and bundle.tower is not None, bundle.notes
    svc = service(serving_artifacts, bundle)
    yield svc, svc.store
    svc.close()


def test_registered_models_load_and_match_the_spec(serving_artifacts) -> None:
    from rayrec import uri
    from rayrec.models.inference import RankerScorer, load_model

    spec = FeatureSpec.load(f"{serving_artifacts.features_path}/spec.json")
    bundle = load_bundle(serving_artifacts.artifacts)
    assert bundle.versions["ranker"] == uri.latest(uri.join(serving_artifacts.artifacts, "models", "ranker"))
    assert bundle.versions["retriever"] == uri.latest(uri.join(serving_artifacts.artifacts, "models", "retriever"))
    # the serving adapter scores exactly as the registry's own scorer
    svc = service(serving_artifacts, bundle)
    store = svc.store
    r = recall(svc, 3, 10)
    ranked = rank(svc, [r])[0]
    import pandas as pd

    rows = store.get("item", r.ids.tolist())
    reference = RankerScorer(load_model(serving_artifacts.artifacts, "ranker", spec=spec), spec).score(
        pd.DataFrame([store.get("user", [3])[0]]), pd.DataFrame(rows)
    )
    # float32 MLP on different batch shapes: kernels sum in different orders (seen: 8e-5 apart);
    # any feature or encoding difference moves scores by far more than this
    np.testing.assert_allclose(ranked.scores, reference, rtol=1e-3, atol=2e-4)


def test_untrained_models_plug_in_too(serving_artifacts) -> None:
    """Any Ranker / TwoTower built from the FeatureSpec serves (no registry needed)."""
    torch.manual_seed(0)
    spec = FeatureSpec.load(f"{serving_artifacts.features_path}/spec.json")
    bundle = load_bundle(serving_artifacts.artifacts)
    bundle.ranker = RankerScorer(Ranker(RankerConfig(), spec.sizes).eval(), spec, "untrained")
    bundle.tower = TowerEncoder(TwoTower(TwoTowerConfig(id_dim=bundle.index.dim), spec.sizes).eval(), spec, "untrained")
    bundle = bundle.with_config(ServingConfig(impressions=False))
    svc = service(serving_artifacts, bundle)
    try:
        rec = asyncio.run(svc.recommend(4, 10))
    finally:
        svc.close()
    assert not rec.degraded and len(rec.items) == 10 and all(i.rank_score is not None for i in rec.items)


def test_batched_scores_equal_one_by_one(wired) -> None:
    svc, _ = wired
    batch = [recall(svc, u, 10) for u in (1, 2, 3, 987654321)]
    together = rank(svc, batch)
    for r, ranked in zip(batch, together):
        alone = rank(svc, [r])[0]
        assert ranked.scores is not None and ranked.scores.shape == (len(r.ids),)
        np.testing.assert_allclose(ranked.scores, alone.scores, rtol=1e-5, atol=1e-6)
        assert ((ranked.scores >= 0) & (ranked.scores <= 1)).all()
    assert together[0].timings["batch"] == 4.0


def test_list_follows_the_ranker(wired) -> None:
    svc, _ = wired
    rec = asyncio.run(svc.recommend(5, 10))
    assert not rec.degraded and len(rec.items) == 10
    ranks = [i.rank_score for i in rec.items]
    assert ranks == sorted(ranks, reverse=True), "with rerank weights at 0 the list is the ranker's order"
    r = recall(svc, 5, 10)
    ranked = rank(svc, [r])[0]
    unseen = [s for m, s in zip(r.ids.tolist(), ranked.scores.tolist()) if m not in r.seen]
    assert ranks[0] == pytest.approx(max(unseen), rel=1e-5)


def test_user_vector_queries_the_index(wired) -> None:
    svc, store = wired
    b = svc.bundle
    row = store.get("user", [7])[0]
    hist = b.history.user(7)
    v = b.tower.vector(user_columns(7, row, hist.liked, tuple(row["user_genres"])))
    assert v.shape == (b.index.dim,) and abs(float(np.linalg.norm(v)) - 1.0) < 1e-4
    r = recall(svc, 7, 10)
    assert "embedding" in {p for ps in r.paths for p in ps}
    # the item side of the tower encodes store rows too (used for items added live)
    rows = store.get("item", r.ids[:3].tolist())
    vecs = b.tower.items(item_columns(r.ids[:3].tolist(), rows) | {"genres": [x["genres"] for x in rows]})
    assert vecs.shape == (3, b.index.dim)


def served_order(x: np.ndarray) -> np.ndarray:
    """The order rerank (MMR at diversity 0) puts starting scores in: by their min-max scaling, ties
    by position. The scaling matters: two scores one float step apart can scale to one value."""
    x = np.asarray(x, dtype=np.float64)
    return np.argsort(-((x - x.min()) / (x.max() - x.min())), kind="stable")


def pct(x: np.ndarray) -> np.ndarray:
    """Rank among the values in [0, 1], 1 = best (ties by position), as serving mixes signals."""
    return np.argsort(np.argsort(x, kind="stable"), kind="stable") / (len(x) - 1)


def test_fresh_likes_and_live_items_mix_into_the_order(wired) -> None:
    """By definition: the list starts from the ranker's percentiles; likes posted since the batch data
    mix in, with fresh_weight, the percentile of the candidates' affinity to them (mean of the
    percentiles of genre-profile cosine and of best embedding cosine); a candidate the catalog lacks
    (added live) takes its place in the recall order instead of the ranker's."""
    from dataclasses import replace

    svc0, store = wired
    b = svc0.bundle.with_config(ServingConfig(fresh_weight=0.5, rank_weight=1.0, rerank=PLAIN, impressions=False))
    svc = RecommenderService(svc0.artifacts, store, b)
    core = svc.core
    r = recall(svc, 9, 30)
    ranked = rank(svc, [r])[0]
    cat = b.catalog
    fresh = tuple(int(m) for m in cat.movie_ids[cat.genre_matrix[:, cat.genre_names.index("Horror")] > 0][:3])
    n = len(r.ids)
    g = cat.genre_matrix[cat.rows(r.ids)].astype(float)
    profile = cat.genre_matrix[cat.rows(list(fresh))].sum(axis=0).astype(float)
    gcos = (g @ profile) / np.maximum(np.linalg.norm(g, axis=1) * np.linalg.norm(profile), 1e-12)
    found, cand = b.index.vectors(r.ids)
    emb = np.where(found, (cand @ b.index.vectors(list(fresh))[1].T).max(axis=1), -1.0)
    want = 0.5 * pct(ranked.scores) + 0.5 * pct((pct(gcos) + pct(emb)) / 2)
    got = core.rerank(replace(r, fresh=fresh, seen=frozenset()), ranked)
    assert [i.movie_id for i in got.items] == r.ids[served_order(want)][:30].tolist()
    plain = core.rerank(replace(r, seen=frozenset()), ranked)  # no fresh likes: the ranker's order
    assert [i.movie_id for i in plain.items] == r.ids[served_order(ranked.scores)][:30].tolist()
    # the ranker's last pick, made unknown to the catalog (an item added live), takes the recall
    # order's place instead: first when it is first in the recall order
    worst = int(np.argmin(ranked.scores))
    order = np.r_[worst, np.delete(np.arange(n), worst)]
    live = r.ids[order].copy()
    live[0] = int(cat.movie_ids.max()) + 1
    moved = core.rerank(replace(r, ids=live, paths=[r.paths[i] for i in order], seen=frozenset()),
                        replace(ranked, rows=[ranked.rows[i] for i in order], scores=ranked.scores[order]))  # fmt: skip
    ids = [i.movie_id for i in moved.items]
    assert live[0] in ids[:2], (live[0], ids[:5])  # from last to (tied) first


def test_served_models_run_eagerly_and_score_as_the_models_do(wired) -> None:
    """No TorchScript (deprecated): the request path's inputs, batched across requests, give the
    models' own outputs."""
    from rayrec.models.inputs import to_tensors

    svc, _ = wired
    b = svc.bundle
    assert not isinstance(b.ranker._predict, torch.jit.ScriptModule) and not isinstance(b.tower._user, torch.jit.ScriptModule)
    r = recall(svc, 5, 10)
    x = to_tensors(r.user_inputs)
    with torch.inference_mode():
        np.testing.assert_allclose(b.tower.vector_of(r.user_inputs), b.tower.model.user(x).numpy()[0], rtol=1e-5, atol=1e-6)
    ranked = rank(svc, [r])[0]
    items = b.ranker._items.encode(r.ids.tolist(), ranked.rows)
    batch = {**items, **{k: np.repeat(v, len(r.ids), axis=0) for k, v in b.ranker.encode_user(
        user_columns(r.user_id, r.user_row, r.liked, r.genres)).items()}}
    with torch.inference_mode():
        eager = b.ranker.model.predict(to_tensors(batch)).numpy()
    np.testing.assert_allclose(ranked.scores, eager, rtol=1e-5, atol=1e-6)

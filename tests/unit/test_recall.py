"""Recall paths, the merger, similar items and user states, each against a plain reference: pandas
for "as of time t", numpy brute force for the embedding paths."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from pydantic import ValidationError

import reference as ref
from rayrec import uri
from rayrec.retrieval import (
    EmbeddingRecall,
    GenreRecall,
    ItemCatalog,
    ItemIndex,
    ItemToItemRecall,
    Merger,
    NewItemRecall,
    PopularRecall,
    Popularity,
    RecallConfig,
    SimilarItems,
    UserState,
    normalize,
    read_item_embeddings,
    svd_item_embeddings,
    user_states_as_of,
    write_item_embeddings,
)
from rayrec.retrieval.offline import evaluate, split_relevance
from rayrec.retrieval.paths import PathResult, RecallPath

DAY = 86_400


@pytest.fixture(scope="module")
def world():
    """Ratings with timestamp ties, a catalog with genres (some empty, two unrated movies), unit item
    vectors for all but the last three catalog items."""
    ratings, movies = ref.random_dataset(n_users=30, n_items=60, n=900, seed=3, ts_span=50)
    ratings = ratings.assign(timestamp=ratings["timestamp"] * DAY)  # days apart, for the recent window
    catalog = ItemCatalog.from_frame(movies)
    rng = np.random.default_rng(0)
    ids = catalog.movie_ids[:-3]
    vectors = normalize(rng.standard_normal((len(ids), 8)).astype(np.float32))
    index = ItemIndex.build(ids, vectors, "Flat")
    return ratings, movies, catalog, index, dict(zip(ids.tolist(), vectors))


@pytest.fixture(scope="module")
def states(world):
    ratings, _, catalog, _, _ = world
    as_of = ratings.groupby("userId")["timestamp"].quantile(0.7, interpolation="lower").astype("int64")
    return user_states_as_of(ratings, as_of, catalog), as_of


def test_user_states_match_the_point_in_time_reference(world, states):
    ratings, movies, _, _, _ = world
    got, as_of = states
    cat = movies.set_index("movieId")
    assert set(got) == set(as_of.index)
    for u, t in as_of.items():
        hist = ratings[ratings["userId"] == u]
        exp = ref.user_features_at(hist, cat, t)
        s = got[u]
        assert s.as_of == t
        assert list(s.genres) == exp["user_genres"]
        assert list(s.recent_positives[:5]) == exp["user_recent_items"]
        prior = hist[hist["timestamp"] < t]
        assert s.seen == frozenset(prior["movieId"].tolist())  # nothing at or after t
        pos = prior[prior["rating"] >= 3.5].sort_values(["timestamp", "movieId"], ascending=False)
        assert list(s.recent_positives) == pos["movieId"].tolist()


def test_embedding_path_searches_twice_its_need_first_and_deeper_only_when_the_user_saw_too_many(world):
    """k unseen items lie within the first k + |seen|: the path asks 2k first, and the full depth only
    when those held fewer than k unseen; either way the answer is the brute-force one."""
    _, _, _, index, vec = world
    ids, mat = np.array(list(vec)), np.stack(list(vec.values()))
    q = normalize(np.ones((1, 8), np.float32))[0]
    nearest = [int(i) for i in ids[np.argsort(-(mat @ q), kind="stable")]]
    asked: list[int] = []

    class Counting:
        def __init__(self, index):
            self.index = index

        def search(self, vectors, k):
            asked.append(k)
            return self.index.search(vectors, k)

    path = EmbeddingRecall(Counting(index))  # type: ignore[arg-type]
    for seen, k, want_asks in (
        (nearest[20:40], 5, [10]),  # seen items elsewhere: 2k is enough
        (nearest[:8], 5, [10, 13]),  # the 8 nearest seen: 2k holds 2 unseen, so the full depth
        (nearest[:3] + nearest[30:50], 5, [10]),  # 23 seen, 2k holds 7 unseen: enough
        (nearest[:-2], 5, [10, len(nearest) - 2 + 5]),  # all but 2 seen: deeper, and only 2 exist
    ):
        asked.clear()
        user = UserState(user_id=1, seen=frozenset(seen)).with_vector(q)
        got = path.recall(user, k)
        assert got.movie_ids.tolist() == [m for m in nearest if m not in set(seen)][:k]
        assert asked == want_asks, (len(seen), asked)
    # an index holding fewer items than the first search asks for: its answer ends in -1, so there is
    # nothing deeper to search
    small = ItemIndex.build(ids[:7], mat[:7], "Flat")
    few = [int(i) for i in ids[:7][np.argsort(-(mat[:7] @ q), kind="stable")]]
    asked.clear()
    got = EmbeddingRecall(Counting(small)).recall(UserState(user_id=1, seen=frozenset(few[:6])).with_vector(q), 5)  # type: ignore[arg-type]
    assert got.movie_ids.tolist() == few[6:] and asked == [10]


def test_popularity_as_of_and_window_match_pandas(world):
    ratings, _, catalog, _, _ = world
    pop = Popularity(catalog, ratings)
    for t in (0, 10 * DAY, 25 * DAY + 1, None):
        for window in (None, 7 * DAY):
            before = ratings if t is None else ratings[ratings["timestamp"] < t]
            if window is not None:
                end = ratings["timestamp"].max() + 1 if t is None else t
                before = before[before["timestamp"] >= end - window]
            exp = before["movieId"].value_counts().reindex(catalog.movie_ids).fillna(0).to_numpy()
            np.testing.assert_array_equal(pop.counts(t, window), exp)
    np.testing.assert_array_equal(Popularity(catalog, None).counts(), catalog.rating_count)
    with pytest.raises(ValueError, match="needs the ratings"):
        Popularity(catalog, None).counts(5)


def test_embedding_path_is_brute_force_without_seen(world, states):
    _, _, _, index, vec = world
    s = states[0][next(iter(states[0]))]
    ids = np.array(list(vec))
    mat = np.stack(list(vec.values()))
    user_vec = normalize(np.ones((1, 8), np.float32))[0]
    res = EmbeddingRecall(index).recall(s.with_vector(user_vec), 10)
    scores = mat @ user_vec
    ranked = [int(i) for i in ids[np.argsort(-scores, kind="stable")] if int(i) not in s.seen][:10]
    assert res.movie_ids.tolist() == ranked
    # fallback: the normalised mean of the recent positives' vectors
    recent = [m for m in s.recent_positives[:20] if m in vec]
    mean = np.mean([vec[m] for m in recent], axis=0)
    q = EmbeddingRecall(index, n_recent=20).query(s)
    np.testing.assert_allclose(q, mean / np.linalg.norm(mean), atol=1e-6)
    assert len(EmbeddingRecall(index, fallback="none").recall(s, 10)) == 0
    assert len(EmbeddingRecall(index).recall(UserState(user_id=-1), 10)) == 0  # nothing to go on


def test_item_to_item_sums_seed_neighbours(world, states):
    _, _, _, index, vec = world
    s = max(states[0].values(), key=lambda st: len(st.recent_positives))
    path = ItemToItemRecall(index, n_seeds=3, decay=0.5)
    res = path.recall(s, len(vec))  # k ≥ catalog: every item is among each seed's neighbours
    seeds = [m for m in s.recent_positives if m in vec][:3]
    ids = np.array(list(vec))
    mat = np.stack(list(vec.values()))
    total: Counter = Counter()
    for rank, m in enumerate(seeds):
        for i, sc in zip(ids, mat @ vec[m]):
            total[int(i)] += 0.5**rank * float(sc)
    exp = [m for m, _ in sorted(total.items(), key=lambda kv: (-kv[1], kv[0])) if m not in s.seen]
    assert res.movie_ids.tolist() == exp
    np.testing.assert_allclose(res.scores, [total[m] for m in exp], rtol=1e-5)
    short = path.recall(s, 5).movie_ids.tolist()
    assert len(short) == 5 and set(short) <= set(exp)
    assert not set(res.movie_ids.tolist()) & s.seen


def test_new_item_path_recalls_live_items_inside_a_seed_neighbourhood(world, states):
    _, _, catalog, _, vec = world
    index = ItemIndex.build(np.array(list(vec)), np.stack(list(vec.values())), "Flat")  # a copy to add to
    path = NewItemRecall(index, catalog, n_seeds=3, neighbours=5)
    s = max(states[0].values(), key=lambda st: len(st.recent_positives))
    assert len(path.recall(s, 10)) == 0  # nothing added live yet
    seeds = [m for m in s.recent_positives if m in vec][:3]
    rng = np.random.default_rng(1)
    base = int(catalog.movie_ids.max()) + 1
    new_vecs = normalize(np.stack([
        vec[seeds[0]] + 0.05 * rng.standard_normal(8),  # next to the latest like: inside its neighbourhood
        vec[seeds[1]] + 0.10 * rng.standard_normal(8),
        -vec[seeds[0]],  # opposite: outside every neighbourhood
        *rng.standard_normal((3, 8)),
    ]).astype(np.float32))  # fmt: skip
    new_ids = np.arange(base, base + len(new_vecs))
    unrated = int(catalog.movie_ids[-1])  # in the catalog, with no vector yet: inserted, but not new
    index.add([*new_ids.tolist(), unrated], np.vstack([new_vecs, rng.standard_normal((1, 8)).astype(np.float32)]))
    user = UserState(user_id=s.user_id, recent_positives=s.recent_positives, seen=s.seen | {base + 1},
                     vector=normalize(rng.standard_normal((1, 8)).astype(np.float32))[0])  # fmt: skip
    got = path.recall(user, 10)
    # by definition: each query's 5th best similarity over everything indexed, the best margin over it
    all_ids, all_vecs = index.movie_ids, index.vectors(index.movie_ids)[1]
    queries = np.vstack([np.stack([vec[m] for m in seeds]), user.vector[None, :]])
    sims = queries @ all_vecs.T
    edge = np.sort(sims, axis=1)[:, -5]
    margin = {int(m): float((queries @ v - edge).max()) for m, v in zip(all_ids, all_vecs) if m >= base}
    want = sorted((m for m, g in margin.items() if g >= 0 and m not in user.seen), key=lambda m: -margin[m])
    assert got.movie_ids.tolist() == want and base in want and base + 2 not in want and unrated not in want
    np.testing.assert_allclose(got.scores, [margin[m] for m in want], rtol=1e-5, atol=1e-6)
    assert len(path.recall(user, 1)) == 1
    assert len(path.recall(UserState(user_id=-1), 10)) == 0  # no likes, no vector: nothing to go on


def test_popular_paths(world, states):
    ratings, _, catalog, _, _ = world
    pop = Popularity(catalog, ratings)
    s = next(iter(states[0].values()))
    res = PopularRecall(pop).recall(s, 10)
    counts = ratings[ratings["timestamp"] < s.as_of]["movieId"].value_counts()
    exp = [int(m) for m, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if m not in s.seen][:10]
    assert res.movie_ids.tolist() == exp
    recent = PopularRecall(pop, window_days=10)
    assert recent.name == "popular_recent"
    r = recent.recall(s, 10).movie_ids.tolist()
    window = ratings[(ratings["timestamp"] < s.as_of) & (ratings["timestamp"] >= s.as_of - 10 * DAY)]
    wc = window["movieId"].value_counts()
    key = {int(m): (-wc.get(m, 0), -counts.get(m, 0), int(m)) for m in counts.index}
    assert r == sorted((m for m in key if m not in s.seen), key=key.__getitem__)[:10]


def test_genre_path_shares_quota_by_preference(world, states):
    ratings, _, catalog, _, _ = world
    pop = Popularity(catalog, ratings)
    s = max(states[0].values(), key=lambda st: len(st.genres))
    assert len(s.genres) >= 2
    res = GenreRecall(pop).recall(s, 12)
    assert 0 < len(res) <= 12 and not set(res.movie_ids.tolist()) & s.seen
    for m in res.movie_ids.tolist():
        assert set(catalog.genres_of(m)) & set(s.genres)
    first = [m for m in res.movie_ids.tolist() if s.genres[0] in catalog.genres_of(m)]
    assert len(first) >= min(4, len(res))  # the favourite genre gets the largest share
    assert len(GenreRecall(pop).recall(UserState(user_id=1), 5)) == 0


def test_merger_quotas_dedup_seen_and_paths(world, states):
    ratings, _, catalog, index, _ = world
    pop = Popularity(catalog, ratings)
    cfg = RecallConfig(quotas={"embedding": 6, "item2item": 4, "genre": 3, "popular": 3})
    merger = Merger.from_config(cfg, index=index, popularity=pop)
    for s in states[0].values():
        cands = merger.recall(s)
        ids = [c.movie_id for c in cands]
        assert len(ids) == len(set(ids)) == 16  # backfill keeps the total when paths overlap or run dry
        assert not set(ids) & s.seen
        for p in merger.paths:
            top = p.recall(s, merger.quotas[p.name]).movie_ids.tolist()
            assert set(top) <= set(ids)  # each path's own top-quota is in the merged set…
            for c in cands:
                if c.movie_id in top:
                    assert p.name in c.paths  # …and credited to it
        assert all(c.paths for c in cands)
    cold = merger.recall(UserState(user_id=999, as_of=int(ratings["timestamp"].max())))
    assert len(cold) == 16 and {p for c in cold for p in c.paths} <= {"popular", "genre"}
    assert len(merger.recall(next(iter(states[0].values())), total=8)) == 8


def test_recall_config_validation():
    assert RecallConfig().total == 290
    with pytest.raises(ValidationError, match="unknown recall path"):
        RecallConfig(quotas={"embeding": 10})
    with pytest.raises(ValidationError):
        RecallConfig(quotas={"popular": 10}, colour="red")
    with pytest.raises(ValidationError, match="at least 1"):
        RecallConfig(quotas={"popular": 0})


def test_similar_items_by_embedding_and_genre_fallback(world):
    ratings, _, catalog, index, vec = world
    sim = SimilarItems(index, catalog, Popularity(catalog, ratings))
    m = next(iter(vec))
    res = sim(m, 5)
    ids = np.array(list(vec))
    scores = np.stack(list(vec.values())) @ vec[m]
    exp = [int(i) for i in ids[np.argsort(-scores, kind="stable")] if i != m][:5]
    assert res.source == "embedding" and res.movie_ids.tolist() == exp
    cold = int(catalog.movie_ids[-1])  # not in the index
    genres = set(catalog.genres_of(cold)) or {catalog.genre_names[0]}
    res = sim.similar(cold, 8, genres=sorted(genres))
    assert res.source == "genre" and 0 < len(res.movie_ids) <= 8 and cold not in res.movie_ids.tolist()
    assert all(set(catalog.genres_of(i)) & genres for i in res.movie_ids.tolist())
    assert (np.diff(res.scores) <= 1e-9).all()
    for i, s in zip(res.movie_ids.tolist(), res.scores.tolist()):
        g = set(catalog.genres_of(i))
        assert s == pytest.approx(len(g & genres) / len(g | genres))
    assert sim.similar(10**9, 5).source == "none"


def test_user_state_from_online_row():
    row = {"userId": 7, "user_recent_items": [5, 3], "user_genres": ["Drama", "Comedy"]}
    s = UserState.from_features(row, seen=[1, 2], vector=np.ones(4))
    assert s.recent_positives == (5, 3) and s.genres == ("Drama", "Comedy")
    assert s.seen == frozenset({1, 2, 3, 5}) and s.vector.dtype == np.float32


def test_split_relevance_and_evaluate_counts_hits(world):
    ratings, _, catalog, index, _ = world
    test = ratings.sort_values("timestamp").groupby("userId").tail(5)
    as_of, relevant = split_relevance(test)
    assert all(as_of[u] == test[test["userId"] == u]["timestamp"].min() for u in as_of.index)
    assert all((test[(test["userId"] == u) & test["movieId"].isin(r)]["rating"] >= 3.5).all() for u, r in relevant.items())
    st = user_states_as_of(ratings, as_of, catalog)
    merger = Merger.from_config(RecallConfig(quotas={"popular": 20}), index=None, popularity=Popularity(catalog, ratings))
    report = evaluate(merger, st, relevant, k=20)
    exp = []
    for u, s in st.items():
        rel = relevant.get(u, frozenset()) - s.seen
        if rel:
            got = {c.movie_id for c in merger.recall(s, 20)}
            exp.append(len(got & rel) / len(rel))
    assert report.users == len(exp) and report.merged == pytest.approx(np.mean(exp))
    assert report.paths[0].recall_at_k == pytest.approx(report.merged)


def test_svd_embeddings_and_parquet_round_trip(world, tmp_path):
    ratings, _, _, _, _ = world
    emb = svd_item_embeddings(ratings, dim=8)
    liked = np.unique(ratings[ratings["rating"] >= 3.5]["movieId"])
    np.testing.assert_array_equal(emb.movie_ids, liked)
    np.testing.assert_allclose(np.linalg.norm(emb.vectors, axis=1), 1.0, atol=1e-5)
    art = str(tmp_path / "artifacts")
    model = uri.join(art, "models", "retriever", "v1")
    write_item_embeddings(uri.join(model, "item_embeddings.parquet"), emb.movie_ids, emb.vectors)
    uri.write_json(uri.join(model, "meta.json"), {"features_version": "f1"})
    uri.set_latest(uri.join(art, "models", "retriever"), "v1")
    back = read_item_embeddings(art)
    np.testing.assert_array_equal(back.movie_ids, emb.movie_ids)
    np.testing.assert_allclose(back.vectors, emb.vectors, atol=1e-6)
    assert back.source["model_version"] == "v1" and back.source["features_version"] == "f1"
    import pyarrow.parquet as pq

    schema = pq.read_schema(uri.join(model, "item_embeddings.parquet"))
    assert str(schema.field("movieId").type) == "int64" and str(schema.field("embedding").type) == "list<element: float>"
    with pytest.raises(FileNotFoundError, match="--embeddings svd"):
        read_item_embeddings(str(tmp_path / "empty"))


class _Fixed(RecallPath):
    """A path that answers a fixed list."""

    prefix_stable = True

    def __init__(self, name, ids):
        self.name, self.ids = name, np.asarray(ids, dtype=np.int64)

    def recall(self, user, k):
        return PathResult(self.ids[:k], np.linspace(1.0, 0.5, len(self.ids[:k])).astype(np.float32))


def test_rrf_order_puts_items_several_paths_rank_high_first():
    a, b = _Fixed("embedding", [1, 2, 3, 4]), _Fixed("genre", [9, 3, 8, 7])
    user = UserState(user_id=1, seen=frozenset({8}))
    by_paths = Merger([a, b], {"embedding": 4, "genre": 4}, order="paths").recall(user)
    assert [c.movie_id for c in by_paths] == [1, 2, 3, 4, 9, 7]
    fused = Merger([a, b], {"embedding": 4, "genre": 4}, order="rrf").recall(user)
    ids = [c.movie_id for c in fused]
    assert ids[0] == 3  # ranked 3rd and 2nd: 1/62 + 1/61 beats any single first place (1/60)
    assert sorted(ids) == sorted(c.movie_id for c in by_paths)  # same candidates, another order
    assert ids.index(1) < ids.index(9) < ids.index(2)  # ties broken by the merge order
    assert next(c for c in fused if c.movie_id == 3).paths == ("embedding", "genre")
    # a path's vote weighs as its quota: with a small genre quota its first place falls behind
    weighted = [c.movie_id for c in Merger([a, b], {"embedding": 4, "genre": 2}, order="rrf").recall(user)]
    assert weighted.index(2) < weighted.index(9)
    # unless the fusion weights say otherwise: genre's vote 3× embedding's puts its list first
    voted = [c.movie_id for c in Merger([a, b], {"embedding": 4, "genre": 2}, order="rrf", weights={"genre": 3.0}).recall(user)]
    assert voted[:2] == [3, 9] and voted.index(9) < voted.index(1)


def test_fusion_weights_come_from_the_config_and_are_checked():
    cfg = RecallConfig.model_validate({"weights": {"ease": 2.5}})
    assert cfg.weights == {"ease": 2.5}
    for bad in ({"nope": 1.0}, {"ease": -1.0}, {"ease": float("inf")}):
        with pytest.raises(ValidationError):
            RecallConfig.model_validate({"weights": bad})


def test_rrf_keeps_items_added_live_first():
    live, emb = _Fixed("new_items", [100]), _Fixed("embedding", [1, 2, 3])
    ids = [c.movie_id for c in Merger([live, emb], {"new_items": 1, "embedding": 30}, order="rrf").recall(UserState(user_id=1))]
    assert ids[0] == 100  # its small quota's vote alone would put it last


def test_cold_start_path_leads_and_keeps_other_paths_credit():
    from rayrec.retrieval.coldstart import ColdStartRecall, lead
    from rayrec.retrieval.merge import Recalls

    class Ranks:
        def recommend(self, k=10, *, genres=(), hour=None, row=None, exclude=()):
            self.asked = (k, tuple(genres), hour, row, set(exclude))
            return [(m, 1.0 / (i + 1)) for i, m in enumerate(m for m in (7, 3, 9, 5) if m not in set(exclude))][:k]

    ranks = Ranks()
    user = UserState(user_id=1, seen=frozenset({9}), declared_genres=("Comedy",), hour=21, row={"userId": 1})
    picks = ColdStartRecall(ranks).recall(user, 3)
    assert picks.movie_ids.tolist() == [7, 3, 5] and ranks.asked == (3, ("Comedy",), 21, {"userId": 1}, {9})
    found = Recalls(np.array([1, 3, 2], dtype=np.int64), np.array([0.9, 0.8, 0.7]), [("ease",), ("genre", "popular"), ("ease",)])
    led = lead(picks, found)
    assert led.movie_ids.tolist() == [7, 3, 5, 1, 2], "picks first, then the rest in their order, each once"
    assert led.paths == [("cold_start",), ("cold_start", "genre", "popular"), ("cold_start",), ("ease",), ("ease",)]
    assert led.scores.tolist()[3:] == [0.9, 0.7]

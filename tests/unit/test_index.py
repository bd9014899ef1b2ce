"""ItemIndex against a numpy brute-force reference: exact search, ANN recall, live inserts (also from
several threads), vector lookup, and the versioned save/load with the LATEST swap."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from rayrec import uri
from rayrec.retrieval import ItemIndex, load_index, measure, normalize, save_index
from rayrec.retrieval.index import resolve_factory
from rayrec.retrieval.versions import index_root


def clustered(n: int, d: int = 16, clusters: int = 20, seed: int = 0) -> np.ndarray:
    """Unit vectors around a few centres: the structure ANN indexes rely on (and real embeddings have)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d))
    x = centres[rng.integers(0, clusters, n)] + 0.35 * rng.standard_normal((n, d))
    return normalize(x.astype(np.float32))


def brute_force(vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = queries @ vectors.T  # (B, N)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return ids[order], np.take_along_axis(scores, order, axis=1)


@pytest.fixture(scope="module")
def data():
    x = clustered(2_000)
    ids = np.arange(2_000, dtype=np.int64) * 7 + 3  # movie ids are not row numbers
    return ids, x


def test_flat_matches_brute_force(data):
    ids, x = data
    index = ItemIndex.build(ids, x, "Flat")
    q = x[:25] + 0.1
    got_ids, got_scores = index.search(q, 50)
    exp_ids, exp_scores = brute_force(x, ids, q.astype(np.float32), 50)
    np.testing.assert_allclose(got_scores, exp_scores, rtol=1e-5, atol=1e-5)
    # ids agree wherever scores are not tied
    assert (got_ids == exp_ids).mean() > 0.99
    assert got_ids.dtype == np.int64 and got_scores.dtype == np.float32
    assert (np.diff(got_scores, axis=1) <= 1e-6).all()  # best first


def test_fewer_items_than_k_pads_with_minus_one():
    x = clustered(5)
    index = ItemIndex.build(np.arange(5), x, "Flat")
    got, scores = index.search(x[:2], 8)
    assert got.shape == (2, 8)
    assert sorted(got[0, :5].tolist()) == list(range(5))
    assert (got[:, 5:] == -1).all() and np.isneginf(scores[:, 5:]).all()


@pytest.mark.parametrize("factory", ["HNSW32", "IVF"])
def test_ann_recall_against_exact(data, factory):
    ids, x = data
    index = ItemIndex.build(ids, x, factory)
    m = measure(index, x[:200], 100, latency_queries=5)
    assert m["recall_at_100"] >= 0.9, m
    assert m["recall_queries"] == 200 and m["latency_ms"]["queries"] == 5
    assert index.factory == resolve_factory(factory, len(x))


def test_measure_of_flat_is_exact(data):
    ids, x = data
    assert measure(ItemIndex.build(ids, x, "Flat"), x[:50], 100, latency_queries=3)["recall_at_100"] == 1.0


def test_lsh_is_available_for_comparison(data):
    ids, x = data
    index = ItemIndex.build(ids, x, "LSH")
    got, scores = index.search(x[:3], 10)
    assert (got >= 0).all() and (np.diff(scores, axis=1) <= 0).all()
    assert measure(index, x[:50], 100, latency_queries=0)["recall_at_100"] < 1.0  # approximate


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "IVF"])
def test_live_add_and_replace(data, factory):
    ids, x = data
    index = ItemIndex.build(ids[:1_500], x[:1_500], factory)
    new_ids, new_x = ids[1_500:], x[1_500:]
    index.add(new_ids, new_x)
    assert len(index) == 2_000 and new_ids[0] in index
    got, _ = index.search(new_x[:20], 5)
    assert (got[:, 0] == new_ids[:20]).mean() >= 0.9  # each new item is its own nearest neighbour
    # re-adding a known id replaces its vector: the old row is never returned again
    target = int(ids[0])
    moved = normalize(-x[:1])
    index.add([target], moved)
    assert len(index) == 2_000
    got, _ = index.search(moved, 10)
    assert got[0, 0] == target
    got, _ = index.search(x[:1], 50)
    assert target not in got[0].tolist()
    assert all(len(set(r[r >= 0].tolist())) == (r >= 0).sum() for r in index.search(x[:30], 60)[0])
    found, vec = index.vectors([target, -5])
    assert found.tolist() == [True, False]
    np.testing.assert_allclose(vec[0], moved[0], atol=1e-6)
    assert (vec[1] == 0).all()


def test_concurrent_search_and_add(data):
    ids, x = data
    index = ItemIndex.build(ids[:1_000], x[:1_000], "HNSW32")
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        try:
            while not stop.is_set():
                got, _ = index.search(x[:4], 20)
                for row in got:
                    assert len(set(row.tolist())) == len(row)
        except BaseException as e:  # surfaced by the assertion below
            errors.append(e)

    def writer(lo: int, hi: int) -> None:
        try:
            for s in range(lo, hi, 25):
                index.add(ids[s : s + 25], x[s : s + 25])
        except BaseException as e:
            errors.append(e)

    readers = [threading.Thread(target=reader) for _ in range(3)]
    writers = [threading.Thread(target=writer, args=(lo, lo + 500)) for lo in (1_000, 1_500)]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in readers:
        t.join()
    assert not errors, errors[0]
    assert len(index) == 2_000
    assert sorted(index.movie_ids.tolist()) == sorted(ids.tolist())


def test_bad_inputs_say_what_is_wrong(data):
    ids, x = data
    with pytest.raises(ValueError, match="unique"):
        ItemIndex.build(np.zeros(3, dtype=np.int64), x[:3])
    with pytest.raises(ValueError, match="faiss cannot build"):
        ItemIndex.build(ids[:10], x[:10], "NoSuchIndex")
    index = ItemIndex.build(ids[:10], x[:10])
    with pytest.raises(ValueError, match=r"\(B, 16\)"):
        index.search(np.zeros((1, 3), np.float32), 5)
    with pytest.raises(ValueError, match="dimension 16"):
        index.add([99999], np.zeros((1, 4), np.float32))


def test_save_load_round_trip_and_latest_swap(data, tmp_path):
    ids, x = data
    art = str(tmp_path / "artifacts")
    index = ItemIndex.build(ids, x, "HNSW32", search_params="efSearch=64")
    index.meta["model_version"] = "m1"
    v1, path = save_index(index, art)
    assert uri.latest(index_root(art)) == v1
    for f in ("index.faiss", "movie_ids.npy", "vectors.npy", "meta.json"):
        assert uri.exists(uri.join(path, f))
    loaded = load_index(art)
    assert loaded.meta["version"] == v1 and loaded.meta["model_version"] == "m1"
    assert loaded.meta["n"] == 2_000 and loaded.meta["dim"] == 16 and loaded.meta["metric"] == "inner_product"
    assert loaded.factory == "HNSW32" and loaded.search_params == "efSearch=64"
    a, sa = index.search(x[:10], 20)
    b, sb = loaded.search(x[:10], 20)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(sa, sb)
    # a version written without publishing is invisible to "latest"
    loaded.add([10**9], x[:1])
    v2, _ = save_index(loaded, art, publish=False)
    assert uri.latest(index_root(art)) == v1
    assert 10**9 in load_index(art, v2) and 10**9 not in load_index(art)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_index(art, "no-such-version")


def test_neighbours_are_the_search_of_the_items_own_vectors(data):
    ids, x = data
    index = ItemIndex.build(ids, x, "Flat")
    asked = np.array([ids[5], 999_999, ids[40]])  # one unknown id in the middle
    got_ids, got_scores = index.neighbours(asked, 30)
    exp_ids, exp_scores = index.search(x[[5, 40]], 30)
    np.testing.assert_array_equal(got_ids[[0, 2]], exp_ids)
    np.testing.assert_allclose(got_scores[[0, 2]], exp_scores, rtol=1e-5, atol=1e-6)
    assert got_ids[0, 0] == ids[5]  # an item is its own nearest
    assert (got_ids[1] == -1).all() and np.isneginf(got_scores[1]).all()
    # a deeper question after a shallow one, and a shallow one after a deep one, answer as a search would
    deep_ids, _ = index.neighbours(asked[:1], 300)
    np.testing.assert_array_equal(deep_ids, index.search(x[[5]], 300)[0])
    np.testing.assert_array_equal(index.neighbours(asked[:1], 7)[0], deep_ids[:, :7])


def test_neighbours_see_items_added_live(data):
    ids, x = data
    index = ItemIndex.build(ids, x, "Flat")
    before, _ = index.neighbours([ids[0]], 5)  # kept
    twin = 10_000_001
    index.add([twin], x[:1])  # the same vector as item ids[0]: its nearest item after itself
    after, scores = index.neighbours([ids[0]], 5)
    assert twin not in before[0] and set(after[0, :2].tolist()) == {int(ids[0]), twin}
    assert scores[0, 1] == pytest.approx(1.0, abs=1e-5)


def _auto(monkeypatch, data, latency_ms: dict[str, float]):
    """build_index with ``factory="auto"`` over real Flat and HNSW indexes whose measured recall is
    real and whose p50 latency is the given one per search setting (timings are the machine's, so
    the rule is checked on fixed ones)."""
    from rayrec.retrieval import build as build_mod
    from rayrec.retrieval.embeddings import ItemEmbeddings

    real = build_mod.measure

    def timed(index, queries, k=100, *, latency_queries=200):
        out = real(index, queries, k, latency_queries=0)
        out["latency_ms"] = {**out["latency_ms"], "p50": latency_ms[index.search_params or index.factory]}
        return out

    monkeypatch.setattr(build_mod, "measure", timed)
    ids, x = data
    emb = ItemEmbeddings(ids, x, {"model_version": "test"})
    return build_mod.build_index(emb, build_mod.IndexConfig(recall_queries=300, latency_queries=0))


def test_auto_index_keeps_exact_search_unless_a_graph_is_much_faster_at_high_recall(monkeypatch, data):
    from rayrec.retrieval.build import AUTO_MIN_RECALL

    slow_exact = {"Flat": 0.8, "efSearch=64": 0.1, "efSearch=128": 0.15, "efSearch=256": 0.3, "efSearch=512": 0.5}
    index = _auto(monkeypatch, data, slow_exact)
    trials = index.meta["auto"]["trials"]
    assert index.factory == "HNSW32" and index.meta["recall_at_100"] >= AUTO_MIN_RECALL
    # the shallowest search depth that reaches the recall floor is chosen, and the ones above it were tried first
    reached = [t for t in trials[1:] if t["recall_at_100"] >= AUTO_MIN_RECALL]
    assert index.search_params == reached[0]["search_params"] == trials[-1]["search_params"]
    assert all(t["recall_at_100"] < AUTO_MIN_RECALL for t in trials[1:-1])
    assert index.meta["auto"]["chosen"]["factory"] == "HNSW32"
    # exact search already fast: no graph is built
    fast_exact = _auto(monkeypatch, data, {**slow_exact, "Flat": 0.2})
    assert fast_exact.factory == "Flat" and [t["factory"] for t in fast_exact.meta["auto"]["trials"]] == ["Flat"]
    # a graph that saves time but less than half: exact search stays, with the graph's trials recorded
    close = _auto(monkeypatch, data, {**slow_exact, "Flat": 0.45, "efSearch=64": 0.3, "efSearch=128": 0.3,
                                      "efSearch=256": 0.3, "efSearch=512": 0.3})  # fmt: skip
    assert close.factory == "Flat" and close.meta["recall_at_100"] == 1.0 and len(close.meta["auto"]["trials"]) > 1
    got, _ = close.search(data[1][:5], 10)
    want, _ = brute_force(data[1], data[0], data[1][:5], 10)
    assert (got == want).all(), "the exact index chosen answers exactly"


def test_auto_refuses_search_params():
    from rayrec.retrieval.build import IndexConfig

    with pytest.raises(ValueError, match="auto"):
        IndexConfig(factory="auto", search_params="efSearch=64")
    assert IndexConfig(factory="HNSW32", search_params="efSearch=64").search_params == "efSearch=64"

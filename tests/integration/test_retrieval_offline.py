"""The index job and the offline recall evaluation over an artifacts folder: a features version (built
with the point-in-time functions the feature pipeline runs per block), a retriever version holding
item embeddings, then ``python -m pipelines.index`` building, publishing and evaluating."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.index import main
from rayrec import uri
from rayrec.data import SyntheticConfig, generate, read_movielens
from rayrec.features import FeatureSpec, SpecPartial
from rayrec.features.pointintime import ITEM_FEATURES, item_pass, user_pass
from rayrec.retrieval import RecallConfig, UserState, load_index, load_merger, svd_item_embeddings, write_item_embeddings
from rayrec.retrieval.offline import load_offline_data, run_offline
from rayrec.retrieval.versions import index_root

FEATURES_VERSION = "20260101T000000-test00"
QUOTAS = ["--quota", "embedding=40", "--quota", "item2item=20", "--quota", "genre=20", "--quota", "popular=20"]


def _write(df: pd.DataFrame, target: str) -> None:
    uri.makedirs(target.rsplit("/", 1)[0])
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), target)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> str:
    """A features version in the pipeline's layout and a retriever version trained on its train split."""
    root = tmp_path_factory.mktemp("retrieval")
    ml = read_movielens(generate(root / "data", SyntheticConfig(n_users=300, n_items=400, n_ratings=15_000, seed=1)))
    art = str(root / "artifacts")
    feat = uri.join(art, "features", FEATURES_VERSION)
    samples = user_pass(item_pass(ml.ratings, ml.movies, sentinels=False), ml.movies, sentinels=False)
    samples = samples.drop(columns=["sentinel"])
    for split in ("train", "test"):
        _write(samples[samples["split"] == split], uri.join(feat, "samples", split, "part-0.parquet"))
    FeatureSpec.fit(SpecPartial.of(samples[samples["split"] == "train"]), label_threshold=3.5).save(uri.join(feat, "spec.json"))
    _write(ml.ratings, uri.join(feat, "ratings", "part-00000.parquet"))
    counts = ml.ratings["movieId"].value_counts()
    items = ml.movies[["movieId", "title", "genres"]].assign(
        item_rating_count=counts.reindex(ml.movies["movieId"]).fillna(0).astype("int64").to_numpy()
    )
    _write(items, uri.join(feat, "online", "items.parquet"))
    uri.set_latest(uri.join(art, "features"), FEATURES_VERSION)

    emb = svd_item_embeddings(samples[samples["split"] == "train"], dim=16)
    model = uri.join(art, "models", "retriever", "r1")
    write_item_embeddings(uri.join(model, "item_embeddings.parquet"), emb.movie_ids, emb.vectors)
    uri.write_json(uri.join(model, "meta.json"), {"features_version": FEATURES_VERSION})
    uri.set_latest(uri.join(art, "models", "retriever"), "r1")
    return art


@pytest.fixture(scope="module")
def published(artifacts) -> tuple[str, str]:
    """The index job run once with ``--evaluate`` (published Flat index), and what it printed."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["--artifacts", artifacts, "--evaluate", *QUOTAS]) == 0
    return artifacts, buf.getvalue()


def test_index_job_builds_measures_publishes_and_evaluates(published):
    artifacts, out = published
    version = uri.latest(index_root(artifacts))
    assert version is not None
    meta = uri.read_json(uri.join(index_root(artifacts), version, "meta.json"))
    assert meta["factory"] == "Flat" and meta["metric"] == "inner_product" and meta["dim"] == 16
    assert meta["model_version"] == "r1" and meta["embeddings"]["features_version"] == FEATURES_VERSION
    assert meta["recall_at_100"] == 1.0  # Flat is exact
    assert meta["latency_ms"]["p50"] > 0 and meta["batch_qps"] > 0
    assert meta["n"] == len(load_index(artifacts))
    assert "Recall@100 on" in out and "merged (100 candidates)" in out and "retriever model r1" in out
    for name in ("embedding", "item2item", "genre", "popular"):
        assert f"\n{name} " in out


def test_offline_report_per_path_and_merged(published):
    artifacts, _ = published
    index = load_index(artifacts)
    features = uri.resolve_version(uri.join(artifacts, "features"), "latest")
    cfg = RecallConfig(quotas={"embedding": 40, "item2item": 20, "genre": 20, "popular": 20})
    report = run_offline(artifacts, index, cfg, features_path=features, use_tower=False)
    merged_paths = {p.name: p for p in report.paths if p.name in cfg.quotas}
    assert set(merged_paths) == set(cfg.quotas) and report.users > 50
    assert report.mean_candidates == pytest.approx(100)
    # the merged set holds each path's own top quota, so it recalls at least as much as any of them
    assert report.merged >= max(p.recall_at_quota for p in merged_paths.values()) - 1e-12
    assert report.merged > 0
    for p in merged_paths.values():
        assert 0 <= p.recall_at_quota <= p.recall_at_k <= 1
    assert sum(p.merged_share for p in merged_paths.values()) >= 1 - 1e-9  # every hit has a path


def test_offline_states_see_nothing_from_t_on(artifacts):
    data = load_offline_data(uri.resolve_version(uri.join(artifacts, "features"), "latest"))
    states = data.states()
    r = data.ratings.set_index(["userId", "movieId"])["timestamp"]
    for u, s in states.items():
        assert s.as_of == data.as_of[u]
        assert all(r[(u, m)] < s.as_of for m in s.seen)
        assert not (data.relevant[u] & s.seen)


def test_other_factories_unpublished_svd_and_evaluate_only(published, capsys):
    artifacts, _ = published
    before = uri.latest(index_root(artifacts))
    def new_version(run: list[str]) -> str:
        """The version a run of the job adds (versions made in one second do not sort by time)."""
        known = set(uri.list_versions(index_root(artifacts)))
        assert main(run) == 0
        (added,) = set(uri.list_versions(index_root(artifacts))) - known
        return added

    hnsw = load_index(artifacts, new_version(["--artifacts", artifacts, "--factory", "HNSW32", "--ef-construction", "20", "--no-publish"]))
    assert uri.latest(index_root(artifacts)) == before
    assert hnsw.factory == "HNSW32" and hnsw.meta["ef_construction"] == 20 and hnsw.meta["recall_at_100"] > 0.9
    svd = load_index(artifacts, new_version(["--artifacts", artifacts, "--embeddings", "svd", "--factory", "IVF", "--no-publish"]))
    assert svd.meta["embeddings"]["kind"] == "svd" and svd.factory.startswith("IVF")
    capsys.readouterr()
    assert main(["--artifacts", artifacts, "--evaluate-only", "-k", "50", *QUOTAS]) == 0
    assert "Recall@50" in capsys.readouterr().out


def test_a_failed_index_job_leaves_latest_alone(published, monkeypatch):
    """The disk fails while the job writes its version (the second file): the job fails, LATEST still
    names the version it named before, and the half-written folder is not made live."""
    artifacts, _ = published
    root = index_root(artifacts)
    before, versions = uri.latest(root), set(uri.list_versions(root))
    write_bytes = uri.write_bytes
    calls = []

    def disk_full_on_the_second_file(target: str, data: bytes) -> None:
        calls.append(target)
        if len(calls) == 2:
            raise OSError(28, "No space left on device", target)
        write_bytes(target, data)

    monkeypatch.setattr(uri, "write_bytes", disk_full_on_the_second_file)
    with pytest.raises(OSError, match="No space left"):
        main(["--artifacts", artifacts])
    monkeypatch.undo()
    assert len(calls) == 2 and uri.latest(root) == before
    added = set(uri.list_versions(root)) - versions
    assert not any(uri.exists(uri.join(root, v, "meta.json")) for v in added), added
    assert load_index(artifacts).meta["model_version"] == "r1"  # what serving loads still opens


def test_job_errors_name_the_fix(tmp_path, capsys):
    assert main(["--artifacts", str(tmp_path / "empty")]) == 2
    assert "--embeddings svd" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--artifacts", str(tmp_path), "--quota", "embedding=lots"])


def test_load_merger_serves_a_user(published):
    artifacts, _ = published
    merger = load_merger(artifacts)
    assert merger.total == RecallConfig().total == 290
    state = UserState(user_id=1, recent_positives=(1, 2, 3), seen=frozenset({1, 2, 3}), genres=("Drama",))
    cands = merger.recall(state, total=200)
    ids = [c.movie_id for c in cands]
    assert len(ids) == len(set(ids)) == 200 and not {1, 2, 3} & set(ids)
    # the index version carries the ease weights, so the ease path recalls from the user's history too
    assert {p for c in cands for p in c.paths} == {"ease", "embedding", "item2item", "genre", "popular"}
    assert np.isfinite([c.score for c in cands]).all()


def test_offline_uses_the_user_tower_when_there_is_one(published, monkeypatch):
    """The user-tower contract (rayrec.models.inference) stood in by a tower that averages the item
    vectors of the row's recent items: users get vectors, and the recent-mean fallback is scored too."""
    import sys
    import types

    artifacts, _ = published
    index = load_index(artifacts)
    calls = []

    class TowerEncoder:
        def __init__(self, loaded, spec) -> None:
            self.loaded = loaded

        def users(self, rows: pd.DataFrame) -> np.ndarray:
            calls.append(len(rows))
            out = np.zeros((len(rows), index.dim), np.float32)
            for i, recent in enumerate(rows["user_recent_items"]):
                found, vecs = index.vectors(list(recent))
                if found.any():
                    out[i] = vecs[found].mean(axis=0)
            return out

    fake = types.ModuleType("rayrec.models.inference")
    fake.TowerEncoder = TowerEncoder
    fake.load_model = lambda artifacts, name, version="latest", spec=None: (name, version)
    monkeypatch.setitem(sys.modules, "rayrec.models.inference", fake)
    features = uri.resolve_version(uri.join(artifacts, "features"), "latest")
    cfg = RecallConfig(quotas={"embedding": 50, "popular": 50})
    report = run_offline(artifacts, index, cfg, features_path=features)
    assert calls and calls[0] >= report.users
    assert any("user tower of retriever r1" in n for n in report.notes)
    rows = {p.name: p for p in report.paths}
    assert "embedding[recent mean]" in rows and rows["embedding[recent mean]"].quota == 50
    # the stand-in tower averages only the last five positives, the fallback the last twenty
    assert rows["embedding"].recall_at_k != rows["embedding[recent mean]"].recall_at_k


def test_offline_runs_the_real_user_tower_of_a_registered_retriever(published):
    """The registry path end to end, no stand-in: a two-tower retriever (seeded, untrained: the path is
    under test, not its quality) published with its catalog embeddings, an index built from them by the
    job, and the offline evaluation querying it with the real user tower."""
    import torch

    from rayrec import registry
    from rayrec.models import build_model, model_config
    from rayrec.models.inference import TowerEncoder, item_vectors, load_model
    from rayrec.retrieval.offline import tower_vectors

    artifacts, _ = published
    features = uri.resolve_version(uri.join(artifacts, "features"), "latest")
    spec = FeatureSpec.load(uri.join(features, "spec.json"))
    torch.manual_seed(0)
    model = build_model("retriever", model_config("retriever"), spec).eval()
    root = registry.models_root(artifacts, "retriever")
    live = uri.latest(root)
    version = registry.publish(artifacts, "retriever", weights=model.state_dict(),
                               config={"kind": "retriever", "model": model.config.to_dict(), "sizes": spec.sizes},
                               meta={"spec_hash": spec.hash, "features_version": FEATURES_VERSION}, metrics={})  # fmt: skip
    try:
        # each movie's features as of its last training sample (a movie nobody rated: none but its id)
        samples = pd.read_parquet(uri.join(features, "samples", "train"))
        last = samples.sort_values("timestamp").groupby("movieId").tail(1).set_index("movieId")[list(ITEM_FEATURES)]
        items = pd.read_parquet(uri.join(features, "online", "items.parquet"))[["movieId"]].join(last, on="movieId")
        items["item_genres"] = [list(g) if isinstance(g, (list, np.ndarray)) else [] for g in items["item_genres"]]
        vectors = item_vectors(model, spec, items)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        write_item_embeddings(uri.join(root, version, "item_embeddings.parquet"), items["movieId"].to_numpy(), vectors)
        known = set(uri.list_versions(index_root(artifacts)))
        assert main(["--artifacts", artifacts, "--no-publish"]) == 0
        (built,) = set(uri.list_versions(index_root(artifacts))) - known
        index = load_index(artifacts, built)
        assert index.meta["model_version"] == version
        cfg = RecallConfig(quotas={"embedding": 50, "popular": 50})
        report = run_offline(artifacts, index, cfg, features_path=features)
        assert f"user vectors: user tower of retriever {version}" in report.notes, report.notes
        rows = {p.name: p for p in report.paths}
        assert {"embedding", "embedding[recent mean]"} <= set(rows) and report.users > 50
        # the vectors it queried with are the registry model's own
        data = load_offline_data(features)
        vecs, _ = tower_vectors(artifacts, version, features, data.user_rows)
        enc = TowerEncoder(load_model(artifacts, "retriever", version, spec=spec), spec)
        np.testing.assert_allclose(np.stack([vecs[u] for u in data.user_rows["userId"]]), enc.users(data.user_rows), atol=1e-6)
    finally:
        uri.set_latest(root, live)

"""The model registry and the serving API: round trips, the atomic LATEST pointer, refusal of a
different FeatureSpec, and the scorers' behaviour on online-store-shaped rows."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from rayrec import registry, uri
from rayrec.features.spec import FeatureSpec
from rayrec.models import Ranker, RankerConfig, TwoTower, TwoTowerConfig
from rayrec.models.inference import RankerScorer, SpecMismatchError, TowerEncoder, load_model
from train_data import small


@pytest.fixture(scope="module")
def data():
    return small()


def publish(artifacts, name, model, spec, metrics=None):
    return registry.publish(
        artifacts,
        name,
        weights=model.state_dict(),
        config={"kind": name, "model": model.config.to_dict(), "sizes": spec.sizes},
        meta={"spec_hash": spec.hash, "features_version": "v-test", "data_range": {"train": {"rows": 1}}},
        metrics=metrics or {"test": {"auc": 0.5}},
        files={"extra.bin": b"\x00\x01"},
    )


def other_spec(spec: FeatureSpec) -> FeatureSpec:
    return dataclasses.replace(spec, label_threshold=spec.label_threshold + 0.5)


def test_publish_then_load_round_trips_and_moves_latest(tmp_path, data):
    art = str(tmp_path)
    torch.manual_seed(0)
    first = Ranker(RankerConfig(embedding_dim=8), data.spec.sizes)
    v1 = publish(art, "ranker", first, data.spec)
    assert uri.latest(registry.models_root(art, "ranker")) == v1
    second = Ranker(RankerConfig(embedding_dim=8), data.spec.sizes)
    v2 = publish(art, "ranker", second, data.spec, {"test": {"auc": 0.9}})
    assert v2 != v1 and registry.list_versions(art, "ranker") == sorted([v1, v2])
    stored = registry.load(art, "ranker")
    assert stored.version == v2 and stored.metrics == {"test": {"auc": 0.9}}
    assert all(torch.equal(stored.weights[k], v) for k, v in second.state_dict().items())
    assert stored.meta["spec_hash"] == data.spec.hash and stored.meta["name"] == "ranker"
    files = {p.name for p in (tmp_path / "models" / "ranker" / v2).iterdir()}
    assert {"weights.safetensors", "config.json", "meta.json", "metrics.json", "extra.bin"} <= files
    assert registry.load(art, "ranker", v1).version == v1  # older versions stay loadable


def test_a_model_without_spec_hash_is_refused(tmp_path, data):
    with pytest.raises(ValueError, match="spec_hash"):
        registry.publish(str(tmp_path), "ranker", weights={}, config={}, meta={}, metrics={})


def test_loading_against_a_different_feature_spec_fails_clearly(tmp_path, data):
    art = str(tmp_path)
    publish(art, "ranker", Ranker(RankerConfig(), data.spec.sizes), data.spec)
    loaded = load_model(art, "ranker", spec=data.spec)  # the right spec loads
    wrong = other_spec(data.spec)
    with pytest.raises(SpecMismatchError, match=data.spec.hash) as err:
        load_model(art, "ranker", spec=wrong)
    assert wrong.hash in str(err.value) and "pipelines.train" in str(err.value)
    with pytest.raises(SpecMismatchError):
        RankerScorer(loaded, wrong)


def test_missing_model_names_the_job_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="pipelines.train --model retriever"):
        load_model(str(tmp_path), "retriever")


def test_ranker_scorer_broadcasts_one_user_and_matches_paired_rows(tmp_path, data):
    art = str(tmp_path)
    torch.manual_seed(1)
    publish(art, "ranker", Ranker(RankerConfig(embedding_dim=8), data.spec.sizes), data.spec)
    scorer = RankerScorer(load_model(art, "ranker", spec=data.spec), data.spec)
    user, items = data.users.iloc[[3]], data.items.iloc[:12]
    broadcast = scorer.score(user, items)
    paired = scorer.score(user.loc[user.index.repeat(12)].reset_index(drop=True), items)
    assert broadcast.shape == (12,) and broadcast.dtype == np.float32
    assert np.allclose(broadcast, paired, atol=1e-6)
    assert ((broadcast > 0) & (broadcast < 1)).all()
    assert scorer.score(user, items.iloc[:0]).shape == (0,)
    with pytest.raises(ValueError, match="one user row"):
        scorer.score(data.users.iloc[:2], items)


def test_tower_encoder_vectors_are_normalised_and_cold_items_work(tmp_path, data):
    art = str(tmp_path)
    model = TwoTower(TwoTowerConfig(id_dim=16, history_len=10), data.spec.sizes)
    publish(art, "retriever", model, data.spec)
    enc = TowerEncoder(load_model(art, "retriever", spec=data.spec), data.spec)
    u = enc.users(data.users.iloc[:4])
    items = data.items.copy()
    items.loc[items.index[:3], "movieId"] = [-1, -2, -3]  # movies the model never saw
    v = enc.items(items)
    assert u.shape == (4, 16) and v.shape == (len(items), 16) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(u, axis=1), 1, atol=1e-5)
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    # same model, same rows: same vectors as the model itself in eval mode
    from rayrec.models.inputs import encode_items, to_tensors

    with torch.no_grad():
        direct = model.eval().item(to_tensors(encode_items(data.spec, items))).numpy()
    assert np.allclose(direct, v, atol=1e-6)
    with pytest.raises(TypeError, match="not a Ranker"):
        RankerScorer(enc.loaded, data.spec)

"""The learned blend of the candidates' features (rayrec.serving.blend): its features, its fit, its use
as the order rerank starts from, and the settings it refuses."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from pydantic import ValidationError

from rayrec.retrieval.ease import EaseRecall, ItemWeights
from rayrec.serving.blend import FEATURES, blend_scores, candidate_features, check_blend, fit_blend
from rayrec.serving.bundle import ServingConfig
from rayrec.serving.ranking import fuse
from rayrec.serving.recall import Recalled


def _weights() -> ItemWeights:
    # 10 → 20 (0.5), 10 → 30 (-0.25); 20 → 30 (1.0); 30 → nothing
    return ItemWeights.from_rows(np.array([10, 20, 30], dtype=np.int64), np.array([[1, 2], [2, -1], [-1, -1]], dtype=np.int32),
                                 np.array([[0.5, -0.25], [1.0, 0.0], [0.0, 0.0]], dtype=np.float32), 1.0)  # fmt: skip


def _bundle(config: ServingConfig) -> SimpleNamespace:
    return SimpleNamespace(config=config, merger=SimpleNamespace(paths=[EaseRecall(_weights())]))


def _recalled(seen: frozenset[int] = frozenset({10})) -> Recalled:
    ids = np.array([20, 30, 40, 50], dtype=np.int64)
    paths = [("ease", "embedding"), ("popular",), ("new_items",), ("genre", "ease")]
    return Recalled(user_id=1, k=2, known=True, user_row=None, liked=(10,), genres=(), seen=seen, ids=ids,
                    recall_scores=np.zeros(4, np.float32), paths=paths)  # fmt: skip


def test_candidate_features_are_what_the_request_holds():
    r = _recalled()
    rank = np.array([0.1, 0.9, 0.5, 0.3])
    popularity = np.array([0, 9, 99, 999])
    x = candidate_features(_bundle(ServingConfig()), r, rank, popularity)
    col = {name: x[:, j] for j, name in enumerate(FEATURES)}
    assert x.shape == (4, len(FEATURES))
    assert col["bias"].tolist() == [1, 1, 1, 1]
    assert col["position"].tolist() == pytest.approx([1, 2 / 3, 1 / 3, 0])
    assert col["path:ease"].tolist() == [1, 0, 0, 1] and col["path:popular"].tolist() == [0, 1, 0, 0]
    assert col["path:new_items"].tolist() == [0, 0, 1, 0] and col["path:item2item"].tolist() == [0, 0, 0, 0]
    assert col["ranker"].tolist() == pytest.approx([0, 1, 2 / 3, 1 / 3])
    # the EASE sum from everything the user rated (10): 20 gets 0.5, 30 gets -0.25, unknown items 0
    assert col["ease"].tolist() == pytest.approx([0.5, -0.25, 0, 0])
    assert col["ease_max"].tolist() == pytest.approx([1, -0.5, 0, 0])
    assert col["popularity"].tolist() == pytest.approx(np.log1p(popularity) / np.log1p(999))
    # two rated movies sum: 20 → 30 adds 1.0 to 30
    two = candidate_features(_bundle(ServingConfig()), _recalled(frozenset({10, 20})), rank, popularity, ["ease"])
    assert two[:, 0].tolist() == pytest.approx([0.5, 0.75, 0, 0])


def test_fit_blend_is_the_l2_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 3))
    w_true = np.array([1.5, -2.0, 0.5])
    y = (rng.random(4000) < 1 / (1 + np.exp(-(x @ w_true - 1.0)))).astype(float)
    names = ["bias", "ranker", "ease", "popularity"]
    got = fit_blend(np.column_stack([np.ones(4000), x]), y, names, l2=2.0)
    ref = LogisticRegression(C=0.5, tol=1e-10, max_iter=10_000).fit(x, y)  # C = 1 / l2; the intercept is not penalised
    assert got["bias"] == pytest.approx(float(ref.intercept_[0]), abs=1e-4)
    assert [got[n] for n in names[1:]] == pytest.approx(ref.coef_[0].tolist(), abs=1e-4)
    assert got["ranker"] == pytest.approx(1.5, abs=0.2) and got["ease"] == pytest.approx(-2.0, abs=0.2)
    with pytest.raises(ValueError, match="both taken and untaken"):
        fit_blend(np.ones((5, 1)), np.zeros(5), ["bias"])
    with pytest.raises(ValueError, match="one label a row"):
        fit_blend(np.ones((5, 2)), np.zeros(5), ["bias"])


def test_a_blend_is_the_order_rerank_starts_from():
    coefficients = {"bias": -1.0, "ease": 4.0, "path:popular": 2.0, "ranker": 1.0}
    cfg = ServingConfig(blend=coefficients, fresh_weight=0.0)
    b = _bundle(cfg)
    r = _recalled()
    rank = np.array([0.1, 0.9, 0.5, 0.3])
    popularity = np.zeros(4)
    live = np.array([False, False, True, False])  # 40 was added live: it keeps its recall place
    p = blend_scores(b, r, rank, popularity, coefficients)
    z = -1.0 + 4.0 * np.array([0.5, -0.25, 0, 0]) + 2.0 * np.array([0, 1, 0, 0]) + np.array([0, 1, 2 / 3, 1 / 3])
    assert p.tolist() == pytest.approx((1 / (1 + np.exp(-z))).tolist())
    got = fuse(b, r, rank, live, np.zeros((4, 1)), None, popularity)
    want = (p - p.min()) / (p.max() - p.min())
    want[2] = 1 / 3  # the recall order's value at position 2 of 4
    assert got.tolist() == pytest.approx(want.tolist())
    # without a blend the same request gets the rank_weight mix of percentiles
    plain = fuse(_bundle(ServingConfig(rank_weight=0.5, fresh_weight=0.0)), r, rank, np.zeros(4, bool), np.zeros((4, 1)), None, popularity)
    assert plain.tolist() == pytest.approx((0.5 * np.array([0, 1, 2 / 3, 1 / 3]) + 0.5 * np.array([1, 2 / 3, 1 / 3, 0])).tolist())


def test_bad_blends_are_refused_naming_the_setting():
    with pytest.raises(ValueError, match=r"unknown blend feature\(s\) \['nope'\]"):
        check_blend({"nope": 1.0, "ease": 1.0})
    with pytest.raises(ValidationError, match="blend"):
        ServingConfig(blend={"path:nowhere": 1.0})
    with pytest.raises(ValidationError, match="finite"):
        ServingConfig.model_validate({"blend": {"ease": float("nan")}})
    assert ServingConfig(blend={"ease": 2.0}).blend == {"ease": 2.0}
    assert ServingConfig().blend == {}

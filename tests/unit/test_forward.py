"""The numpy serving forwards equal the torch modules' eval-mode forward (rayrec.models.forward)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from rayrec.models.forward import owners, ranker_forward, user_tower_forward
from rayrec.models.inputs import to_tensors
from rayrec.models.ranker import Ranker, RankerConfig
from rayrec.models.two_tower import TwoTower, TwoTowerConfig

SIZES = {"user_vocab": 40, "item_vocab": 300, "genre_vocab": 21, "user_rating_count_buckets": 11,
         "item_rating_count_buckets": 11, "item_year_buckets": 9, "user_dense": 5, "item_dense": 4}  # fmt: skip


def _ids(rng: np.random.Generator, shape: tuple[int, ...], high: int, pad: float = 0.3) -> np.ndarray:
    """Ids in [1, high) with a share ``pad`` of padding zeros (whole rows among them)."""
    x = rng.integers(1, high, size=shape)
    x[rng.random(shape) < pad] = 0
    if len(shape) == 2 and shape[0] > 2:
        x[1] = 0  # a row with nothing but padding
    return x.astype(np.int64)


def _users(rng: np.random.Generator, n: int, history: int = 0) -> dict[str, np.ndarray]:
    out = {
        "user_id": rng.integers(1, SIZES["user_vocab"], n),
        "user_genres": _ids(rng, (n, 5), SIZES["genre_vocab"]),
        "user_recent_items": _ids(rng, (n, 5), SIZES["item_vocab"]),
        "user_count_bucket": rng.integers(0, SIZES["user_rating_count_buckets"], n),
        "user_dense": rng.normal(size=(n, 5)).astype(np.float32),
    }
    if history:
        out["history_items"] = _ids(rng, (n, history), SIZES["item_vocab"])
    return out


def _items(rng: np.random.Generator, n: int, ease: bool) -> dict[str, np.ndarray]:
    out = {
        "item_id": rng.integers(1, SIZES["item_vocab"], n),
        "item_genres": _ids(rng, (n, 3), SIZES["genre_vocab"], pad=0.4),
        "item_year_bucket": rng.integers(0, SIZES["item_year_buckets"], n),
        "item_count_bucket": rng.integers(0, SIZES["item_rating_count_buckets"], n),
        "item_dense": rng.normal(size=(n, 4)).astype(np.float32),
    }
    if ease:
        out["ease_score"] = rng.normal(size=n).astype(np.float32)
    return out


def _trained_like(model: nn.Module, seed: int) -> nn.Module:
    """Every weight random (biases and padding rows included), as no fresh module has them, in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model.eval()


@pytest.mark.parametrize(
    "config",
    [
        RankerConfig(),
        RankerConfig(objective="like"),
        RankerConfig(ease_feature=True, like_weight=0.5),
        RankerConfig(hidden=(32,), dropout=0.0, embedding_dim=8, bucket_dim=2),
        RankerConfig(hidden=(64, 32, 16)),
    ],
    ids=["topn", "like", "ease", "one-layer", "three-layers"],
)
def test_ranker_forward_scores_as_the_torch_ranker_for_several_users(config: RankerConfig) -> None:
    rng = np.random.default_rng(3)
    model = _trained_like(Ranker(config, SIZES), 1)
    fwd = ranker_forward(model)
    assert fwd is not None
    sizes = [7, 1, 0, 12]  # candidates per user (one user without any)
    users = _users(rng, len(sizes))
    items = _items(rng, sum(sizes), config.ease_feature)
    who = owners(sizes)
    assert who.tolist() == [0] * 7 + [1] + [3] * 12
    got = fwd.score(users, who, items)
    paired = {**{k: v[who] for k, v in users.items()}, **items}
    with torch.no_grad():
        want = model.predict(to_tensors(paired)).numpy()
    assert got.dtype == np.float32 and got.shape == (sum(sizes),)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)
    assert np.unique(got).size > len(got) // 2 and got.max() > 2 * got.min()  # they differ: the check compares something


def test_ranker_forward_stays_stable_for_logits_far_from_zero() -> None:
    model = _trained_like(Ranker(RankerConfig(), SIZES), 2)
    with torch.no_grad():
        model.over[-1].bias.copy_(torch.tensor([-60.0, 40.0]))  # type: ignore[union-attr]
    fwd = ranker_forward(model)
    assert fwd is not None
    rng = np.random.default_rng(4)
    users, items = _users(rng, 1), _items(rng, 5, False)
    got = fwd.score(users, np.zeros(5, dtype=np.int64), items)
    with torch.no_grad():
        want = model.predict(to_tensors({**{k: np.repeat(v, 5, axis=0) for k, v in users.items()}, **items})).numpy()
    assert np.isfinite(got).all() and (got > 0).all()
    np.testing.assert_allclose(got, want, rtol=1e-4)


@pytest.mark.parametrize("history", [0, 50], ids=["recent-only", "history"])
def test_user_tower_forward_is_the_torch_user_tower(history: int) -> None:
    model = _trained_like(TwoTower(TwoTowerConfig(id_dim=16, feature_dim=8, hidden=(32,)), SIZES), 5)
    fwd = user_tower_forward(model)
    assert fwd is not None
    users = _users(np.random.default_rng(6), 9, history)
    got = fwd(users)
    with torch.no_grad():
        want = model.user(to_tensors(users)).numpy()
    assert got.dtype == np.float32 and got.shape == (9, 16)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)


def test_modules_the_forward_does_not_know_keep_torch() -> None:
    class Scaled(Ranker):
        def forward(self, batch):  # type: ignore[no-untyped-def]
            return 2 * super().forward(batch)

    class Shifted(nn.Linear):
        def forward(self, x):  # type: ignore[no-untyped-def]
            return super().forward(x) + 1.0

    assert ranker_forward(Ranker(RankerConfig(), SIZES).eval()) is not None  # the cases below differ from this one only
    assert ranker_forward(Scaled(RankerConfig(), SIZES).eval()) is None  # a subclass may compute otherwise
    assert ranker_forward(Ranker(RankerConfig(), SIZES).train()) is None, "training mode: its dropout is torch's"
    ranker = Ranker(RankerConfig(), SIZES).eval()
    ranker.over[1] = nn.Tanh()  # an activation the numpy forward lacks
    assert ranker_forward(ranker) is None
    ranker = Ranker(RankerConfig(), SIZES).eval()
    last = ranker.over[-1]
    ranker.over[-1] = Shifted(last.in_features, last.out_features)  # type: ignore[arg-type]
    assert ranker_forward(ranker) is None, "a Linear subclass with its own forward"
    tower = TwoTower(TwoTowerConfig(), SIZES).eval()
    assert user_tower_forward(tower) is not None and user_tower_forward(TwoTower(TwoTowerConfig(), SIZES)) is None
    tower.user_arch.append(nn.LayerNorm(tower.config.id_dim))
    assert user_tower_forward(tower) is None
    assert ranker_forward(tower) is None and user_tower_forward(Ranker(RankerConfig(), SIZES).eval()) is None


def test_a_first_layer_of_another_width_is_refused() -> None:
    ranker = Ranker(RankerConfig(), SIZES).eval()
    ranker.over[0] = nn.Linear(ranker.over[0].in_features + 1, ranker.over[0].out_features)  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="first layer takes"):
        ranker_forward(ranker)


def test_like_scores_of_very_negative_logits_are_zero_without_overflow() -> None:
    model = _trained_like(Ranker(RankerConfig(objective="like"), SIZES), 7)
    with torch.no_grad():
        model.over[-1].bias.fill_(-500.0)  # type: ignore[union-attr]
    fwd = ranker_forward(model)
    assert fwd is not None
    rng = np.random.default_rng(8)
    with np.errstate(over="raise"):  # an overflow in exp would raise here
        got = fwd.score(_users(rng, 1), np.zeros(4, dtype=np.int64), _items(rng, 4, False))
    assert got.tolist() == [0.0] * 4

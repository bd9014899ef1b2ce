"""The ranker and the two-tower model: shapes, normalisation, the sampled-softmax loss against a
direct computation, cold items through the OOV id, configs and optimizer groups."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rayrec.features.spec import OOV
from rayrec.models import Ranker, RankerConfig, TwoTower, TwoTowerConfig, build_model, model_config
from rayrec.models.layers import BitDropout, masked_mean, mlp, pooled
from rayrec.models.inputs import HISTORY, encode_items, encode_pairs, encode_users, to_tensors
from rayrec.models.two_tower import sampled_softmax_loss
from rayrec.training.data import positive_history
from train_data import small


@pytest.fixture(scope="module")
def data():
    return small()


def ranker_batch(data, n=64):
    return to_tensors(encode_pairs(data.spec, data.train.iloc[:n]))


def tower_batch(data, n=64):
    rows = data.train.assign(**{HISTORY: positive_history(data.train, 20)}).iloc[:n]
    return to_tensors(encode_pairs(data.spec, rows, 20))


@pytest.mark.parametrize("objective,heads", [("like", 1), ("topn", 2)])
def test_ranker_outputs_one_logit_per_head_and_learns(data, objective, heads):
    torch.manual_seed(0)
    cfg = RankerConfig(hidden=(32, 32), dropout=0.0, movie_weight_decay=0.0, objective=objective)
    model = Ranker(cfg, data.spec.sizes)
    batch = ranker_batch(data, 128)
    batch["interact"] = (torch.arange(128) % 2 == 0).float()  # half the rows rated
    assert model(batch).shape == (128, heads)
    p = model.predict(batch)
    assert ((p > 0) & (p < 1)).all()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = model.loss(batch).item()
    for _ in range(40):
        opt.zero_grad()
        model.loss(batch).backward()
        opt.step()
    assert model.loss(batch).item() < 0.5 * first  # it can fit a small batch: gradients reach every part


def test_topn_score_is_interact_times_like_and_like_head_learns_from_rated_rows_only(data):
    torch.manual_seed(0)
    model = Ranker(RankerConfig(objective="topn", like_weight=0.5), data.spec.sizes).eval()
    batch = ranker_batch(data, 32)
    logits = model(batch)
    want = torch.sigmoid(logits[:, 0]) * torch.sigmoid(logits[:, 1]) ** 0.5
    assert torch.allclose(model.predict(batch), want, atol=1e-6)
    assert torch.allclose(model.like_probability(batch), torch.sigmoid(logits[:, 1]))
    # an unrated row's like label carries no gradient to the like head
    batch["interact"] = torch.zeros(32)
    batch["label"] = torch.ones(32)
    model.train()
    model.zero_grad()
    out = model(batch)
    model.loss_of(out, batch).backward()
    head = model.over[-1]
    assert head.weight.grad[1].abs().sum() == 0 and head.weight.grad[0].abs().sum() > 0


def test_a_saved_config_without_an_objective_loads_as_the_like_model():
    assert RankerConfig.from_dict({"embedding_dim": 8}).objective == "like"
    assert model_config("ranker", {"embedding_dim": 8}).objective == "topn"


def test_ranker_param_groups_cover_every_parameter_once(data):
    model = Ranker(RankerConfig(movie_weight_decay=7.0), data.spec.sizes)
    groups = model.param_groups(0.01)
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())
    assert groups[0]["params"][0] is model.item.weight and groups[0]["weight_decay"] == 7.0


def test_ranker_id_dropout_only_in_training(data):
    model = Ranker(RankerConfig(id_dropout=0.9), data.spec.sizes).eval()
    batch = ranker_batch(data)
    assert torch.equal(model(batch), model(batch))  # eval: deterministic, ids used as given


def test_towers_are_l2_normalised_and_shaped(data):
    model = TwoTower(TwoTowerConfig(id_dim=16, feature_dim=4, history_len=20), data.spec.sizes).eval()
    batch = tower_batch(data)
    users, items = model(batch)
    assert users.shape == (64, 16) and items.shape == (64, 16)
    assert torch.allclose(users.norm(dim=1), torch.ones(64), atol=1e-5)
    assert torch.allclose(items.norm(dim=1), torch.ones(64), atol=1e-5)


def test_user_tower_falls_back_to_recent_items_without_history(data):
    model = TwoTower(TwoTowerConfig(id_dim=16, history_len=5), data.spec.sizes).eval()
    rows = data.users.iloc[:10]
    with_recent_as_history = encode_users(data.spec, rows.assign(**{HISTORY: rows["user_recent_items"]}), 5)
    without = encode_users(data.spec, rows, 5)  # no history column: recent items stand in
    a = model.user(to_tensors(with_recent_as_history))
    b = model.user(to_tensors(without))
    assert torch.allclose(a, b)


def test_cold_items_get_a_usable_vector_through_the_oov_id(data):
    model = TwoTower(TwoTowerConfig(id_dim=16), data.spec.sizes).eval()
    items = data.items.iloc[:5].copy()
    items["movieId"] = [10**9 + i for i in range(5)]  # never seen in training
    enc = encode_items(data.spec, items)
    assert (enc["item_id"] == OOV).all()
    v = model.item(to_tensors(enc))
    assert torch.isfinite(v).all() and torch.allclose(v.norm(dim=1), torch.ones(5), atol=1e-5)
    # content features still separate cold movies with different genres / years
    if len({tuple(g) for g in items["item_genres"]}) > 1:
        assert torch.cdist(v, v).max() > 1e-4


def test_sampled_softmax_matches_direct_computation():
    torch.manual_seed(1)
    u = torch.nn.functional.normalize(torch.randn(6, 8), dim=1)
    v = torch.nn.functional.normalize(torch.randn(6, 8), dim=1)
    ids = torch.tensor([3, 4, 3, 5, 6, 7])  # rows 0 and 2 hold the same movie
    log_q = torch.log(torch.tensor([0.1, 0.2, 0.1, 0.3, 0.05, 0.25]))
    t = 0.1
    got = sampled_softmax_loss(u, v, ids, t, log_q).item()
    total = 0.0
    for i in range(6):
        logits = [(u[i] @ v[j]).item() / t - log_q[j].item() for j in range(6) if j == i or ids[j] != ids[i]]
        pos = (u[i] @ v[i]).item() / t - log_q[i].item()
        total += -(pos - math.log(sum(math.exp(x) for x in logits)))
    assert got == pytest.approx(total / 6, rel=1e-5)


def test_logq_weight_scales_the_correction(data):
    base = TwoTower(TwoTowerConfig(id_dim=8, logq=0.0), data.spec.sizes)
    weighted = build_model("retriever", TwoTowerConfig(id_dim=8, logq=2.0), data.spec)
    weighted.load_state_dict(base.state_dict())
    counts = torch.arange(data.spec.sizes["item_vocab"]).float() + 1
    for m in (base, weighted):
        m.set_sampling_counts(counts)
        m.eval()
    batch = tower_batch(data, 32)
    out = base(batch)
    assert not math.isclose(base.loss(out, batch).item(), weighted.loss(out, batch).item())
    unweighted = sampled_softmax_loss(*out, batch["item_id"], base.config.temperature, None)
    assert base.loss(out, batch).item() == pytest.approx(unweighted.item())


def test_configs_round_trip_and_unknown_model_is_refused(data):
    for name, cfg in (("ranker", RankerConfig(hidden=(32, 16), dropout=0.1)), ("retriever", TwoTowerConfig(id_dim=8))):
        again = model_config(name, cfg.to_dict())
        assert again == cfg
        assert build_model(name, cfg.to_dict(), data.spec.sizes) is not None
    with pytest.raises(ValueError, match="unknown model"):
        build_model("wide-and-deep", {}, data.spec.sizes)


def test_encoders_map_unknown_users_and_movies_to_oov(data):
    rows = data.train.iloc[:3].copy()
    rows["userId"] = -5
    rows["movieId"] = -7
    enc = encode_pairs(data.spec, rows)
    assert (enc["user_id"] == OOV).all() and (enc["item_id"] == OOV).all()
    assert np.isfinite(enc["user_dense"]).all() and np.isfinite(enc["item_dense"]).all()


def test_pooled_lookups_equal_separate_lookups_in_values_and_gradients():
    """One embedding_bag call for several lookups of a table gives each lookup's masked mean (or row),
    and the table the same gradient as the separate lookups; the padding row is neither read nor trained."""
    torch.manual_seed(0)
    table = torch.nn.Embedding(50, 8, padding_idx=0)
    torch.nn.init.normal_(table.weight)  # the padding row is not zero: only the masks keep it out
    history = torch.randint(0, 50, (6, 7))
    history[0] = 0  # an empty row: zeros, as masked_mean
    history[1, 3:] = 0
    recent = torch.randint(1, 50, (6, 3))
    ids = torch.tensor([5, 9, 9, 49, 1])
    weights = [torch.randn(6, 8), torch.randn(6, 8), torch.randn(5, 8)]

    def loss(outs):
        return sum((o * w).sum() for o, w in zip(outs, weights))

    expected = [masked_mean(table, history), masked_mean(table, recent), table(ids)]
    loss(expected).backward()
    grad = table.weight.grad.clone()
    table.weight.grad = None
    got = pooled(table, [history, recent, ids])
    loss(got).backward()
    for e, g in zip(expected, got):
        assert g.shape == e.shape
        torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(table.weight.grad, grad, rtol=1e-6, atol=1e-6)
    assert not table.weight.grad[0].any()
    with torch.no_grad():  # separate lookups: the same values
        for e, g in zip(expected, pooled(table, [history, recent, ids])):
            torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-6)


def test_pooled_reads_a_sparse_table_through_its_module():
    """A table with sparse gradients (one the lazy optimizer updates) is read through its module,
    whose forward hooks bring its rows up to date; the values are the same."""
    torch.manual_seed(0)
    table = torch.nn.Embedding(30, 4, padding_idx=0, sparse=True)
    calls = []
    table.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape))
    hist = torch.randint(0, 30, (5, 6))
    out = pooled(table, [hist, torch.tensor([3, 4])])
    assert calls == [hist.shape, (2,)]
    torch.testing.assert_close(out[0], masked_mean(table, hist))
    out[0].sum().backward()
    assert table.weight.grad.is_sparse


def test_two_tower_forward_reads_both_towers_in_one_lookup(data):
    """forward reads the movie table once for both towers; the vectors are those of user() and item()."""
    torch.manual_seed(0)
    model = TwoTower(TwoTowerConfig(hidden=(16,)), data.spec.sizes).eval()
    batch = tower_batch(data)
    users, items = model(batch)
    torch.testing.assert_close(users, model.user(batch), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(items, model.item(batch), rtol=1e-5, atol=1e-6)


def test_bit_dropout_keeps_each_element_with_one_minus_p_and_keeps_the_mean():
    torch.manual_seed(0)
    x = torch.ones(2000, 1000)
    out = BitDropout(0.2).train()(x)
    kept = out > 0
    scale = 65536 / (65536 - 13107)
    assert out.unique().tolist() == [0.0, pytest.approx(scale)]
    sigma = math.sqrt(0.8 * 0.2 / x.numel())
    assert abs(kept.float().mean().item() - (1 - 13107 / 65536)) < 5 * sigma
    assert abs(out.mean().item() - 1.0) < 5 * sigma * scale
    # every 16-bit lane of the 64-bit draws: without the draw's bounds the top lane would keep all
    flat = kept.reshape(-1)
    for lane in range(4):
        share = flat[lane::4].float().mean().item()
        assert abs(share - 0.8) < 5 * math.sqrt(0.16 / flat[lane::4].numel()), (lane, share)
    # neighbours (often two lanes of one draw) are kept independently
    both = (flat[:-1] & flat[1:]).float().mean().item()
    assert abs(both - 0.64) < 5 * math.sqrt(0.64 * 0.36 / (flat.numel() - 1))


def test_bit_dropout_gradient_is_its_mask_and_a_seed_repeats_it():
    x = torch.randn(7, 9, requires_grad=True)  # 63 elements: not a whole number of draws
    d = BitDropout(0.5).train()
    torch.manual_seed(3)
    out = d(x)
    out.sum().backward()
    mask = (out != 0).float()
    assert x.grad is not None and torch.equal(x.grad, mask * 2.0)
    assert torch.allclose(out, x.detach() * mask * 2.0)
    torch.manual_seed(3)
    assert torch.equal(d(x), out)
    assert 0 < mask.sum() < mask.numel()


def test_bit_dropout_is_the_input_in_eval_mode_or_at_zero_and_refuses_a_bad_p():
    x = torch.randn(4, 8)
    assert BitDropout(0.3).eval()(x) is x
    assert BitDropout(0.0).train()(x) is x
    for p in (-0.1, 1.0):
        with pytest.raises(ValueError, match="dropout probability"):
            BitDropout(p)


def test_mlp_layers_keep_their_positions_so_saved_models_load():
    # the layers' indices name the weights in a saved state dict (Linear, ReLU, Dropout per width)
    names = [k for k in mlp(10, (8, 8), 2, dropout=0.2).state_dict()]
    assert names == ["0.weight", "0.bias", "3.weight", "3.bias", "6.weight", "6.bias"]
    assert [type(m).__name__ for m in mlp(10, (8,), None, dropout=0.2)] == ["Linear", "ReLU", "BitDropout"]

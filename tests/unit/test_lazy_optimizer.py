"""LazyAdamW: a table updated only where batches read it ends where AdamW with dense gradients does."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from rayrec.training.lazy import LazyAdamW


class _Model(nn.Module):
    def __init__(self, users: int = 300) -> None:
        super().__init__()
        self.user = nn.Embedding(users, 8, padding_idx=0)
        self.item = nn.Embedding(40, 8)
        self.out = nn.Linear(8, 1)

    def forward(self, u: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        return self.out(self.user(u) * self.item(i)).squeeze(1)


def _groups(m: _Model, wd: float) -> list[dict]:
    return [{"params": [m.user.weight], "weight_decay": wd},
            {"params": [m.item.weight, *m.out.parameters()], "weight_decay": 0.01}]  # fmt: skip


def _pair(wd: float, lr: float, eps: float, onecycle: bool, steps: int, users: int = 300):
    torch.manual_seed(0)
    dense = _Model(users)
    lazy = copy.deepcopy(dense)
    opt_d = torch.optim.AdamW(_groups(dense, wd), lr=lr, eps=eps, fused=True)
    opt_l = LazyAdamW(_groups(lazy, wd), lr=lr, eps=eps, fused=True)
    opt_l.add_table(lazy.user)
    sched = [torch.optim.lr_scheduler.OneCycleLR(o, max_lr=lr, total_steps=steps + 1) if onecycle else None for o in (opt_d, opt_l)]
    return dense, lazy, opt_d, opt_l, sched


def _step(m: _Model, opt: torch.optim.Optimizer, sched, u: torch.Tensor, i: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    opt.zero_grad(set_to_none=True)
    out = m(u, i)
    ((out - y) ** 2).mean().backward()
    opt.step()
    if sched is not None:
        sched.step()
    return out.detach()


def _batches(steps: int, users: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        yield torch.randint(0, users, (16,), generator=g), torch.randint(0, 40, (16,), generator=g), torch.randn(16, generator=g)


@pytest.mark.parametrize("wd, onecycle", [(10.0, False), (0.0, True), (10.0, True), (300.0, True)])
def test_lazy_rows_end_where_dense_adamw_does(wd, onecycle):
    lr = 2e-3 if wd > 100 else 3e-3
    dense, lazy, opt_d, opt_l, (s_d, s_l) = _pair(wd, lr, 1e-12, onecycle, steps=400)
    for u, i, y in _batches(400, 300):
        out_d = _step(dense, opt_d, s_d, u, i, y)
        out_l = _step(lazy, opt_l, s_l, u, i, y)
        # the rows a forward pass reads are current: the same outputs at every step
        torch.testing.assert_close(out_l, out_d, rtol=1e-4, atol=1e-6)
    assert lazy.user.weight.grad.is_sparse
    opt_l.flush()
    scale = dense.user.weight.abs().max().item()
    assert scale > 0
    assert (lazy.user.weight - dense.user.weight).abs().max().item() < 1e-5 * scale
    for a, b in zip(dense.out.parameters(), lazy.out.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(opt_l.state[lazy.user.weight]["exp_avg"], opt_d.state[dense.user.weight]["exp_avg"], rtol=1e-4, atol=1e-9)


def test_default_eps_stays_close_to_dense_adamw():
    """eps is left out of the skipped steps only: far below √v once a row has had a gradient."""
    dense, lazy, opt_d, opt_l, (s_d, s_l) = _pair(10.0, 3e-3, 1e-8, True, steps=300)
    for u, i, y in _batches(300, 300):
        _step(dense, opt_d, s_d, u, i, y)
        _step(lazy, opt_l, s_l, u, i, y)
    opt_l.flush()
    scale = dense.user.weight.abs().max().item()
    assert (lazy.user.weight - dense.user.weight).abs().max().item() < 5e-3 * scale


def test_a_row_unread_for_longer_than_the_window_decays_and_drifts_as_with_dense_gradients():
    dense, lazy, opt_d, opt_l, _ = _pair(10.0, 1e-3, 1e-12, False, steps=1)
    assert opt_l.window == 512
    g = torch.Generator().manual_seed(3)
    for step in range(800):
        u = torch.tensor([1, 2, 3] if step in (0, 700) else [1, 2])  # row 3 read twice, 700 steps apart
        i, y = torch.randint(0, 40, (len(u),), generator=g), torch.randn(len(u), generator=g)
        _step(dense, opt_d, None, u, i, y)
        _step(lazy, opt_l, None, u, i, y)
    opt_l.flush()
    # every row, row 4 never read (it only decays) and row 3 on its momentum for 700 steps, past the window
    torch.testing.assert_close(lazy.user.weight, dense.user.weight, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("resume_with", ["lazy", "dense"])
def test_a_checkpoint_resumes_in_either_optimizer(resume_with):
    dense, lazy, opt_d, opt_l, _ = _pair(10.0, 3e-3, 1e-12, False, steps=1)
    batches = list(_batches(200, 300, seed=5))
    for u, i, y in batches[:100]:
        _step(dense, opt_d, None, u, i, y)
        _step(lazy, opt_l, None, u, i, y)
    saved = copy.deepcopy(opt_l.state_dict())  # flushes: every row current
    assert all(k in ("step", "exp_avg", "exp_avg_sq") for s in saved["state"].values() for k in s)
    if resume_with == "lazy":
        opt_r = LazyAdamW(_groups(lazy, 10.0), lr=3e-3, eps=1e-12, fused=True)
        opt_r.add_table(lazy.user)
    else:
        lazy.user.sparse = False
        opt_r = torch.optim.AdamW(_groups(lazy, 10.0), lr=3e-3, eps=1e-12, fused=True)
    opt_r.load_state_dict(saved)
    for u, i, y in batches[100:]:
        _step(dense, opt_d, None, u, i, y)
        _step(lazy, opt_r, None, u, i, y)
    if isinstance(opt_r, LazyAdamW):
        opt_r.flush()
    scale = dense.user.weight.abs().max().item()
    assert (lazy.user.weight - dense.user.weight).abs().max().item() < 1e-5 * scale


def test_refusals():
    m = _Model()
    with pytest.raises(ValueError, match="amsgrad"):
        LazyAdamW(m.parameters(), amsgrad=True)
    opt = LazyAdamW([m.item.weight], lr=0.1)
    with pytest.raises(ValueError, match="not among"):
        opt.add_table(m.user)
    opt = LazyAdamW(_groups(m, 20.0), lr=0.1)  # lr·wd = 2: AdamW would flip the rows' signs
    opt.add_table(m.user)
    _ = m(torch.tensor([1, 2]), torch.tensor([3, 4])).sum().backward()
    with pytest.raises(ValueError, match="lr·weight_decay < 1"):
        opt.step()
    with pytest.raises(ValueError, match="closure"):
        opt.step(lambda: 0.0)


def test_make_optimizer_makes_the_models_user_tables_lazy_only_when_asked():
    from rayrec.models.ranker import Ranker, RankerConfig
    from rayrec.models.two_tower import TwoTower, TwoTowerConfig
    from rayrec.training.config import default_train_config
    from rayrec.training.loop import make_optimizer

    sizes = dict(item_vocab=50, user_vocab=80, genre_vocab=8, user_rating_count_buckets=4, item_rating_count_buckets=4,
                 item_year_buckets=4, user_dense=5, item_dense=4)  # fmt: skip
    for model, table in ((lambda: Ranker(RankerConfig(), sizes), "user"), (lambda: TwoTower(TwoTowerConfig(), sizes), "user_ids")):
        plain = model()
        assert type(make_optimizer(plain, default_train_config(plain.kind))) is torch.optim.AdamW
        assert not getattr(plain, table).sparse
        lazy = model()
        opt = make_optimizer(lazy, default_train_config(lazy.kind), lazy=True)
        assert isinstance(opt, LazyAdamW)
        assert getattr(lazy, table).sparse
        assert [t for t in opt._tables.values()] == [getattr(lazy, table)]


def test_after_a_flush_the_steps_compute_exactly_as_after_resuming_there():
    """A training run flushes at each epoch's end and checkpoints there: a run resumed from that
    checkpoint must end with the very weights of one that went on."""
    _, a, _, opt_a, _ = _pair(10.0, 3e-3, 1e-8, False, steps=1)
    batches = list(_batches(400, 300, seed=7))
    for u, i, y in batches[:300]:
        _step(a, opt_a, None, u, i, y)
    opt_a.flush()
    b = copy.deepcopy(a)
    opt_b = LazyAdamW(_groups(b, 10.0), lr=3e-3, eps=1e-8, fused=True)
    opt_b.add_table(b.user)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))
    for u, i, y in batches[300:]:
        _step(a, opt_a, None, u, i, y)
        _step(b, opt_b, None, u, i, y)
    opt_a.flush()
    opt_b.flush()
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name

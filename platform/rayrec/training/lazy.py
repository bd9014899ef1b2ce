"""AdamW that updates an embedding table's rows only when a batch reads them, with the same result.

With dense gradients AdamW moves every row of every table at every step: the rows a batch did not read
still decay (decoupled weight decay) and still drift on their momentum. At ml-25m's 162k users a
user-id table is millions of weights, and that update, not the batch, is most of a CPU step (the
retriever: 125.6 → 73.3 ms a step of 1,024 rows with its user table on sparse gradients, one thread).

:class:`LazyAdamW` gives chosen tables (:meth:`LazyAdamW.add_table`) sparse gradients and keeps, per
row, the step it was last brought up to date. A row is brought up to date just before a forward pass
reads it (a forward pre-hook on the table) and at :meth:`LazyAdamW.flush`; the steps it skipped are
applied in closed form. For a skipped step ``i`` (no gradient) AdamW does

    p ← p·(1 − lrᵢ·wd);  m ← β1ᵢ·m;  v ← β2·v;  p ← p − lrᵢ/bc1ᵢ · m / (√v / √bc2ᵢ + eps)

so over the steps ``s+1 … T`` after the row's last update ``s``

    p_T = p_s · Π(1 − lrᵢ·wd) − (m_s / √v_s) · Σᵢ aᵢ · Πₖ≤ᵢ(β1ₖ / √β2) · Πₖ>ᵢ(1 − lrₖ·wd),
    aᵢ = lrᵢ · √bc2ᵢ / bc1ᵢ

with eps left out of the skipped steps (it is far below √v for any row that has had a gradient).
The sum is kept per step ``s`` and grown step by step for the last ``window`` steps; its terms shrink
by about β1 a step, so the ``window`` (512) steps it covers hold all but about 1e-11 of it. The
learning rate and β1 may change every step (a OneCycle schedule); β2 and eps are read per step too.
A row that never had a gradient only decays, as with dense gradients.

Only for one process: DDP would all-reduce the sparse gradients, which NCCL cannot and Gloo does with
known faults, so the training loop uses it with one worker on the CPU and plain AdamW otherwise. Its
``state_dict`` flushes first and holds AdamW's state alone (``step``, ``exp_avg``, ``exp_avg_sq``): every
row is current then, so either optimizer resumes from the other's checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

__all__ = ["LazyAdamW"]

_WINDOW = 512
#: state keys of a lazily updated table, beside AdamW's own
_LAZY_KEYS = ("lazy_last", "lazy_decay", "lazy_beta1", "lazy_beta2", "lazy_tail")


class LazyAdamW(torch.optim.AdamW):
    """AdamW (fused where the device has it) with lazily updated embedding tables; see the module."""

    def __init__(self, params: Iterable[Any], *, window: int = _WINDOW, **kwargs: Any) -> None:
        if kwargs.get("amsgrad") or kwargs.get("maximize"):
            raise ValueError("LazyAdamW supports neither amsgrad nor maximize")
        super().__init__(params, **kwargs)
        if window < 1:
            raise ValueError(f"window must be ≥ 1, got {window}")
        self.window = window
        self._tables: dict[torch.Tensor, nn.Embedding] = {}  # by identity
        self._hooks: list[Any] = []

    # -- setup -----------------------------------------------------------------------------------

    def add_table(self, table: nn.Embedding) -> None:
        """Update ``table`` lazily: its gradients become sparse and its rows are brought up to date
        when a forward pass reads them. The table's weight must be one of this optimizer's params."""
        weight = table.weight
        if not any(weight is p for g in self.param_groups for p in g["params"]):
            raise ValueError("the table's weight is not among this optimizer's parameters")
        if table.max_norm is not None:
            raise ValueError("a table with max_norm rewrites the rows it reads; it cannot be updated lazily")
        table.sparse = True
        self._tables[weight] = table
        self._hooks.append(table.register_forward_pre_hook(self._before_forward))

    def _group_of(self, p: torch.Tensor) -> dict[str, Any]:
        return next(g for g in self.param_groups if any(p is q for q in g["params"]))

    def _state(self, p: torch.Tensor) -> dict[str, Any]:
        """The table's state, made on first use (AdamW's keys plus the lazy ones); a state AdamW left
        (a resumed checkpoint) is taken as current at its step."""
        state = self.state[p]
        if "lazy_last" in state:
            return state
        if "exp_avg" not in state:
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        t = int(state["step"])
        state["lazy_last"] = torch.full((p.shape[0],), t, dtype=torch.int64, device=p.device)
        for key in _LAZY_KEYS[1:]:  # per step: log-products of the decay, β1 and β2; the tail sums
            state[key] = torch.zeros(t + 1, dtype=torch.float64)
        return state

    # -- the step ----------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        """AdamW's step for every dense gradient; the lazy tables' sparse gradients update their rows."""
        if closure is not None:
            raise ValueError("LazyAdamW.step takes no closure: compute the loss and its gradients first")
        sparse = [(p, p.grad) for p in self._tables if p.grad is not None and p.grad.is_sparse]
        for p, _ in sparse:
            p.grad = None
        try:
            loss = super().step()
        finally:
            for p, grad in sparse:
                p.grad = grad
        for p, grad in sparse:
            self._sparse_step(p, grad)
        return loss

    def _sparse_step(self, p: torch.Tensor, grad: torch.Tensor) -> None:
        group, state = self._group_of(p), self._state(p)
        grad = grad.coalesce()
        rows, values = grad.indices()[0], grad.values()
        t = int(state["step"]) + 1
        self._catch_up(p, state, rows, t - 1)
        lr, wd, eps = float(group["lr"]), float(group["weight_decay"]), float(group["eps"])
        beta1, beta2 = (float(b) for b in group["betas"])
        self._record(state, t, lr, wd, beta1, beta2)
        bc1, bc2 = 1.0 - beta1**t, 1.0 - beta2**t
        w, m, v = p[rows], state["exp_avg"][rows], state["exp_avg_sq"][rows]
        w.mul_(1.0 - lr * wd)
        m.lerp_(values, 1.0 - beta1)
        v.mul_(beta2).addcmul_(values, values, value=1.0 - beta2)
        w.addcdiv_(m, (v.sqrt() / math.sqrt(bc2)).add_(eps), value=-lr / bc1)
        p[rows], state["exp_avg"][rows], state["exp_avg_sq"][rows] = w, m, v
        state["lazy_last"][rows] = t
        state["step"].fill_(t)

    def _record(self, state: dict[str, Any], t: int, lr: float, wd: float, beta1: float, beta2: float) -> None:
        """Step ``t``'s factors: the log-products and, for the last ``window`` steps ``s``, the tail
        sums Σᵢ aᵢ·Π(β1/√β2)·Π(1 − lr·wd) over ``i = s+1 … t``."""
        keep = 1.0 - lr * wd
        if keep <= 0.0 or wd < 0.0:
            raise ValueError(f"lazy tables need 0 ≤ lr·weight_decay < 1, got lr {lr} and weight_decay {wd}")
        for key in _LAZY_KEYS[1:]:
            if len(state[key]) <= t:  # grow by doubling
                grown = torch.zeros(max(2 * len(state[key]), t + 1), dtype=torch.float64)
                grown[: len(state[key])] = state[key]
                state[key] = grown
        decay, b1, b2, tail = state["lazy_decay"], state["lazy_beta1"], state["lazy_beta2"], state["lazy_tail"]
        decay[t] = decay[t - 1] + math.log(keep)
        b1[t] = b1[t - 1] + math.log(beta1)
        b2[t] = b2[t - 1] + math.log(beta2)
        a = lr * math.sqrt(1.0 - beta2**t) / (1.0 - beta1**t)
        lo = max(0, t - self.window)
        momentum = torch.exp((b1[t] - b1[lo:t]) - 0.5 * (b2[t] - b2[lo:t]))
        tail[lo:t] = tail[lo:t] * keep + a * momentum
        tail[t] = 0.0

    def _catch_up(self, p: torch.Tensor, state: dict[str, Any], rows: torch.Tensor, target: int) -> None:
        """Bring ``rows`` (unique) up to step ``target``: the skipped steps in closed form."""
        last = state["lazy_last"][rows]
        behind = last < target
        if not bool(behind.any()):
            return
        rows, s = rows[behind], last[behind]
        decay, b1, b2, tail = state["lazy_decay"], state["lazy_beta1"], state["lazy_beta2"], state["lazy_tail"]
        s_cpu = s.cpu()
        # the tail sum covers s+1 … min(target, s+window); the decay after that multiplies it
        covered = torch.clamp(s_cpu + self.window, max=target)
        keep_all = torch.exp(decay[target] - decay[s_cpu])
        tail_now = tail[s_cpu] * torch.exp(decay[target] - decay[covered])
        m, v = state["exp_avg"][rows], state["exp_avg_sq"][rows]
        ratio = torch.where(v > 0, m / v.sqrt(), torch.zeros_like(m))
        dtype, device = p.dtype, p.device
        w = p[rows] * keep_all.to(dtype=dtype, device=device).unsqueeze(1)
        w -= ratio * tail_now.to(dtype=dtype, device=device).unsqueeze(1)
        p[rows] = w
        state["exp_avg"][rows] = m * torch.exp(b1[target] - b1[s_cpu]).to(dtype=dtype, device=device).unsqueeze(1)
        state["exp_avg_sq"][rows] = v * torch.exp(b2[target] - b2[s_cpu]).to(dtype=dtype, device=device).unsqueeze(1)
        state["lazy_last"][rows] = target

    def _before_forward(self, table: nn.Embedding, inputs: tuple[Any, ...]) -> None:
        state = self.state.get(table.weight)
        if not torch.is_grad_enabled() or not state or "lazy_last" not in state:
            return  # inference (every row is current after a flush), or no step taken yet
        with torch.no_grad():
            rows = torch.unique(inputs[0])
            self._catch_up(table.weight, state, rows, int(state["step"]))

    @torch.no_grad()
    def flush(self, chunk_rows: int = 65_536) -> None:
        """Bring every row of every lazy table up to the last step: call before the weights are read
        (validation, a checkpoint, the end of training). The steps after it compute exactly as after
        resuming from a checkpoint taken here."""
        for p in self._tables:
            state = self.state.get(p)
            if not state or "lazy_last" not in state:
                continue
            t = int(state["step"])
            for start in range(0, p.shape[0], chunk_rows):
                rows = torch.arange(start, min(start + chunk_rows, p.shape[0]), device=p.device)
                self._catch_up(p, state, rows, t)
            for key in _LAZY_KEYS:  # every row current: start the per-step sums afresh, as a resumed run does
                del state[key]

    # -- checkpoints -----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """AdamW's state after a :meth:`flush` (which drops the lazy keys): every row current, so AdamW
        (or this class) resumes it."""
        self.flush()
        return super().state_dict()

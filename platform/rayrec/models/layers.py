"""Small building blocks shared by the ranker and the two-tower model."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["masked_mean", "pooled", "mlp", "BitDropout"]


def masked_mean(table: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
    """Mean of the embeddings of the non-padding ids (id 0) of each row; zeros for an empty row.

    ``ids``: (B, L) int64 → (B, D)."""
    emb = table(ids)  # (B, L, D)
    mask = (ids > 0).to(emb.dtype).unsqueeze(-1)  # (B, L, 1)
    return (emb * mask).sum(1) / mask.sum(1).clamp_min(1.0)


def pooled(table: nn.Embedding, parts: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Several lookups of one table: a (n, L) part gives each row's :func:`masked_mean`, a (n,) part
    each id's embedding (such ids are never the padding id: the encoders give unknown values the OOV
    id).

    While the table trains, the lookups are one ``embedding_bag`` call: one pass over the table's
    gradient in the backward pass instead of one per lookup (each allocates and fills a dense gradient
    as large as the table, and the passes are then summed). At 62,000 movies this halves the
    two-tower's movie-table cost. Its sums run in another order than ``masked_mean``'s, so the results
    agree to float rounding. Without gradients (serving one user) separate lookups cost less; a table
    with sparse gradients (one the lazy optimizer updates, :mod:`rayrec.training.lazy`) is read through
    its module, whose hooks must run."""
    if table.sparse or not (torch.is_grad_enabled() and table.weight.requires_grad):
        return [masked_mean(table, p) if p.dim() == 2 else table(p) for p in parts]
    ids, weights, lengths = [], [], []
    for p in parts:
        if p.dim() == 1:
            ids.append(p)
            weights.append(torch.ones(p.shape, dtype=table.weight.dtype, device=p.device))
            lengths.append(torch.ones(p.shape, dtype=torch.long, device=p.device))
            continue
        mask = (p > 0).to(table.weight.dtype)  # (n, L)
        ids.append(p.reshape(-1))
        weights.append((mask / mask.sum(1, keepdim=True).clamp_min(1.0)).reshape(-1))
        lengths.append(torch.full((p.shape[0],), p.shape[1], dtype=torch.long, device=p.device))
    sizes = torch.cat(lengths)
    offsets = torch.cumsum(sizes, 0) - sizes
    out = F.embedding_bag(
        torch.cat(ids), table.weight, offsets, mode="sum",
        per_sample_weights=torch.cat(weights), padding_idx=table.padding_idx,
    )
    return list(out.split([len(p) for p in parts]))


#: the resolution of :class:`BitDropout`'s drop probability: 16 random bits an element
_LEVELS = 1 << 16


class BitDropout(nn.Module):
    """Dropout that draws its mask from 16 random bits an element.

    ``nn.Dropout`` on a CPU draws its mask with ``bernoulli_``: 0.82-0.86 ms for a (1024, 128) activation
    on one thread, where one 64-bit draw per four elements costs 0.1 ms. The ranker's two dropout
    layers took 16% of its training steps at ml-25m's scale (a profile of the training worker).
    Here an element is kept where its 16 bits, read as a signed integer, reach ``cut - 32768`` with
    ``cut = round(p · 65536)``: a drop probability within 2^-17 of ``p`` (0.2 → 0.199997), the kept
    values scaled by ``1 / (1 - cut / 65536)`` so the expectation is the input's. The bits come from
    ``random_`` over the whole int64 range (without bounds it leaves the top bit 0) on the default
    generator, so a seeded run is reproducible. Elsewhere than on a CPU, ``nn.Dropout``'s kernel;
    in eval mode, or with ``p`` 0, the input itself.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.cut = round(p * _LEVELS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.cut == 0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, True)
        n = x.numel()
        words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), 2**63 - 1)
        lanes = words.view(torch.int16)[:n].view(x.shape)
        keep = lanes >= self.cut - _LEVELS // 2
        return x * (keep.to(x.dtype) * (_LEVELS / (_LEVELS - self.cut)))

    def extra_repr(self) -> str:
        return f"p={self.p}"


def mlp(n_in: int, hidden: Sequence[int], n_out: int | None, dropout: float = 0.0) -> nn.Sequential:
    """Linear → ReLU → Dropout (:class:`BitDropout`) per hidden width, then an optional linear output layer."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(n_in, width), nn.ReLU()]
        if dropout > 0:
            layers.append(BitDropout(dropout))
        n_in = width
    if n_out is not None:
        layers.append(nn.Linear(n_in, n_out))
    return nn.Sequential(*layers)

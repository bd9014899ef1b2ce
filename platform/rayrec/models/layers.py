"""Small building blocks shared by the ranker and the two-tower model."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["masked_mean", "pooled", "mlp"]


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


def mlp(n_in: int, hidden: Sequence[int], n_out: int | None, dropout: float = 0.0) -> nn.Sequential:
    """Linear → ReLU → Dropout per hidden width, then an optional linear output layer."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(n_in, width), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        n_in = width
    if n_out is not None:
        layers.append(nn.Linear(n_in, n_out))
    return nn.Sequential(*layers)

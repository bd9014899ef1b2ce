"""Small building blocks shared by the ranker and the two-tower model."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["masked_mean", "mlp"]


def masked_mean(table: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
    """Mean of the embeddings of the non-padding ids (id 0) of each row; zeros for an empty row.

    ``ids``: (B, L) int64 → (B, D)."""
    emb = table(ids)  # (B, L, D)
    mask = (ids > 0).to(emb.dtype).unsqueeze(-1)  # (B, L, 1)
    return (emb * mask).sum(1) / mask.sum(1).clamp_min(1.0)


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

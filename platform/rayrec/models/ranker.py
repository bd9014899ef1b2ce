"""The Embedding+MLP ranker: embeddings of every categorical feature, normalised numeric features,
concatenated into an MLP (128-128-1) and a sigmoid; trained with binary cross-entropy.

It scores one (user, item) pair from the FeatureSpec's encoded inputs (``FeatureSpec.encode``):

    user: user_id (B,), user_genres (B,5), user_recent_items (B,5), user_count_bucket (B,), user_dense (B,5)
    item: item_id (B,), item_genres (B,3), item_year_bucket (B,), item_count_bucket (B,), item_dense (B,4)

The recent items are embedded with the movie table itself (a liked movie and a candidate movie share
one vector space), and two dot products make the user/item match explicit for the MLP: recent items ·
candidate and user genres · item genres.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from rayrec.features.spec import OOV
from rayrec.models.layers import masked_mean, mlp

__all__ = ["RankerConfig", "Ranker", "RANKER_INPUTS"]

RANKER_INPUTS = (
    "user_id",
    "user_genres",
    "user_recent_items",
    "user_count_bucket",
    "user_dense",
    "item_id",
    "item_genres",
    "item_year_bucket",
    "item_count_bucket",
    "item_dense",
)


@dataclass(frozen=True)
class RankerConfig:
    """Shape and regularisation of the ranker; table sizes come from the FeatureSpec."""

    embedding_dim: int = 16
    bucket_dim: int = 4
    hidden: tuple[int, ...] = (128, 128)
    dropout: float = 0.2
    id_dropout: float = 0.0  # share of training rows whose user and movie ids are replaced by OOV
    # Decoupled weight decay of the movie table. The movie-id embedding memorises the training movies
    # within one epoch; a strong decay shrinks a movie's vector between its (rare) updates, so only
    # movies seen often keep one and the rest fall back on their features.
    movie_weight_decay: float = 300.0

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RankerConfig:
        return cls(**{**d, "hidden": tuple(d.get("hidden", cls.hidden))})


class Ranker(nn.Module):
    """P(like | user, item). ``forward`` returns logits; ``predict`` probabilities."""

    kind = "ranker"

    def __init__(self, config: RankerConfig, sizes: Mapping[str, int]) -> None:
        super().__init__()
        self.config = config
        self.sizes = dict(sizes)
        d, b = config.embedding_dim, config.bucket_dim
        self.user = nn.Embedding(sizes["user_vocab"], d, padding_idx=0)
        self.item = nn.Embedding(sizes["item_vocab"], d, padding_idx=0)
        self.genre = nn.Embedding(sizes["genre_vocab"], d, padding_idx=0)
        self.user_count = nn.Embedding(sizes["user_rating_count_buckets"], b)
        self.item_count = nn.Embedding(sizes["item_rating_count_buckets"], b)
        self.item_year = nn.Embedding(sizes["item_year_buckets"], b)
        n_in = 6 * d + 3 * b + sizes["user_dense"] + sizes["item_dense"] + 3
        self.over = mlp(n_in, config.hidden, 1, config.dropout)
        for table in (self.user, self.item, self.genre):
            nn.init.normal_(table.weight, std=0.05)

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups: the movie table with its own decay, the rest with ``weight_decay``."""
        rest = [p for n, p in self.named_parameters() if n != "item.weight"]
        return [
            {"params": [self.item.weight], "weight_decay": self.config.movie_weight_decay},
            {"params": rest, "weight_decay": weight_decay},
        ]

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        user_id, item_id = batch["user_id"], batch["item_id"]
        if self.training and self.config.id_dropout > 0:
            user_id = _drop(user_id, self.config.id_dropout)
            item_id = _drop(item_id, self.config.id_dropout)
        user = self.user(user_id)  # (B, d)
        item = self.item(item_id)  # (B, d)
        recent = masked_mean(self.item, batch["user_recent_items"])  # (B, d)
        user_genres = masked_mean(self.genre, batch["user_genres"])  # (B, d)
        item_genres = masked_mean(self.genre, batch["item_genres"])  # (B, d)
        ug, ig = batch["user_genres"], batch["item_genres"]
        overlap = ((ug.unsqueeze(2) == ig.unsqueeze(1)) & (ig.unsqueeze(1) > 0)).any(1).float().sum(1)  # (B,)
        cross = torch.stack(
            [(recent * item).sum(1), (user_genres * item_genres).sum(1), overlap / 3.0], dim=1
        )  # (B, 3)
        x = torch.cat(
            [
                user, item, recent, user_genres, item_genres, user * item,
                self.user_count(batch["user_count_bucket"]),
                self.item_count(batch["item_count_bucket"]),
                self.item_year(batch["item_year_bucket"]),
                batch["user_dense"], batch["item_dense"], cross,
            ],
            dim=1,
        )  # fmt: skip
        return self.over(x).squeeze(1)  # (B,)

    def loss(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(self(batch), batch["label"].float())

    @torch.no_grad()
    def predict(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return torch.sigmoid(self(batch))


def _drop(ids: torch.Tensor, p: float) -> torch.Tensor:
    """Replace a random share ``p`` of ids by the OOV id: the model must also score from features."""
    return torch.where(torch.rand(ids.shape, device=ids.device) < p, torch.full_like(ids, OOV), ids)

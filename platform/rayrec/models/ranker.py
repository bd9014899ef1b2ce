"""The Embedding+MLP ranker: embeddings of every categorical feature, normalised numeric features,
concatenated into an MLP (128-128) with one logit per head; trained with binary cross-entropy.

Objectives (``RankerConfig.objective``):

- ``topn`` (default): it ranks the candidates recall offers, most of which the user never rates, so it
  learns two heads: P(interact | user, item), on rated pairs against sampled unrated movies of the
  same time (:mod:`rayrec.training.negatives`), and P(like | interact), on rated pairs only.
  The ranking score is ``P(interact) · P(like | interact) ** like_weight``.
- ``like``: one head, P(rating ≥ threshold | the user rated the item), on rated pairs only. It knows
  nothing of what users never watch, and promotes well-rated items that few people pick.

It scores one (user, item) pair from the FeatureSpec's encoded inputs (``FeatureSpec.encode``):

    user: user_id (B,), user_genres (B,5), user_recent_items (B,5), user_count_bucket (B,), user_dense (B,5)
    item: item_id (B,), item_genres (B,3), item_year_bucket (B,), item_count_bucket (B,), item_dense (B,4)

With ``ease_feature`` it also takes the pair's EASE score, ``ease_score`` (B,): the summed EASE weights
from every movie the user rated before (:mod:`rayrec.training.ease_feature`), which serving computes
from the weights stored with the version (:data:`EASE_FILE`).

The recent items are embedded with the movie table itself (a liked movie and a candidate movie share
one vector space), and two dot products make the user/item match explicit for the MLP: recent items ·
candidate and user genres · item genres.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from rayrec.features.spec import OOV
from rayrec.models.layers import masked_mean, mlp, pooled

__all__ = ["RankerConfig", "Ranker", "RANKER_INPUTS", "EASE_FILE"]

EASE_FILE = "ease.npz"  # a ranker version's EASE weights (``ease_feature``): its serving scores

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
    objective: Literal["topn", "like"] = "topn"
    like_weight: float = 1.0  # topn: exponent of P(like | interact) in the ranking score
    negatives: int = 4  # topn: sampled unrated movies per rated training row
    hard_negatives: float = 0.5  # topn: share of them drawn from what others rated around the row's time
    negative_window: int = 2000  # topn: ratings around the row's time those are drawn from
    # An input of the EASE score of the (user, movie) pair (rayrec.training.ease_feature: point in time and
    # cross-fitted in training; at serving from weights on every rating, stored with the version).
    ease_feature: bool = False
    ease_lambda: float = 400.0
    ease_top_k: int = 100
    # topn: rows of the candidates recall would offer (the top `candidates` unrated movies of the cross-fitted
    # EASE scores) as of each user's time when the last `candidate_future` share of their training rows
    # begins, labelled by whether the user went on to rate them then, without the user's id: the ranker
    # also learns to order recall's candidates, not only to tell a rated movie from a sampled one (0: none).
    # Both are off: pipelines.evaluate on ml-latest-small (NDCG@10 temporal / random), the ranker's own order
    # 0.089 / 0.117 → 0.110 / 0.140 with ease_feature → 0.112 / 0.137 with candidates=100 too, but the served
    # list (rank_weight 0.25) 0.143 / 0.341 → 0.136 / 0.332 → 0.137 / 0.325. Chosen by the served list's NDCG,
    # both stay off. (With the user's id on the candidate rows the ranker fell to 0.096 / 0.070: it learnt
    # the very pairs the user takes after the data ends as "not taken".)
    candidates: int = 0
    candidate_future: float = 0.2

    def __post_init__(self) -> None:
        if self.ease_lambda <= 0 or self.ease_top_k < 1:
            raise ValueError(f"ease_lambda must be > 0 and ease_top_k ≥ 1, got {self.ease_lambda} and {self.ease_top_k}")
        if self.candidates < 0 or not 0.0 < self.candidate_future < 1.0:
            raise ValueError(f"candidates must be ≥ 0 and candidate_future in (0, 1), got {self.candidates} and {self.candidate_future}")
        if self.candidates and self.objective != "topn":
            raise ValueError("candidates (rows of what recall offered) need the topn objective")

    @property
    def heads(self) -> int:
        return 2 if self.objective == "topn" else 1

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RankerConfig:
        # a config saved before objectives existed is a one-head like model
        return cls(**{"objective": "like", **d, "hidden": tuple(d.get("hidden", cls.hidden))})


class Ranker(nn.Module):
    """Scores (user, item) pairs. ``forward`` returns the heads' logits (B, H); ``predict`` the
    ranking score in [0, 1]; ``like_probability`` P(like | the user rated the item)."""

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
        n_in = 6 * d + 3 * b + sizes["user_dense"] + sizes["item_dense"] + 3 + int(config.ease_feature)
        self.over = mlp(n_in, config.hidden, config.heads, config.dropout)
        for table in (self.user, self.item, self.genre):
            nn.init.normal_(table.weight, std=0.05)

    def lazy_tables(self) -> list[nn.Embedding]:
        """Tables a batch reads a few rows of: the optimizer may update them lazily (``rayrec.training.lazy``)."""
        return [self.user]

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
        item, recent = pooled(self.item, [item_id, batch["user_recent_items"]])  # (B, d) each, one table read
        user_genres = masked_mean(self.genre, batch["user_genres"])  # (B, d)
        item_genres = masked_mean(self.genre, batch["item_genres"])  # (B, d)
        ug, ig = batch["user_genres"], batch["item_genres"]
        overlap = ((ug.unsqueeze(2) == ig.unsqueeze(1)) & (ig.unsqueeze(1) > 0)).any(1).float().sum(1)  # (B,)
        cross = torch.stack(
            [(recent * item).sum(1), (user_genres * item_genres).sum(1), overlap / 3.0], dim=1
        )  # (B, 3)
        if self.config.ease_feature:
            if "ease_score" not in batch:
                raise ValueError("this ranker takes an 'ease_score' input: build its rows with rayrec.training.jobs.ranker_rows")
            cross = torch.cat([cross, batch["ease_score"].float().unsqueeze(1)], dim=1)  # (B, 4)
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
        return self.over(x)  # (B, H): [interact, like] for topn, [like] for like

    def loss_of(self, logits: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Binary cross-entropy of the heads; the like head learns from rated rows only."""
        bce = nn.functional.binary_cross_entropy_with_logits
        label = batch["label"].float()
        if self.config.objective == "like":
            return bce(logits[:, 0].float(), label)
        if "interact" not in batch:
            raise ValueError("the topn ranker learns from rated rows and sampled negatives, marked by 'interact': "
                             "build its rows with rayrec.training.jobs.ranker_rows")  # fmt: skip
        rated = batch["interact"].float()
        like = bce(logits[:, 1].float(), label, reduction="none")
        return bce(logits[:, 0].float(), rated) + (like * rated).sum() / rated.sum().clamp_min(1.0)

    def loss(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.loss_of(self(batch), batch)

    def score_of(self, logits: torch.Tensor) -> torch.Tensor:
        """(B,) ranking score in [0, 1] from the heads' logits."""
        if self.config.objective == "like":
            return torch.sigmoid(logits[:, 0])
        log_s = nn.functional.logsigmoid(logits[:, 0]) + self.config.like_weight * nn.functional.logsigmoid(logits[:, 1])
        return torch.exp(log_s)

    @torch.no_grad()
    def predict(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.score_of(self(batch))

    @torch.no_grad()
    def like_probability(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return torch.sigmoid(self(batch)[:, -1])


def _drop(ids: torch.Tensor, p: float) -> torch.Tensor:
    """Replace a random share ``p`` of ids by the OOV id: the model must also score from features."""
    return torch.where(torch.rand(ids.shape, device=ids.device) < p, torch.full_like(ids, OOV), ids)

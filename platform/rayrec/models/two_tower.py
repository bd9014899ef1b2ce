"""The two-tower retriever: a user tower and an item tower whose L2-normalised outputs meet in a dot
product, trained with an in-batch sampled softmax (log-Q popularity correction, temperature).

User tower: user id, the user's dense features and favourite genres, and the mean of the movie-id
embeddings of the user's positive history (``history_items``: up to ``history_len`` liked movies, most
recent first) and of the 5 most recent ones. Item tower: movie id, genres, release-year bucket,
rating-count bucket and item statistics. The movie-id table is shared by the history pooling and the
item tower, so a liked movie and a candidate movie live in one space. Each tower adds its id part and
a small MLP over its side features, then L2-normalises; the score is the dot product / temperature.

The item statistics a training row carries should be one snapshot per movie, not the sample's
point-in-time values: those encode *when* a rating happened, and in-batch negatives from other times
would teach the towers to match clocks instead of tastes (see ``rayrec.training.jobs.retriever_rows``).

Cold items: during training a share (``id_dropout``) of the positives' movie ids is replaced by the
out-of-vocabulary id, so the OOV slot learns an "unknown movie" vector and the content features
(genres, year, statistics) alone still place a never-seen movie in the space.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from rayrec.features.spec import OOV
from rayrec.models.layers import masked_mean, mlp, pooled

__all__ = ["TwoTowerConfig", "TwoTower", "USER_INPUTS", "ITEM_INPUTS", "sampled_softmax_loss"]

USER_INPUTS = ("user_id", "user_genres", "user_recent_items", "user_count_bucket", "user_dense", "history_items")
ITEM_INPUTS = ("item_id", "item_genres", "item_year_bucket", "item_count_bucket", "item_dense")


@dataclass(frozen=True)
class TwoTowerConfig:
    """Shape and training objective of the two-tower model; table sizes come from the FeatureSpec."""

    id_dim: int = 64  # movie-id and user-id embedding width, and the output width
    feature_dim: int = 16  # genre and bucket embedding width
    hidden: tuple[int, ...] = (128,)
    history_len: int = 50  # liked movies pooled by the user tower
    temperature: float = 0.1
    # Weight of the log-Q correction: 0 = plain in-batch softmax (learns PMI, buries popular movies),
    # 1 = unbiased estimate of the full softmax, above 1 leans further toward popular movies. The
    # validation split (next ratings in time) prefers about 1.5: what users rate next is often popular.
    logq: float = 1.5
    id_dropout: float = 0.1  # share of training positives seen through the OOV id
    dropout: float = 0.0
    user_weight_decay: float = 10.0  # decoupled decay of the user-id table: keeps it a small correction
    # training positives: "liked" rows (rating ≥ the label threshold) or "all" rated rows (every
    # interaction, what relevance means when any watch counts); the pooled history is liked movies
    positives: Literal["liked", "all"] = "liked"

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TwoTowerConfig:
        return cls(**{**d, "hidden": tuple(d.get("hidden", cls.hidden))})


class TwoTower(nn.Module):
    """``user(batch)`` → (B, D) and ``item(batch)`` → (N, D), both L2-normalised; ``forward`` gives both.

    Each tower is a sum before the normalisation: the id part (pooled history / movie id) carries
    collaborative signal, a small MLP over the side features adds what ids cannot know (a cold movie's
    genres and year, a new user's tastes). The MLPs' last layers start near zero, so training begins
    from the pure id model and the features earn their weight."""

    kind = "retriever"
    log_q: torch.Tensor

    def __init__(self, config: TwoTowerConfig, sizes: Mapping[str, int]) -> None:
        super().__init__()
        self.config = config
        self.sizes = dict(sizes)
        d, f = config.id_dim, config.feature_dim
        self.item_ids = nn.Embedding(sizes["item_vocab"], d, padding_idx=0)  # shared: history + item tower
        self.user_ids = nn.Embedding(sizes["user_vocab"], d, padding_idx=0)
        self.genres = nn.Embedding(sizes["genre_vocab"], f, padding_idx=0)
        self.user_count = nn.Embedding(sizes["user_rating_count_buckets"], f)
        self.item_count = nn.Embedding(sizes["item_rating_count_buckets"], f)
        self.item_year = nn.Embedding(sizes["item_year_buckets"], f)
        self.user_arch = mlp(2 * f + sizes["user_dense"], config.hidden, d, config.dropout)
        self.item_arch = mlp(3 * f + sizes["item_dense"], config.hidden, d, config.dropout)
        for table in (self.item_ids, self.genres, self.user_count, self.item_count, self.item_year):
            nn.init.normal_(table.weight, std=0.05)
        nn.init.normal_(self.user_ids.weight, std=0.01)
        for arch in (self.user_arch, self.item_arch):
            nn.init.normal_(arch[-1].weight, std=0.01)  # type: ignore[arg-type]
            nn.init.zeros_(arch[-1].bias)  # type: ignore[arg-type]
        # log of each movie's in-batch sampling probability; set by the training task, not saved
        self.register_buffer("log_q", torch.zeros(sizes["item_vocab"]), persistent=False)

    def user(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self._user(batch, *pooled(self.item_ids, self._user_items(batch)))

    def item(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        ids = self._item_ids(batch)
        return self._item(batch, pooled(self.item_ids, [ids])[0])

    def forward(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        # one read of the movie table for both towers: one pass over its gradient (``pooled``)
        ids = self._item_ids(batch)
        history, recent, items = pooled(self.item_ids, [*self._user_items(batch), ids])
        return self._user(batch, history, recent), self._item(batch, items)

    def _user_items(self, batch: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        """The movie ids the user tower pools: the liked history (B, H) and the latest likes (B, 5)."""
        return [batch.get("history_items", batch["user_recent_items"]), batch["user_recent_items"]]

    def _item_ids(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        ids = batch["item_id"]
        if self.training and self.config.id_dropout > 0:
            ids = torch.where(torch.rand(ids.shape, device=ids.device) < self.config.id_dropout, OOV, ids)
        return ids

    def _user(self, batch: Mapping[str, torch.Tensor], history: torch.Tensor, recent: torch.Tensor) -> torch.Tensor:
        side = torch.cat(
            [
                masked_mean(self.genres, batch["user_genres"]),  # (B, f)
                self.user_count(batch["user_count_bucket"]),  # (B, f)
                batch["user_dense"],  # (B, 5)
            ],
            dim=1,
        )
        x = (
            history  # (B, d): long-term taste, the mean of the liked movies' vectors
            + recent  # (B, d): the latest likes
            + self.user_ids(batch["user_id"])  # (B, d)
            + self.user_arch(side)  # (B, d)
        )
        return F.normalize(x, dim=1)  # (B, d)

    def _item(self, batch: Mapping[str, torch.Tensor], movie: torch.Tensor) -> torch.Tensor:
        side = torch.cat(
            [
                masked_mean(self.genres, batch["item_genres"]),  # (N, f)
                self.item_year(batch["item_year_bucket"]),  # (N, f)
                self.item_count(batch["item_count_bucket"]),  # (N, f)
                batch["item_dense"],  # (N, 4)
            ],
            dim=1,
        )
        return F.normalize(movie + self.item_arch(side), dim=1)  # (N, d)

    def set_sampling_counts(self, counts: torch.Tensor) -> None:
        """Per movie id, how often it is a training positive: the log-Q correction's estimate."""
        q = counts.double().clamp_min(1.0)
        self.log_q = (q / q.sum()).log().float().to(self.log_q.device)

    def loss(self, outputs: tuple[torch.Tensor, torch.Tensor], batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        users, items = outputs
        log_q = self.config.logq * self.log_q[batch["item_id"]] if self.config.logq else None
        return sampled_softmax_loss(users, items, batch["item_id"], self.config.temperature, log_q)

    def lazy_tables(self) -> list[nn.Embedding]:
        """Tables a batch reads a few rows of: the optimizer may update them lazily (``rayrec.training.lazy``)."""
        return [self.user_ids]

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups: the user table with its own decay, the rest with ``weight_decay``."""
        rest = [p for n, p in self.named_parameters() if n != "user_ids.weight"]
        return [
            {"params": [self.user_ids.weight], "weight_decay": self.config.user_weight_decay},
            {"params": rest, "weight_decay": weight_decay},
        ]


def sampled_softmax_loss(
    users: torch.Tensor,
    items: torch.Tensor,
    item_ids: torch.Tensor,
    temperature: float,
    log_q: torch.Tensor | None = None,
) -> torch.Tensor:
    """In-batch softmax: row i's positive is item i, the other rows' items are its negatives.

    ``log_q`` (N,) corrects for popular items appearing as negatives more often than uniform sampling
    would (Yi et al., 2019); other rows holding the same movie as row i are not negatives."""
    logits = (users / temperature) @ items.T  # (B, B); scaling the (B, D) side costs less than the (B, B)
    if log_q is not None:
        logits = logits - log_q.unsqueeze(0)
    same = item_ids.unsqueeze(0) == item_ids.unsqueeze(1)  # (B, B)
    same.fill_diagonal_(False)
    logits = logits.masked_fill_(same, float("-inf"))  # in place: neither the product nor the difference is kept for backward
    return F.cross_entropy(logits.float(), torch.arange(len(users), device=users.device))

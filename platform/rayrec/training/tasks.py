"""Training tasks: what the one training loop needs to know about a model.

A task builds its model, turns a batch into a loss, and scores the model on its validation data (held
as numpy arrays, small next to the training set, so it travels with the task to every worker). The
ranker's validation metric is ROC AUC on the validation rows; the retriever's is Recall@50 over the
whole catalog, with the users' state at the fit/validation boundary.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from rayrec.evaluation.classification import classification_metrics
from rayrec.evaluation.retrieval import RetrievalTask, evaluate
from rayrec.models import build_model
from rayrec.models.inputs import HISTORY, wide
from rayrec.models.two_tower import TwoTower

__all__ = ["RankTask", "RetrieveTask", "RetrievalData", "predict_ranker", "encode_towers", "retrieval_metrics", "HISTORY_END", "HISTORY_LEN"]

Arrays = Mapping[str, np.ndarray]

#: a training row's history by reference (:class:`rayrec.training.data.Histories`): where it ends in
#: the task's ``history_likes``, and how long it is
HISTORY_END, HISTORY_LEN = "history_end", "history_len"


def _chunks(arrays: Arrays, size: int, device: torch.device) -> Any:
    """``arrays`` in row chunks of ``size`` as tensors on ``device``. A read-only array (one Ray's
    object store hands out) is copied chunk by chunk: torch does not take read-only memory. Integer
    arrays stored narrow (the ranker's validation rows are int32 and int8) come as int64."""
    n = len(next(iter(arrays.values())))
    for start in range(0, n, size):
        yield {k: wide(torch.as_tensor(np.require(v[start : start + size], requirements="W")).to(device)) for k, v in arrays.items()}


#: rows per forward pass of the evaluation helpers
PREDICT_BATCH = 8192


@torch.no_grad()
def predict_ranker(
    model: nn.Module, arrays: Arrays, device: torch.device | str = "cpu", chunk: int = PREDICT_BATCH, like: bool = False
) -> np.ndarray:
    """The ranker's ranking scores (``predict``; ``like=True``: P(like | rated)) on encoded rows, in order."""
    was = model.training
    model.eval()
    fn: Any = model.like_probability if like else model.predict  # the Ranker's methods
    out = [fn(b).float().cpu().numpy() for b in _chunks(arrays, chunk, torch.device(device))]
    model.train(was)
    return np.concatenate(out) if out else np.zeros(0, np.float32)


@torch.no_grad()
def encode_towers(
    model: TwoTower, users: Arrays, items: Arrays, device: torch.device | str = "cpu", chunk: int = PREDICT_BATCH
) -> tuple[np.ndarray, np.ndarray]:
    """(U, D) user vectors and (N, D) item vectors, both L2-normalised."""
    was = model.training
    model.eval()
    dev = torch.device(device)
    u = [model.user(b).float().cpu().numpy() for b in _chunks(users, chunk, dev)]
    i = [model.item(b).float().cpu().numpy() for b in _chunks(items, chunk, dev)]
    model.train(was)
    return np.concatenate(u), np.concatenate(i)


@dataclass(frozen=True)
class RetrievalData:
    """A retrieval evaluation: the task, its users' encoded state (in task order) and the catalog."""

    task: RetrievalTask
    users: dict[str, np.ndarray]
    items: dict[str, np.ndarray]


def retrieval_metrics(model: TwoTower, data: RetrievalData, device: torch.device | str = "cpu") -> dict[str, float]:
    u, i = encode_towers(model, data.users, data.items, device)
    return evaluate(data.task, lambda pos: u[pos] @ i.T)


@dataclass(frozen=True)
class RankTask:
    """The ranker's heads with BCE (see :class:`~rayrec.models.ranker.Ranker`). Validation: ROC AUC of
    the ranking score against ``label`` (liked) on the validation rows (with their sampled negatives
    for the ``topn`` objective)."""

    config: Any  # RankerConfig
    sizes: dict[str, int]
    rows: int  # training rows, for the learning-rate schedule
    valid: dict[str, np.ndarray] | None = None
    name: str = "ranker"
    metric: str = "auc"
    drop_last: bool = False

    def build(self) -> nn.Module:
        return build_model(self.name, self.config, self.sizes)

    def loss(self, model: nn.Module, raw: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return raw.loss_of(model(batch), batch)  # type: ignore[operator]

    def validate(self, raw: nn.Module, device: torch.device) -> dict[str, float]:
        assert self.valid is not None
        m = classification_metrics(self.valid["label"], predict_ranker(raw, self.valid, device))
        return {"auc": m["auc"], "logloss": m["logloss"]}


@dataclass(frozen=True)
class RetrieveTask:
    """In-batch sampled softmax over (user state, liked movie) rows."""

    config: Any  # TwoTowerConfig
    sizes: dict[str, int]
    rows: int
    item_counts: np.ndarray = field(repr=False)  # per movie id: times it is a training positive
    valid: RetrievalData | None = None
    # encoded liked items that rows' HISTORY_END/HISTORY_LEN point into (None: rows carry HISTORY)
    history_likes: np.ndarray | None = field(default=None, repr=False)
    _likes_on: dict[str, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)
    name: str = "retriever"
    metric: str = "recall@50"
    drop_last: bool = True  # a tiny last batch has too few in-batch negatives

    def build(self) -> nn.Module:
        model = build_model(self.name, self.config, self.sizes)
        assert isinstance(model, TwoTower)
        model.set_sampling_counts(torch.tensor(np.asarray(self.item_counts)))
        return model

    def loss(self, model: nn.Module, raw: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        assert isinstance(raw, TwoTower)
        batch = self.with_history(batch)
        return raw.loss(model(batch), batch)

    def with_history(self, batch: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
        """``batch`` with its (B, history_len) HISTORY gathered from the rows' references: row i's
        history is ``likes[end - 1], likes[end - 2], …``, ``length`` of them, then padding (0)."""
        if self.history_likes is None or HISTORY_END not in batch:
            return batch
        end, length = batch[HISTORY_END], batch[HISTORY_LEN]
        key = str(end.device)
        if key not in self._likes_on:
            self._likes_on[key] = torch.as_tensor(np.asarray(self.history_likes, dtype=np.int64)).to(end.device)
        likes = self._likes_on[key]
        offsets = torch.arange(self.config.history_len, device=end.device)
        keep = offsets[None, :] < length[:, None]
        if len(likes):
            idx = torch.where(keep, end[:, None] - 1 - offsets[None, :], 0)
            hist = torch.where(keep, likes[idx], 0)
        else:
            hist = torch.zeros(keep.shape, dtype=torch.int64, device=end.device)
        return {**batch, HISTORY: hist}

    def validate(self, raw: nn.Module, device: torch.device) -> dict[str, float]:
        assert self.valid is not None and isinstance(raw, TwoTower)
        m = retrieval_metrics(raw, self.valid, device)
        return {"recall@50": m["recall@50"], "ndcg@10": m["ndcg@10"]}

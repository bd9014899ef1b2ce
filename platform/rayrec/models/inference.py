"""Models in serving: load a registered version and score with plain torch (no Ray).

    loaded = load_model(artifacts, "ranker", spec=spec)       # fails clearly on a FeatureSpec mismatch
    probs = RankerScorer(loaded, spec).score(user_rows, item_rows)
    enc = TowerEncoder(load_model(artifacts, "retriever", spec=spec), spec)
    user_vectors, item_vectors = enc.users(user_rows), enc.items(item_rows)

Rows are DataFrames shaped like the online store's (``online/users.parquet``, ``online/items.parquet``).
Scoring runs under ``torch.inference_mode`` on CPU; a scorer is cheap to call for one user × a few
hundred items and safe to share between threads (the model is never mutated).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from rayrec import registry
from rayrec.features.spec import FeatureSpec
from rayrec.models import build_model, model_config
from rayrec.models.inputs import encode_items, encode_users
from rayrec.models.ranker import Ranker
from rayrec.models.two_tower import TwoTower

__all__ = [
    "LoadedModel",
    "load_model",
    "RankerScorer",
    "TowerEncoder",
    "SpecMismatchError",
    "user_vectors",
    "item_vectors",
]

SpecMismatchError = registry.SpecMismatchError


@dataclass
class LoadedModel:
    """A registered model version, in eval mode."""

    name: str
    version: str
    path: str
    model: nn.Module
    config: Any  # RankerConfig | TwoTowerConfig
    meta: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def spec_hash(self) -> str:
        return str(self.meta["spec_hash"])

    def check_spec(self, spec: FeatureSpec) -> None:
        """Raise :class:`SpecMismatchError` unless ``spec`` is the FeatureSpec the model was trained with."""
        registry.check_spec(self.meta, spec)


def load_model(artifacts: str, name: str, version: str = "latest", spec: FeatureSpec | None = None) -> LoadedModel:
    """Load model ``name`` ("ranker" | "retriever") at ``version`` ("latest" or a version name).

    With ``spec``, raises :class:`SpecMismatchError` unless it is the FeatureSpec the model was trained
    against."""
    stored = registry.load(artifacts, name, version)
    if spec is not None:
        registry.check_spec(stored.meta, spec)
    kind = stored.config["kind"]
    config = model_config(kind, stored.config["model"])
    model = build_model(kind, config, stored.config["sizes"])
    model.load_state_dict(stored.weights)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return LoadedModel(name, stored.version, stored.path, model, config, stored.meta, stored.metrics)


def _tensors(arrays: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}


class RankerScorer:
    """Probabilities of the Embedding+MLP ranker for (user, item) rows."""

    def __init__(self, loaded: LoadedModel, spec: FeatureSpec) -> None:
        if not isinstance(loaded.model, Ranker):
            raise TypeError(f"model {loaded.name!r} is a {type(loaded.model).__name__}, not a Ranker")
        loaded.check_spec(spec)
        self.loaded, self.spec, self.model = loaded, spec, loaded.model

    def score(self, user_rows: pd.DataFrame, item_rows: pd.DataFrame) -> np.ndarray:
        """(N,) probabilities: one user row broadcast over N item rows, or N paired rows."""
        n_users, n_items = len(user_rows), len(item_rows)
        if n_items == 0:
            return np.zeros(0, dtype=np.float32)
        if n_users not in (1, n_items):
            raise ValueError(f"score() takes one user row or one per item row; got {n_users} users, {n_items} items")
        user = self.spec.encode_user(user_rows)
        if n_users == 1 and n_items > 1:
            user = {k: np.repeat(v, n_items, axis=0) for k, v in user.items()}
        batch = _tensors({**user, **self.spec.encode_item(item_rows)})
        with torch.inference_mode():
            return self.model.predict(batch).numpy().astype(np.float32, copy=False)


def user_vectors(model: TwoTower, spec: FeatureSpec, rows: pd.DataFrame | Mapping[str, Any]) -> np.ndarray:
    """(B, D) user vectors of feature rows (``history_items`` used when present)."""
    batch = _tensors(encode_users(spec, rows, model.config.history_len))
    with torch.inference_mode():
        return model.user(batch).float().numpy()


def item_vectors(model: TwoTower, spec: FeatureSpec, rows: pd.DataFrame, chunk: int = 8192) -> np.ndarray:
    """(N, D) item vectors of feature rows, in chunks; unknown movieIds go through the OOV id."""
    out = [np.zeros((0, model.config.id_dim), dtype=np.float32)]
    for start in range(0, len(rows), chunk):
        batch = _tensors(encode_items(spec, rows.iloc[start : start + chunk]))
        with torch.inference_mode():
            out.append(model.item(batch).float().numpy())
    return np.concatenate(out)


class TowerEncoder:
    """User and item vectors of the two-tower retriever (L2-normalised, float32)."""

    def __init__(self, loaded: LoadedModel, spec: FeatureSpec) -> None:
        if not isinstance(loaded.model, TwoTower):
            raise TypeError(f"model {loaded.name!r} is a {type(loaded.model).__name__}, not a TwoTower")
        loaded.check_spec(spec)
        self.loaded, self.spec, self.model = loaded, spec, loaded.model
        self.dim = loaded.config.id_dim

    def users(self, user_rows: pd.DataFrame) -> np.ndarray:
        """(B, D) from user rows; a ``history_items`` column (liked movieIds, most recent first) is used
        when present, else ``user_recent_items``."""
        if len(user_rows) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return user_vectors(self.model, self.spec, user_rows)

    def items(self, item_rows: pd.DataFrame) -> np.ndarray:
        """(N, D) from item rows; movieIds unknown to the model use the out-of-vocabulary id."""
        return item_vectors(self.model, self.spec, item_rows)

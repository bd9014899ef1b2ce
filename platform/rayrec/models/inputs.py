"""Model inputs from feature rows, the same code for training batches and for serving.

Rows are what the samples and the online store hold (``userId`` + user features, ``movieId`` + item
features); the FeatureSpec turns them into id and dense arrays. The two-tower user tower additionally
reads ``history_items`` (liked movieIds, most recent first) when the rows carry it, and falls back to
``user_recent_items`` otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeAlias

import numpy as np
import pandas as pd
import torch

from rayrec.features.spec import FeatureSpec

__all__ = ["HISTORY", "encode_users", "encode_items", "encode_pairs", "to_tensors"]

HISTORY = "history_items"  # optional column: the user's liked movieIds, most recent first

Rows: TypeAlias = "pd.DataFrame | Mapping[str, Any]"


def _history(spec: FeatureSpec, rows: Rows, history_len: int) -> np.ndarray:
    col = rows[HISTORY] if HISTORY in rows else rows["user_recent_items"]
    values = col.to_numpy() if isinstance(col, pd.Series) else col
    return spec.vocabs["item"].lookup_lists(values, history_len)


def encode_users(spec: FeatureSpec, rows: Rows, history_len: int | None = None) -> dict[str, np.ndarray]:
    """User-side inputs; with ``history_len`` also ``history_items`` (B, history_len)."""
    out = spec.encode_user(rows)
    if history_len:
        out[HISTORY] = _history(spec, rows, history_len)
    return out


def encode_items(spec: FeatureSpec, rows: Rows) -> dict[str, np.ndarray]:
    """Item-side inputs; unknown movieIds get the out-of-vocabulary id."""
    return spec.encode_item(rows)


def encode_pairs(spec: FeatureSpec, rows: Rows, history_len: int | None = None) -> dict[str, np.ndarray]:
    """User and item inputs of paired rows, plus ``label`` and ``interact`` (float32) when the rows carry
    them."""
    out = {**encode_users(spec, rows, history_len), **spec.encode_item(rows)}
    for target in ("label", "interact"):
        if target in rows:
            out[target] = np.asarray(rows[target], dtype=np.float32)
    return out


def to_tensors(arrays: Mapping[str, np.ndarray], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    cpu = str(device) == "cpu"  # no .to() call per tensor on the CPU (the serving path)
    out = {k: torch.as_tensor(np.ascontiguousarray(v)) for k, v in arrays.items()}
    return out if cpu else {k: t.to(device) for k, t in out.items()}

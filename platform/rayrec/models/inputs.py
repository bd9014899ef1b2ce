"""Model inputs from feature rows, the same code for training batches and for serving.

Rows are what the samples and the online store hold (``userId`` + user features, ``movieId`` + item
features); the FeatureSpec turns them into id and dense arrays. The two-tower user tower additionally
reads ``history_items`` (liked movieIds, most recent first) when the rows carry it, and falls back to
``user_recent_items`` otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

import numpy as np
import pandas as pd
import torch

from rayrec.features.pointintime import ITEM_FEATURES, N_RECENT_ITEMS, USER_FEATURES
from rayrec.features.spec import FeatureSpec

__all__ = ["HISTORY", "encode_users", "encode_items", "encode_pairs", "to_tensors", "wide", "item_columns", "user_columns"]

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
    """User and item inputs of paired rows, plus ``label``, ``interact`` and the pair's ``ease_score``
    (float32) when the rows carry them."""
    out = {**encode_users(spec, rows, history_len), **spec.encode_item(rows)}
    for target in ("label", "interact", "ease_score"):
        if target in rows:
            out[target] = np.asarray(rows[target], dtype=np.float32)
    return out


def wide(t: torch.Tensor) -> torch.Tensor:
    """An integer tensor as int64 (what the models' lookups and offsets take), however narrow it was
    stored; other tensors as they are."""
    return t.long() if t.dtype in (torch.int8, torch.int16, torch.int32, torch.uint8) else t


def to_tensors(arrays: Mapping[str, np.ndarray], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    cpu = str(device) == "cpu"  # no .to() call per tensor on the CPU (the serving path)
    out = {k: torch.as_tensor(np.ascontiguousarray(v)) for k, v in arrays.items()}
    return out if cpu else {k: t.to(device) for k, t in out.items()}


def item_columns(movie_ids: Sequence[int], rows: Sequence[Mapping[str, Any] | None]) -> dict[str, list[Any]]:
    """Columns of online-store item rows for the encoders (dicts of lists: cheaper per request than a
    DataFrame); an item the store lacks encodes as all-missing."""
    out: dict[str, list[Any]] = {"movieId": list(movie_ids)}
    for c in ITEM_FEATURES:
        out[c] = [r.get(c) if r is not None else None for r in rows]
    return out


def user_columns(user_id: int, row: Mapping[str, Any] | None, liked: Sequence[int] = (), genres: Sequence[str] = ()) -> dict[str, list[Any]]:
    """One user's columns from their online-store row, with the likes posted since (newest first),
    which are newer than the row's recent items. Without a row (a new user) the features are missing
    except what the online events tell: recent likes and their genres."""
    if row is None:
        row = {"user_genres": list(genres), "user_recent_items": list(liked[:N_RECENT_ITEMS]), "user_rating_count": len(liked)}
    out: dict[str, list[Any]] = {"userId": [int(user_id)]}
    for c in USER_FEATURES:
        out[c] = [row.get(c)]
    if liked:
        out["user_recent_items"] = [list(liked[:N_RECENT_ITEMS])]
    out[HISTORY] = [list(liked)]
    return out

"""The two models as serving uses them: the ranker over many requests' candidates in one forward pass,
and the user tower for one request's query vector.

Both take online-store rows (dicts) and encode them with the model's own FeatureSpec through the same
encoders as training (:mod:`rayrec.models.inputs`). Rows are turned into columns (dicts of lists),
not DataFrames: building a DataFrame per request would cost more than the model itself.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rayrec.features.spec import FeatureSpec
from rayrec.models.inputs import encode_users, to_tensors

__all__ = ["ITEM_COLUMNS", "item_columns", "user_columns", "RankModel", "UserTower", "load_models"]

log = logging.getLogger(__name__)

ITEM_COLUMNS = ("item_genres", "item_year", "item_rating_count", "item_rating_mean", "item_rating_std")
USER_COLUMNS = (
    "user_genres",
    "user_recent_items",
    "user_rating_count",
    "user_rating_mean",
    "user_rating_std",
    "user_year_mean",
    "user_year_std",
)


def item_columns(movie_ids: Sequence[int], rows: Sequence[Mapping[str, Any] | None]) -> dict[str, list[Any]]:
    """Columns of item rows for the encoders; an item the store lacks encodes as all-missing."""
    out: dict[str, list[Any]] = {"movieId": list(movie_ids)}
    for c in ITEM_COLUMNS:
        out[c] = [r.get(c) if r is not None else None for r in rows]
    return out


def user_columns(user_id: int, row: Mapping[str, Any] | None, liked: Sequence[int] = (), genres: Sequence[str] = ()) -> dict[str, list[Any]]:
    """One user's columns. Without a stored row (a new user) the features are missing except what the
    online events tell: recent likes and their genres."""
    if row is None:
        row = {"user_genres": list(genres), "user_recent_items": list(liked[:5]), "user_rating_count": len(liked)}
    out: dict[str, list[Any]] = {"userId": [int(user_id)]}
    for c in USER_COLUMNS:
        out[c] = [row.get(c)]
    if liked:  # online likes are newer than the row's
        out["user_recent_items"] = [list(liked[:5])]
    out["history_items"] = [list(liked)]
    return out


class RankModel:
    """The Embedding+MLP ranker: P(like) of each candidate of each request."""

    def __init__(self, model: Any, spec: FeatureSpec, version: str) -> None:
        self.model, self.spec, self.version = model, spec, version

    def score_many(self, users: Sequence[Mapping[str, list[Any]]], items: Sequence[Mapping[str, list[Any]]]) -> list[np.ndarray]:
        """Probabilities for each (user columns, item columns) pair, one forward pass for all."""
        import torch

        sizes = [len(i["movieId"]) for i in items]
        if not sum(sizes):
            return [np.zeros(0, dtype=np.float32) for _ in sizes]
        enc_users = [self.spec.encode_user(u) for u in users]
        merged = {c: sum((list(i[c]) for i in items), []) for c in ("movieId", *ITEM_COLUMNS)}
        batch = self.spec.encode_item(merged)
        for key in enc_users[0]:
            batch[key] = np.concatenate([np.repeat(u[key], n, axis=0) for u, n in zip(enc_users, sizes)])
        with torch.inference_mode():
            probs = self.model.predict(to_tensors(batch)).numpy().astype(np.float32)  # (ΣN,)
        return np.split(probs, np.cumsum(sizes)[:-1])


class UserTower:
    """The two-tower model's user side: the query vector of the embedding recall path."""

    def __init__(self, model: Any, spec: FeatureSpec, version: str) -> None:
        self.model, self.spec, self.version = model, spec, version
        self.history_len = int(getattr(model.config, "history_len", 50))

    def vector(self, columns: Mapping[str, list[Any]]) -> np.ndarray:
        """One user's (D,) unit vector from :func:`user_columns`."""
        out: np.ndarray = self.users(columns)[0]
        return out

    def users(self, rows: Any) -> np.ndarray:
        """(B, D) unit vectors of user rows (a DataFrame or columns)."""
        import torch

        enc = encode_users(self.spec, rows, self.history_len)
        with torch.inference_mode():
            out: np.ndarray = self.model.user(to_tensors(enc)).numpy().astype(np.float32)
        return out

    def items(self, rows: Any) -> np.ndarray:
        """(N, D) unit vectors of item rows (new items: their ids are out of vocabulary)."""
        import torch

        enc = self.spec.encode_item(rows)
        with torch.inference_mode():
            out: np.ndarray = self.model.item(to_tensors(enc)).numpy().astype(np.float32)
        return out


def load_models(
    artifacts: str, ranker_version: str | None, retriever_version: str | None
) -> tuple[RankModel | None, UserTower | None, list[str]]:
    """The ranker and the user tower of the registry, each None (with a note why) when it cannot be
    loaded: serving then ranks by recall order, or queries the index with the mean of recent likes."""
    notes: list[str] = []
    try:
        from rayrec.models.inference import load_model
    except ImportError as e:
        return None, None, [f"models unavailable ({e})"]
    ranker = tower = None
    for name, version in (("ranker", ranker_version), ("retriever", retriever_version)):
        if version is None:
            continue
        try:
            loaded = load_model(artifacts, name, version)
            spec = _spec_of(artifacts, loaded)
            loaded.check_spec(spec)  # the encoders must be the ones the model was trained with
        except (FileNotFoundError, ValueError, KeyError, RuntimeError) as e:
            notes.append(f"{name} not loaded: {e}")
            log.warning("%s not loaded: %s", name, e)
            continue
        if name == "ranker":
            ranker = RankModel(loaded.model, spec, str(loaded.version))
        else:
            tower = UserTower(loaded.model, spec, str(loaded.version))
    return ranker, tower, notes


def _spec_of(artifacts: str, loaded: Any) -> FeatureSpec:
    """The FeatureSpec the model was trained with: the one of its features version."""
    from rayrec import uri

    meta = getattr(loaded, "meta", {}) or {}
    version = meta.get("features_version") or "latest"
    path = uri.resolve_version(uri.join(artifacts, "features"), version)
    return FeatureSpec.load(uri.join(path, "spec.json"))

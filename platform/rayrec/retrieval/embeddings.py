"""Item embeddings: read the retriever's, write them in the same layout, or factorise ratings.

The retriever model publishes ``<artifacts>/models/retriever/<version>/item_embeddings.parquet``
(``movieId`` int64, ``embedding`` list<float32>, L2-normalised). The index job and the offline
evaluation read that. When no retriever was trained yet, :func:`svd_item_embeddings` gives a
baseline in the same shape: a truncated SVD of the train user × item matrix of positive ratings
(PureSVD, Cremonesi et al. 2010), with item vectors ``V·S`` so that item cosines follow co-ratings;
the embedding path's fallback query (the mean of a user's recent positives) then ranks items by
their low-rank co-rating similarity to what the user liked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rayrec.features.pointintime import LABEL_THRESHOLD
from rayrec import uri
from rayrec.retrieval.index import normalize

__all__ = [
    "ItemEmbeddings",
    "EMBEDDINGS_FILE",
    "model_root",
    "read_item_embeddings",
    "write_item_embeddings",
    "svd_item_embeddings",
]

EMBEDDINGS_FILE = "item_embeddings.parquet"


@dataclass(frozen=True)
class ItemEmbeddings:
    """Unit item vectors keyed by movie id, and where they came from (recorded in index metadata)."""

    movie_ids: np.ndarray  # (N,) int64
    vectors: np.ndarray  # (N, D) float32, L2-normalised
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.vectors.ndim != 2 or len(self.vectors) != len(self.movie_ids):
            raise ValueError(f"{len(self.movie_ids)} movie ids but vectors of shape {self.vectors.shape}")

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def describe(self) -> str:
        s = self.source
        if s.get("kind") == "model":
            return f"retriever model {s.get('model_version')} ({len(self.movie_ids):,} items x {self.dim})"
        if s.get("kind") == "svd":
            return (
                f"PureSVD baseline, truncated SVD (dim {self.dim}) of train positives of features "
                f"{s.get('features_version')} ({len(self.movie_ids):,} items)"
            )
        return f"{s.get('kind', 'unknown')} embeddings ({len(self.movie_ids):,} items x {self.dim})"


def model_root(artifacts: str, name: str = "retriever") -> str:
    return uri.join(artifacts, "models", name)


def read_item_embeddings(artifacts: str, version: str | None = "latest", *, name: str = "retriever") -> ItemEmbeddings:
    """The item embeddings of a published retriever version (``"latest"`` follows ``LATEST``)."""
    root = model_root(artifacts, name)
    try:
        path = uri.resolve_version(root, version)
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"{e}. Train a retriever first (python -m pipelines.train), or build from the PureSVD baseline "
            "(python -m pipelines.index --embeddings svd)"
        ) from e
    target = uri.join(path, EMBEDDINGS_FILE)
    if not uri.exists(target):
        raise FileNotFoundError(f"retriever version at {path} has no {EMBEDDINGS_FILE}: re-run its training job")
    ids, vecs = _read_parquet(target)
    meta = uri.read_json(uri.join(path, "meta.json")) if uri.exists(uri.join(path, "meta.json")) else {}
    source = {
        "kind": "model",
        "model": name,
        "model_version": path.rstrip("/").rsplit("/", 1)[-1],
        "features_version": meta.get("features_version"),
        "spec_hash": meta.get("spec_hash"),
    }
    return ItemEmbeddings(ids, normalize(vecs), source)


def _read_parquet(target: str) -> tuple[np.ndarray, np.ndarray]:
    fs, path = uri.filesystem(target)
    table = pq.read_table(path, filesystem=fs, columns=["movieId", "embedding"])
    ids = table.column("movieId").to_numpy().astype(np.int64)
    col = table.column("embedding").combine_chunks()
    if len(ids) == 0:
        raise ValueError(f"{target} holds no embeddings")
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
    if (lengths != lengths[0]).any():
        raise ValueError(f"{target}: embeddings have different lengths ({sorted(set(lengths.tolist()))[:5]})")
    flat = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    vecs = flat.reshape(len(ids), int(lengths[0]))
    if not np.isfinite(vecs).all():
        raise ValueError(f"{target}: embeddings contain NaN or infinite values")
    return ids, vecs


def write_item_embeddings(target: str, movie_ids: np.ndarray, vectors: np.ndarray) -> None:
    """Write embeddings in the retriever's layout (``movieId`` int64, ``embedding`` list<float32>)."""
    ids = np.asarray(movie_ids, dtype=np.int64)
    vecs = np.ascontiguousarray(vectors, dtype=np.float32)
    offsets = pa.array(np.arange(0, vecs.size + 1, vecs.shape[1], dtype=np.int32))
    emb = pa.ListArray.from_arrays(offsets, pa.array(vecs.reshape(-1), type=pa.float32()))
    table = pa.table({"movieId": pa.array(ids, type=pa.int64()), "embedding": emb})
    fs, path = uri.filesystem(target)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    pq.write_table(table, path, filesystem=fs)


def svd_item_embeddings(
    ratings: pd.DataFrame,
    dim: int = 64,
    *,
    threshold: float = LABEL_THRESHOLD,
    seed: int = 0,
    source: dict[str, Any] | None = None,
) -> ItemEmbeddings:
    """PureSVD item vectors from ``ratings`` (userId, movieId, rating): rows of ``V·S`` for the top
    ``dim`` singular triplets of the binary user × item matrix X of ratings ≥ ``threshold``,
    L2-normalised per item. Scaling by S makes inner products of rows approximate X^T X, so the cosine
    of two items is that of their co-rating columns (item-based CF in ``dim`` dimensions); unscaled
    ``V`` rows measured markedly worse on ml-latest-small (embedding path alone, Recall@200 0.26 vs 0.46).
    Items without a positive rating have no vector and are left out. Randomised SVD on a sparse
    matrix (torch), so it scales to the larger MovieLens sets."""
    import torch

    pos = ratings[ratings["rating"].to_numpy(np.float64) >= threshold]
    users, u_idx = np.unique(pos["userId"].to_numpy(np.int64), return_inverse=True)
    items, i_idx = np.unique(pos["movieId"].to_numpy(np.int64), return_inverse=True)
    if len(items) < 2 or len(users) < 2:
        raise ValueError("too few positive ratings to factorise (need at least 2 users and 2 items)")
    q = int(min(dim, len(users) - 1, len(items) - 1))
    pairs = np.unique(np.stack([u_idx, i_idx]).astype(np.int64), axis=1)  # a duplicate rating counts once
    x = torch.sparse_coo_tensor(
        torch.from_numpy(pairs), torch.ones(pairs.shape[1], dtype=torch.float32),
        size=(len(users), len(items)), is_coalesced=True, check_invariants=False,
    )  # fmt: skip
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        _, sv, v = torch.svd_lowrank(x, q=q, niter=6)
    vecs = (v * sv[None, :]).numpy().astype(np.float32)  # V·S: rows reproduce the item Gram matrix X^T X
    if q < dim:  # pad tiny datasets so the dimension is what was asked for
        vecs = np.pad(vecs, ((0, 0), (0, dim - q)))
    info = {"kind": "svd", "dim": dim, "threshold": threshold, **(source or {})}
    return ItemEmbeddings(items, normalize(vecs), info)

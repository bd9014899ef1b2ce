"""The index job's logic: read item embeddings, build the faiss index, measure it, publish a version.

At build time the index is checked against exact search: recall@100 on sampled queries (item vectors
of the catalog, so the check needs no user data) and the single-query latency and batched QPS, all
stored in the version's ``meta.json`` next to the factory and the embeddings' origin.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from rayrec import uri
from rayrec.config import default_artifacts
from rayrec.retrieval.catalog import read_parquet
from rayrec.retrieval.embeddings import ItemEmbeddings, read_item_embeddings, svd_item_embeddings
from rayrec.retrieval.index import ItemIndex, measure
from rayrec.retrieval.versions import save_index

__all__ = ["IndexConfig", "IndexBuild", "load_embeddings", "build_index", "run_index", "features_path_for", "summary"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexConfig:
    """Knobs of the index job; the defaults run on a laptop."""

    artifacts: str = field(default_factory=default_artifacts)
    factory: str = "Flat"  # faiss factory string: Flat, HNSW32 (or HNSW), IVF1024,Flat (or IVF), LSH
    search_params: str | None = None  # e.g. "efSearch=128", "nprobe=16"; None = per-factory default
    ef_construction: int | None = None  # HNSW build effort; None = faiss default (40)
    embeddings: Literal["model", "svd"] = "model"  # the retriever's, or the PureSVD baseline
    model_version: str = "latest"
    features_version: str = "latest"  # for "svd" (and evaluation when the model names none)
    svd_dim: int = 64
    recall_queries: int = 1000  # sampled item vectors for recall@100 against exact
    latency_queries: int = 200
    publish: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.embeddings not in ("model", "svd"):
            raise ValueError(f"embeddings must be 'model' or 'svd', got {self.embeddings!r}")
        if self.recall_queries < 1 or self.latency_queries < 0 or self.svd_dim < 1:
            raise ValueError("recall_queries and svd_dim must be ≥ 1, latency_queries ≥ 0")


@dataclass
class IndexBuild:
    version: str | None  # None when not saved
    path: str | None
    index: ItemIndex
    embeddings: ItemEmbeddings
    meta: dict[str, Any]


def features_path_for(artifacts: str, embeddings: ItemEmbeddings | None, default: str = "latest") -> str:
    """The features version that goes with ``embeddings`` (the one its model was trained on, when it
    says), else ``default``."""
    version = (embeddings.source.get("features_version") if embeddings is not None else None) or default
    return uri.resolve_version(uri.join(artifacts, "features"), version)


def load_embeddings(cfg: IndexConfig) -> ItemEmbeddings:
    """The item embeddings the config names: a retriever version, or PureSVD of train samples."""
    if cfg.embeddings == "model":
        return read_item_embeddings(cfg.artifacts, cfg.model_version)
    features = features_path_for(cfg.artifacts, None, cfg.features_version)
    train = read_parquet(uri.join(features, "samples", "train"), ["userId", "movieId", "rating"])
    version = features.rstrip("/").rsplit("/", 1)[-1]
    return svd_item_embeddings(train, cfg.svd_dim, seed=cfg.seed, source={"features_version": version})


def build_index(emb: ItemEmbeddings, cfg: IndexConfig) -> ItemIndex:
    """Build and measure an index over ``emb``; the measurements land in ``index.meta``."""
    t = time.perf_counter()
    index = ItemIndex.build(
        emb.movie_ids, emb.vectors, cfg.factory, search_params=cfg.search_params,
        ef_construction=cfg.ef_construction, seed=cfg.seed,
    )  # fmt: skip
    build_s = time.perf_counter() - t
    rng = np.random.default_rng(cfg.seed)
    n_q = min(cfg.recall_queries, len(emb.movie_ids))
    queries = emb.vectors[np.sort(rng.choice(len(emb.movie_ids), n_q, replace=False))]
    quality = measure(index, queries, 100, latency_queries=cfg.latency_queries)
    index.meta.update(
        {
            "embeddings": {**emb.source, "description": emb.describe()},
            "model_version": emb.source.get("model_version"),
            "build_s": round(build_s, 3),
            "recall_queries_from": "sampled item embeddings",
            "ef_construction": cfg.ef_construction,
            **quality,
        }
    )
    return index


def run_index(cfg: IndexConfig = IndexConfig()) -> IndexBuild:
    """Read embeddings, build and measure the index, write ``index/<version>/``, swap ``LATEST``."""
    emb = load_embeddings(cfg)
    log.info("embeddings: %s", emb.describe())
    index = build_index(emb, cfg)
    version, path = save_index(index, cfg.artifacts, publish=cfg.publish)
    return IndexBuild(version, path, index, emb, index.meta)


def summary(build: IndexBuild) -> str:
    m = build.meta
    lat = m.get("latency_ms", {})
    return "\n".join(
        [
            f"index          {build.version} ({'published' if build.path else 'not saved'}) at {build.path}",
            f"embeddings     {m['embeddings']['description']}",
            f"factory        {m['factory']} {m.get('search_params') or ''} (dim {m['dim']}, {m['n']:,} items, "
            f"built in {m['build_s']:.2f}s)",
            f"recall@100     {m['recall_at_100']:.4f} vs exact on {m['recall_queries']} sampled item queries",
            f"latency        p50 {lat.get('p50', float('nan')):.3f} ms, p99 {lat.get('p99', float('nan')):.3f} ms "
            f"(single query, k={m['recall_k']}); batched {m['batch_qps']:,.0f} QPS; {m['threads']} faiss threads",
        ]
    )

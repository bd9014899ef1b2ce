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
from rayrec.features.spec import features_path
from rayrec.retrieval.catalog import read_parquet
from rayrec.retrieval.ease import FILE as EASE_FILE
from rayrec.retrieval.ease import ItemWeights, fit_item_weights
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
    # the ease recall path's weights, fit on the features' ratings; λ picked from ease_lambdas by
    # NDCG@10 on a validation split; 0 items: no ease weights
    ease_lambdas: tuple[float, ...] = (100.0, 200.0, 400.0, 800.0, 1600.0)
    # that split: "features" = the features' own test split (each user's last ratings by time, relevant
    # = liked); or a protocol of rayrec.evaluation.protocols ("temporal", "random") applied to the
    # features' ratings, with that protocol's relevance: the one the lists will be judged by
    ease_validation: str = "features"
    # strongest weights kept per item: the ease path alone on ml-latest-small at λ 400, NDCG@10 temporal /
    # random 200 → 0.109 / 0.384, 500 → 0.114 / 0.388, 1000 → 0.114 / 0.391, exact 0.115 / 0.395
    ease_top_k: int = 500
    ease_max_items: int = 10_000  # the most rated items kept (an items × items inverse beyond the users' count)

    def __post_init__(self) -> None:
        if self.embeddings not in ("model", "svd"):
            raise ValueError(f"embeddings must be 'model' or 'svd', got {self.embeddings!r}")
        if self.recall_queries < 1 or self.latency_queries < 0 or self.svd_dim < 1:
            raise ValueError("recall_queries and svd_dim must be ≥ 1, latency_queries ≥ 0")
        from rayrec.evaluation.protocols import PROTOCOLS

        if self.ease_validation != "features" and self.ease_validation not in PROTOCOLS:
            raise ValueError(f"ease_validation must be 'features' or one of {sorted(PROTOCOLS)}, got {self.ease_validation!r}")


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
    return features_path(artifacts, version)


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
    extra = None
    if cfg.ease_max_items > 0 and cfg.ease_lambdas:
        weights, tuning = ease_weights(features_path_for(cfg.artifacts, emb, cfg.features_version), cfg)
        index.meta["ease"] = tuning
        extra = lambda path: weights.save(uri.join(path, EASE_FILE))  # noqa: E731
    version, path = save_index(index, cfg.artifacts, publish=cfg.publish, extra=extra)
    return IndexBuild(version, path, index, emb, index.meta)


def ease_weights(features: str, cfg: IndexConfig) -> tuple[ItemWeights, dict[str, Any]]:
    """The ease path's weights on every rating of a features version, with λ chosen from
    ``cfg.ease_lambdas`` by NDCG@10 on the validation split ``cfg.ease_validation`` (weights fit on its
    known part): the features' test split (relevant = liked test items), or a named protocol's split
    of the features' ratings with that protocol's relevance."""
    from rayrec.evaluation.baselines import tune_ease

    t = time.perf_counter()
    by_protocol = cfg.ease_validation != "features"  # a protocol's split needs the ratings and their times
    every = read_parquet(uri.join(features, "ratings"), ["userId", "movieId", *(["rating", "timestamp"] if by_protocol else [])])
    if not by_protocol:
        cols = ["userId", "movieId", "rating", "label"]
        train = read_parquet(uri.join(features, "samples", "train"), cols)
        test = read_parquet(uri.join(features, "samples", "test"), cols)
        relevant = test[test["label"].to_numpy() == 1]
    else:
        from rayrec.evaluation.protocols import split_ratings

        split = split_ratings(every, cfg.ease_validation)
        train, relevant = split.known, split.relevant
    small = train["userId"].nunique() * train["movieId"].nunique() <= 50_000_000  # the tuning's dense matrix
    if len(cfg.ease_lambdas) > 1 and len(relevant) and small:
        lam, grid = tune_ease(train, relevant["userId"].to_numpy(), relevant["movieId"].to_numpy(), cfg.ease_lambdas)
    else:
        lam, grid = float(cfg.ease_lambdas[len(cfg.ease_lambdas) // 2]), {}
    weights = fit_item_weights(every, lam, top_k=cfg.ease_top_k, max_items=cfg.ease_max_items)
    tuning = {"lambda": lam, "validation": cfg.ease_validation, "valid_ndcg@10": {str(k): v for k, v in grid.items()},
              "items": len(weights.items), "top_k": cfg.ease_top_k, "fit_s": round(time.perf_counter() - t, 2)}  # fmt: skip
    return weights, tuning


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

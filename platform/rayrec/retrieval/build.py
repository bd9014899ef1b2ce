"""The index job's logic: read item embeddings, build the faiss index, measure it, publish a version.

At build time the index is checked against exact search: recall@100 on sampled queries (item vectors
of the catalog, so the check needs no user data) and the single-query latency and batched QPS, all
stored in the version's ``meta.json`` next to the factory and the embeddings' origin.

``factory="auto"`` (the default) chooses the index by those measurements: exact search (``Flat``)
unless an HNSW graph, at the smallest ``efSearch`` that reaches :data:`AUTO_MIN_RECALL` against exact,
answers a query at least twice as fast *and* :data:`AUTO_MIN_SAVING_MS` sooner. On ml-latest-small's
9.7k items exact search takes 0.13 ms a query and stays; at 62k items it took 0.73 ms, and HNSW32 at
efSearch 256 0.3 ms at recall@100 0.962 (64: 0.863, 128: 0.925). Every trial is kept in ``meta["auto"]``.
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

__all__ = ["AUTO_MIN_RECALL", "AUTO_MIN_SAVING_MS", "IndexConfig", "IndexBuild", "load_embeddings", "build_index", "run_index", "features_path_for", "summary"]

log = logging.getLogger(__name__)

AUTO_MIN_RECALL = 0.95  # recall@100 against exact that an approximate index must reach to be chosen
AUTO_MIN_SAVING_MS = 0.25  # ... and the time it must save per query (with a 2x speed-up): less is noise
AUTO_EF_SEARCH = (64, 128, 256, 512)  # HNSW search depths tried, shallowest first
AUTO_GRAPH = "HNSW32"


@dataclass(frozen=True)
class IndexConfig:
    """Knobs of the index job; the defaults run on a laptop."""

    artifacts: str = field(default_factory=default_artifacts)
    # "auto" (chosen by measured recall and latency, see the module docstring), or a faiss factory
    # string: Flat, HNSW32 (or HNSW), IVF1024,Flat (or IVF), LSH
    factory: str = "auto"
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
    # weights kept per item on average, the strongest over all items (at most 4× that from one item): the
    # ease path alone on ml-latest-small at λ 400, NDCG@10 temporal / random: exact 0.1150 / 0.3954; 200
    # on average 0.1145 / 0.3940 (and 100: 0.1154 / 0.3881) against 500 of every item's own strongest
    # 0.1141 / 0.3884, with 2.5× less memory and ~1.2× the additions a request
    ease_top_k: int = 200
    ease_max_items: int = 10_000  # the most rated items kept (an items × items inverse beyond the users' count)

    def __post_init__(self) -> None:
        if self.factory == "auto" and self.search_params:
            raise ValueError("search_params go with a named factory: 'auto' chooses its own")
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
    """Build and measure an index over ``emb`` (the factory ``cfg`` names, or the one ``auto``
    chooses); the measurements land in ``index.meta``."""
    rng = np.random.default_rng(cfg.seed)
    n_q = min(cfg.recall_queries, len(emb.movie_ids))
    queries = emb.vectors[np.sort(rng.choice(len(emb.movie_ids), n_q, replace=False))]
    if cfg.factory == "auto":
        return _auto_index(emb, cfg, queries)
    return _measured(emb, cfg, queries, cfg.factory, cfg.search_params)


def _measured(emb: ItemEmbeddings, cfg: IndexConfig, queries: np.ndarray, factory: str, search_params: str | None) -> ItemIndex:
    t = time.perf_counter()
    index = ItemIndex.build(
        emb.movie_ids, emb.vectors, factory, search_params=search_params,
        ef_construction=cfg.ef_construction, seed=cfg.seed,
    )  # fmt: skip
    build_s = time.perf_counter() - t
    _measure_into(index, emb, cfg, queries, build_s)
    return index


def _measure_into(index: ItemIndex, emb: ItemEmbeddings, cfg: IndexConfig, queries: np.ndarray, build_s: float) -> dict[str, Any]:
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
    return quality


def _auto_index(emb: ItemEmbeddings, cfg: IndexConfig, queries: np.ndarray) -> ItemIndex:
    """Exact search, unless an HNSW graph is measured to be much faster at recall@100 ≥
    :data:`AUTO_MIN_RECALL` (the module docstring gives the rule)."""
    flat = _measured(emb, cfg, queries, "Flat", None)
    exact_ms = float(flat.meta["latency_ms"]["p50"])
    trials: list[dict[str, Any]] = [_trial(flat)]
    chosen = flat
    if exact_ms >= AUTO_MIN_SAVING_MS:  # else no index can save enough
        t = time.perf_counter()
        graph = ItemIndex.build(emb.movie_ids, emb.vectors, AUTO_GRAPH, ef_construction=cfg.ef_construction, seed=cfg.seed)
        build_s = time.perf_counter() - t
        for ef in AUTO_EF_SEARCH:
            graph.set_search_params(f"efSearch={ef}")
            quality = _measure_into(graph, emb, cfg, queries, build_s)
            trials.append(_trial(graph))
            if quality["recall_at_100"] >= AUTO_MIN_RECALL:  # deeper searches only cost more
                ms = float(quality["latency_ms"]["p50"])
                if ms <= exact_ms / 2 and exact_ms - ms >= AUTO_MIN_SAVING_MS:
                    chosen = graph
                break
    chosen.meta["auto"] = {
        "rule": f"the fastest index at recall@100 ≥ {AUTO_MIN_RECALL} against exact, when ≥ 2x and ≥ "
                f"{AUTO_MIN_SAVING_MS} ms a query faster than exact search; else exact",
        "trials": trials, "chosen": _trial(chosen),
    }  # fmt: skip
    log.info("index auto: %s %s (trials %s)", chosen.factory, chosen.search_params, trials)
    return chosen


def _trial(index: ItemIndex) -> dict[str, Any]:
    return {"factory": index.factory, "search_params": index.search_params,
            "recall_at_100": round(float(index.meta["recall_at_100"]), 4),
            "p50_ms": round(float(index.meta["latency_ms"]["p50"]), 4)}  # fmt: skip


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
            *(["chosen         by measurement from " + ", ".join(
                f"{t['factory']} {t['search_params']} (recall {t['recall_at_100']:.3f}, p50 {t['p50_ms']:.3f} ms)".replace("  ", " ")
                for t in m["auto"]["trials"])] if "auto" in m else []),
            f"latency        p50 {lat.get('p50', float('nan')):.3f} ms, p99 {lat.get('p99', float('nan')):.3f} ms "
            f"(single query, k={m['recall_k']}); batched {m['batch_qps']:,.0f} QPS; {m['threads']} faiss threads",
        ]
    )

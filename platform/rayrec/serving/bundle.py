"""Everything a replica serves from, loaded from the artifacts as one immutable, versioned bundle.

A bundle pins one version of each artifact (features, index, ranker, retriever). Hot swap builds a
new bundle beside the live one and replaces the reference in one assignment, so a request runs wholly
on the old bundle or wholly on the new one. Missing pieces degrade instead of failing: without an
index the embedding and item-to-item paths are left out; without a ranker, candidates keep their
recall order; without a retriever, the embedding path queries with the mean of the user's recent likes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rayrec import uri
from rayrec.experiments.config import Experiment, Variant, check_disjoint
from rayrec.features.spec import FeatureSpec, features_path
from rayrec.realtime import ColdStart
from rayrec.rerank import RerankConfig
from rayrec.retrieval.catalog import ItemCatalog, Popularity, read_ratings
from rayrec.retrieval.index import ItemIndex
from rayrec.retrieval.merge import INDEX_PATHS, Merger, RecallConfig, ease_of
from rayrec.retrieval.similar import SimilarItems
from rayrec.serving.history import RatingHistory
from rayrec.models.inference import RankerScorer, TowerEncoder
from rayrec.serving.scoring import load_models

__all__ = ["ServingConfig", "Bundle", "load_bundle", "resolve_versions", "check_versions", "FALLBACK_SIZE"]

log = logging.getLogger(__name__)

FALLBACK_SIZE = 500  # popular items kept in memory for answers without the store


class ServingConfig(BaseModel):
    """What a replica serves: artifact versions, recall and rerank settings, store deadlines.

    Sent as the Serve deployments' ``user_config``; a change is applied by ``reconfigure`` without a
    restart. ``"latest"`` follows each ``LATEST`` pointer at (re)configuration time: bump
    ``generation`` to re-read the pointers when nothing else changed.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    features_version: str = "latest"
    index_version: str | None = Field(default="latest", description="None: serve without the embedding paths")
    ranker_version: str | None = Field(default="latest", description="None: keep the recall order")
    retriever_version: str | None = Field(default="latest", description="None: query the index with recent likes")
    candidates: int = Field(default=100, ge=10, le=2000, description="candidates recalled per request (at least 3 × k)")
    rank_weight: float = Field(
        # pipelines.evaluate on ml-latest-small: 0.25 served the best lists (temporal NDCG@10 0.134 against
        # 0.086 for the ranker's order alone; random 0.318 against 0.139)
        default=0.25, ge=0.0, le=1.0,
        description="final order = rank_weight × ranker percentile + (1 − rank_weight) × recall percentile; "
        "cold-start users keep the cold-start order",
    )
    blend: dict[str, float] = Field(
        default_factory=dict,
        description="coefficients of a logistic model over each candidate's features (rayrec.serving.blend.FEATURES) "
        "whose probability replaces the rank_weight mix as the order rerank starts from; empty: off. "
        "pipelines.evaluate --tune fits them on a validation split",
    )
    fresh_weight: float = Field(
        default=0.5, ge=0.0, le=1.0,
        description="weight of the candidates' affinity to the likes posted since the batch data (0: off)",
    )
    fresh_seeds: int = Field(default=10, ge=1, le=50, description="newest fresh likes the affinity looks at")
    recall: RecallConfig = Field(default_factory=lambda: RecallConfig.model_validate({}))
    rerank: RerankConfig = Field(default_factory=lambda: RerankConfig())
    store_timeout_s: float = Field(default=0.3, gt=0, le=10, description="deadline of the store reads of one request")
    store_cooldown_s: float = Field(default=2.0, ge=0, le=300, description="after a store failure, skip it for this long")
    store_write_timeout_s: float = Field(
        default=5.0, gt=0, le=60, description="deadline of one write (an event, a new item): writers wait for each other"
    )
    item_cache_s: float = Field(
        default=5.0, ge=0, le=300,
        description="item rows read for ranking are kept this long (their statistics may lag the store by as much); 0: "
        "read every candidate's row on every request",
    )
    generation: int = Field(default=0, description="bump to re-resolve 'latest' with no other change")
    impressions: bool = Field(default=True, description="log every served list to the store's impressions log")
    impressions_maxlen: int | None = Field(
        default=None, ge=1000, description="keep about this many of the newest impressions in the log (None: all)"
    )
    experiments: list[Experiment] = Field(
        default_factory=list, description="A/B tests and interleaving experiments (rayrec.experiments.config)"
    )

    @field_validator("blend")
    @classmethod
    def _check_blend(cls, v: dict[str, float]) -> dict[str, float]:
        from rayrec.serving.blend import check_blend

        return check_blend(v)

    @model_validator(mode="after")
    def _check_experiments(self) -> ServingConfig:
        """Refuse overlapping experiments and variant settings the config would refuse, naming the field."""
        check_disjoint(self.experiments)
        for i, e in enumerate(self.experiments):
            for j, v in enumerate(e.variants):
                self._variant(v, f"experiments[{i}].variants[{j}].overrides")
        return self

    def _variant(self, v: Variant, where: str) -> ServingConfig:
        base = self.model_dump(exclude={"experiments"})
        merged = dict(base)
        for key, value in v.overrides.items():
            if key in ("recall", "rerank") and isinstance(value, dict):
                merged[key] = {**base[key], **value}
            else:
                merged[key] = value
        try:
            return ServingConfig.model_validate(merged)
        except ValidationError as e:
            first = e.errors()[0]
            loc = ".".join(str(p) for p in first["loc"])
            raise ValueError(f"{where}.{loc}: {first['msg']}") from None

    def variant(self, experiment: str, name: str) -> ServingConfig:
        """The serving config of one arm: this config with the variant's overrides (no experiments)."""
        for e in self.experiments:
            if e.name == experiment:
                for v in e.variants:
                    if v.name == name:
                        return self._variant(v, f"{experiment}/{name}")
        raise KeyError(f"no variant {name!r} in experiment {experiment!r}")

    def artifact_key(self) -> tuple[Any, ...]:
        """What decides whether a reconfigure must load a new bundle (rerank settings do not)."""
        return (self.features_version, self.index_version, self.ranker_version, self.retriever_version,
                self.recall, self.generation)  # fmt: skip


_VERSION_FIELDS = {"features_version": "features", "index_version": "index", "ranker_version": "models/ranker",
                   "retriever_version": "models/retriever"}  # fmt: skip


def check_versions(artifacts: str, cfg: ServingConfig) -> None:
    """Refuse a config whose experiments name model versions that are not in the artifacts (a
    variant must serve what it says), naming the field."""
    for i, e in enumerate(cfg.experiments):
        for j, v in enumerate(e.variants):
            for key, root in _VERSION_FIELDS.items():
                version = v.overrides.get(key)
                if version is None:
                    continue
                try:
                    uri.resolve_version(uri.join(artifacts, *root.split("/")), str(version))
                except (FileNotFoundError, ValueError):
                    raise ValueError(
                        f"experiments[{i}].variants[{j}].overrides.{key}: no {root} version {version!r} "
                        "under the artifacts: publish it first, or name one that is there"
                    ) from None


def resolve_versions(artifacts: str, cfg: ServingConfig) -> dict[str, str | None]:
    """The concrete version each pointer names now (None for a missing or disabled artifact)."""
    out: dict[str, str | None] = {}
    try:
        out["features"] = features_path(artifacts, cfg.features_version).rstrip("/").rsplit("/", 1)[-1]
    except FileNotFoundError:
        out["features"] = None
    pairs = (("index", "index", cfg.index_version), ("ranker", "models/ranker", cfg.ranker_version),
             ("retriever", "models/retriever", cfg.retriever_version))  # fmt: skip
    for name, root, version in pairs:
        if version is None:
            out[name] = None
            continue
        try:
            out[name] = uri.resolve_version(uri.join(artifacts, *root.split("/")), version).rstrip("/").rsplit("/", 1)[-1]
        except FileNotFoundError:
            out[name] = None
    return out


@dataclass
class Bundle:
    """One consistent set of serving artifacts (see the module docstring)."""

    artifacts: str
    config: ServingConfig
    versions: dict[str, str | None]
    catalog: ItemCatalog
    popularity: Popularity
    history: RatingHistory
    merger: Merger
    similar: SimilarItems
    index: ItemIndex | None
    ranker: RankerScorer | None
    tower: TowerEncoder | None
    fallback: list[dict[str, Any]]  # the most popular items as Movie dicts, best first
    cold: ColdStart  # the cold-start path: popularity per hour of day and genre
    notes: list[str] = field(default_factory=list)
    loaded_s: float = 0.0

    def item_vectors(self, movie_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """``(found, vectors)`` of items from the index, None without an index."""
        if self.index is None:
            return None
        return self.index.vectors(movie_ids)

    @property
    def rerank(self) -> RerankConfig:
        return self.config.rerank

    @property
    def now_year(self) -> float:
        """The present year for freshness: that of the last rating in the data (so a replay of old
        data is not all stale), else this year."""
        last = self.popularity.last_timestamp
        return float(datetime.fromtimestamp(last, timezone.utc).year if last else datetime.now(timezone.utc).year)

    def with_config(self, cfg: ServingConfig) -> Bundle:
        """The same artifacts under new rerank / store settings (no loading)."""
        return replace(self, config=cfg)


def _fallback(features: str, n: int) -> list[dict[str, Any]]:
    fs, path = uri.filesystem(uri.join(features, "online", "items.parquet"))
    cols = ["movieId", "title", "genres", "item_year", "item_rating_count", "item_rating_mean"]
    df = pd.read_parquet(path, filesystem=fs, columns=cols)
    df = df.sort_values(["item_rating_count", "item_rating_mean", "movieId"], ascending=[False, False, True]).head(n)
    out = []
    for r in df.itertuples(index=False):
        out.append({
            "movie_id": int(r.movieId), "title": r.title, "genres": list(r.genres) if r.genres is not None else [],
            "year": None if pd.isna(r.item_year) else int(r.item_year),
            "rating_count": None if pd.isna(r.item_rating_count) else int(r.item_rating_count),
            "rating_mean": None if pd.isna(r.item_rating_mean) else float(r.item_rating_mean),
        })  # fmt: skip
    return out


def _index_matches_tower(index: ItemIndex | None, tower: TowerEncoder | None) -> bool:
    """The user tower's vectors live in the index's space only if the index holds that retriever's
    item embeddings (not the PureSVD baseline, not another retriever version)."""
    if index is None or tower is None:
        return False
    source = index.meta.get("embeddings") or {}
    if source.get("kind") == "svd":
        return False
    model_version = index.meta.get("model_version") or source.get("model_version")
    return model_version is None or str(model_version) == tower.version


def load_bundle(artifacts: str, cfg: ServingConfig = ServingConfig()) -> Bundle:
    """Load the artifacts ``cfg`` names. Raises FileNotFoundError only when there are no features
    (nothing to serve); other missing pieces are noted and degrade (see the module docstring)."""
    t = time.perf_counter()
    versions = resolve_versions(artifacts, cfg)
    if versions["features"] is None:
        raise FileNotFoundError(
            f"no features under {uri.join(artifacts, 'features')}: run the features job first "
            "(python -m pipelines.features --online-store default)"
        )
    features = uri.join(artifacts, "features", versions["features"])
    notes: list[str] = []
    catalog = ItemCatalog.load(features)
    ratings = read_ratings(features)
    popularity = Popularity(catalog, ratings, min_rating=cfg.recall.popular_min_rating)
    # what counts as a like is what the features labelled positive (the spec records the threshold)
    threshold = FeatureSpec.of(features).label_threshold
    history = RatingHistory(ratings, threshold=threshold)
    cold = ColdStart.build(ratings, catalog, threshold=threshold)
    del ratings
    index = ease = None
    if versions["index"] is not None:
        from rayrec.retrieval.versions import load_index

        index = load_index(artifacts, versions["index"])
        ease = ease_of(artifacts, index)
    else:
        notes.append("no index: embedding and item-to-item recall are off")
    ranker, tower, model_notes = load_models(artifacts, versions["ranker"], versions["retriever"])
    notes += model_notes
    if tower is not None and not _index_matches_tower(index, tower):
        notes.append(f"index was not built from retriever {tower.version}: querying it with recent likes instead")
        tower = None
    versions["ranker"] = ranker.version if ranker is not None else None
    versions["retriever"] = tower.version if tower is not None else None
    recall = cfg.recall
    if ease is None and "ease" in recall.quotas:
        if index is not None:
            notes.append("index version has no ease weights: the ease recall path is off")
        recall = recall.model_copy(update={"quotas": {n: q for n, q in recall.quotas.items() if n != "ease"}})
    if index is None:
        quotas = {n: q for n, q in recall.quotas.items() if n not in INDEX_PATHS}
        if not quotas or sum(quotas.values()) == 0:
            quotas = {"genre": recall.total // 2, "popular": recall.total - recall.total // 2}
        recall = recall.model_copy(update={"quotas": quotas})
    merger = Merger.from_config(recall, index=index, popularity=popularity, ease=ease)
    similar = SimilarItems(index, catalog, popularity)
    bundle = Bundle(
        artifacts=artifacts, config=cfg, versions=versions, catalog=catalog, popularity=popularity,
        history=history, merger=merger, similar=similar, index=index, ranker=ranker, tower=tower,
        fallback=_fallback(features, FALLBACK_SIZE), cold=cold, notes=notes,
    )  # fmt: skip
    bundle.loaded_s = time.perf_counter() - t
    log.info("serving bundle %s loaded in %.2fs%s", versions, bundle.loaded_s, "; " + "; ".join(notes) if notes else "")
    return bundle

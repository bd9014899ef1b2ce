"""Multi-path recall: per-path quotas, de-duplication, seen filtering, and which paths found what.

:class:`Merger` asks each path, in configured order, for items until the path has added its quota of
*new* candidates. An item a later path also returns inside that stretch is not added twice: the later
path's name is appended to the candidate's ``paths``, so every candidate carries all the paths that
would have retrieved it within their quota (for explanations and per-path metrics), and the merged
set contains each path's own top-``quota`` list. When paths run dry (a user with no history has no
embedding or item-to-item candidates) the remaining slots are back-filled by the paths in order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from rayrec.features.pointintime import LABEL_THRESHOLD
from rayrec.retrieval.catalog import ItemCatalog, Popularity, read_ratings
from rayrec.retrieval.ease import EaseRecall, ItemWeights
from rayrec.retrieval.index import ItemIndex
from rayrec.retrieval.paths import (
    EmbeddingRecall,
    GenreRecall,
    ItemToItemRecall,
    NewItemRecall,
    PathResult,
    PopularRecall,
    RecallPath,
)
from rayrec.retrieval.state import UserState

__all__ = ["Candidate", "Recalls", "RecallConfig", "Merger", "PATH_NAMES", "build_paths", "load_merger"]

INDEX_PATHS = ("new_items", "embedding", "item2item")  # the paths that need an item index
PATH_NAMES = ("new_items", "ease", "embedding", "item2item", "genre", "popular", "popular_recent")


@dataclass(frozen=True)
class Candidate:
    """One recalled item: its score in the first path that added it, and every path that found it."""

    movie_id: int
    score: float
    paths: tuple[str, ...]


@dataclass(frozen=True)
class Recalls:
    """Merged candidates as parallel arrays: ids, the score in the first path that added each, and
    every path that found each."""

    movie_ids: np.ndarray  # (N,) int64
    scores: np.ndarray  # (N,) float64
    paths: list[tuple[str, ...]]

    def __len__(self) -> int:
        return len(self.movie_ids)


def _known_paths(names: Mapping[str, object]) -> None:
    unknown = sorted(set(names) - set(PATH_NAMES))
    if unknown:
        raise ValueError(f"unknown recall path(s) {unknown}; known: {list(PATH_NAMES)}")


class RecallConfig(BaseModel):
    """Which paths run, in which order, with how many candidates each (the quotas sum to the total)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    quotas: dict[str, int] = Field(
        default_factory=lambda: {"new_items": 10, "ease": 90, "embedding": 90, "item2item": 50, "genre": 25, "popular": 25}
    )
    backfill: bool = True  # fill slots a path could not use from the other paths, in order
    embedding_fallback: Literal["recent_mean", "none"] = "recent_mean"
    n_recent: int = Field(20, ge=1)  # recent positives averaged for the fallback user vector
    item2item_seeds: int = Field(5, ge=1)  # latest positives whose neighbours are recalled
    item2item_decay: float = Field(0.8, gt=0.0, le=1.0)
    item2item_depth: int = Field(128, ge=1)  # each seed's neighbours summed: at least this many + |seen| + 1
    new_item_neighbours: int = Field(50, ge=1)  # a live-added item is recalled inside this neighbourhood
    recent_window_days: float = Field(30.0, gt=0.0)  # window of the popular_recent path
    # popularity counts positives only (ratings ≥ 3.5, what relevance means too); on ml-latest-small
    # this lifted the genre and popular paths' Recall@200 by about 0.02-0.03 over counting every rating
    popular_min_rating: float = LABEL_THRESHOLD
    # the order of the merged candidates (the recall order the ranker's scores are fused with):
    # "paths" = path by path in quota order; "rrf" = reciprocal-rank fusion, Σ over the paths that
    # found an item of quota / largest quota / (rrf_k + its rank in that path), so items several
    # (large-quota) paths rank high lead; items added live (the new_items path) stay first
    order: Literal["paths", "rrf"] = "rrf"
    rrf_k: int = Field(60, ge=1)
    # a path's vote in the fusion, where it should differ from its quota's share (quota / largest quota).
    # ease 4: pipelines.evaluate on ml-latest-small (the splits the README reports), the same models served
    # with votes 1 / 2 / 4 / 8 / 16: served NDCG@10 temporal 0.144 / 0.141 / 0.143 / 0.137 / 0.132, random
    # 0.280 / 0.326 / 0.341 / 0.353 / 0.360: the random split gains most, the temporal one falls from 8 on.
    # A compromise across both: `pipelines.evaluate --tune` picks the vote per protocol on a validation split
    # (1 for temporal, 16 for random there)
    weights: dict[str, float] = Field(default_factory=lambda: {"ease": 4.0})

    @field_validator("quotas")
    @classmethod
    def _check_quotas(cls, v: dict[str, int]) -> dict[str, int]:
        _known_paths(v)
        if any(q < 0 for q in v.values()):
            raise ValueError(f"quotas must be ≥ 0, got {v}")
        if sum(v.values()) <= 0:
            raise ValueError("quotas must add up to at least 1 candidate")
        return v

    @field_validator("weights")
    @classmethod
    def _check_weights(cls, v: dict[str, float]) -> dict[str, float]:
        _known_paths(v)
        if any(not (w >= 0 and w < float("inf")) for w in v.values()):
            raise ValueError(f"weights must be finite and ≥ 0, got {v}")
        return v

    @property
    def total(self) -> int:
        return sum(self.quotas.values())


def build_paths(
    config: RecallConfig, *, index: ItemIndex | None, popularity: Popularity, ease: ItemWeights | None = None
) -> list[RecallPath]:
    """The configured paths, in quota order (paths with quota 0 are still built, for evaluation)."""
    out: list[RecallPath] = []
    for name in config.quotas:
        if name in INDEX_PATHS and index is None:
            raise ValueError(f"recall path {name!r} needs an item index: build one (python -m pipelines.index)")
        if name == "ease":
            if ease is None:
                raise ValueError("recall path 'ease' needs the index version's ease weights: rebuild the index")
            out.append(EaseRecall(ease))
        elif name == "embedding":
            assert index is not None
            out.append(EmbeddingRecall(index, fallback=config.embedding_fallback, n_recent=config.n_recent))
        elif name == "item2item":
            assert index is not None
            out.append(ItemToItemRecall(index, n_seeds=config.item2item_seeds, decay=config.item2item_decay,
                                        depth=config.item2item_depth))
        elif name == "new_items":
            assert index is not None
            out.append(NewItemRecall(index, popularity.catalog, n_seeds=config.item2item_seeds, neighbours=config.new_item_neighbours))
        elif name == "genre":
            out.append(GenreRecall(popularity))
        elif name == "popular":
            out.append(PopularRecall(popularity))
        elif name == "popular_recent":
            out.append(PopularRecall(popularity, window_days=config.recent_window_days))
    return out


class Merger:
    """Candidates from several paths under per-path quotas (see the module docstring)."""

    def __init__(
        self,
        paths: Sequence[RecallPath],
        quotas: Mapping[str, int],
        *,
        backfill: bool = True,
        order: str = "paths",
        rrf_k: int = 60,
        weights: Mapping[str, float] | None = None,
    ) -> None:
        names = [p.name for p in paths]
        if len(set(names)) != len(names):
            raise ValueError(f"recall path names must be unique, got {names}")
        missing = sorted(set(quotas) - set(names))
        if missing:
            raise ValueError(f"quota for path(s) {missing} that were not given")
        self.paths = list(paths)
        self.quotas = {p.name: int(quotas.get(p.name, 0)) for p in self.paths}
        self.backfill = backfill
        self.order, self.rrf_k = order, rrf_k
        top = max(self.quotas.values(), default=1) or 1
        # a path's vote weighs as its quota, unless given
        self.weights = {name: float((weights or {}).get(name, q / top)) for name, q in self.quotas.items()}

    @classmethod
    def from_config(
        cls, config: RecallConfig, *, index: ItemIndex | None, popularity: Popularity, ease: ItemWeights | None = None
    ) -> Merger:
        if ease is None and "ease" in config.quotas:  # an index built without ease weights: the path is off
            config = config.model_copy(update={"quotas": {n: q for n, q in config.quotas.items() if n != "ease"}})
        return cls(build_paths(config, index=index, popularity=popularity, ease=ease), config.quotas,
                   backfill=config.backfill, order=config.order, rrf_k=config.rrf_k, weights=config.weights)  # fmt: skip

    @property
    def total(self) -> int:
        return sum(self.quotas.values())

    def path(self, name: str) -> RecallPath:
        for p in self.paths:
            if p.name == name:
                return p
        raise KeyError(f"no recall path named {name!r} (have {[p.name for p in self.paths]})")

    def recall(self, user: UserState, total: int | None = None) -> list[Candidate]:
        """Up to ``total`` (default: the sum of the quotas) unseen, distinct candidates, in the merger's
        ``order``: by reciprocal-rank fusion ("rrf"), or grouped by the path that added them in path
        order and best first within a path ("paths")."""
        got = self.recall_arrays(user, total)
        return [Candidate(m, s, p) for m, s, p in zip(got.movie_ids.tolist(), got.scores.tolist(), got.paths)]

    def recall_arrays(self, user: UserState, total: int | None = None) -> Recalls:
        """:meth:`recall` as parallel arrays (what serving needs, without one object per candidate)."""
        quotas = self.quotas if total is None else _scaled(self.quotas, total)
        want = sum(quotas.values())
        order: list[int] = []
        first_scores: list[float] = []
        found: dict[int, list[str]] = {}  # movie id -> the paths that found it
        fused: dict[int, float] = {}  # movie id -> reciprocal-rank fusion over the paths that found it
        seen = user.seen
        rrf_k = self.rrf_k
        weight = self.weights

        def walk(path: RecallPath, res: PathResult, new: int) -> int:
            """Add up to ``new`` unseen, not yet found items of ``res`` in order; credit ``path`` for
            the found ones it passes. Returns how many it added."""
            added = 0
            name = path.name
            w = weight[name]
            for rank, (m, s) in enumerate(zip(res.movie_ids.tolist(), res.scores.tolist())):
                if added >= new:
                    break
                if m in seen:
                    continue
                credited = found.get(m)
                if credited is not None:
                    if name not in credited:
                        credited.append(name)
                        fused[m] += w / (rrf_k + rank)
                    continue
                found[m] = [name]
                fused[m] = w / (rrf_k + rank)
                order.append(m)
                first_scores.append(s)
                added += 1
            return added

        asked: dict[str, tuple[int, PathResult]] = {}  # a prefix-stable path's longest answer so far

        def ask(path: RecallPath, k: int) -> PathResult:
            if not path.prefix_stable:
                return path.recall(user, k)
            hit = asked.get(path.name)
            if hit is None or hit[0] < k:
                hit = (k, path.recall(user, k))
                asked[path.name] = hit
            return hit[1]

        def take(path: RecallPath, new: int) -> None:
            if new <= 0:
                return
            if path.prefix_stable:  # its top-``new`` starts the longer list: one call, one walk
                # (long enough for the backfill too: ``want`` items hold ``want - len(order)`` new ones)
                walk(path, ask(path, max(new + len(order), want if self.backfill else 0)), new)
                return
            # the path's own top-``new`` first (paths such as genre allocate by k, so a longer list
            # need not start with the short one), then further down past what others already found
            added = walk(path, path.recall(user, new), new)
            if added < new:
                walk(path, path.recall(user, new + len(order)), new - added)

        for p in self.paths:
            take(p, quotas[p.name])
        if self.backfill:
            for p in self.paths:
                if len(order) >= want:
                    break
                walk(p, ask(p, want), want - len(order))  # of any ``want`` items, that many are new
        if self.order == "rrf" and order:
            # items added live lead, as in path order: no other path knows them yet
            key = np.fromiter((fused[m] + (1.0 if found[m][0] == "new_items" else 0.0) for m in order), dtype=np.float64, count=len(order))
            by = np.argsort(-key, kind="stable")
            order = [order[i] for i in by.tolist()]
            first_scores = [first_scores[i] for i in by.tolist()]
        return Recalls(
            np.asarray(order, dtype=np.int64), np.asarray(first_scores, dtype=np.float64), [tuple(found[m]) for m in order]
        )


def _scaled(quotas: Mapping[str, int], total: int) -> dict[str, int]:
    """Quotas scaled to ``total`` (largest remainder), keeping their proportions."""
    names = list(quotas)
    w = np.asarray([quotas[n] for n in names], dtype=np.float64)
    exact = total * w / w.sum()
    out = np.floor(exact).astype(np.int64)
    rest = total - int(out.sum())
    if rest > 0:
        out[np.argsort(-(exact - out), kind="stable")[:rest]] += 1
    return {n: int(q) for n, q in zip(names, out)}


def load_merger(
    artifacts: str,
    config: RecallConfig | None = None,
    *,
    index_version: str | None = "latest",
    features_version: str | None = "latest",
) -> Merger:
    """A ready :class:`Merger` from published artifacts: the index, and the catalog plus ratings (for
    popularity and the recent window) of a features version."""
    from rayrec.features.spec import features_path
    from rayrec.retrieval.versions import load_index

    config = config or RecallConfig()
    needs_index = any(n in (*INDEX_PATHS, "ease") for n in config.quotas)
    index = load_index(artifacts, index_version) if needs_index else None
    features = features_path(artifacts, features_version)
    catalog = ItemCatalog.load(features)
    popularity = Popularity(catalog, read_ratings(features), min_rating=config.popular_min_rating)
    return Merger.from_config(config, index=index, popularity=popularity, ease=ease_of(artifacts, index))


def ease_of(artifacts: str, index: ItemIndex | None) -> ItemWeights | None:
    """The ease weights saved with ``index``'s version (None without an index or weights)."""
    from rayrec import uri
    from rayrec.retrieval.ease import FILE

    version = index.meta.get("version") if index is not None else None
    target = uri.join(artifacts, "index", str(version), FILE) if version else None
    return ItemWeights.load(target) if target and uri.exists(target) else None

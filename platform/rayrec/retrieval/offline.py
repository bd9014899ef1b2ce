"""Offline recall evaluation: what would we retrieve for user u as of time t, and how much of what u
liked next does it contain.

Protocol (the features' per-user temporal split): t is the user's first test rating's time; the
user's state (history, recent positives, favourite genres) and popularity come from ratings strictly
before t; the relevant items are the user's test items rated ≥ 3.5. Recall@K = |candidates ∩
relevant| / |relevant|, averaged over users with at least one relevant item. Each path is scored
alone (its top quota and its top K) and the merged candidate set is scored as a whole, with the share
of merged hits each path found.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from rayrec import uri
from rayrec.retrieval.catalog import ItemCatalog, Popularity, read_parquet, read_ratings
from rayrec.retrieval.index import ItemIndex
from rayrec.retrieval.merge import Merger, RecallConfig, ease_of
from rayrec.retrieval.paths import PathResult, PopularRecall, RecallPath
from rayrec.retrieval.state import THRESHOLD, UserState, user_states_as_of

__all__ = [
    "OfflineData",
    "PathRecall",
    "RecallReport",
    "WithoutVector",
    "load_offline_data",
    "split_relevance",
    "evaluate",
    "tower_vectors",
    "format_report",
    "run_offline",
]

log = logging.getLogger(__name__)


@dataclass
class OfflineData:
    """Everything the evaluation needs from one features version."""

    features_path: str
    ratings: pd.DataFrame  # all ratings: userId, movieId, rating, timestamp
    catalog: ItemCatalog
    as_of: pd.Series  # userId → t (first test timestamp)
    relevant: dict[int, frozenset[int]]  # userId → test items rated ≥ threshold (users with ≥ 1)
    user_rows: pd.DataFrame  # userId + user features as of t (the first test sample's), for the user tower

    def popularity(self, min_rating: float = 0.0) -> Popularity:
        return Popularity(self.catalog, self.ratings, min_rating=min_rating)

    def states(self, max_recent: int = 50) -> dict[int, UserState]:
        """User states as of each evaluated user's t."""
        return user_states_as_of(self.ratings, self.as_of.loc[list(self.relevant)], self.catalog, max_recent=max_recent)


def split_relevance(test: pd.DataFrame, threshold: float = THRESHOLD) -> tuple[pd.Series, dict[int, frozenset[int]]]:
    """From test samples (userId, movieId, rating, timestamp): each user's split time t (earliest
    test timestamp) and relevant items (test rating ≥ threshold), for users with at least one."""
    as_of = test.groupby("userId")["timestamp"].min().astype("int64")
    as_of.index = as_of.index.astype("int64")
    liked = test[test["rating"].to_numpy(np.float64) >= threshold]
    relevant = {int(u): frozenset(g.tolist()) for u, g in liked.groupby("userId")["movieId"]}
    return as_of, relevant


def load_offline_data(features_path: str, threshold: float = THRESHOLD) -> OfflineData:
    """Read ratings, catalog and the test split of a features version folder."""
    from rayrec.features.pointintime import USER_FEATURES

    test = read_parquet(uri.join(features_path, "samples", "test"), ["userId", "movieId", "rating", "timestamp", *USER_FEATURES])
    test = test.assign(
        userId=test["userId"].to_numpy(np.int64),
        movieId=test["movieId"].to_numpy(np.int64),
        timestamp=test["timestamp"].to_numpy(np.int64),
    )
    as_of, relevant = split_relevance(test, threshold)
    first = test.sort_values(["userId", "timestamp", "movieId"]).drop_duplicates("userId")
    user_rows = first[["userId", *USER_FEATURES]].reset_index(drop=True)
    return OfflineData(features_path, read_ratings(features_path), ItemCatalog.load(features_path), as_of, relevant, user_rows)


class WithoutVector(RecallPath):
    """A path run as if the user had no vector (to score the embedding fallback next to the tower)."""

    def __init__(self, path: RecallPath, name: str, quota: int = 0) -> None:
        self.inner, self.name, self.quota = path, name, quota

    def recall(self, user: UserState, k: int) -> PathResult:
        return self.inner.recall(replace(user, vector=None), k)


@dataclass
class PathRecall:
    name: str
    quota: int
    recall_at_quota: float  # the path alone, its top ``quota``
    recall_at_k: float  # the path alone, its top K
    merged_share: float  # share of merged hits this path found (a hit can count for several paths)
    merged_only: float  # share of merged hits no other path found
    empty_users: float  # share of users for whom the path returned nothing


@dataclass
class RecallReport:
    k: int
    users: int
    merged: float  # Recall@K of the merged candidate set
    mean_candidates: float
    paths: list[PathRecall] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "k": self.k, "users": self.users, "merged_recall": self.merged,
            "mean_candidates": self.mean_candidates, "notes": self.notes,
            "paths": [p.__dict__ for p in self.paths],
        }  # fmt: skip


def evaluate(
    merger: Merger,
    states: Mapping[int, UserState],
    relevant: Mapping[int, frozenset[int]],
    *,
    k: int | None = None,
    extra: Sequence[RecallPath] = (),
) -> RecallReport:
    """Recall@K (K = the merger's total by default) per path alone and merged, averaged over the users
    of ``states`` that have relevant items. ``extra`` paths are scored alone (not merged)."""
    k = k or merger.total
    users = [u for u in states if relevant.get(u, frozenset()) - states[u].seen]
    if not users:
        raise ValueError("no user with relevant held-out items to evaluate")
    paths = [*merger.paths, *extra]
    quota = {p.name: merger.quotas.get(p.name) or int(getattr(p, "quota", 0)) for p in paths}
    at_q = {p.name: 0.0 for p in paths}
    at_k = {p.name: 0.0 for p in paths}
    empty = {p.name: 0 for p in paths}
    share = {p.name: 0.0 for p in merger.paths}
    only = {p.name: 0.0 for p in merger.paths}
    merged_total = 0.0
    n_cands = 0
    hit_users = 0
    for u in users:
        state = states[u]
        rel = relevant[u] - state.seen
        for p in paths:
            res = p.recall(state, k)
            q = quota[p.name] or k
            ids = res.movie_ids.tolist()
            at_k[p.name] += sum(m in rel for m in ids) / len(rel)
            at_q[p.name] += sum(m in rel for m in ids[:q]) / len(rel)
            empty[p.name] += not ids
        cands = merger.recall(state, k)
        n_cands += len(cands)
        hits = [c for c in cands if c.movie_id in rel]
        merged_total += len(hits) / len(rel)
        if hits:
            hit_users += 1
            for name in share:
                share[name] += sum(name in c.paths for c in hits) / len(hits)
                only[name] += sum(c.paths == (name,) for c in hits) / len(hits)
    n = len(users)
    rows = [
        PathRecall(
            p.name, quota[p.name], at_q[p.name] / n, at_k[p.name] / n,
            share.get(p.name, float("nan")) / max(hit_users, 1) if p.name in share else float("nan"),
            only.get(p.name, float("nan")) / max(hit_users, 1) if p.name in only else float("nan"),
            empty[p.name] / n,
        )  # fmt: skip
        for p in paths
    ]
    return RecallReport(k, n, merged_total / n, n_cands / n, rows)


def tower_vectors(artifacts: str, model_version: str, features_path: str, user_rows: pd.DataFrame) -> tuple[dict[int, np.ndarray] | None, str]:
    """User vectors from the retriever's user tower for ``user_rows`` (user features as of t), or
    ``(None, why)`` when the tower cannot be used."""
    from rayrec.features import FeatureSpec
    from rayrec.models.inference import TowerEncoder, load_model

    try:
        spec = FeatureSpec.of(features_path)
        loaded = load_model(artifacts, "retriever", model_version, spec=spec)
        vecs = np.asarray(TowerEncoder(loaded, spec).users(user_rows), dtype=np.float32)
    except Exception as e:  # noqa: BLE001 - any failure means: evaluate without the tower, and say why
        return None, f"user tower failed ({type(e).__name__}: {e})"
    return {int(u): v for u, v in zip(user_rows["userId"].tolist(), vecs)}, f"user tower of retriever {model_version}"


def format_report(report: RecallReport, title: str = "") -> str:
    """The per-path and merged Recall@K table."""
    k = report.k
    lines = [title] if title else []
    lines += [
        f"Recall@{k} on {report.users} users (held-out test positives, rating ≥ {THRESHOLD}; state as of each "
        f"user's split time)",
        f"{'path':<26}{'quota':>6}{'R@quota alone':>15}{f'R@{k} alone':>13}{'% merged hits':>15}{'% only it':>11}{'empty':>8}",
    ]
    for p in report.paths:
        share = f"{100 * p.merged_share:.1f}" if np.isfinite(p.merged_share) else "-"
        only = f"{100 * p.merged_only:.1f}" if np.isfinite(p.merged_only) else "-"
        quota = str(p.quota) if p.quota else "-"
        at_quota = f"{p.recall_at_quota:.4f}" if p.quota else "-"
        lines.append(
            f"{p.name:<26}{quota:>6}{at_quota:>15}{p.recall_at_k:>13.4f}{share:>15}{only:>11}{100 * p.empty_users:>7.1f}%"
        )
    lines.append(f"{f'merged ({report.mean_candidates:.0f} candidates)':<26}{k:>6}{'':>15}{report.merged:>13.4f}")
    lines += report.notes
    return "\n".join(lines)


def run_offline(
    artifacts: str,
    index: ItemIndex,
    config: RecallConfig | None = None,
    *,
    features_path: str,
    k: int | None = None,
    use_tower: bool = True,
) -> RecallReport:
    """Evaluate the configured recall (``RecallConfig``) with ``index`` (an :class:`ItemIndex` whose
    ``meta`` says which embeddings it holds) on the test split of ``features_path``. With retriever
    embeddings and ``use_tower``, users get the user tower's vector and the recent-positives mean is
    scored alongside; extra rows show paths not in the quotas."""
    config = config or RecallConfig()
    data = load_offline_data(features_path)
    popularity = data.popularity(config.popular_min_rating)
    merger = Merger.from_config(config, index=index, popularity=popularity, ease=ease_of(artifacts, index))
    states = data.states()
    emb = dict(index.meta.get("embeddings") or {})
    notes = [
        f"embeddings: {emb.get('description', 'unknown')}",
        f"index: {index.meta.get('version', '(in memory)')} {index.factory} {index.search_params}".rstrip(),
        f"features: {features_path.rstrip('/').rsplit('/', 1)[-1]}",
    ]
    extra: list[RecallPath] = []
    has_embedding = "embedding" in merger.quotas
    if emb.get("kind") == "model" and use_tower and has_embedding:
        rows = data.user_rows[data.user_rows["userId"].isin(list(states))]
        vecs, why = tower_vectors(artifacts, str(emb.get("model_version")), features_path, rows)
        notes.append(f"user vectors: {why}")
        if vecs:
            states = {u: s.with_vector(vecs.get(u)) for u, s in states.items()}
            extra.append(WithoutVector(merger.path("embedding"), "embedding[recent mean]", merger.quotas["embedding"]))
    elif has_embedding:
        notes.append(
            f"user vectors: mean of the user's {config.n_recent} most recent positives' item embeddings "
            "(no user tower for these embeddings)"
        )
    if "popular_recent" not in merger.quotas:
        extra.append(PopularRecall(popularity, window_days=config.recent_window_days))
    if "popular" not in merger.quotas:
        extra.append(PopularRecall(popularity))
    report = evaluate(merger, states, data.relevant, k=k, extra=extra)
    if extra:
        notes.append(f"not merged (scored alone for comparison): {', '.join(p.name for p in extra)}")
    notes.append(
        "caveat: the split is per user, so the item embeddings were fit on train ratings that include other "
        "users' ratings after t; user states and popularity use only ratings before t"
    )
    report.notes = notes
    return report

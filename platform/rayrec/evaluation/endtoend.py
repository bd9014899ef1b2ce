"""End-to-end offline evaluation: is the list a user gets from ``/recommend`` any good?

1. split the raw ratings by a named protocol (:mod:`rayrec.evaluation.protocols`);
2. run the real offline jobs (features → online store → ranker → retriever → index) on the known part
   into a scratch artifacts folder: the caller passes them in as ``offline``, the very steps of the
   main job;
3. load the real serving code in this process (:class:`~rayrec.serving.service.RecommenderService`,
   what a replica runs) and, for every evaluated user, run recall → rank → rerank;
4. score the lists each stage would serve alone, the final list, and the baselines (most-popular,
   item-kNN, EASE with λ tuned on a validation split of the known part) in the same run.

The stages: ``retriever`` (the two-tower's own top list, the embedding path alone), ``recall`` (the
merged multi-path candidates in merge order), ``ranker`` (the candidates by ranker score), ``fused``
(the order rerank starts from), ``served`` (the final list). Sweeps of the MMR ``diversity`` and of
``rank_weight`` re-run only the rerank stage on the same candidates.

With ``tune`` (:func:`tune_serving`), the served settings that weigh the paths against each other (the
ease path's vote in the recall fusion, ``rank_weight``) are first chosen on a validation split of the
known part made by the same protocol, as the EASE baseline's λ is: shadow models are trained on that
split's known part, its held-out part is never seen by them, and the test split is not looked at.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rayrec.arrays import unique
from rayrec.data.movielens import MovieLens
from rayrec.evaluation.baselines import Interactions, ease_scores, item_knn, most_popular, top_unseen, tune_ease
from rayrec.evaluation.protocols import Split, split_ratings
from rayrec.evaluation.topn import Relevance, list_metrics, pack_lists

__all__ = ["EndToEndConfig", "EndToEndResult", "run_end_to_end", "store_of", "tune_serving", "tuned_in", "TUNED", "write_known", "STAGES", "PATH_STAGES"]

log = logging.getLogger(__name__)

STAGES = ("retriever", "recall", "ranker", "fused", "served")
# recall paths scored alone (rows "path:<name>"): the merged list should not lose to its best path
PATH_STAGES = ("ease", "embedding", "item2item", "genre", "popular", "popular_recent")
Offline = Callable[[str, str], None]  # (MovieLens folder of the known part, artifacts dir) → jobs run


@dataclass(frozen=True)
class EndToEndConfig:
    protocol: str = "temporal"
    k: int = 10
    k_long: int = 50  # Recall@k_long of each stage (the served list asked for k_long items)
    diversity_grid: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.5)
    rank_weight_grid: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    max_users: int | None = None  # evaluate the first N users only (quick checks)
    knn_neighbours: int = 100
    serving: dict[str, Any] = field(default_factory=dict)  # ServingConfig settings over the defaults
    tune: bool = False  # choose the ease vote and rank_weight on a validation split first (tune_serving)
    tune_ease_votes: tuple[float, ...] = (1.0, 4.0, 16.0, 64.0)
    # also fit a blend (rayrec.serving.blend) on each vote's validation lists, kept when the best of them,
    # scored out of fold, beats the grid's best there
    tune_blend: bool = True


@dataclass
class EndToEndResult:
    protocol: str
    rows: dict[str, dict[str, float]]  # stage or baseline → metrics
    sweeps: dict[str, list[dict[str, float]]]
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"protocol": self.protocol, "rows": self.rows, "sweeps": self.sweeps, "info": self.info}


def write_known(data: MovieLens, ratings: pd.DataFrame, folder: Path) -> Path:
    """Write ``ratings`` and the catalog as a MovieLens folder the feature job reads."""
    folder.mkdir(parents=True, exist_ok=True)
    ratings[["userId", "movieId", "rating", "timestamp"]].to_csv(folder / "ratings.csv", index=False)
    movies = data.movies[["movieId", "title"]].copy()
    movies["genres"] = ["|".join(g) if len(g) else "(no genres listed)" for g in data.movies["genres"]]
    movies.to_csv(folder / "movies.csv", index=False)
    return folder


def _unseen_lists(lists: Sequence[Sequence[int]], seen: Sequence[frozenset[int]], k: int) -> np.ndarray:
    return pack_lists([[m for m in items if m not in s][:k] for items, s in zip(lists, seen)], k)


class _Collector:
    """Runs the serving stages for every user and keeps each stage's list."""

    def __init__(self, service: Any, cfg: EndToEndConfig) -> None:
        self.service, self.cfg = service, cfg
        self.lists: dict[str, list[list[int]]] = {s: [] for s in STAGES if s != "retriever"}
        self.served_long: list[list[int]] = []
        self.paths: dict[str, list[list[int]]] = {}  # recall path → its own list per user
        self.seen: list[frozenset[int]] = []
        self.requests: list[tuple[Any, Any]] = []  # (Recalled, Ranked) at k, for the sweeps
        self.took_ms: list[float] = []
        self.degraded = 0  # answers without the ranker or the store (none expected)

    async def run(self, users: np.ndarray) -> None:
        from rayrec.retrieval.state import UserState

        svc, k, kl = self.service, self.cfg.k, self.cfg.k_long
        core = svc.core
        for u in users.tolist():
            t = time.perf_counter()
            recalled = await svc.recall_local(int(u), k)
            ranked = await svc.rank_local(recalled)
            final = core.rerank(recalled, ranked)
            self.took_ms.append((time.perf_counter() - t) * 1e3)
            long = await svc.recommend(int(u), kl)
            self.degraded += int(long.degraded or ranked.scores is None)
            b = core.bundle
            seen = recalled.seen
            self.seen.append(seen)
            ids = recalled.ids.tolist()
            self.lists["recall"].append(ids)
            if ranked.scores is not None:
                order = np.argsort(-np.asarray(ranked.scores), kind="stable")
                self.lists["ranker"].append([ids[i] for i in order.tolist()])
            else:
                self.lists["ranker"].append(ids)
            fused = core.fused_scores(recalled, ranked)
            self.lists["fused"].append([ids[i] for i in np.argsort(-fused, kind="stable").tolist()])
            self.lists["served"].append([it.movie_id for it in final.items])
            self.served_long.append([it.movie_id for it in long.items])
            # each recall path alone, from the state the recall stage built (the retriever: the
            # embedding path with the user tower's vector)
            vector = b.tower.vector_of(recalled.user_inputs) if b.tower is not None and recalled.user_inputs is not None else None
            state = UserState(user_id=int(u), recent_positives=recalled.liked, seen=seen, genres=recalled.genres, vector=vector)
            for path in b.merger.paths:
                if path.name in PATH_STAGES:  # a path configured with quota 0 too: it is built for this
                    if path.name == "embedding" and vector is None:
                        got: list[int] = []
                    else:
                        got = path.recall(state, kl).movie_ids.tolist()
                    self.paths.setdefault(path.name, []).append(got)
            self.requests.append((recalled, ranked))

    def sweep(self, rel: Relevance, metrics: Callable[[np.ndarray], dict[str, float]], **change: Any) -> dict[str, float]:
        """Metrics of the served list with one setting changed (rerank only, same candidates)."""
        cfg = self.service.core.bundle.config
        if "diversity" in change:
            cfg = cfg.model_copy(update={"rerank": cfg.rerank.model_copy(update=change)})
        else:
            cfg = cfg.model_copy(update=change)
        return metrics(pack_lists(_reranked(self.service.core, self.requests, cfg), self.cfg.k))


def _reranked(core: Any, requests: Sequence[tuple[Any, Any]], config: Any) -> list[list[int]]:
    """The final lists of already recalled and ranked ``requests`` reranked under serving ``config``
    (the loaded bundle is restored after)."""
    live = core.bundle
    core.bundle = live.with_config(config)
    try:
        return [[it.movie_id for it in core.rerank(r, rk).items] for r, rk in requests]
    finally:
        core.bundle = live


def _baselines(split: Split, rel: Relevance, k: int, neighbours: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Top-k lists of most-popular, item-kNN and EASE for the evaluated users, and EASE's tuning."""
    threshold = split.protocol.relevant_min_rating
    inner = split_ratings(split.known, split.protocol)
    inner_rel = inner.relevant
    candidates = {"all": split.known}
    inner_inputs = {"all": inner.known}
    if threshold is not None:  # EASE may learn from likes only: the validation split decides
        candidates["liked"] = split.known[split.known["rating"].to_numpy(np.float64) >= threshold]
        inner_inputs["liked"] = inner.known[inner.known["rating"].to_numpy(np.float64) >= threshold]
    tuning: dict[str, Any] = {}
    best = ("all", 0.0, -1.0)
    for name, fit in inner_inputs.items():
        lam, grid = tune_ease(fit, inner_rel["userId"].to_numpy(), inner_rel["movieId"].to_numpy(), k=k)
        tuning[name] = {"lambda": lam, "valid_ndcg": grid}
        if grid[lam] > best[2]:
            best = (name, lam, grid[lam])
    tuning["chosen"] = {"input": best[0], "lambda": best[1]}
    x_all = Interactions.of(split.known)
    seen = x_all.rows(rel.user_ids) > 0
    out: dict[str, np.ndarray] = {}

    def lists(x: Interactions, scorer: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        # score over x's items, then mask everything the user has seen in the known part
        scores = scorer(x.rows(rel.user_ids))
        cols = np.searchsorted(x_all.items, x.items)
        return top_unseen(scores, seen[:, cols], x.items, k)

    out["most_popular"] = lists(x_all, most_popular(x_all))
    out["item_knn"] = lists(x_all, item_knn(x_all, neighbours))
    x_ease = Interactions.of(candidates[best[0]])
    out["ease"] = lists(x_ease, ease_scores(x_ease, best[1]))
    return out, tuning


TUNED = ("rank_weight", "recall.weights.ease", "blend")  # the settings tune_serving chooses
# serving settings of every evaluation run: a store deadline no busy machine misses (the evaluation scores
# the lists, not the store's latency; a degraded answer is counted)
_EVAL_STORE = {"store_timeout_s": 10.0, "store_cooldown_s": 0.0}


def _with_vote(serving: dict[str, Any], vote: float, rank_weight: float) -> dict[str, Any]:
    """``serving`` with the ease path's fusion vote and ``rank_weight`` set (other settings kept)."""
    from rayrec.serving.bundle import ServingConfig

    recall = ServingConfig.model_validate(serving).recall
    return {**serving, "rank_weight": rank_weight,
            "recall": {**recall.model_dump(mode="json"), "weights": {**recall.weights, "ease": vote}}}  # fmt: skip


def tuned_in(serving: dict[str, Any]) -> list[str]:
    """The settings of ``serving`` that :func:`tune_serving` would choose (and so overwrite)."""
    out = []
    for name in TUNED:
        *parents, leaf = name.split(".")
        node = serving
        for key in parents:
            node = node.get(key) or {}
        if leaf in node:
            out.append(name)
    return out


def store_of(artifacts: str) -> str:
    """The online store of an evaluation's scratch artifacts, which its features job loads and its
    serving reads: the SQLite file under them, whatever ``RAYREC_STORE_URL`` says (a shared store would
    mix the splits' ratings: the held-out part of one would be history in another)."""
    return str(Path(artifacts) / "online" / "store.sqlite")


def tune_serving(
    data: MovieLens, known: pd.DataFrame, protocol: str, offline: Offline | None, workdir: str | Path, cfg: EndToEndConfig
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The served settings (``cfg.serving`` with the ease vote from ``cfg.tune_ease_votes`` and the
    ``rank_weight`` from ``cfg.rank_weight_grid``) whose final lists score the best NDCG@k on a
    validation split of ``known`` by ``protocol``: the offline jobs run on its known part into
    ``workdir`` (``offline`` None: reuse what a previous run left there), every validation user (the
    first ``cfg.max_users``) is served once per vote and reranked once per weight. The vote is searched
    only where it can matter (the ease path recalls and the paths are fused by reciprocal rank). With
    ``cfg.tune_blend``, a blend (:mod:`rayrec.serving.blend`) is also fit on each vote's lists and scored
    out of fold (:func:`_tune_blend`); the best one is served, with its vote, when it beats the grid's best.
    Returns the settings and the grid's scores. ``cfg.serving`` must not set what is tuned."""
    from rayrec.serving.bundle import ServingConfig
    from rayrec.serving.service import RecommenderService

    given = tuned_in(cfg.serving)
    if given:
        raise ValueError(f"serving settings {given} are what tuning chooses: leave them out, or do not tune")
    t = time.perf_counter()
    work = Path(workdir)
    inner = split_ratings(known, protocol)
    rel_df = inner.relevant
    users = unique(inner.known["userId"].to_numpy(np.int64))
    if cfg.max_users:
        users = users[: cfg.max_users]
        rel_df = rel_df[rel_df["userId"].isin(users)]
    rel = Relevance.of(users, rel_df["userId"].to_numpy(), rel_df["movieId"].to_numpy())
    folder = write_known(data, inner.known, work / "known")
    artifacts = str(work / "artifacts")
    if offline is not None:
        offline(str(folder), artifacts)
    elif not (work / "artifacts").exists():
        raise FileNotFoundError(f"no tuning artifacts to reuse under {artifacts}: run without reuse first")
    # the shadow artifacts hold their own versions: a pinned version names one of the real run's
    base = {**_EVAL_STORE, **{key: v for key, v in cfg.serving.items() if not key.endswith("_version")}}
    recall = ServingConfig.model_validate(base).recall
    # the vote matters only where the ease path recalls and the paths are fused by reciprocal rank
    searched = recall.order == "rrf" and recall.quotas.get("ease", 0) > 0
    votes = cfg.tune_ease_votes if searched else (recall.weights.get("ease", 1.0),)
    k = cfg.k
    grid: dict[tuple[float, float], float] = {}
    degraded = 0

    async def serve(service: Any) -> list[tuple[Any, Any]]:
        out = []
        for u in rel.user_ids.tolist():
            recalled = await service.recall_local(int(u), k)
            out.append((recalled, await service.rank_local(recalled)))
        return out

    blends: dict[float, dict[str, Any]] = {}  # vote → its blend, fit and scored out of fold
    for vote in votes:
        service = RecommenderService.create(artifacts, store_of(artifacts), ServingConfig.model_validate(_with_vote(base, vote, 0.0)))
        try:
            if not any(p.name == "ease" for p in service.core.bundle.merger.paths):
                searched = False  # no ease weights in the shadow index: the vote changes nothing
            requests = asyncio.run(serve(service))
            degraded += sum(int(rk.scores is None) for _, rk in requests)
            served = service.core.bundle.config
            for w in cfg.rank_weight_grid:
                lists = _reranked(service.core, requests, served.model_copy(update={"rank_weight": w}))
                grid[(vote, w)] = list_metrics(pack_lists(lists, k), rel, ks=(k,), catalog_size=len(data.movies))[f"ndcg@{k}"]
            if cfg.tune_blend:
                blends[vote] = _tune_blend(service.core, requests, rel, k, len(data.movies))
        finally:
            service.close()
        if not searched:
            break
    vote, weight = max(grid, key=lambda key: grid[key])
    best = grid[(vote, weight)]
    scored = {v: b[f"valid_ndcg@{k}_out_of_fold"] for v, b in blends.items() if b.get("coefficients")}
    blended = bool(scored) and max(scored.values()) > best
    if blended:  # the vote whose blend scored best, with that vote's best rank_weight (the blend does not use it)
        vote = max(scored, key=lambda v: scored[v])
        weight = max((w for v, w in grid if v == vote), key=lambda w: grid[(vote, w)])
    chosen = _with_vote(cfg.serving, vote, weight)
    if blended:
        chosen = {**chosen, "blend": blends[vote]["coefficients"]}
    blend_info = {"chosen": blended, f"grid_best_ndcg@{k}": best, "by_vote": [{"ease_vote": v, **b} for v, b in blends.items()]} if cfg.tune_blend else None
    info = {
        "protocol": protocol, "users": rel.n_users, "known_ratings": len(inner.known), "degraded": degraded,
        "chosen": {"ease_vote": vote, "rank_weight": weight, "blend": blended},
        "ease_vote_searched": searched,
        f"valid_ndcg@{k}": [{"ease_vote": v, "rank_weight": w, "ndcg": n} for (v, w), n in grid.items()],
        "blend": blend_info, "wall_s": round(time.perf_counter() - t, 1),
    }  # fmt: skip
    log.info("tuned serving on %d validation users: ease vote %g, rank_weight %g (grid's best NDCG@%d %.4f), blend %s", rel.n_users, vote,
             weight, k, best, f"chosen ({scored[vote]:.4f} out of fold)" if blended else "not chosen")  # fmt: skip
    return chosen, info


def _tune_blend(core: Any, requests: Sequence[tuple[Any, Any]], rel: Relevance, k: int, catalog_size: int) -> dict[str, Any]:
    """A blend (:mod:`rayrec.serving.blend`) fit on the candidates of validation ``requests`` (labels:
    the user's relevant items) and the NDCG@k of its reranked lists out of fold: the users in two halves,
    each half's lists reranked under the coefficients fit on the other half (the lists a blend fit on
    these very users would serve flatter them). The coefficients returned are fit on every user."""
    from rayrec.serving.blend import FEATURES, candidate_features, fit_blend

    relevant: dict[int, set[int]] = {}
    for u, m in zip(rel.pairs_user.tolist(), rel.pairs_item.tolist()):
        relevant.setdefault(int(u), set()).add(int(m))
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    fold: list[int] = []
    for i, (r, rk) in enumerate(requests):  # request i is validation user i
        if rk.scores is None or r.cold_start:  # answered in recall order: no blend applies
            continue
        popularity = np.asarray([(row or {}).get("item_rating_count") or 0 for row in rk.rows], dtype=np.float64)
        xs.append(candidate_features(core.bundle, r, rk.scores, popularity))
        ys.append(np.fromiter((int(m) in relevant.get(i, ()) for m in r.ids.tolist()), dtype=np.float64, count=len(r.ids)))
        fold += [i % 2] * len(r.ids)
    x, y, folds = (np.vstack(xs), np.concatenate(ys), np.asarray(fold)) if xs else (np.zeros((0, len(FEATURES))), np.zeros(0), np.zeros(0, int))
    if not len(y) or y.min() == y.max() or any(y[folds == f].min() == y[folds == f].max() for f in (0, 1) if (folds == f).any()):
        return {"why": "too few taken and untaken candidates to fit", "coefficients": None}
    served = core.bundle.config
    lists: list[list[int]] = [[] for _ in requests]
    for f in (0, 1):
        coefficients = fit_blend(x[folds != f], y[folds != f])
        members = [i for i in range(len(requests)) if i % 2 == f]
        got = _reranked(core, [requests[i] for i in members], served.model_copy(update={"blend": coefficients}))
        for i, items in zip(members, got):
            lists[i] = items
    oof = list_metrics(pack_lists(lists, k), rel, ks=(k,), catalog_size=catalog_size)[f"ndcg@{k}"]
    coefficients = fit_blend(x, y)
    return {f"valid_ndcg@{k}_out_of_fold": oof, "coefficients": coefficients, "rows": int(len(y)), "taken": int(y.sum())}


def run_end_to_end(
    data: MovieLens, offline: Offline | None, workdir: str | Path, cfg: EndToEndConfig = EndToEndConfig()
) -> EndToEndResult:
    """The whole evaluation of one protocol (see the module docstring). ``workdir`` holds the known
    data and the scratch artifacts; the caller's Ray session runs the jobs. ``offline`` None: reuse
    the artifacts a previous run left in ``workdir`` (to compare serving settings on the same models)."""
    from rayrec.serving.bundle import ServingConfig
    from rayrec.serving.service import RecommenderService

    work = Path(workdir)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    split = split_ratings(data.ratings, cfg.protocol)
    rel_df = split.relevant
    known_users = unique(split.known["userId"].to_numpy(np.int64))
    rel = Relevance.of(known_users, rel_df["userId"].to_numpy(), rel_df["movieId"].to_numpy())
    if cfg.max_users:
        keep = rel.user_ids[: cfg.max_users]
        sub = rel_df[rel_df["userId"].isin(keep)]
        rel = Relevance.of(keep, sub["userId"].to_numpy(), sub["movieId"].to_numpy())
    folder = write_known(data, split.known, work / "known")
    artifacts = str(work / "artifacts")
    timings["split_s"] = time.perf_counter() - t

    settings, tuning = cfg.serving, None
    if cfg.tune:
        t = time.perf_counter()
        settings, tuning = tune_serving(data, split.known, cfg.protocol, offline, work / "tune", cfg)
        timings["tune_s"] = time.perf_counter() - t

    t = time.perf_counter()
    if offline is not None:
        offline(str(folder), artifacts)
    elif not (work / "artifacts").exists():
        raise FileNotFoundError(f"no artifacts to reuse under {artifacts}: run without reuse first")
    timings["offline_s"] = time.perf_counter() - t

    t = time.perf_counter()
    serving = ServingConfig.model_validate({**_EVAL_STORE, **settings})  # degraded answers: info["degraded"]
    service = RecommenderService.create(artifacts, store_of(artifacts), serving)
    collector = _Collector(service, cfg)
    try:
        asyncio.run(collector.run(rel.user_ids))
    finally:
        service.close()
    timings["serve_s"] = time.perf_counter() - t

    counts = split.known.groupby("movieId")["userId"].nunique()
    popularity = {int(m): float(c) for m, c in counts.items()}
    genres = {int(m): tuple(g) for m, g in zip(data.movies["movieId"], data.movies["genres"])}
    n_train_users = len(known_users)
    k, kl = cfg.k, cfg.k_long

    def metrics(lists: np.ndarray, ks: tuple[int, ...] = (k,)) -> dict[str, float]:
        return list_metrics(lists, rel, ks=ks, catalog_size=len(data.movies), popularity=popularity,
                            n_train_users=n_train_users, genres=genres)  # fmt: skip

    rows: dict[str, dict[str, float]] = {}
    for stage in STAGES:
        # the retriever's list is the embedding path's own (none without the path)
        lists = collector.paths.get("embedding", [[] for _ in collector.seen]) if stage == "retriever" else collector.lists[stage]
        if stage == "served":
            m = metrics(pack_lists(lists, k))
            m.update({key: v for key, v in metrics(pack_lists(collector.served_long, kl), (kl,)).items() if key.endswith(f"@{kl}")})
        else:
            m = metrics(_unseen_lists(lists, collector.seen, kl), (k, kl))
        rows[stage] = m
    for name, lists in collector.paths.items():
        rows[f"path:{name}"] = rows["retriever"] if name == "embedding" else metrics(_unseen_lists(lists, collector.seen, kl), (k, kl))

    t = time.perf_counter()
    base_lists, ease_tuning = _baselines(split, rel, kl, cfg.knn_neighbours)
    for name, top in base_lists.items():
        rows[name] = metrics(top, (k, kl))
    timings["baselines_s"] = time.perf_counter() - t

    sweeps = {
        "diversity": [{"diversity": d, **collector.sweep(rel, metrics, diversity=d)} for d in cfg.diversity_grid],
        "rank_weight": [{"rank_weight": w, **collector.sweep(rel, metrics, rank_weight=w)} for w in cfg.rank_weight_grid],
    }
    took = np.asarray(collector.took_ms)
    info = {
        "users": rel.n_users,
        "degraded": collector.degraded,
        "known_ratings": len(split.known),
        "heldout_ratings": len(split.heldout),
        "relevant_pairs": len(rel.pairs_user),
        "ease": ease_tuning,
        "serving_tuning": tuning,
        "versions": service.bundle.versions,
        "serving_config": service.bundle.config.model_dump(mode="json"),
        "request_ms": {"p50": float(np.percentile(took, 50)), "p99": float(np.percentile(took, 99))} if len(took) else {},
        "timings": timings,
        "artifacts": artifacts,
    }
    return EndToEndResult(cfg.protocol, rows, sweeps, info)

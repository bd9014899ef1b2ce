"""The training job of one model, end to end: data → select → refit → test → registry.

1. **data**: the samples of a features version; each user's last ``valid_fraction`` of training rows
   (by time) is the validation split, the rest the fit split.
2. **select**: train on fit with early stopping on the validation metric (ranker: ROC AUC; retriever:
   Recall@50 over the catalog), which picks the number of epochs.
3. **refit** (``TrainConfig.refit``): train again for that many epochs on every sample the features
   know (``refit_on="all"``: train and test, so the published model misses no rating, the most recent
   ones included) or on the train samples (``refit_on="train"``); or (``TrainConfig.refit_from``;
   by default when the selection kept one epoch) continue the selection's model for one pass over
   the samples it did not see: the validation split, and the test samples with ``refit_on="all"``.
4. **test**: ranker ROC AUC, PR AUC, log loss and accuracy on the test split; retriever Recall@k,
   NDCG@10, HitRate@10 and coverage, with the popularity baseline scored on the same task. The model
   tested never saw a test row: the selection model when the refit learnt from the test samples
   (``metrics["tested_model"]`` says which).
5. **registry**: weights, config, spec hash, data range and metrics under ``models/<name>/<version>``;
   the retriever adds the item embeddings of the whole catalog (``item_embeddings.parquet``).

Both training stages run on Ray Train and checkpoint every epoch under ``<storage>/<run name>/``; a
rerun with the same run name resumes them (a finished stage returns at once).
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, TypeAlias

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from torch import nn

from rayrec import registry, tracking, uri
from rayrec.config import default_artifacts
from rayrec.costs import release_memory
from rayrec.evaluation.classification import classification_metrics
from rayrec.evaluation.retrieval import build_task, evaluate, popularity_scores
from rayrec.features.spec import FeatureSpec
from rayrec.models import MODELS, build_model, model_config
from rayrec.models.inference import item_vectors
from rayrec.models.inputs import encode_items, encode_pairs, encode_users
from rayrec.models.ranker import EASE_FILE
from rayrec.models.two_tower import TwoTower
from rayrec.training.config import TrainConfig, default_train_config
from rayrec.training.data import (
    FeaturesVersion,
    agree_lists,
    data_range,
    encoded_narrow,
    items_at,
    history_index,
    holdout_positions,
    open_features,
    RATING_COLUMNS,
    read_samples,
    read_table,
    to_dataset_chunks,
    users_at,
)
from rayrec.retrieval.ease import fit_item_weights
from rayrec.training.ease_feature import EaseFeature
from rayrec.training.negatives import NegativeSampler
from rayrec.training.tasks import HISTORY_END, HISTORY_LEN, PREDICT_BATCH, RankTask, RetrievalData, RetrieveTask, predict_ranker, retrieval_metrics
from rayrec.training.trainer import FitResult, fit, runs_root

__all__ = ["JobConfig", "JobResult", "run_job", "ranker_rows", "retriever_rows", "retrieval_data"]

log = logging.getLogger(__name__)

ITEM_STATS = ("item_rating_count", "item_rating_mean", "item_rating_std")


@dataclass(frozen=True)
class JobConfig:
    """One training job. ``train``/``model`` default to the tuned defaults of ``name``."""

    name: str  # "ranker" | "retriever"
    artifacts: str = field(default_factory=default_artifacts)
    features_version: str = "latest"
    train: TrainConfig | None = None
    model: Any = None  # RankerConfig | TwoTowerConfig
    run_name: str | None = None  # reuse to resume an interrupted job
    storage: str | None = None  # checkpoints; default <artifacts>/train_runs
    max_users: int | None = None  # train and test on the first N users only (quick checks)
    publish: bool = True

    def __post_init__(self) -> None:
        if self.name not in MODELS:
            raise ValueError(f"unknown model {self.name!r}; expected one of {sorted(MODELS)}")

    @property
    def train_config(self) -> TrainConfig:
        return self.train or default_train_config(self.name)

    @property
    def model_config(self) -> Any:
        return self.model or model_config(self.name)


@dataclass
class JobResult:
    name: str
    run_name: str
    version: str | None  # registry version (None when not published)
    path: str | None
    metrics: dict[str, Any]
    timings: dict[str, float]
    select: FitResult | None
    final: FitResult


# -- data ------------------------------------------------------------------------------------------
def _subset(fv: FeaturesVersion, max_users: int | None) -> FeaturesVersion:
    if not max_users:
        return fv
    users = np.sort(fv.train["userId"].unique())[:max_users]
    return FeaturesVersion(fv.version, fv.path, fv.spec, _of_users(fv.train, users), _of_users(fv.test, users), fv.movies)


def _of_users(df: pd.DataFrame, users: np.ndarray) -> pd.DataFrame:
    """The rows of ``df`` whose ``userId`` is one of ``users``, in order."""
    return df[df["userId"].isin(users)].reset_index(drop=True)


#: the columns a user's history and the items' snapshot read from every rated row
HISTORY_COLUMNS = RATING_COLUMNS


def _features(fv: FeaturesVersion, wide: Collection[str] = (), fit_rows: Rows | None = None) -> tuple[FeaturesVersion, Rows | None]:
    """``fv`` whose splits named in ``wide`` ("train", "test") hold every feature of their samples
    and the others their :data:`RATING_COLUMNS` only; ``fit_rows``, a split of the train samples,
    re-pointed at the new train frame.

    A stage's rows are built from the samples' features; everything else a job reads of the samples
    (histories, the items' snapshot, the users' states of the retriever's test, the EASE weights, the
    data range) is in the rating columns. The features are most of the samples' memory (about 210
    of 240 bytes a sample as written, 119 of 148 as read: :func:`~rayrec.training.data.compact_list`),
    and the driver held them through every stage's training: 6 GB at 25M ratings. A split's
    features are read again from the features version's files (the same rows in the same order; a
    ``max_users`` job's users only) when a stage builds rows from them; the two splits' list columns
    are then made to agree on their types (:func:`~rayrec.training.data.agree_lists`).

    The caller lets the old version go, then gives its memory back (:func:`release_memory`): Arrow's
    pool and the C heap keep what is freed for reuse: letting the train features of 5M samples go
    took the job's process from 1.39 to 1.47 GiB without it, and from 1.50 to 0.66 GiB with it."""
    splits = {"train": fv.train, "test": fv.test}
    for split, df in splits.items():
        narrow = list(df.columns) == RATING_COLUMNS
        if split in wide and narrow:
            full = read_samples(fv, split)
            if len(full) != len(df):
                full = _of_users(full, np.unique(df["userId"].to_numpy()))
            if len(full) != len(df) or not np.array_equal(full["userId"].to_numpy(), df["userId"].to_numpy()):
                raise RuntimeError(f"the {split} samples of features {fv.version} changed while the job ran")
            splits[split] = full
        elif split not in wide and not narrow:
            splits[split] = df[RATING_COLUMNS].copy()  # a copy: no view keeps the features' blocks
    if splits["train"] is fv.train and splits["test"] is fv.test:
        return fv, fit_rows
    splits["train"], splits["test"] = agree_lists(splits["train"], splits["test"])  # rows of both may be concatenated
    if isinstance(fit_rows, Taken):
        fit_rows = Taken(splits["train"], fit_rows.index)
    return replace(fv, train=splits["train"], test=splits["test"]), fit_rows


#: liked rows the retriever's training rows are built and encoded at a time: the driver holds one
#: chunk of feature rows, not every liked sample's (about 15M rows at 25M ratings)
RETRIEVER_CHUNK_ROWS = 1_000_000


@dataclass
class RetrieverRows:
    """The retriever's training rows (:func:`retriever_rows`) by reference: which rows of ``parts`` are
    kept, their histories and the items' snapshot, built into frames a chunk at a time
    (:meth:`chunks`)."""

    parts: list[Part]
    kept: list[np.ndarray]  # per part, the positions of its kept rows
    end: np.ndarray  # per kept row (parts one after another), its history's end in ``likes``
    length: np.ndarray  # … and its length
    likes: np.ndarray  # every user's liked movieIds in time order (:class:`Histories`)
    snapshot: pd.DataFrame  # ITEM_STATS by movieId, as of the end of the rows

    @classmethod
    def of(
        cls, rows: Rows, movies: pd.DataFrame, history_len: int, positives: str = "liked", seen: Rows | None = None
    ) -> RetrieverRows:
        """The training rows of ``rows``; the rows of ``seen`` (earlier rows of the same users, which a
        continued model learnt from already) count in the histories and the items' snapshot only."""
        before = _parts(seen) if seen is not None else []
        parts = _parts(rows)
        ratings = _whole([*before, *parts], HISTORY_COLUMNS)
        hist = history_index(ratings, history_len)
        keep = ratings["label"].to_numpy() == 1 if positives == "liked" else np.ones(len(ratings), dtype=bool)
        n_before = sum(len(p) for p in before)
        keep[:n_before] = False
        bounds = n_before + np.cumsum([0] + [len(p) for p in parts])
        kept = [np.flatnonzero(keep[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
        snapshot = items_at(ratings, movies).set_index("movieId")[list(ITEM_STATS)]
        return cls(parts, kept, hist.end[keep], hist.length[keep], hist.likes, snapshot)

    def __len__(self) -> int:
        return len(self.end)

    def movie_ids(self) -> np.ndarray:
        """The kept rows' movieIds, in order."""
        return np.concatenate([_frame(p, ["movieId"])["movieId"].to_numpy()[k] for p, k in zip(self.parts, self.kept)])

    def rows(self, positions: np.ndarray) -> pd.DataFrame:
        """The kept rows at ``positions`` (ascending), each with its history reference and the item
        statistics of the snapshot; only those rows are copied."""
        offsets = np.cumsum([0] + [len(k) for k in self.kept])
        frames = []
        for part, kept, a, b in zip(self.parts, self.kept, offsets[:-1], offsets[1:]):
            local = positions[(positions >= a) & (positions < b)] - a
            at = kept[local]
            frames.append(part.frame.take(part.index[at]) if isinstance(part, Taken) else part.take(at))
        out = frames[0] if len(frames) == 1 else pd.concat(frames)
        out = out.reset_index(drop=True)
        out[HISTORY_END] = self.end[positions]
        out[HISTORY_LEN] = self.length[positions]
        for col in ITEM_STATS:
            out[col] = self.snapshot[col].reindex(out["movieId"].to_numpy()).to_numpy()
        return out

    def chunks(self, size: int, seed: int) -> Iterator[pd.DataFrame]:
        """The rows in frames of at most ``size``: all of them in order when they fit one frame, else
        random shares of them (``seed``), each in order, so that a dataset built chunk after chunk
        (:func:`to_dataset_chunks`) holds every part's rows in every stretch of it."""
        n = len(self)
        if n <= size:
            yield self.rows(np.arange(n))
            return
        order = np.random.default_rng(seed).permutation(n)
        for start in range(0, n, size):
            yield self.rows(np.sort(order[start : start + size]))


def retriever_rows(
    rows: Rows, movies: pd.DataFrame, history_len: int, positives: str = "liked"
) -> tuple[pd.DataFrame, np.ndarray]:
    """The retriever's training rows: the liked samples (``positives="all"``: every rated sample),
    each with the user's point-in-time history of liked movies, and the item statistics of one
    snapshot (as of the end of ``rows``). The history is a reference (:class:`Histories`): columns
    ``history_end`` and ``history_len`` into the movieIds returned beside the rows; the training
    task gathers each batch's (rows, history_len) history from them.

    Why a snapshot: a sample's point-in-time item statistics say *when* it happened (a movie's count
    grows with time). With in-batch negatives taken from other times, the towers would learn to match
    the time of a user to the time of an item instead of their tastes, and at retrieval time every
    item is seen at one instant. Static statistics of the training period keep the signal (popularity,
    average rating) without the clock.

    ``rows`` may be frames whose rows count one after another (the refit's train and test samples):
    the histories read the few columns of :data:`HISTORY_COLUMNS` of all of them, and only the kept
    rows of each frame are copied, never every sample's features at once. The training job builds
    the same rows a chunk at a time (:class:`RetrieverRows`)."""
    built = RetrieverRows.of(rows, movies, history_len, positives)
    return built.rows(np.arange(len(built))), built.likes


def retrieval_data(
    history: pd.DataFrame, heldout: pd.DataFrame, movies: pd.DataFrame, spec: FeatureSpec, history_len: int
) -> RetrievalData:
    """The retrieval evaluation of ``heldout`` after ``history``: every user's state and every catalog
    item's features as of the end of ``history`` (no look past the boundary)."""
    items = items_at(history, movies)
    task = build_task(history, heldout, items["movieId"].to_numpy(), threshold=spec.label_threshold)
    users = users_at(history, movies, history_len, spec.label_threshold).set_index("userId")
    users = users.loc[task.user_ids].reset_index()
    return RetrievalData(task, encode_users(spec, users, history_len), encode_items(spec, items))


# -- stages ----------------------------------------------------------------------------------------
ANONYMOUS_USER = -1  # the userId of the ranker's candidate rows: not a user, so it encodes as unknown (OOV)
#: rated rows whose negatives are sampled and encoded at once: the ranker's training data is built
#: chunk by chunk, so the driver holds one chunk of feature rows (× 1 + negatives), not all of them
RANKER_CHUNK_ROWS = 250_000
#: rated test rows the ranker's test scores at once: a whole number of :func:`predict_ranker`'s batches
TEST_CHUNK_ROWS = 30 * PREDICT_BATCH


@dataclass
class RankerSources:
    """What the ranker's rows are built from, once per job: the negatives' sampler (``topn``) and the
    cross-fitted EASE scores (``ease_feature`` or ``candidates``), both over every rating of the
    features version."""

    negatives: NegativeSampler | None
    ease: EaseFeature | None

    @classmethod
    def of(cls, fv: FeaturesVersion, mc: Any) -> RankerSources:
        cols = ["userId", "movieId", "rating", "timestamp"]
        ratings = pd.concat([fv.train[cols], fv.test[cols]])  # the columns first: not a copy of every sample's features
        negatives = NegativeSampler(ratings, fv.movies) if mc.objective == "topn" else None
        ease = None
        if mc.ease_feature or mc.candidates > 0:
            t = time.perf_counter()
            ease = EaseFeature(ratings, mc.ease_lambda, mc.ease_top_k)
            log.info("ease feature fit in %.1fs", time.perf_counter() - t)
        return cls(negatives, ease)

    def with_ease(self, rows: pd.DataFrame) -> pd.DataFrame:
        """``rows`` with their ``ease_score`` column when the sources hold the EASE scores (the ranker
        takes them, or its candidate rows are drawn from them)."""
        return rows if self.ease is None else rows.assign(ease_score=self.ease.score(rows))


def ranker_rows(
    rows: pd.DataFrame, fv: FeaturesVersion, mc: Any, seed: int | list[int], sources: RankerSources | None = None
) -> pd.DataFrame:
    """The ranker's rows: the rated samples, and for the ``topn`` objective their sampled negatives
    (:mod:`rayrec.training.negatives`), drawn against every rating of the features version; with
    their ``ease_score`` (:mod:`rayrec.training.ease_feature`) when the ranker takes one."""
    sources = sources or RankerSources.of(fv, mc)
    if mc.objective == "topn":
        assert sources.negatives is not None
        rows = sources.negatives.add(rows, mc.negatives, hard=mc.hard_negatives, window=mc.negative_window, seed=seed)
    return sources.with_ease(rows)


def candidate_rows(rows: pd.DataFrame, sources: RankerSources, n: int, future: float) -> pd.DataFrame:
    """What recall would offer each user of ``rows`` at one time, labelled by what they went on to rate.

    Per user, the last ``future`` share of their rows (by time, at least one, and one left before)
    is what they went on to rate; at the time T of its first row, the ``n`` best unrated movies of the
    cross-fitted EASE scores (:meth:`EaseFeature.top_unrated`) are the candidates, each a row with the
    user's features as of T (those of that first future row) and the movie's as of T. A candidate the
    user rated after T is ``interact`` 1 with that rating's ``label``; the others are 0."""
    assert sources.ease is not None and sources.negatives is not None
    r = rows.sort_values(["userId", "timestamp"], kind="stable").reset_index(drop=True)
    users = r["userId"].to_numpy(np.int64)
    first = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    count = np.diff(np.r_[first, len(r)])
    ahead = np.clip(np.ceil(count * future).astype(np.int64), 1, count - 1)
    keep = count >= 2
    anchor = (first + count - ahead)[keep]  # each user's first future row
    in_future = np.zeros(len(r), dtype=bool)
    for a, end in zip(anchor.tolist(), (first + count)[keep].tolist()):
        in_future[a:end] = True
    src, movies = sources.ease.top_unrated(users[anchor], r["timestamp"].to_numpy(np.int64)[anchor], n)
    out = sources.negatives.pairs_at(r.iloc[anchor], src, movies)
    fut = r[in_future]
    shift = np.int64(1) << np.int64(32)
    taken = pd.Series(np.arange(len(fut)), index=fut["userId"].to_numpy(np.int64) * shift + fut["movieId"].to_numpy(np.int64))
    taken = taken[~taken.index.duplicated(keep="first")]
    at = taken.reindex(out["userId"].to_numpy(np.int64) * shift + out["movieId"].to_numpy(np.int64)).to_numpy()
    hit = ~np.isnan(at)
    where = at[hit].astype(np.int64)
    out["rating"] = np.float32(np.nan)
    out.loc[hit, "rating"] = fut["rating"].to_numpy(np.float32)[where]
    label = np.zeros(len(out), dtype=r["label"].dtype)
    label[hit] = fut["label"].to_numpy()[where]
    out["label"] = label
    out["interact"] = hit.astype(np.float32)
    return sources.with_ease(out)


@dataclass(frozen=True)
class Taken:
    """Rows ``index`` (positions) of ``frame``, in that order: a split of the samples read a few
    columns or a chunk at a time, never copied whole (the validation hold-out's fit split is nine
    tenths of the training samples, which the driver holds already)."""

    frame: pd.DataFrame
    index: np.ndarray

    def __len__(self) -> int:
        return len(self.index)

    def rows(self, start: int = 0, stop: int | None = None, columns: list[str] | None = None) -> pd.DataFrame:
        """Rows ``start:stop`` of the split (all columns, or ``columns``), copied, indexed as the same
        slice of the split's frame would be."""
        stop = len(self.index) if stop is None else min(stop, len(self.index))
        out = (self.frame if columns is None else self.frame[columns]).take(self.index[start:stop])
        out.index = pd.RangeIndex(start, max(start, stop))
        return out


Part: TypeAlias = "pd.DataFrame | Taken"
#: rated rows: one frame or split, or several whose rows count one after another (the refit's train
#: and test samples, which are not concatenated: that copy of every sample was held while the refit's
#: rows were built)
Rows: TypeAlias = "Part | Sequence[Part]"


def _parts(rows: Rows) -> list[Part]:
    return [rows] if isinstance(rows, (pd.DataFrame, Taken)) else list(rows)


def _frame(part: Part, columns: list[str] | None = None) -> pd.DataFrame:
    """A part as a frame (a split's rows copied), of ``columns`` only when given (a frame's columns
    are not copied: pandas copies on write)."""
    if isinstance(part, Taken):
        return part.rows(columns=columns).reset_index(drop=True)
    return part if columns is None else part[columns]


def _whole(rows: Rows, columns: list[str] | None = None) -> pd.DataFrame:
    parts = [_frame(p, columns) for p in _parts(rows)]
    return parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True)


def row_chunks(rows: Rows, size: int) -> Iterator[pd.DataFrame]:
    """The rows of ``rows`` in order, ``size`` at a time (the last chunk shorter; no rows: one empty
    chunk), the same chunks as slicing their concatenation; only a chunk that spans two parts, or
    comes from a split (:class:`Taken`), is copied."""
    pending: list[pd.DataFrame] = []
    have = 0
    parts = _parts(rows)
    for part in parts:
        start = 0
        while start < len(part):
            take = min(size - have, len(part) - start)
            pending.append(part.rows(start, start + take) if isinstance(part, Taken) else part.iloc[start : start + take])
            have, start = have + take, start + take
            if have == size:
                yield pending[0] if len(pending) == 1 else pd.concat(pending, ignore_index=True)
                pending, have = [], 0
    if pending:
        yield pending[0] if len(pending) == 1 else pd.concat(pending, ignore_index=True)
    elif not any(len(p) for p in parts):
        yield _frame(parts[0]).iloc[:0]


def _rated_chunks(
    rows: Rows, fv: FeaturesVersion, mc: Any, seed: int, sources: RankerSources
) -> Iterator[tuple[pd.DataFrame, pd.DataFrame]]:
    """(chunk, its :func:`ranker_rows`) of ``rows`` in chunks of RANKER_CHUNK_ROWS rated rows, built
    as they are consumed; the first chunk draws from ``seed`` (one chunk: exactly
    ``ranker_rows(rows, …, seed)``), chunk i > 0 from the stream [seed, i]."""
    for i, chunk in enumerate(row_chunks(rows, RANKER_CHUNK_ROWS)):
        yield chunk, ranker_rows(chunk, fv, mc, seed if i == 0 else [seed, i], sources)


def _ranker_chunks(
    rows: Rows, fv: FeaturesVersion, mc: Any, seed: int, sources: RankerSources | None = None
) -> Iterator[pd.DataFrame]:
    """The training rows of ``rows``, chunk by chunk (:func:`_rated_chunks`). With ``candidates``,
    each chunk also holds the candidate rows (:func:`candidate_rows`) of the users it is the first
    to hold."""
    sources = sources or RankerSources.of(fv, mc)
    extra = candidate_rows(_whole(rows), sources, mc.candidates, mc.candidate_future) if mc.candidates > 0 else None
    done: set[int] = set()
    for chunk, out in _rated_chunks(rows, fv, mc, seed, sources):
        if extra is not None:
            users = set(chunk["userId"].unique().tolist()) - done
            done |= users
            # without the user's id (it encodes as unknown): the candidates the user went on to rate only
            # after the data ends are rows with interact 0 here, and an id pair would let the model learn
            # those very (user, movie) pairs as not taken; it learns the order from the features instead
            mine = extra[extra["userId"].isin(users)].assign(userId=ANONYMOUS_USER)
            out = pd.concat([out, mine[out.columns.intersection(mine.columns)]], ignore_index=True)
        yield out


def _topn_test(model: nn.Module, fv: FeaturesVersion, mc: Any, seed: int, sources: RankerSources) -> tuple[np.ndarray, np.ndarray]:
    """(labels, scores) of the test rows with their sampled negatives, built and scored a chunk at a
    time (:func:`_rated_chunks`, the training chunks' seeds), so only one chunk's feature rows are
    held at once."""
    labels: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    for _, rows in _rated_chunks(fv.test, fv, mc, seed, sources):
        labels.append(rows["label"].to_numpy())
        scores.append(predict_ranker(model, encode_pairs(fv.spec, rows)))
    return np.concatenate(labels), np.concatenate(scores)


def _encoded_rows(rows: Rows, fv: FeaturesVersion, mc: Any, seed: int, sources: RankerSources) -> dict[str, np.ndarray]:
    """:func:`encoded_narrow` of the ranker rows of ``rows``, built a chunk at a time
    (:func:`_rated_chunks`; one chunk: exactly those of ``ranker_rows(rows, …, seed)``), so that one
    chunk's feature rows are held at a time beside the arrays."""
    parts = [encoded_narrow(fv.spec, out) for _, out in _rated_chunks(rows, fv, mc, seed, sources)]
    return parts[0] if len(parts) == 1 else {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _ranker_task(
    cfg: JobConfig, fv: FeaturesVersion, rows: Rows, valid: pd.DataFrame | None, sources: RankerSources | None = None,
    seen: Rows | None = None,
) -> tuple[Any, Any]:  # fmt: skip
    # ``seen`` (rows a continued model learnt from already) is not read: a ranker row carries its
    # point-in-time features, and the negatives are drawn against every rating of the features version
    spec, mc, seed = fv.spec, cfg.model_config, cfg.train_config.seed
    sources = sources or RankerSources.of(fv, mc)  # one for the training and validation rows
    ds, n_rows = to_dataset_chunks(_ranker_chunks(rows, fv, mc, seed, sources), spec, seed=seed)
    # the validation rows go to every worker with the task: their integer columns as narrow as the
    # training rows', built and encoded a chunk at a time (10M rows at 25M ratings: not every row's
    # features, nor their int64 arrays, at once)
    valid_arrays = _encoded_rows(valid, fv, mc, seed + 1, sources) if valid is not None else None
    task = RankTask(mc, spec.sizes, rows=n_rows, valid=valid_arrays)
    return task, ds


def _retriever_task(
    cfg: JobConfig, fv: FeaturesVersion, rows: Rows, valid: pd.DataFrame | None, seen: Rows | None = None
) -> tuple[Any, Any]:
    spec, h, seed = fv.spec, cfg.model_config.history_len, cfg.train_config.seed
    # a user's history reads all their rows, those a continued model learnt from already (``seen``) too
    built = RetrieverRows.of(rows, fv.movies, h, cfg.model_config.positives, seen=seen)
    counts = np.bincount(spec.vocabs["item"].lookup(built.movie_ids()), minlength=spec.sizes["item_vocab"])
    vdata = retrieval_data(_whole(rows, HISTORY_COLUMNS), valid, fv.movies, spec, h) if valid is not None else None
    task = RetrieveTask(cfg.model_config, spec.sizes, rows=len(built), item_counts=counts, valid=vdata,
                        history_likes=spec.vocabs["item"].lookup(built.likes))  # fmt: skip
    # built and encoded a chunk at a time (one chunk: the rows of retriever_rows, shuffled as to_dataset does)
    ds, _ = to_dataset_chunks(built.chunks(RETRIEVER_CHUNK_ROWS, seed), spec, seed=seed, carry=(HISTORY_END, HISTORY_LEN))
    return task, ds


def _run_manifest(storage: str, run_name: str, cfg: JobConfig, fv: FeaturesVersion) -> str:
    """Pin a run to its features version and configs; a rerun with other settings is refused."""
    target = uri.join(storage, run_name, "run.json")
    want = {
        "model": cfg.name,
        "features_version": fv.version,
        "spec_hash": fv.spec.hash,
        "train": cfg.train_config.to_dict(),
        "model_config": cfg.model_config.to_dict(),
        "max_users": cfg.max_users,
    }
    if uri.exists(target):
        have = uri.read_json(target)
        scaling = {"num_workers", "use_gpu", "cpus_per_worker", "max_failures", "placement", "threads",
                   "lazy_tables"}
        strip = lambda d: {**d, "train": {k: v for k, v in d["train"].items() if k not in scaling}}  # noqa: E731
        if strip(have) != strip(want):
            raise ValueError(
                f"run {run_name!r} exists at {uri.join(storage, run_name)} with other settings "
                f"(features {have['features_version']}); use a new --run-name, or the same settings to resume"
            )
    else:
        uri.write_json(target, want)
    return uri.join(storage, run_name)


def _grown(name: str, tc: TrainConfig, rows: int) -> TrainConfig:
    """``tc`` for a job whose first fit has ``rows`` rows (:meth:`TrainConfig.for_rows`), said when
    the batch grows."""
    grown = tc.for_rows(rows)
    if grown.batch_size != tc.batch_size:
        print(f"[{name}] {rows:,} training rows: batch {tc.batch_size:,} → {grown.batch_size:,}, learning rate "
              f"{tc.lr:g} → {grown.lr:g} (from {tc.grow_batch_at:,} rows)", flush=True)  # fmt: skip
    return grown


def run_job(cfg: JobConfig) -> JobResult:
    """Train, evaluate and (with ``publish``) register model ``cfg.name``. Needs Ray (``ray.init()``)."""
    timings: dict[str, float] = {}
    t = time.perf_counter()
    tc, mc = cfg.train_config, cfg.model_config
    run_name = cfg.run_name or f"{cfg.name}-{uri.new_version()}"
    storage = cfg.storage or runs_root(cfg.artifacts)
    pinned = uri.join(storage, run_name, "run.json")
    version = uri.read_json(pinned)["features_version"] if uri.exists(pinned) else cfg.features_version
    # the test samples' features are read when a stage builds rows from them (_features)
    fv = _subset(open_features(cfg.artifacts, version, ratings_only=["test"]), cfg.max_users)
    run_dir = _run_manifest(storage, run_name, cfg, fv)
    # the ranker's sources (negatives' sampler, EASE feature) serve every stage of the job
    sources = RankerSources.of(fv, cfg.model_config) if cfg.name == "ranker" else None
    make_task = partial(_ranker_task, sources=sources) if sources is not None else _retriever_task
    fit_rows: Rows = fv.train
    valid_rows = None
    if tc.valid_fraction > 0:  # the fit split by reference: not a copy of nine tenths of the samples
        fit_at, valid_at = holdout_positions(fv.train, tc.valid_fraction)
        fit_rows, valid_rows = Taken(fv.train, fit_at), fv.train.take(valid_at).reset_index(drop=True)
    timings["data_s"] = time.perf_counter() - t
    print(f"[{cfg.name}] run {run_name}: features {fv.version}, {len(fv.train):,} train / {len(fv.test):,} test "
          f"samples, {tc.num_workers} worker(s), {'GPU' if tc.use_gpu else 'CPU'}", flush=True)  # fmt: skip

    select: FitResult | None = None
    rows_used: dict[str, int] = {}  # training rows of each stage (sampled negatives included)
    if valid_rows is not None:
        t = time.perf_counter()
        task, ds = make_task(cfg, fv, fit_rows, valid_rows)
        tc = _grown(cfg.name, tc, task.rows)
        fv, fit_rows = _features(fv, (), fit_rows)  # not held while the selection trains
        release_memory()
        select = fit(task, ds, tc, name="select", storage=run_dir)
        rows_used["select"] = task.rows
        timings["select_s"] = time.perf_counter() - t
        print(f"[{cfg.name}] selected {select.best_epoch + 1} epoch(s): valid {task.metric} "
              f"{select.progress['best_metric']:.4f}", flush=True)  # fmt: skip
        del task, ds  # the selection's rows leave the object store before the refit's are built
    continues = select is not None and tc.refit and tc.refit_continues(select.best_epoch + 1)
    if not continues:  # the selection's split of the samples leaves the driver too
        del fit_rows, valid_rows
    tested = None
    if select is None or tc.refit:
        t = time.perf_counter()
        epochs = select.best_epoch + 1 if select is not None else tc.epochs
        # the features of the samples the refit learns from: every train sample's from scratch, and
        # the test samples' with refit_on="all"
        wide = ([] if continues else ["train"]) + (["test"] if select is not None and tc.refit_on == "all" else [])
        fv, _ = _features(fv, wide)
        refit_rows: Rows = fv.train
        seen: Rows | None = None
        init = None
        if select is not None and tc.refit_on == "all":
            refit_rows = [fv.train, fv.test]  # one after the other, not concatenated
            tested = select  # the refit model has seen the test rows
        if continues:  # one pass over the rows the selection did not see, from its model
            assert select is not None and valid_rows is not None
            refit_rows = [valid_rows, fv.test] if tc.refit_on == "all" else valid_rows
            seen, init, epochs = fit_rows, select.weights, 1
            del fit_rows, valid_rows
        task, ds = make_task(cfg, fv, refit_rows, None, seen=seen)
        if select is None:  # else the selection's batch, grown or not: the epochs it chose are of that batch
            tc = _grown(cfg.name, tc, task.rows)
        del refit_rows, seen  # encoded into ``ds``
        fv, _ = _features(fv)
        release_memory()
        final = fit(task, ds, tc.with_(epochs=epochs), name="refit", storage=run_dir, init=init)
        rows_used["refit"] = task.rows
        del task, ds  # the refit's rows leave the object store before the test rows are built
        timings["refit_s"] = time.perf_counter() - t
    else:
        final = select
    tested = tested or final

    t = time.perf_counter()
    model = build_model(cfg.name, mc, fv.spec)
    model.load_state_dict(tested.weights)
    model.eval()
    files: dict[str, bytes] = {}
    if cfg.name == "ranker":
        # P(like | rated) on the rated test pairs: the explicit-rating AUC of every ranker
        assert sources is not None
        fv, _ = _features(fv, ["test"])  # the test rows' features
        # scored a chunk at a time (a whole number of predict_ranker's batches: the same scores), not
        # encoded all at once beside a copy of every test sample with its EASE score
        like = [predict_ranker(model, encode_pairs(fv.spec, sources.with_ease(c)), like=True) for c in row_chunks(fv.test, TEST_CHUNK_ROWS)]
        test = classification_metrics(fv.test["label"].to_numpy(), np.concatenate(like))
        metrics: dict[str, Any] = {"test": test}
        if mc.ease_feature:  # the serving weights: every rating, the λ and sparsity of the training feature
            ratings = pd.concat([fv.train[["userId", "movieId"]], fv.test[["userId", "movieId"]]])
            files[EASE_FILE] = fit_item_weights(ratings, mc.ease_lambda, top_k=mc.ease_top_k).to_bytes()
        if mc.objective == "topn":  # the ranking score: liked test rows against their sampled negatives
            metrics["test_topn"] = classification_metrics(*_topn_test(model, fv, mc, tc.seed + 2, sources))
    else:
        assert isinstance(model, TwoTower)
        data = retrieval_data(fv.train, fv.test, fv.movies, fv.spec, mc.history_len)
        liked = fv.train.loc[fv.train["label"].to_numpy() == 1, ["movieId"]]
        pop = popularity_scores(liked, data.task.item_ids)
        metrics = {
            "test": retrieval_metrics(model, data),
            "popularity": evaluate(data.task, pop),  # scores every user shares
        }
        if tested is not final:
            model.load_state_dict(final.weights)
        files["item_embeddings.parquet"] = _catalog_embeddings(model, fv)
    timings["test_s"] = time.perf_counter() - t
    if select is not None:
        metrics["valid"] = {"metric": select.progress.get("best_metric"), "best_epoch": select.best_epoch + 1,
                            "history": select.progress["history"]}  # fmt: skip
    metrics["tested_model"] = "select" if tested is not final else ("refit" if select is not None and tc.refit else "fit")
    metrics["train_rows"] = rows_used
    if "refit" in rows_used:  # new weights, or the selection's model continued (TrainConfig.refit_from)
        metrics["refit_from"] = "selection" if continues else "scratch"
    metrics["epochs"] = final.epochs_run
    # per stage: where each rank of its last worker group ran, and the epoch each attempt started from
    # (more than one start: the run resumed from a checkpoint after a failure or a rerun)
    stages = {"select": select} if select is not None else {}
    if final is not select:
        stages["refit"] = final
    metrics["workers"] = {k: s.progress.get("workers", []) for k, s in stages.items()}
    metrics["starts"] = {k: list(s.progress["starts"]) for k, s in stages.items()}
    metrics["timings"] = timings

    reg_version = reg_path = None
    if cfg.publish:
        reg_version = registry.publish(
            cfg.artifacts,
            cfg.name,
            weights=final.weights,
            config={"kind": cfg.name, "model": mc.to_dict(), "sizes": fv.spec.sizes},
            meta={
                "spec_hash": fv.spec.hash,
                "features_version": fv.version,
                "data_range": {"train": data_range(fv.train), "test": data_range(fv.test)},
                "train_config": tc.to_dict(),
                "run_name": run_name,
                "max_users": cfg.max_users,
            },
            metrics=metrics,
            files=files,
        )
        reg_path = uri.join(registry.models_root(cfg.artifacts, cfg.name), reg_version)
    tracking.log_run(
        f"train.{cfg.name}",
        run_name,
        params={"model": mc.to_dict(), "train": tc.to_dict(), "features_version": fv.version, "version": reg_version or "",
                "max_users": cfg.max_users or ""},  # fmt: skip
        metrics=metrics,
        history=(select or final).progress["history"],  # the validated run's curves when there is one
        files=reg_path,
    )
    return JobResult(cfg.name, run_name, reg_version, reg_path, metrics, timings, select, final)


def _catalog_embeddings(model: TwoTower, fv: FeaturesVersion) -> bytes:
    """Parquet bytes: movieId, embedding (L2-normalised) for every movie of ``online/items.parquet``
    (features as of the end of the data, as the index serves them; unknown movies via the OOV id)."""
    items = read_table(uri.join(fv.path, "online", "items.parquet"))
    vectors = item_vectors(model, fv.spec, items)
    table = pa.table(
        {
            "movieId": pa.array(items["movieId"].to_numpy(np.int64)),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), vectors.shape[1]),
        }
    )
    table = table.cast(pa.schema([("movieId", pa.int64()), ("embedding", pa.list_(pa.float32()))]))
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()

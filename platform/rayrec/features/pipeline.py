"""The feature pipeline on Ray Data: ratings → samples, online features, FeatureSpec, statistics.

Stages (each a vectorised ``map_batches`` over blocks that hold whole keys after a hash repartition;
``groupby().map_groups()`` was an order of magnitude slower at millions of ratings):

1. ingest: validated ratings written as Parquet under the version folder, read back with Ray Data;
2. item pass (by movieId): point-in-time item statistics + static movie attributes; each block writes
   its movies' latest features and passes its rated rows on;
3. user pass (by userId): point-in-time user features, label and per-user temporal split; each block
   writes its samples (train/test Parquet) and its users' latest features, and returns its partial
   statistics;
4. exits: the latest user/item features merged into one file each for the online store, the
   FeatureSpec fitted on train only, and the statistics report, from the merged partials.

The stages run as one stream: no pass's output is materialised.

Everything lands in ``<artifacts>/features/<version>/``; ``features/LATEST`` is swapped at the end,
so a reader never sees a half-written version.
"""

from __future__ import annotations

import logging
import pickle
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from rayrec.features.pointintime import LABEL_THRESHOLD
from rayrec import uri
from rayrec.config import default_artifacts
from rayrec.data.movielens import MovieLens
from rayrec.features.pointintime import ITEM_FEATURES, USER_FEATURES, attach_movie_attributes, item_pass, user_pass
from rayrec.features.spec import SPEC_FILE, FeatureSpec, SpecPartial
from rayrec.features.stats import StatsPartial, build_report, format_report

__all__ = ["FeaturesConfig", "FeaturesResult", "run_features", "features_root", "SAMPLE_COLUMNS"]

log = logging.getLogger(__name__)

SAMPLE_COLUMNS = ("userId", "movieId", "rating", "timestamp", "label", "split") + USER_FEATURES + ITEM_FEATURES
ROWS_PER_BLOCK = 250_000  # hash partitions of about this size keep each map_batches task short


@dataclass(frozen=True)
class FeaturesConfig:
    """Knobs of the feature job; every default runs on one laptop."""

    artifacts: str = field(default_factory=default_artifacts)
    threshold: float = LABEL_THRESHOLD  # label = rating ≥ threshold
    test_fraction: float = 0.2  # each user's last fraction of ratings (by time) is test
    min_ratings: int = 5  # users with fewer ratings stay entirely in train
    num_blocks: int | None = None  # hash partitions; None → about ROWS_PER_BLOCK rows each
    publish: bool = True  # swap features/LATEST to this version at the end

    def __post_init__(self) -> None:
        if not 0.0 <= self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in [0, 1), got {self.test_fraction}")
        if self.min_ratings < 1:
            raise ValueError(f"min_ratings must be ≥ 1, got {self.min_ratings}")


@dataclass
class FeaturesResult:
    version: str
    path: str  # <artifacts>/features/<version>
    spec: FeatureSpec
    report: dict[str, Any]
    timings: dict[str, float]

    def uri(self, *parts: str) -> str:
        return uri.join(self.path, *parts)


def features_root(artifacts: str) -> str:
    return uri.join(artifacts, "features")


def _write_parquet(df: pd.DataFrame, target: str) -> None:
    _write_table(pa.Table.from_pandas(df, preserve_index=False), target)


def _write_table(table: pa.Table, target: str) -> None:
    fs, path = uri.filesystem(target)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    pq.write_table(table, path, filesystem=fs)


def _ingest(data: MovieLens, out: str, num_blocks: int) -> None:
    """Validated ratings → Parquet files (one per future read task) and the movie catalog."""
    r = data.ratings
    for i, part in enumerate(np.array_split(np.arange(len(r)), max(1, num_blocks))):
        _write_parquet(r.iloc[part], uri.join(out, "ratings", f"part-{i:05d}.parquet"))
    _write_parquet(data.movies, uri.join(out, "movies.parquet"))


# Arrow types of the list features: given explicitly, so Ray Data never guesses (it would turn lists of
# equal length into tensor columns)
LIST_TYPES = {
    "user_genres": pa.large_list(pa.string()),
    "user_recent_items": pa.large_list(pa.int64()),
    "item_genres": pa.large_list(pa.string()),
}


def _arrow(df: pd.DataFrame) -> pa.Table:
    """A pass's pandas output as an Arrow block with typed list columns and no pandas metadata."""
    lists = {c: pa.array(df[c].to_numpy(), type=t, from_pandas=True) for c, t in LIST_TYPES.items() if c in df}
    table = pa.Table.from_pandas(df.drop(columns=list(lists)), preserve_index=False).replace_schema_metadata(None)
    for c, arr in lists.items():
        table = table.append_column(c, arr)
    return table


def _by_key(ds: Any, num_blocks: int, key: str) -> Any:
    """Blocks that each hold every row of their keys: a hash shuffle, or for data that fits one block
    a plain merge into one (the shuffle's actors cost seconds to start)."""
    return ds.repartition(1) if num_blocks <= 1 else ds.repartition(num_blocks, keys=[key])


def _part_name(table: pa.Table, key: str) -> str:
    """A block's file name, from its smallest key: blocks hold whole keys, so no two blocks share it,
    and a retried task writes the same name again (never a second copy of its rows)."""
    return f"part-{int(pc.min(table.column(key)).as_py()):012d}.parquet"


ITEM_ONLINE = ("movieId", "item_rating_count", "item_rating_mean", "item_rating_std", "item_year", "item_genres")
USER_ONLINE = ("userId", *USER_FEATURES, "last_timestamp")
PARTS = "_parts"  # the online tables' per-block files, merged into one file each at the end


def _item_stage(batch: pd.DataFrame, movies: pd.DataFrame, out: str) -> pa.Table:
    """The item pass of a block holding whole movies: its movies' latest features (the sentinel rows)
    are written beside the version, the rated rows go on to the user pass."""
    table = _arrow(item_pass(batch, movies))
    sentinel = table.column("sentinel")
    latest = table.filter(sentinel)
    if len(latest):
        _write_table(latest.select(list(ITEM_ONLINE)), uri.join(out, PARTS, "items", _part_name(latest, "movieId")))
    return table.filter(pc.invert(sentinel))


def _user_stage(batch: pd.DataFrame, movies: pd.DataFrame, out: str, **kwargs: Any) -> pa.Table:
    """The user pass of a block holding whole users, and every exit of its rows: the train and test
    samples and the users' latest features are written beside the version; what comes back is one
    row of partial statistics (the FeatureSpec's over the train samples, the report's over all)."""
    df = user_pass(batch, movies, **kwargs)
    # each user's last rating time (for the online store): the row before the user's sentinel, which
    # sorts after every rating of its user
    sentinel = df["sentinel"].to_numpy()
    last = np.zeros(len(df), np.int64)
    at = np.flatnonzero(sentinel)
    last[at] = df["timestamp"].to_numpy(np.int64)[at - 1]
    table = _arrow(df.assign(last_timestamp=last))
    flag = table.column("sentinel")
    latest = table.filter(flag)
    if len(latest):
        _write_table(latest.select(list(USER_ONLINE)), uri.join(out, PARTS, "users", _part_name(latest, "userId")))
    samples = table.filter(pc.invert(flag)).select(list(SAMPLE_COLUMNS))
    split = samples.column("split")
    train = samples.filter(pc.equal(split, "train"))
    for name, rows in (("train", train), ("test", samples.filter(pc.equal(split, "test")))):
        if len(rows):
            _write_table(rows, uri.join(out, "samples", name, _part_name(rows, "userId")))
    return pa.table({"spec": [pickle.dumps(SpecPartial.of(train))], "stats": [pickle.dumps(StatsPartial.of(samples))],
                     "schema": [samples.schema.serialize().to_pybytes()]})  # fmt: skip


def _read_parts(out: str, name: str, columns: tuple[str, ...]) -> pd.DataFrame:
    """An online table's per-block files as one frame; the files are removed."""
    folder = uri.join(out, PARTS, name)
    fs, path = uri.filesystem(folder)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:  # no block had a row of this table
        return pd.DataFrame(columns=list(columns))
    df = pq.ParquetDataset(path, filesystem=fs).read().to_pandas(ignore_metadata=True)
    fs.delete_dir(path)
    return df


def _check_unique(df: pd.DataFrame, key: str) -> None:
    dup = df[key].duplicated()
    if dup.any():  # a key split across blocks would restart its history: never publish that
        raise RuntimeError(
            f"internal error: {int(dup.sum())} {key} value(s) were split across blocks by the shuffle; "
            "features would be wrong. Re-run with a different --num-blocks."
        )


def run_features(data: MovieLens, cfg: FeaturesConfig = FeaturesConfig()) -> FeaturesResult:
    """Run the whole feature job on Ray Data (``ray.init()`` first, or it starts a local Ray).

    One streaming pass: ratings → (hash by movieId) item pass → (hash by userId) user pass, whose
    blocks are written as they come (samples, the latest user and item features) and return only
    their partial statistics. Nothing is materialised: the shuffles hold the rows once, not the
    item pass's and the user pass's outputs besides."""
    import ray

    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    version = uri.new_version()
    out = uri.join(features_root(cfg.artifacts), version)
    n = len(data.ratings)
    nb = cfg.num_blocks or -(-n // ROWS_PER_BLOCK)
    log.info("features %s: %d ratings, %d hash partitions → %s", version, n, nb, out)

    _ingest(data, out, nb)
    movies = data.movies
    timings["ingest_s"] = time.perf_counter() - t0

    t = time.perf_counter()
    ratings = ray.data.read_parquet(uri.join(out, "ratings"))
    rated = _by_key(ratings, nb, "movieId").map_batches(
        _item_stage, fn_kwargs={"movies": movies, "out": out}, batch_format="pandas", batch_size=None
    )
    user_kwargs = {"threshold": cfg.threshold, "test_fraction": cfg.test_fraction, "min_ratings": cfg.min_ratings}
    partials = _by_key(rated, nb, "userId").map_batches(
        _user_stage, fn_kwargs={"movies": movies, "out": out, **user_kwargs}, batch_format="pandas", batch_size=None
    )
    spec_acc, stats_acc, schema = SpecPartial(), StatsPartial(), None
    for row in partials.iter_rows():
        spec_acc.merge(pickle.loads(row["spec"]))
        stats_acc.merge(pickle.loads(row["stats"]))
        schema = schema or pa.ipc.read_schema(pa.py_buffer(row["schema"]))
    timings["passes_s"] = time.perf_counter() - t

    # -- exit 1: samples (written by the user pass); a split no block had rows of gets an empty file --
    if schema is None:
        raise ValueError("no ratings to compute features from")
    for split in ("train", "test"):
        if not stats_acc.rows.get(split):
            _write_table(schema.empty_table(), uri.join(out, "samples", split, "part-empty.parquet"))

    # -- exit 2: latest features for the online store ------------------------------------------
    t = time.perf_counter()
    items = _read_parts(out, "items", ITEM_ONLINE)
    _check_unique(items, "movieId")
    unrated = movies[~movies["movieId"].isin(items["movieId"])]
    cold = attach_movie_attributes(
        pd.DataFrame(
            {
                "movieId": unrated["movieId"].to_numpy(np.int64),
                "item_rating_count": np.zeros(len(unrated), np.int64),
                "item_rating_mean": np.full(len(unrated), np.nan),
                "item_rating_std": np.full(len(unrated), np.nan),
            }
        ),
        movies,
    )
    items = pd.concat([items[list(cold.columns)], cold], ignore_index=True).sort_values("movieId")
    catalog = movies.set_index("movieId").loc[items["movieId"]]
    items.insert(1, "title", catalog["title"].to_numpy())
    items.insert(2, "genres", catalog["genres"].to_numpy())
    items["item_genres"] = [list(g) for g in items["item_genres"]]
    _write_parquet(items.reset_index(drop=True), uri.join(out, "online", "items.parquet"))

    users = _read_parts(out, "users", USER_ONLINE)
    _check_unique(users, "userId")
    users = users[list(USER_ONLINE)].sort_values("userId").reset_index(drop=True)
    users["last_timestamp"] = users["last_timestamp"].to_numpy(np.int64)
    for col in ("user_genres", "user_recent_items"):
        users[col] = [list(v) for v in users[col]]
    _write_parquet(users, uri.join(out, "online", "users.parquet"))
    fs, path = uri.filesystem(uri.join(out, PARTS))
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir(path)
    timings["online_s"] = time.perf_counter() - t

    # -- FeatureSpec on train only, and exit 3: statistics -------------------------------------
    t = time.perf_counter()
    spec = FeatureSpec.fit(spec_acc, label_threshold=cfg.threshold)
    spec.save(uri.join(out, SPEC_FILE))
    report = build_report(
        stats_acc,
        n_users=int(data.ratings["userId"].nunique()),
        n_rated_items=int(data.ratings["movieId"].nunique()),
        n_catalog=len(movies),
        source=data.source,
        malformed=data.report.to_dict(),
    )
    timings["spec_stats_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t0
    report["timings"] = timings
    report["version"] = version
    report["spec_hash"] = spec.hash
    uri.write_json(uri.join(out, "stats.json"), report)
    uri.write_json(
        uri.join(out, "manifest.json"),
        {"version": version, "spec_hash": spec.hash, "config": cfg.__dict__, "source": data.source},
    )
    if cfg.publish:
        uri.set_latest(features_root(cfg.artifacts), version)
    return FeaturesResult(version, out, spec, report, timings)


def summary(result: FeaturesResult) -> str:
    """The readable end-of-job summary."""
    t = result.timings
    rate = result.report["ratings"] / max(t["total_s"], 1e-9)
    return (
        format_report(result.report)
        + f"\nfeatures       version {result.version} (spec {result.spec.hash}) at {result.path}"
        + f"\nwall time      {t['total_s']:.1f}s ({rate:,.0f} ratings/s)"
    )

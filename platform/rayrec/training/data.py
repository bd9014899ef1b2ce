"""Training data from a features version: samples, point-in-time history, hold-outs, boundary state.

Everything here is pandas/numpy on the samples of one features version (``samples/train`` and
``samples/test``); the encoded arrays then become Ray Datasets that Ray Train shards over workers.

* ``positive_history``: per sample, the user's liked movies strictly before it (point-in-time, like
  every other feature), longer than the 5 recent items the features carry.
* ``temporal_holdout``: each user's last share of training rows by time, the validation split used for
  early stopping, cut the same way as the train/test split.
* ``users_at`` / ``items_at``: user and item feature rows as of the end of a set of ratings (the
  train/test boundary), computed by the features pipeline's own point-in-time functions on those
  ratings only. The retrieval evaluation ranks from this state; ``online/*.parquet`` is as of the end
  of all data and would leak the test period.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from rayrec import uri
from rayrec.features.pointintime import USER_FEATURES, attach_movie_attributes, item_totals, last_share, prior_sums, user_totals
from rayrec.features.spec import FeatureSpec, _is_list, arrow_lists, features_path
from rayrec.models.inputs import HISTORY, encode_pairs

__all__ = [
    "FeaturesVersion",
    "features_path",
    "open_features",
    "read_samples",
    "RATING_COLUMNS",
    "read_table",
    "Histories",
    "history_index",
    "positive_history",
    "temporal_holdout",
    "holdout_positions",
    "users_at",
    "items_at",
    "data_range",
    "to_dataset",
    "to_dataset_chunks",
    "narrowed",
    "storage_types",
    "compact_list",
    "agree_lists",
]


@dataclass(frozen=True)
class FeaturesVersion:
    """One features version: where it lives, its spec, and its train/test samples and catalog."""

    version: str
    path: str
    spec: FeatureSpec
    train: pd.DataFrame
    test: pd.DataFrame
    movies: pd.DataFrame  # movieId, title, year, genres (the catalog)


ENCODE_CHUNK_ROWS = 500_000  # rows encoded at a time where the encoded arrays are kept (encoded_narrow)
SAMPLE_ORDER = ("userId", "timestamp", "movieId")  # the driver's samples, user by user in time order


def read_table(target: str, columns: list[str] | None = None, *, lists_in_arrow: bool = False) -> pd.DataFrame:
    """A Parquet file or folder (local or s3://) as pandas with numpy dtypes; with ``lists_in_arrow``
    the list columns stay Arrow arrays (:func:`rayrec.features.spec.arrow_lists`)."""
    fs, path = uri.filesystem(target)
    table = pads.dataset(path, filesystem=fs, format="parquet").to_table(columns=columns)
    # numpy dtypes, NaN for missing numbers
    return table.to_pandas(ignore_metadata=True, types_mapper=arrow_lists if lists_in_arrow else None)


#: a sample's rating, not its features: what a training job reads of the samples besides the rows
#: it learns from (users' histories and states, the items' statistics, EASE weights, the data range)
RATING_COLUMNS = ["userId", "movieId", "rating", "timestamp", "label"]


def open_features(artifacts: str, version: str = "latest", *, ratings_only: Sequence[str] = ()) -> FeaturesVersion:
    """Load a features version's spec, samples and catalog (``version``: a name or "latest"); the
    splits named in ``ratings_only`` ("train", "test") with their :data:`RATING_COLUMNS` only."""
    path = features_path(artifacts, version)
    spec = FeatureSpec.of(path)
    # the samples' list features stay in Arrow: as numpy arrays of Python objects, one per row, they
    # were most of the samples' memory (1M synthetic samples: 700 bytes a sample of RSS, 359 in Arrow)
    train, test = (
        _samples(uri.join(path, "samples", split), RATING_COLUMNS if split in ratings_only else None) for split in ("train", "test")
    )
    train, test = agree_lists(train, test)
    movies = read_table(uri.join(path, "movies.parquet"))
    # the read's and the sort's buffers go back to the system: Arrow's pool keeps freed memory for
    # reuse, and a job holds these samples for long (5M samples: 363 bytes a sample of
    # RSS before; 266 with this and without the split column)
    pa.default_memory_pool().release_unused()
    return FeaturesVersion(path.rsplit("/", 1)[-1], path, spec, train, test, movies)


def read_samples(fv: FeaturesVersion, split: str, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """A split's samples of ``fv`` (``columns`` only, when given) read again from its files as
    :func:`open_features` reads them: the same rows in the same order."""
    out = _samples(uri.join(fv.path, "samples", split), columns)
    pa.default_memory_pool().release_unused()
    return out


def _samples(target: str, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """A split's samples in :func:`_sorted`'s order, without their ``split`` column (one value per
    file, and a Python string per row in pandas), list features in Arrow (:func:`compact_list`).

    The order comes from the sort keys alone (taken into that order first); then each other column is
    read from the files, put in that order and made compact, one at a time, and the frame takes the
    sorted columns over as they are converted (numbers without a copy where they have no nulls: the
    frame's columns are read-only, so it is never written in place). The samples are held once, with
    the order (8 bytes a sample) and one column over while they are read. Reading the whole table and
    sorting it a column at a time held the read table, the reader's freed buffers and the sorted
    columns at once: 20M samples (25M ratings) peaked 9.5 GiB in the job's process for a frame of
    3.4; pandas' sort of the read frame, before that, 12.7 GiB."""
    fs, path = uri.filesystem(target)
    dataset = pads.dataset(path, filesystem=fs, format="parquet")
    names = [c for c in dataset.schema.names if c != "split"] if columns is None else list(columns)
    keys = dataset.to_table(columns=list(SAMPLE_ORDER))
    order = pc.sort_indices(keys, sort_keys=[(c, "ascending") for c in SAMPLE_ORDER])  # stable, as the mergesort
    taken: dict[str, pa.ChunkedArray | pa.Array] = {c: pc.take(keys.column(c), order) for c in SAMPLE_ORDER if c in names}
    del keys
    pool = pa.default_memory_pool()
    for name in names:
        if name in taken:
            continue
        column = _read_column(dataset, name)
        if len(column) != len(order):
            raise RuntimeError(f"{target}: column {name!r} has {len(column):,} rows, the sort keys {len(order):,}")
        taken[name] = pc.take(column, order)  # a list column: compact already (_read_column)
        del column
        pool.release_unused()  # the reader's and the take's buffers, before the next column is read
    rows = len(order)
    del order
    if not names:
        return pd.DataFrame(index=pd.RangeIndex(rows))
    sorted_table = pa.table({name: taken.pop(name) for name in names})
    # each column handed over as it is converted, and let go by Arrow (self_destruct) once it is:
    # not every numeric column twice, in Arrow and in pandas' consolidated blocks, at the end
    return sorted_table.to_pandas(ignore_metadata=True, types_mapper=arrow_lists, split_blocks=True, self_destruct=True)


#: the most elements a list column may hold in all for 32-bit list offsets
_LIST_OFFSETS_MAX = 2**31 - 1


def _read_column(dataset: pads.Dataset, name: str) -> pa.ChunkedArray | pa.Array:
    """One column of ``dataset`` in the files' order; a list column read a batch at a time, each
    batch narrowed as it comes (:func:`_narrow_chunk`), then made one compact array
    (:func:`compact_list`). Read whole, the 20M samples' user genres (1.2 GB as strings) held 3.6 GiB
    at their peak and took 9.3 s; by batches 1.1 GiB and 2.7 s."""
    if not _is_list(dataset.schema.field(name).type):
        return dataset.to_table(columns=[name]).column(0)
    batches = dataset.to_batches(columns=[name], batch_readahead=1, fragment_readahead=1)
    chunks = _one_type([_narrow_chunk(b.column(0), large=False) for b in batches], large=False)
    return compact_list(pa.chunked_array(chunks, type=chunks[0].type) if chunks else dataset.to_table(columns=[name]).column(0))


def _one_type(parts: list[pa.Array], large: bool) -> list[pa.Array]:
    """Narrowed chunks of one column in one type: where some chunk's integers did not fit int32
    (and others did), every chunk's as int64."""
    if len({p.type for p in parts}) > 1:
        return [p.cast((pa.large_list if large else pa.list_)(pa.int64())) for p in parts]
    return parts


def _narrow_chunk(arr: pa.Array, large: bool) -> pa.Array:
    """A list array with strings dictionary-encoded (int32 indices) and integers as int32 where all
    of its values fit; 64-bit offsets only with ``large``."""
    value = arr.type.value_type
    if pa.types.is_string(value) or pa.types.is_large_string(value):
        value = pa.dictionary(pa.int32(), pa.string())
    elif pa.types.is_integer(value) and value.bit_width > 32:
        bounds = pc.min_max(pc.list_flatten(arr))
        lo, hi = bounds["min"].as_py(), bounds["max"].as_py()
        if lo is None or (-(2**31) <= lo and hi < 2**31):
            value = pa.int32()
    return arr.cast((pa.large_list if large else pa.list_)(value))


def compact_list(column: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """A list column in a narrower Arrow form with the same values, as one array; any other column
    as it is.

    The samples' lists are ``large_list`` (64-bit offsets) of strings (genres) or int64 (movie ids):
    of 239 bytes a sample in all, they took 137 (1M synthetic samples: user genres 59, recent items
    47, item genres 31). Here their offsets are 32-bit where the column's elements fit, strings are
    dictionary-encoded (an int16 index a genre while there are fewer than 16,384 of them, not its
    characters and a 64-bit offset) and integers are int32 where every value fits: 45 bytes a sample
    (14, 23 and 8), 148 in all. Encoding reads the same values
    (:meth:`rayrec.features.spec.Vocab.lookup_lists` takes a dictionary's values once, then its
    indices), and rows taken, sliced or concatenated with other rows (sampled negatives, whose genres
    are cast to the rows' type) keep them."""
    if not _is_list(column.type):
        return column
    chunks = list(column.chunks) if isinstance(column, pa.ChunkedArray) else [column]
    chunks = chunks or [pa.array([], column.type)]
    total = sum(int(pc.sum(pc.list_value_length(c)).as_py() or 0) for c in chunks)
    large = total > _LIST_OFFSETS_MAX
    parts = _one_type([_narrow_chunk(c, large) for c in chunks], large)
    arr = parts[0] if len(parts) == 1 else pa.chunked_array(parts, type=parts[0].type).combine_chunks()  # one dictionary
    value = arr.type.value_type
    if pa.types.is_dictionary(value):
        size = len(pc.list_flatten(arr).dictionary)
        index = pa.int16() if size < 2**14 else pa.int32()  # room for values other rows bring
        arr = arr.cast((pa.large_list if large else pa.list_)(pa.dictionary(index, value.value_type)))
    return arr


def agree_lists(*frames: pd.DataFrame) -> tuple[pd.DataFrame, ...]:
    """``frames`` whose list columns of the same name hold one Arrow type: each split's samples
    are made compact by their own values (:func:`compact_list`), so one split may need int64 ids,
    int32 dictionary indices or 64-bit offsets where another does not; rows of both concatenated
    (a refit's train and test samples) would then turn into Python objects. A column is cast to the
    widest of its types; frames already in agreement are returned as they are."""
    out = list(frames)
    names = {c for f in frames for c in f.columns if isinstance(f[c].dtype, pd.ArrowDtype)}
    for name in sorted(names):
        types = {f[name].dtype.pyarrow_dtype for f in frames if name in f.columns}
        if len(types) < 2:
            continue
        wide = _widest(types)
        for i, f in enumerate(out):
            if name in f.columns and f[name].dtype.pyarrow_dtype != wide:
                cast = pa.array(f[name].array).cast(wide)
                out[i] = f.assign(**{name: pd.Series(pd.arrays.ArrowExtensionArray(cast), index=f.index)})
    return tuple(out)


def _widest(types: set[pa.DataType]) -> pa.DataType:
    """The list type every one of ``types`` (compact list types of one column) casts to exactly."""
    large = any(pa.types.is_large_list(t) for t in types)
    values = [t.value_type for t in types]
    if all(pa.types.is_dictionary(v) for v in values):
        index = max((v.index_type for v in values), key=lambda t: t.bit_width)
        value: pa.DataType = pa.dictionary(index, pa.string())
    elif all(pa.types.is_integer(v) for v in values):
        value = max(values, key=lambda t: t.bit_width)
    else:
        raise TypeError(f"list columns of different kinds cannot agree: {sorted(map(str, types))}")
    return (pa.large_list if large else pa.list_)(value)


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(list(SAMPLE_ORDER), kind="mergesort").reset_index(drop=True)


def _is_sorted(df: pd.DataFrame) -> bool:
    """Whether ``df`` is already what :func:`_sorted` would return: ordered by (userId, timestamp,
    movieId) with a fresh 0..n-1 index."""
    idx = df.index
    if not (isinstance(idx, pd.RangeIndex) and idx.start == 0 and idx.step == 1):
        return False
    u, t, m = (df[c].to_numpy() for c in ("userId", "timestamp", "movieId"))
    du, dt = u[1:] - u[:-1], t[1:] - t[:-1]
    return bool(np.all((du > 0) | ((du == 0) & ((dt > 0) | ((dt == 0) & (m[1:] >= m[:-1]))))))


@dataclass(frozen=True)
class Histories:
    """Every row's point-in-time history of likes, by reference instead of a list per row.

    ``likes`` holds each user's liked movieIds in time order, user after user; row ``i``'s history is
    ``likes[end[i] - length[i] : end[i]]`` read backwards (most recent first). Its rows cost two
    integers each whatever ``max_len`` is; the model's (rows, max_len) input is gathered per batch
    (:meth:`rayrec.training.tasks.RetrieveTask.with_history`)."""

    likes: np.ndarray  # (L,) movieId
    end: np.ndarray  # (n,) int64
    length: np.ndarray  # (n,) int64, at most max_len

    def lists(self) -> list[list[int]]:
        """Per row, its history as a list (most recent first)."""
        return [self.likes[e - n : e][::-1].tolist() for e, n in zip(self.end.tolist(), self.length.tolist())]


def history_index(df: pd.DataFrame, max_len: int) -> Histories:
    """Per row (in ``df``'s order), where the user's liked movieIds strictly before it are, at most
    ``max_len`` of them. ``df`` must hold all the rows of its users whose likes should count."""
    order = np.lexsort((df["movieId"].to_numpy(), df["timestamp"].to_numpy(), df["userId"].to_numpy()))
    keys = df["userId"].to_numpy()[order]
    ts = df["timestamp"].to_numpy()[order]
    liked = df["label"].to_numpy()[order].astype(bool)
    items = df["movieId"].to_numpy(np.int64)[order]
    n = len(keys)
    n_before = prior_sums(keys, ts, liked.astype(np.int64))  # likes strictly before each row
    like_rows = np.flatnonzero(liked)
    new_key = np.ones(n, dtype=bool)
    new_key[1:] = keys[1:] != keys[:-1]
    first_row = np.maximum.accumulate(np.where(new_key, np.arange(n), 0))
    start = np.searchsorted(like_rows, first_row)  # the user's first like in the likes array
    end = np.empty(n, dtype=np.int64)
    length = np.empty(n, dtype=np.int64)
    end[order] = start + n_before
    length[order] = np.minimum(n_before, max_len)
    return Histories(items[like_rows], end, length)


def positive_history(df: pd.DataFrame, max_len: int) -> list[list[int]]:
    """Per row (in ``df``'s order), the user's liked movieIds strictly before it, most recent first,
    at most ``max_len``. ``df`` must hold all the rows of its users whose likes should count."""
    return history_index(df, max_len).lists()


def temporal_holdout(df: pd.DataFrame, fraction: float, min_rows: int = 5) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(fit, valid): each user's last ``fraction`` of rows by time is valid; users with fewer than
    ``min_rows`` rows stay in fit. The same cut as the features pipeline's train/test split."""
    fit, valid = holdout_positions(df, fraction, min_rows)
    return df.take(fit).reset_index(drop=True), df.take(valid).reset_index(drop=True)


def holdout_positions(df: pd.DataFrame, fraction: float, min_rows: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """:func:`temporal_holdout` as positions into ``df``: (fit, valid) such that ``df.take(fit)`` is
    the fit split, rows in time order per user (increasing positions when ``df`` comes sorted, as a
    features version's samples do), without a copy of the samples."""
    order = None if _is_sorted(df) else np.lexsort((df["movieId"].to_numpy(), df["timestamp"].to_numpy(), df["userId"].to_numpy()))
    users = df["userId"].to_numpy()
    if order is not None:
        users = users[order]
    is_valid = last_share(users, np.ones(len(users), dtype=bool), fraction, min_rows)
    pos = np.arange(len(users)) if order is None else order
    return pos[~is_valid], pos[is_valid]


#: rated rows per block of whole users that :func:`users_at` takes the totals of: a block holds a few
#: arrays of its rows while it lasts, and each pays a fixed cost over the catalog (its genres table)
USERS_AT_ROWS = 1_000_000


def users_at(
    ratings: pd.DataFrame, movies: pd.DataFrame, history_len: int, threshold: float, block_rows: int = USERS_AT_ROWS
) -> pd.DataFrame:
    """One row per user: ``userId``, the user features and ``history_items`` as of the end of
    ``ratings`` (userId, movieId, rating, timestamp): the values the features pipeline's point-in-time
    code gives a user's sentinel row (:func:`~rayrec.features.pointintime.user_totals`), on blocks of
    whole users of about ``block_rows`` rated rows each."""
    r = ratings[["userId", "movieId", "rating", "timestamp"]]
    users = r["userId"].to_numpy()
    if len(users) > 1 and bool(np.any(users[1:] < users[:-1])):
        r = r.iloc[np.argsort(users, kind="stable")]
        users = r["userId"].to_numpy()
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]]) if len(users) else np.zeros(0, np.int64)
    # a block ends at the first user to start at or after each multiple of block_rows
    cuts = np.unique(starts[np.minimum(np.searchsorted(starts, np.arange(block_rows, len(users), block_rows)), len(starts) - 1)])
    keep = ["userId", *USER_FEATURES]
    parts = []
    for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(users)]):
        if hi <= lo:
            continue
        parts.append(user_totals(attach_movie_attributes(r.iloc[lo:hi].copy(), movies, genres=False), movies, threshold=threshold))
    latest = pd.concat(parts) if len(parts) > 1 else (parts[0] if parts else pd.DataFrame(columns=keep))
    rated = ratings["rating"].to_numpy(np.float64) >= threshold
    liked = ratings.loc[rated, ["userId", "timestamp", "movieId"]]  # three columns, not every feature of the liked rows
    liked = liked.sort_values(["userId", "timestamp", "movieId"], ascending=[True, False, False], kind="mergesort")
    who = liked["userId"].to_numpy()
    first = np.flatnonzero(np.r_[True, who[1:] != who[:-1]]) if len(who) else np.zeros(0, np.int64)
    counts = np.diff(np.r_[first, len(who)])
    rank = np.arange(len(who)) - np.repeat(first, counts)  # 0: the user's latest like
    ids = liked["movieId"].to_numpy(np.int64)[rank < history_len]
    taken = np.minimum(counts, history_len)
    hist = dict(zip(who[first].tolist(), (a.tolist() for a in np.split(ids, np.cumsum(taken)[:-1]))))
    latest = latest.reset_index(drop=True)
    latest[HISTORY] = [hist.get(u, []) for u in latest["userId"].to_numpy()]
    return latest


def items_at(ratings: pd.DataFrame, movies: pd.DataFrame) -> pd.DataFrame:
    """One row per catalog movie: ``movieId`` and the item features as of the end of ``ratings``
    (movies nobody rated yet get count 0), in catalog order."""
    rated = item_totals(ratings).set_index("movieId")  # the features pipeline's sentinel rows' statistics
    cat = pd.DataFrame({"movieId": movies["movieId"].to_numpy(np.int64)})
    cat = cat.join(rated, on="movieId")
    cat["item_rating_count"] = cat["item_rating_count"].fillna(0).astype(np.int64)
    return attach_movie_attributes(cat, movies).reset_index(drop=True)


def data_range(df: pd.DataFrame) -> dict[str, int]:
    """The time span and size of a training set, recorded with the model."""
    ts = df["timestamp"].to_numpy()
    return {"rows": int(len(df)), "start": int(ts.min()) if len(ts) else 0, "end": int(ts.max()) if len(ts) else 0}


def to_dataset(
    rows: pd.DataFrame, spec: FeatureSpec, history_len: int | None = None, blocks: int = 8, seed: int = 0, carry: Sequence[str] = ()
) -> Any:
    """A materialised Ray Dataset of encoded training rows in a random order, ready to be sharded by
    Ray Train (:func:`to_dataset_chunks` of the one chunk ``rows``, in ``blocks`` blocks)."""
    return to_dataset_chunks([rows], spec, history_len, blocks_per_chunk=blocks, seed=seed, carry=carry)[0]


#: encoded columns whose codes index a table of the spec (:attr:`FeatureSpec.sizes`), by table: such a
#: column is stored in the narrowest integer type that holds every code of its table
_TABLE_OF = {
    "user_genres": "genre_vocab",
    "item_genres": "genre_vocab",
    "user_count_bucket": "user_rating_count_buckets",
    "item_year_bucket": "item_year_buckets",
    "item_count_bucket": "item_rating_count_buckets",
}


def storage_types(spec: FeatureSpec) -> dict[str, np.dtype]:
    """The integer type each encoded column is stored in where it is narrower than int32: int8 for
    the genre codes and the buckets when their table has at most 128 rows (codes 0..127), as every
    table of a MovieLens-like spec has (21 genres, 11 buckets). Other integer columns: int32."""
    sizes = spec.sizes
    return {col: np.dtype(np.int8) for col, table in _TABLE_OF.items() if 0 < sizes.get(table, 0) <= 128}


def narrowed(arrays: dict[str, np.ndarray], types: Mapping[str, np.dtype] | None = None) -> dict[str, np.ndarray]:
    """``arrays`` with every integer array as ``types[name]`` (:func:`storage_types`), else int32
    (floats as they are); a value beyond that type's range is a ValueError naming the column."""
    out: dict[str, np.ndarray] = {}
    for k, v in arrays.items():
        if v.dtype.kind in "iu":
            to = np.dtype((types or {}).get(k, np.int32))
            if v.dtype != to:
                bounds = np.iinfo(to)
                if v.size and (int(v.min()) < bounds.min or int(v.max()) > bounds.max):
                    raise ValueError(f"column {k!r} holds values beyond {to} ({int(v.min())}..{int(v.max())}): cannot store it narrowed")
                v = v.astype(to)
        out[k] = v
    return out


def encoded_narrow(spec: FeatureSpec, rows: pd.DataFrame, chunk: int = ENCODE_CHUNK_ROWS) -> dict[str, np.ndarray]:
    """:func:`narrowed` (:func:`storage_types`) of ``encode_pairs(spec, rows)``, encoded ``chunk`` rows
    at a time: the same arrays, with one chunk's int64 arrays held at a time instead of every row's."""
    types = storage_types(spec)
    if len(rows) <= chunk:
        return narrowed(encode_pairs(spec, rows), types)
    parts = [narrowed(encode_pairs(spec, rows.iloc[start : start + chunk]), types) for start in range(0, len(rows), chunk)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def to_dataset_chunks(
    chunks: Iterable[pd.DataFrame],
    spec: FeatureSpec,
    history_len: int | None = None,
    blocks_per_chunk: int = 8,
    seed: int = 0,
    carry: Sequence[str] = (),
) -> tuple[Any, int]:
    """(a materialised Ray Dataset, its row count) of the encoded rows of ``chunks``, consumed one
    at a time: a chunk may be built lazily (a generator), so that only one chunk of feature rows is
    in memory at once.

    Each chunk's rows are put in a random order (``seed``) and stored in ``blocks_per_chunk``
    blocks, each encoded here and put straight to the object store: only the models' input arrays
    are stored (no Arrow copy of the feature rows, list columns and all, and no pandas copy of them
    in a Ray worker). The blocks are the driver's own objects: a node lost mid-training loses at
    most copies of them, never their only one. Columns named in ``carry`` go in with the rest.

    Integer columns (vocabulary codes, buckets, ``carry``'s offsets) are stored as int32, and the
    genre codes and buckets as int8 (:func:`storage_types`), which
    :func:`rayrec.training.loop.shuffled_batches` widens back to int64 a window at a time: every
    ranker row is 83 bytes instead of 188 in the object store and in a worker's window (56% less
    at any scale; 116 with int32 alone). A value its type cannot hold is refused, never wrapped."""
    import ray
    from ray.data.extensions import ArrowTensorArray

    rng = np.random.default_rng(seed)
    types = storage_types(spec)  # one type per column for every block of the dataset
    refs: list[Any] = []
    n = 0
    for chunk in chunks:
        if len(chunk) == 0 and refs:
            continue
        # rows in a random order: a chunk comes user by user, and the ranker's rated rows before
        # their sampled negatives; a shuffle buffer alone would feed whole batches of one kind
        order = rng.permutation(len(chunk))
        step = max(1, -(-len(chunk) // blocks_per_chunk))
        # encoded and narrowed once, in the chunk's order (every input is row by row), then dealt into
        # blocks: a block is a random take of the narrow arrays, not the encoding of a random take of
        # the feature rows (that take of their list columns cost as much as the encoding); the chunk's
        # arrays and one block's copy are held at a time
        encoded = narrowed(encode_pairs(spec, chunk, history_len) | {c: chunk[c].to_numpy(np.int64) for c in carry}, types)
        for start in range(0, max(len(chunk), 1), step):  # an empty chunk: one empty block (the schema)
            take = order[start : start + step]
            block = {k: v[take] for k, v in encoded.items()}
            refs.append(ray.put(pa.table({k: ArrowTensorArray.from_numpy(v) if v.ndim > 1 else v for k, v in block.items()})))
        n += len(chunk)
        del chunk, encoded
        pa.default_memory_pool().release_unused()  # the chunk's Arrow buffers (list features, takes) go back
    if not refs:
        raise ValueError("to_dataset_chunks needs at least one chunk")
    return ray.data.from_arrow_refs(refs), n

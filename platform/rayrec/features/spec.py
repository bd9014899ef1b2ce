"""FeatureSpec: the encoders, fitted once on the training split, shared by training and serving.

It holds vocabularies (with a padding slot 0 and an out-of-vocabulary slot 1), numeric normalisation
statistics and quantile bucket boundaries. ``encode_user`` / ``encode_item`` turn feature rows (a
Ray Data batch offline, rows from the online store when serving) into model inputs with the same
code, so training and serving cannot drift apart. Saved as canonical JSON; its ``hash`` names the
exact encoders a model was trained against.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from rayrec import uri
from rayrec.arrays import searchsorted, unique
from rayrec.features.pointintime import LABEL_THRESHOLD, N_ITEM_GENRES, N_RECENT_ITEMS, N_USER_GENRES

SPEC_FILE = "spec.json"  # in each features version

__all__ = [
    "PAD",
    "OOV",
    "Vocab",
    "Numeric",
    "Buckets",
    "FeatureSpec",
    "SpecPartial",
    "USER_NUMERIC",
    "ITEM_NUMERIC",
    "BUCKETED",
    "LABEL_THRESHOLD",
    "features_path",
    "load_spec",
    "SPEC_FILE",
    "arrow_lists",
]

PAD, OOV = 0, 1  # index 0: padding / missing value; index 1: a value not seen in training

# (feature, transform) of the dense inputs, in the order of the encoded matrices' columns
USER_NUMERIC: tuple[tuple[str, str], ...] = (
    ("user_rating_count", "log1p"),
    ("user_rating_mean", "identity"),
    ("user_rating_std", "identity"),
    ("user_year_mean", "identity"),
    ("user_year_std", "identity"),
)
ITEM_NUMERIC: tuple[tuple[str, str], ...] = (
    ("item_rating_count", "log1p"),
    ("item_rating_mean", "identity"),
    ("item_rating_std", "identity"),
    ("item_year", "identity"),
)
BUCKETED: tuple[str, ...] = ("user_rating_count", "item_rating_count", "item_year")
N_BUCKETS = 10


def _transform(x: np.ndarray, how: str) -> np.ndarray:
    return np.log1p(np.maximum(x, 0.0)) if how == "log1p" else x


#: integer vocabularies whose values are all below this are looked up in a table (:meth:`Vocab.lookup`):
#: at most 32 MiB of int64 codes; a training chunk's millions of ids are read from it in a fraction
#: of the time of a binary search each
_TABLE_MAX = 1 << 22
_ARROW_MIN_ROWS = 256  # rows from which lookup_lists goes through Arrow (measured: ~100 µs fixed cost per call)


@dataclass(frozen=True)
class Vocab:
    """Known values, sorted; value ``values[i]`` encodes as ``i + 2`` (0 is padding, 1 is OOV)."""

    values: tuple[Any, ...]

    @property
    def size(self) -> int:
        return len(self.values) + 2

    @cached_property
    def array(self) -> np.ndarray:
        """``values`` as one array, built once (a lookup of one request's ids must not rebuild it)."""
        return np.asarray(self.values)

    @cached_property
    def _table(self) -> np.ndarray | None:
        """The code of every integer from 0 to the largest value (OOV where it is not a value), for a
        vocabulary of non-negative integers below :data:`_TABLE_MAX` (user and movie ids); else None."""
        known = self.array
        if known.dtype.kind not in "iu" or not len(known) or known[0] < 0 or known[-1] >= _TABLE_MAX:
            return None
        table = np.full(int(known[-1]) + 1, OOV, dtype=np.int64)
        table[known] = np.arange(2, len(known) + 2)
        return table

    def lookup(self, x: Sequence[Any] | np.ndarray) -> np.ndarray:
        arr = np.asarray(x)
        if len(self.values) == 0:
            return np.full(arr.shape, OOV, dtype=np.int64)
        table = self._table
        if table is not None and arr.dtype.kind in "iu":  # integers: read from the table, no search
            return np.where((arr >= 0) & (arr < len(table)), table[np.clip(arr, 0, len(table) - 1)], OOV)
        known = self.array
        pos = searchsorted(known, arr)  # many values in ascending order (a training chunk's)
        pos_c = np.minimum(pos, len(known) - 1)
        hit = known[pos_c] == arr
        return np.where(hit, pos_c + 2, OOV).astype(np.int64)

    def lookup_lists(self, lists: Iterable[Any], width: int) -> np.ndarray:
        """(N, width) ids of each list's first ``width`` values, padded with 0 (a value that is not
        a list, tuple or array counts as an empty list). Many rows that Arrow can take as one list
        array (a features column: arrays of ids or of strings) are encoded without a Python loop per
        row; a request's few rows skip Arrow, whose fixed cost per call is larger than the loop's."""
        arr: pa.Array | None = None
        if isinstance(lists, (pa.Array, pa.ChunkedArray)):  # a column kept in Arrow (:func:`arrow_lists`)
            arr = lists.combine_chunks() if isinstance(lists, pa.ChunkedArray) else lists
            rows: Any = arr
        else:
            rows = lists if isinstance(lists, (list, np.ndarray)) else list(lists)
        out = np.zeros((len(rows), width), dtype=np.int64)
        if not len(rows):
            return out
        if arr is None and len(rows) == 1:  # one request's list: its values looked up as they are
            v = rows[0]
            if isinstance(v, (list, tuple, np.ndarray)) and len(v):
                values = np.asarray(v[:width])
                out[0, : len(values)] = self.lookup(values)
            return out
        if arr is None and len(rows) >= _ARROW_MIN_ROWS:
            try:
                arr = pa.array(rows)
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, ValueError):
                pass
        if arr is not None and _is_list(arr.type):
            lens = pc.list_value_length(arr).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
            flat_arrow = pc.list_flatten(arr)
        else:  # anything else, value by value
            lens = np.fromiter((len(v) if isinstance(v, (list, tuple, np.ndarray)) else 0 for v in rows), dtype=np.int64, count=len(rows))
            flat_arrow = None
        if not lens.sum():
            return out
        ri = np.repeat(np.arange(len(rows)), lens)
        ci = np.arange(len(ri)) - np.repeat(np.cumsum(lens) - lens, lens)
        keep = ci < width
        if flat_arrow is not None:
            codes = self._lookup_arrow(flat_arrow.filter(pa.array(keep)))
        else:
            flat = np.concatenate([np.asarray(v).reshape(-1) for v, n in zip(rows, lens.tolist()) if n])
            codes = self.lookup(flat[keep])
        out[ri[keep], ci[keep]] = codes
        return out

    @cached_property
    def _arrow_strings(self) -> pa.Array:
        """The values as an Arrow string array, for :meth:`_lookup_arrow`'s hash lookup."""
        return pa.array(self.array.tolist(), pa.string())

    def _lookup_arrow(self, flat: pa.Array) -> np.ndarray:
        """:meth:`lookup` of an Arrow array: strings by a hash lookup in C++, numbers as numpy; a
        dictionary-encoded array by its values once, then its indices (a missing value: OOV)."""
        if pa.types.is_dictionary(flat.type):
            table = np.append(self._lookup_arrow(flat.dictionary), OOV)
            return table[flat.indices.cast(pa.int64()).fill_null(len(flat.dictionary)).to_numpy(zero_copy_only=False)]
        if (pa.types.is_string(flat.type) or pa.types.is_large_string(flat.type)) and self.array.dtype.kind == "U":
            pos = pc.index_in(flat, value_set=self._arrow_strings).fill_null(-1)
            idx = pos.to_numpy(zero_copy_only=False).astype(np.int64)
            return np.where(idx >= 0, idx + 2, OOV)
        return self.lookup(flat.to_numpy(zero_copy_only=False))


@dataclass(frozen=True)
class Numeric:
    """z-score of a (possibly log1p-transformed) value; a missing value encodes as 0 (the mean)."""

    transform: str
    mean: float
    std: float

    def normalise(self, x: np.ndarray) -> np.ndarray:
        z = (_transform(np.asarray(x, dtype=np.float64), self.transform) - self.mean) / (self.std or 1.0)
        return np.nan_to_num(z, nan=0.0).astype(np.float32)


@dataclass(frozen=True)
class Buckets:
    """Quantile boundaries; bucket 0 is missing, buckets 1..len(boundaries)+1 the value ranges."""

    boundaries: tuple[float, ...]

    @property
    def size(self) -> int:
        return len(self.boundaries) + 2

    def bucketize(self, x: np.ndarray) -> np.ndarray:
        arr = np.asarray(x, dtype=np.float64)
        b = np.searchsorted(np.asarray(self.boundaries, dtype=np.float64), arr, side="right") + 1
        return np.where(np.isnan(arr), 0, b).astype(np.int64)


@dataclass
class SpecPartial:
    """Statistics of one block of training samples; partials merge, then :meth:`FeatureSpec.fit`."""

    users: set[int] = field(default_factory=set)
    items: set[int] = field(default_factory=set)
    genres: set[str] = field(default_factory=set)
    moments: dict[str, list[float]] = field(default_factory=dict)  # feature → [n, sum, sumsq]
    counts: dict[str, Counter[float]] = field(default_factory=dict)  # bucketed feature → value counts
    ts_range: list[int] = field(default_factory=list)
    rows: int = 0

    @classmethod
    def of(cls, batch: pd.DataFrame | pa.Table) -> SpecPartial:
        """Partial statistics of a block: a pandas frame or an Arrow table (list columns are then
        flattened by Arrow, with no per-row Python)."""
        p = cls()
        p.rows = len(batch)
        p.users = set(unique(column_numpy(batch, "userId")).tolist())
        p.items = set(unique(column_numpy(batch, "movieId")).tolist())
        for col in ("item_genres", "user_genres"):
            p.genres.update(list_values(batch, col, distinct=True))
        for name, how in USER_NUMERIC + ITEM_NUMERIC:
            x = _transform(column_numpy(batch, name, np.float64), how)
            x = x[~np.isnan(x)]
            p.moments[name] = [float(len(x)), float(x.sum()), float((x * x).sum())]
        for name in BUCKETED:
            x = column_numpy(batch, name, np.float64)
            vals, cnt = np.unique(x[~np.isnan(x)], return_counts=True)
            p.counts[name] = Counter(dict(zip(vals.tolist(), cnt.tolist())))
        if len(batch):
            ts = column_numpy(batch, "timestamp")
            p.ts_range = [int(ts.min()), int(ts.max())]
        return p

    def merge(self, other: SpecPartial) -> SpecPartial:
        self.rows += other.rows
        self.users |= other.users
        self.items |= other.items
        self.genres |= other.genres
        for k, v in other.moments.items():
            cur = self.moments.setdefault(k, [0.0, 0.0, 0.0])
            self.moments[k] = [a + b for a, b in zip(cur, v)]
        for k, c in other.counts.items():
            self.counts.setdefault(k, Counter()).update(c)
        if other.ts_range:
            self.ts_range = (
                [min(self.ts_range[0], other.ts_range[0]), max(self.ts_range[1], other.ts_range[1])]
                if self.ts_range
                else list(other.ts_range)
            )
        return self


def _round(x: float) -> float:
    return float(f"{float(x):.10g}")


def _quantile_boundaries(counts: Counter[float], n_buckets: int) -> tuple[float, ...]:
    """Exact quantile cut points from value counts, deduplicated (ties collapse buckets)."""
    if not counts:
        return ()
    vals = np.array(sorted(counts))
    cum = np.cumsum([counts[v] for v in vals]) / sum(counts.values())
    qs = np.arange(1, n_buckets) / n_buckets
    cuts = vals[np.minimum(np.searchsorted(cum, qs, side="left"), len(vals) - 1)]
    return tuple(float(c) for c in np.unique(cuts))


@dataclass(frozen=True)
class FeatureSpec:
    """Encoders fitted on the training split. Build with :meth:`fit`; persist with save/load."""

    vocabs: Mapping[str, Vocab]  # "user" (userId), "item" (movieId), "genre"
    numerics: Mapping[str, Numeric]
    buckets: Mapping[str, Buckets]
    label_threshold: float
    train_rows: int
    train_range: tuple[int, int]

    # -- fitting and persistence -------------------------------------------------------------
    @classmethod
    def fit(cls, stats: SpecPartial, *, label_threshold: float, n_buckets: int = N_BUCKETS) -> FeatureSpec:
        numerics = {}
        for name, how in USER_NUMERIC + ITEM_NUMERIC:
            n, s, ss = stats.moments.get(name, [0.0, 0.0, 0.0])
            mean = s / n if n else 0.0
            std = float(np.sqrt(max(ss / n - mean * mean, 0.0))) if n else 1.0
            # rounded: partial sums merge in any order, and the spec (and its hash) must not depend on it
            numerics[name] = Numeric(how, _round(mean), _round(std) if std > 1e-12 else 1.0)
        return cls(
            vocabs={
                "user": Vocab(tuple(sorted(int(u) for u in stats.users))),
                "item": Vocab(tuple(sorted(int(i) for i in stats.items))),
                "genre": Vocab(tuple(sorted(stats.genres))),
            },
            numerics=numerics,
            buckets={k: Buckets(_quantile_boundaries(stats.counts.get(k, Counter()), n_buckets)) for k in BUCKETED},
            label_threshold=float(label_threshold),
            train_rows=int(stats.rows),
            train_range=(tuple(stats.ts_range) if stats.ts_range else (0, 0)),  # type: ignore[arg-type]
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": 1,
            "vocabs": {k: list(v.values) for k, v in self.vocabs.items()},
            "numerics": {k: asdict(v) for k, v in self.numerics.items()},
            "buckets": {k: list(v.boundaries) for k, v in self.buckets.items()},
            "label_threshold": self.label_threshold,
            "train_rows": self.train_rows,
            "train_range": list(self.train_range),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FeatureSpec:
        if d.get("format") != 1:
            raise ValueError(f"unsupported FeatureSpec format {d.get('format')!r}; re-run the features pipeline")
        return cls(
            vocabs={k: Vocab(tuple(v)) for k, v in d["vocabs"].items()},
            numerics={k: Numeric(**v) for k, v in d["numerics"].items()},
            buckets={k: Buckets(tuple(v)) for k, v in d["buckets"].items()},
            label_threshold=float(d["label_threshold"]),
            train_rows=int(d["train_rows"]),
            train_range=tuple(d["train_range"]),  # type: ignore[arg-type]
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @property
    def hash(self) -> str:
        """sha256 of the canonical JSON: equal hashes mean identical encoders."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    def save(self, target: str) -> None:
        uri.write_bytes(target, self.to_json().encode())

    @classmethod
    def load(cls, source: str) -> FeatureSpec:
        return cls.from_dict(json.loads(uri.read_bytes(source)))

    @classmethod
    def of(cls, features_version_path: str) -> FeatureSpec:
        """The spec of the features version at this path (its ``spec.json``)."""
        return cls.load(uri.join(features_version_path, SPEC_FILE))

    # -- encoding ---------------------------------------------------------------------------
    @property
    def sizes(self) -> dict[str, int]:
        """Table sizes a model needs: vocabularies and bucket counts, dense widths."""
        out = {f"{k}_vocab": v.size for k, v in self.vocabs.items()}
        out.update({f"{k}_buckets": b.size for k, b in self.buckets.items()})
        out["user_dense"] = len(USER_NUMERIC)
        out["item_dense"] = len(ITEM_NUMERIC)
        return out

    def _dense(self, df: pd.DataFrame | Mapping[str, Any], cols: tuple[tuple[str, str], ...]) -> np.ndarray:
        """(N, len(cols)) float32, each column by its :meth:`Numeric.normalise`, all columns at once
        (one request's row costs a call per step, not a call per step and column)."""
        raw = np.stack([np.asarray(_col(df, c), dtype=np.float64) for c, _ in cols], axis=1)
        logs = [j for j, (c, _) in enumerate(cols) if self.numerics[c].transform == "log1p"]
        if logs:
            raw[:, logs] = _transform(raw[:, logs], "log1p")
        means, stds = self._moments(cols)
        raw -= means
        raw /= stds
        return np.nan_to_num(raw, nan=0.0, copy=False).astype(np.float32)

    @cached_property
    def _moments_of(self) -> dict[tuple[tuple[str, str], ...], tuple[np.ndarray, np.ndarray]]:
        return {}

    def _moments(self, cols: tuple[tuple[str, str], ...]) -> tuple[np.ndarray, np.ndarray]:
        """The columns' means and scales (a zero std: 1), as :meth:`Numeric.normalise` takes them."""
        got = self._moments_of.get(cols)
        if got is None:
            got = (np.array([self.numerics[c].mean for c, _ in cols], dtype=np.float64),
                   np.array([self.numerics[c].std or 1.0 for c, _ in cols], dtype=np.float64))  # fmt: skip
            self._moments_of[cols] = got
        return got

    def encode_user(self, df: pd.DataFrame | Mapping[str, Any]) -> dict[str, np.ndarray]:
        """User-side model inputs from rows holding ``userId`` and the user features."""
        return {
            "user_id": self.vocabs["user"].lookup(np.asarray(_col(df, "userId"), dtype=np.int64)),
            "user_genres": self.vocabs["genre"].lookup_lists(_col(df, "user_genres"), N_USER_GENRES),
            "user_recent_items": self.vocabs["item"].lookup_lists(_col(df, "user_recent_items"), N_RECENT_ITEMS),
            "user_count_bucket": self.buckets["user_rating_count"].bucketize(_col(df, "user_rating_count")),
            "user_dense": self._dense(df, USER_NUMERIC),
        }

    def encode_item(self, df: pd.DataFrame | Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Item-side model inputs from rows holding ``movieId`` and the item features."""
        return {
            "item_id": self.vocabs["item"].lookup(np.asarray(_col(df, "movieId"), dtype=np.int64)),
            "item_genres": self.vocabs["genre"].lookup_lists(_col(df, "item_genres"), N_ITEM_GENRES),
            "item_year_bucket": self.buckets["item_year"].bucketize(_col(df, "item_year")),
            "item_count_bucket": self.buckets["item_rating_count"].bucketize(_col(df, "item_rating_count")),
            "item_dense": self._dense(df, ITEM_NUMERIC),
        }

    def encode(self, df: pd.DataFrame | Mapping[str, Any]) -> dict[str, np.ndarray]:
        """User and item inputs plus ``label`` (float32) when the rows carry one."""
        out = {**self.encode_user(df), **self.encode_item(df)}
        if "label" in df:
            out["label"] = np.asarray(_col(df, "label"), dtype=np.float32)
        return out

    def one_hot(self, vocab: str, values: Sequence[Any]) -> np.ndarray:
        """(N, size) one-hot rows over a vocabulary (padding and OOV columns included)."""
        v = self.vocabs[vocab]
        out = np.zeros((len(values), v.size), dtype=np.float32)
        out[np.arange(len(values)), v.lookup(list(values))] = 1.0
        return out

    def multi_hot(self, vocab: str, lists: Sequence[Sequence[Any]]) -> np.ndarray:
        """(N, size) multi-hot rows, e.g. a movie's genres; column 0 (padding) stays 0."""
        v = self.vocabs[vocab]
        ids = v.lookup_lists(lists, max((len(x) for x in lists), default=0) or 1)
        out = np.zeros((len(lists), v.size), dtype=np.float32)
        rows = np.repeat(np.arange(len(lists)), ids.shape[1])
        out[rows, ids.ravel()] = 1.0
        out[:, PAD] = 0.0
        return out


def column_numpy(batch: pd.DataFrame | pa.Table, name: str, dtype: Any = None) -> np.ndarray:
    """One column of a pandas frame or an Arrow table as numpy; with a float dtype, nulls become NaN."""
    if isinstance(batch, pa.Table):
        col = batch.column(name)
        if dtype is not None:
            col = pc.cast(col, pa.from_numpy_dtype(np.dtype(dtype)))
        return col.to_numpy()
    x = batch[name].to_numpy(dtype=dtype, na_value=np.nan) if dtype is not None else batch[name].to_numpy()
    return x


def list_values(batch: pd.DataFrame | pa.Table, name: str, distinct: bool = False) -> list[Any]:
    """Every element of every list in a list column, flattened (order and repeats kept), or with
    ``distinct`` each value once."""
    if isinstance(batch, pa.Table):
        flat = pc.list_flatten(batch.column(name))
        return (pc.unique(flat) if distinct else flat).to_pylist()
    values = [v for vs in batch[name] for v in vs]
    return list(dict.fromkeys(values)) if distinct else values


def _col(df: pd.DataFrame | Mapping[str, Any], name: str) -> Any:
    try:
        col = df[name]
    except KeyError:
        raise KeyError(f"feature {name!r} missing from the rows to encode") from None
    if isinstance(col, pd.Series):
        if isinstance(col.dtype, pd.ArrowDtype):  # a list column kept in Arrow: its buffers, no object per row
            return pa.array(col.array)
        return col.to_numpy()
    return col


def _is_list(t: pa.DataType) -> bool:
    return bool(pa.types.is_list(t) or pa.types.is_large_list(t))


def arrow_lists(t: pa.DataType) -> pd.ArrowDtype | None:
    """A ``types_mapper`` for ``pa.Table.to_pandas``: list columns stay Arrow arrays
    (``pd.ArrowDtype``), other columns convert as usual. A sample's three list features as numpy
    arrays of Python objects, one per row, were most of its memory in a DataFrame (1M synthetic
    samples: 700 bytes a sample of steady RSS in all; 359 with the lists in Arrow, which take 135 of
    them). :meth:`FeatureSpec.encode_user` and ``encode_item`` read them from Arrow's buffers."""
    return pd.ArrowDtype(t) if _is_list(t) else None


def features_path(artifacts: str, version: str | None = "latest") -> str:
    """``<artifacts>/features/<version>`` ("latest" or None: the LATEST pointer): the one place a
    features version is resolved; a clear error when it is absent."""
    root = uri.join(artifacts, "features")
    try:
        return uri.resolve_version(root, version)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"no features version {version!r} under {root}: run `python -m pipelines.features "
            f"--artifacts {artifacts}` first"
        ) from None


def load_spec(artifacts: str, version: str | None = "latest") -> FeatureSpec:
    """The FeatureSpec of a features version (what training and serving encode with)."""
    return FeatureSpec.of(features_path(artifacts, version))

"""Bulk loads of a features table (Parquet or a DataFrame) into the online store.

One versioned load: ``begin_load`` in the driver, ``write_rows`` per block (in parallel Ray Data tasks
with ``use_ray``, each opening the store itself), then one ``commit_load`` that swaps the new table in
and deletes the old one. Readers see the old table until the swap, the new one after it.

:func:`load_online` loads a features version's online tables (``online/users.parquet``,
``online/items.parquet``) this way, and :func:`seed_realtime` gives every user the exact statistics the
real-time path updates from: what the feature job does after computing a version.
"""

from __future__ import annotations

import logging

import time
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
from pydantic import BaseModel

from rayrec.store import open_store
from rayrec.store.base import OnlineStore, iter_rows
from rayrec import uri
from rayrec.uri import filesystem

__all__ = ["load_table", "load_online", "seed_realtime"]

log = logging.getLogger(__name__)


def load_table(
    store_url: str | BaseModel | Mapping[str, Any] | None,
    entity: str,
    data: str | pd.DataFrame,
    key: str,
    *,
    use_ray: bool = False,
    version: str | None = None,
    batch_size: int = 5_000,
) -> tuple[str, int, float]:
    """Load ``data`` (a Parquet file or folder URI, or a DataFrame) as the new table of ``entity``,
    ids from column ``key``. With ``use_ray`` the rows are written by parallel Ray Data tasks (the
    SQLite backend keeps them on this node, where its file is). Returns ``(version, rows, seconds)``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    start = time.perf_counter()
    store = open_store(store_url)
    try:
        if use_ray:
            version, rows = _load_with_ray(store, entity, data, key, version, batch_size)
        else:
            rows = 0

            def pairs() -> Iterator[tuple[int, Mapping[str, Any]]]:
                nonlocal rows
                for frame in _frames(data, key, batch_size):
                    rows += len(frame)
                    yield from iter_rows(frame, key)

            version = store.load(entity, pairs(), version=version)
    finally:
        store.close()
    return version, rows, time.perf_counter() - start


def _frames(data: str | pd.DataFrame, key: str, batch_size: int) -> Iterator[pd.DataFrame | pa.RecordBatch]:
    """``data`` as DataFrames or Arrow batches of at most ``batch_size`` rows, checking the key column
    first. Parquet stays in Arrow (as Ray Data hands it to the tasks), so both paths store the same
    values."""
    if isinstance(data, pd.DataFrame):
        _check_key(key, list(data.columns), "the DataFrame")
        for start in range(0, len(data), batch_size):
            yield data.iloc[start : start + batch_size]
        return
    fs, path = filesystem(data)
    try:
        dataset = pads.dataset(path, filesystem=fs, format="parquet")
    except (FileNotFoundError, OSError) as e:
        raise FileNotFoundError(f"cannot read the features table {data}: {e}") from e
    _check_key(key, dataset.schema.names, data)
    yield from dataset.to_batches(batch_size=batch_size)


def _check_key(key: str, columns: list[str], what: str) -> None:
    if key not in columns:
        raise ValueError(f"key column {key!r} is not in {what} (columns: {columns})")


def _load_with_ray(
    store: OnlineStore, entity: str, data: str | pd.DataFrame, key: str, version: str | None, batch_size: int
) -> tuple[str, int]:
    import ray

    if isinstance(data, pd.DataFrame):
        _check_key(key, list(data.columns), "the DataFrame")
        # Several blocks, so that several tasks write at once.
        parts = [data.iloc[s : s + batch_size] for s in range(0, len(data), batch_size)] or [data]
        ds = ray.data.from_pandas(parts)
    else:
        fs, path = filesystem(data)
        ds = ray.data.read_parquet(path, filesystem=fs)
        _check_key(key, list(ds.schema().names), data)

    config: BaseModel = store.config  # type: ignore[attr-defined]
    label_selector = None
    if config.type == "sqlite":  # type: ignore[attr-defined]
        # The SQLite file is local to this node: every writer must run here (Ray's node-id label
        # pins the tasks, as Ray Data does for local:// reads).
        label_selector = {"ray.io/node-id": ray.get_runtime_context().get_node_id()}

    version = store.begin_load(entity, version)
    try:
        written = ds.map_batches(
            _write_block,
            fn_kwargs={"config": config, "entity": entity, "version": version, "key": key},
            batch_format="pyarrow",
            batch_size=batch_size,
            label_selector=label_selector,
        )
        # Summing in the driver: Dataset.sum would add a shuffle stage for a handful of numbers.
        rows = sum(int(b["rows"].sum()) for b in written.iter_batches(batch_size=None, batch_format="numpy"))
        store.commit_load(entity, version)
    except BaseException as e:
        try:
            if store.live_version(entity) != version:
                store.abort_load(entity, version)
        except Exception as cleanup:
            note = f"(version {version} of {entity} was left behind: {cleanup})"
            if hasattr(e, "add_note"):  # Python ≥ 3.11; on 3.10 the note would raise in the error path
                e.add_note(note)
            else:
                logging.getLogger(__name__).warning(note)
        raise
    return version, rows


def _write_block(batch: pa.Table, config: BaseModel, entity: str, version: str, key: str) -> dict[str, np.ndarray]:
    """One Ray Data task: open the store, write this block's rows into the loading version."""
    store = open_store(config)
    try:
        rows = store.write_rows(entity, version, iter_rows(batch, key))
    finally:
        store.close()
    return {"rows": np.array([rows], dtype=np.int64)}


def load_online(store_url: str | None, features_path: str, *, use_ray: bool = True) -> dict[str, tuple[str, int, float]]:
    """Load ``online/users.parquet`` and ``online/items.parquet`` of one features version into a store:
    ``{entity: (version, rows, seconds)}``."""
    out: dict[str, tuple[str, int, float]] = {}
    for entity, table, key in (("user", "users", "userId"), ("item", "items", "movieId")):
        version, rows, secs = load_table(
            store_url, entity, uri.join(features_path, "online", f"{table}.parquet"), key, use_ray=use_ray
        )
        log.info("online store: %s table version %s, %d rows in %.2fs", entity, version, rows, secs)
        out[entity] = (version, rows, secs)
    return out


def seed_realtime(store_url: str | None, ratings: pd.DataFrame, movies: pd.DataFrame, threshold: float) -> int:
    """Exact per-user statistics for incremental updates from events (``POST /events``), from the
    same ratings the features were computed on."""
    from rayrec.realtime.updater import seed_stats
    from rayrec.store import open_store

    with open_store(store_url) as store:
        return seed_stats(store, ratings, movies, threshold)

"""Bulk loads through Ray Data: blocks written by parallel tasks, one commit, on both backends."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from rayrec.store import open_store
from rayrec.store.loader import load_table

REDIS_URL = os.environ.get("RAYREC_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")


def items(n: int, gen: int) -> pd.DataFrame:
    ids = np.arange(1, n + 1)
    return pd.DataFrame(
        {
            "movieId": ids,
            "title": [f"Movie {i}" for i in ids],
            "genres": [["Drama", "Comedy"][: 1 + i % 2] for i in ids],
            "item_rating_mean": np.where(ids % 5 == 0, np.nan, 3.5),
            "gen": gen,
        }
    )


def test_ray_load_writes_blocks_in_parallel_then_commits_once(ray_session, store_url: str, tmp_path) -> None:
    store = open_store(store_url)
    old = store.load("item", items(10, gen=1), key="movieId")
    path = tmp_path / "items"
    path.mkdir()
    df = items(2000, gen=2)
    for k in range(4):  # a folder of files, as Ray Data writes them
        df.iloc[k * 500 : (k + 1) * 500].to_parquet(path / f"part-{k}.parquet")

    version, rows, seconds = load_table(store_url, "item", str(path), "movieId", use_ray=True, batch_size=300)

    assert rows == 2000 and seconds > 0 and version != old
    assert store.live_version("item") == version
    got = store.get("item", [1, 5, 2000, 2001])
    assert got[0] == {"movieId": 1, "title": "Movie 1", "genres": ["Drama", "Comedy"], "item_rating_mean": 3.5, "gen": 2}
    assert got[1]["item_rating_mean"] is None and got[2]["gen"] == 2 and got[3] is None  # type: ignore[index]
    assert all(r is not None and r["gen"] == 2 for r in store.get("item", range(1, 2001)))
    store.close()


def test_ray_and_local_loads_store_the_same_rows(ray_session, store_url: str, tmp_path) -> None:
    df = items(700, gen=3)
    df.to_parquet(tmp_path / "items.parquet")
    store = open_store(store_url)
    ids = list(range(1, 702))
    version, rows, _ = load_table(store_url, "user", df, "movieId", use_ray=True, batch_size=200)
    assert rows == 700 and store.live_version("user") == version
    with_ray = store.get("user", ids)
    load_table(store_url, "user", str(tmp_path / "items.parquet"), "movieId")
    assert store.get("user", ids) == with_ray
    load_table(store_url, "user", df, "movieId")
    assert store.get("user", ids) == with_ray
    assert with_ray[4]["item_rating_mean"] is None and with_ray[700] is None  # type: ignore[index]
    store.close()


def test_ray_load_with_a_missing_key_column_changes_nothing(ray_session, store_url: str) -> None:
    store = open_store(store_url)
    live = store.load("item", items(5, gen=1), key="movieId")
    with pytest.raises(ValueError, match="key column 'itemId'"):
        load_table(store_url, "item", items(5, gen=2), "itemId", use_ray=True)
    assert store.live_version("item") == live
    store.close()

"""Shared by the real-time tests: store backends, a toy catalog, and test doubles of the towers.

The doubles are deterministic functions of the features, so a test can recompute what the stored
vector must be from the row alone.
"""

from __future__ import annotations

import os
import uuid
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest

from rayrec.store import StoreUnavailable, open_store

REDIS_URL = os.environ.get("RAYREC_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")
GENRES = ["Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi"]
DIM = 8


def redis_down() -> str | None:
    try:
        store = open_store(REDIS_URL + "?timeout=0.5")
        store.ping()
        store.close()
    except StoreUnavailable as e:
        return str(e)
    return None


def store_urls(backend: str, tmp_path: Any) -> Iterator[str]:
    """A fresh store URL of ``backend``; Redis keys under a unique prefix are removed afterwards."""
    if backend == "sqlite":
        yield f"sqlite://{tmp_path}/store.db"
        return
    why = redis_down()
    if why:
        pytest.skip(f"Redis not answering: {why}")
    prefix = f"rayrec-test-{uuid.uuid4().hex[:12]}"
    yield f"{REDIS_URL}?prefix={prefix}"
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.unlink(*keys)
    client.close()


def toy_movies(n: int = 60, seed: int = 0) -> pd.DataFrame:
    """A catalog like ``rayrec.data.read_movielens`` returns: some movies without a year or genres."""
    rng = np.random.default_rng(seed)
    years = [None if i % 11 == 0 else 1960 + i % 50 for i in range(n)]
    return pd.DataFrame(
        {
            "movieId": np.arange(1, n + 1, dtype=np.int64) * 3,  # gaps: ids are not row numbers
            # the year in the title, as MovieLens writes it (read_movielens parses it back)
            "title": [f"Movie {i}" + (f" ({y})" if y else "") for i, y in enumerate(years)],
            "year": pd.array(years, dtype="Int64"),
            "genres": [
                sorted(rng.choice(GENRES, size=int(rng.integers(0 if i % 13 == 0 else 1, 4)), replace=False).tolist())
                for i in range(n)
            ],
        }
    )


def item_rows(movies: pd.DataFrame) -> pd.DataFrame:
    """Item rows as ``online/items.parquet`` holds them, with no ratings yet."""
    return pd.DataFrame(
        {
            "movieId": movies["movieId"].to_numpy(np.int64),
            "title": movies["title"].to_numpy(),
            "genres": [list(g) for g in movies["genres"]],
            "item_rating_count": np.zeros(len(movies), np.int64),
            "item_rating_mean": np.full(len(movies), np.nan),
            "item_rating_std": np.full(len(movies), np.nan),
            "item_year": movies["year"].astype("float64").to_numpy(),
            "item_genres": [list(g)[:3] for g in movies["genres"]],
        }
    )


def random_ratings(movies: pd.DataFrame, n: int, users: int, seed: int) -> pd.DataFrame:
    """Ratings with repeats of (user, movie), shared timestamps and times out of order."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "userId": rng.integers(1, users + 1, n).astype(np.int64),
            "movieId": rng.choice(movies["movieId"].to_numpy(), n).astype(np.int64),
            "rating": (rng.integers(1, 11, n) / 2).astype(np.float32),
            "timestamp": rng.integers(1_500_000_000, 1_500_000_000 + n // 2, n).astype(np.int64),
        }
    )


def _hashed(values: list[Any], salt: int) -> np.ndarray:
    out = np.zeros(DIM, dtype=np.float64)
    for v in values:
        rng = np.random.default_rng(_stable(salt, str(v)))
        out += rng.normal(size=DIM)
    return out


def _stable(salt: int, text: str) -> int:
    return zlib.crc32(f"{salt}:{text}".encode())  # not hash(): salted per process


class FakeTowers:
    """A stand-in for ``TowerEncoder``: unit vectors that depend only on the encoded features (the
    user's genres, recent items and count; the item's genres and year), so items that share genres
    land close together, as with the real item tower on an OOV id."""

    def __init__(self) -> None:
        self.user_calls = 0

    def users(self, rows: pd.DataFrame) -> np.ndarray:
        self.user_calls += 1
        out = []
        for _, r in rows.iterrows():
            v = _hashed(list(r["user_genres"]), 1) + 0.5 * _hashed(list(r["user_recent_items"]), 2)
            v += 0.01 * float(r["user_rating_count"] or 0)
            out.append(v)
        return _unit(np.asarray(out))

    def items(self, rows: pd.DataFrame) -> np.ndarray:
        out = []
        for _, r in rows.iterrows():
            v = _hashed(list(r["genres"]), 1) + 0.1 * _hashed([r["item_year"]], 3)
            out.append(v)
        return _unit(np.asarray(out))


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, n, out=np.zeros_like(x), where=n > 0)


def item_vectors(movies: pd.DataFrame) -> np.ndarray:
    """What FakeTowers.items gives for the catalog."""
    return FakeTowers().items(item_rows(movies))


def asgi_request(app, method: str, path: str, **kwargs):  # noqa: ANN001, ANN201
    """One HTTP request to an ASGI app in this process (httpx's ASGI transport), its response."""
    import asyncio

    import httpx

    async def run():  # noqa: ANN202
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as c:
            return await c.request(method, path, **kwargs)

    return asyncio.run(run())

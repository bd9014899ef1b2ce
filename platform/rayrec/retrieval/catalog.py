"""What the non-embedding recall paths know about items: genres, titles and popularity as of a time.

:class:`ItemCatalog` is the movie list (``online/items.parquet`` of a features version: the whole
catalog, rated or not). :class:`Popularity` counts ratings per catalog item strictly before a time,
over all time or a trailing window, from the features version's ``ratings/`` — so "popular as of
time t" never sees a rating made at or after t.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from rayrec import uri

__all__ = ["ItemCatalog", "Popularity", "read_ratings", "read_parquet"]


def read_parquet(target: str, columns: list[str]) -> pd.DataFrame:
    """A Parquet file or folder as plain pandas columns. The stored pandas metadata is ignored: Arrow
    list columns written from pandas carry extension dtypes that pandas cannot always restore."""
    fs, path = uri.filesystem(target)
    return pq.read_table(path, filesystem=fs, columns=columns).to_pandas(ignore_metadata=True)


class ItemCatalog:
    """Movie ids (rows sorted by id) with their genre lists, titles and all-time rating counts."""

    def __init__(
        self,
        movie_ids: np.ndarray,
        genres: Sequence[Sequence[str]],
        *,
        titles: Sequence[str] | None = None,
        rating_count: np.ndarray | None = None,
    ) -> None:
        ids = np.asarray(movie_ids, dtype=np.int64)
        if len(genres) != len(ids):
            raise ValueError(f"{len(ids)} movie ids but {len(genres)} genre lists")
        order = np.argsort(ids, kind="stable")
        self.movie_ids = ids[order]
        if len(self.movie_ids) and (np.diff(self.movie_ids) == 0).any():
            raise ValueError("catalog movie ids must be unique")
        self.genres: list[tuple[str, ...]] = [tuple(genres[i]) for i in order.tolist()]
        self.titles: list[str] | None = [str(titles[i]) for i in order.tolist()] if titles is not None else None
        self.rating_count = (
            np.asarray(rating_count, dtype=np.float64)[order] if rating_count is not None else np.zeros(len(ids))
        )
        self.genre_names: list[str] = sorted({g for gl in self.genres for g in gl})
        col = {g: j for j, g in enumerate(self.genre_names)}
        self.genre_matrix = np.zeros((len(ids), len(self.genre_names)), dtype=np.uint8)  # (N, G) multi-hot
        for i, gl in enumerate(self.genres):
            for g in gl:
                self.genre_matrix[i, col[g]] = 1
        self._genre_rows = {g: np.flatnonzero(self.genre_matrix[:, j]) for g, j in col.items()}

    @classmethod
    def from_frame(cls, df: pd.DataFrame) -> ItemCatalog:
        """From ``online/items.parquet`` (movieId, title, genres, item_rating_count) or a movies table."""
        counts = df["item_rating_count"].to_numpy(np.float64) if "item_rating_count" in df.columns else None
        titles = df["title"].tolist() if "title" in df.columns else None
        genres = [list(g) if g is not None else [] for g in df["genres"]]
        return cls(df["movieId"].to_numpy(np.int64), genres, titles=titles, rating_count=counts)

    @classmethod
    def load(cls, features_path: str) -> ItemCatalog:
        """The catalog of a features version folder (``<artifacts>/features/<version>``)."""
        items = read_parquet(uri.join(features_path, "online", "items.parquet"), ["movieId", "title", "genres", "item_rating_count"])
        return cls.from_frame(items)

    def __len__(self) -> int:
        return len(self.movie_ids)

    def rows(self, movie_ids: np.ndarray | Sequence[int]) -> np.ndarray:
        """Catalog row of each movie id, -1 where unknown."""
        ids = np.asarray(movie_ids, dtype=np.int64).reshape(-1)
        if not len(self.movie_ids):
            return np.full(len(ids), -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.movie_ids, ids), len(self.movie_ids) - 1)
        return np.where(self.movie_ids[pos] == ids, pos, -1).astype(np.int64)

    def genre_rows(self, genre: str) -> np.ndarray:
        """Rows of the items in ``genre`` (empty for an unknown genre)."""
        return self._genre_rows.get(genre, np.zeros(0, dtype=np.int64))

    def genres_of(self, movie_id: int) -> tuple[str, ...]:
        row = int(self.rows([movie_id])[0])
        return self.genres[row] if row >= 0 else ()

    def title_of(self, movie_id: int) -> str | None:
        row = int(self.rows([movie_id])[0])
        return self.titles[row] if row >= 0 and self.titles is not None else None


def read_ratings(features_path: str) -> pd.DataFrame:
    """All ratings of a features version (``ratings/``): userId, movieId, rating, timestamp."""
    df = read_parquet(uri.join(features_path, "ratings"), ["userId", "movieId", "rating", "timestamp"])
    return pd.DataFrame(
        {
            "userId": df["userId"].to_numpy(np.int64),
            "movieId": df["movieId"].to_numpy(np.int64),
            "rating": df["rating"].to_numpy(np.float32),
            "timestamp": df["timestamp"].to_numpy(np.int64),
        }
    )


class Popularity:
    """Ratings per catalog row strictly before a time (``as_of``, Unix seconds; None = all data),
    over all time or the trailing ``window_s`` seconds. Ratings below ``min_rating`` are not counted.

    Without ``ratings`` only the all-time counts of the catalog (``item_rating_count``) are known.
    Recent answers are cached, so the popular and genre paths share one count per time.
    """

    def __init__(
        self,
        catalog: ItemCatalog,
        ratings: pd.DataFrame | None = None,
        *,
        min_rating: float = 0.0,
        cache_size: int = 8,
    ) -> None:
        self.catalog = catalog
        self.min_rating = min_rating
        self._cache: OrderedDict[tuple[int | None, int | None], np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        if ratings is None:
            self._ts: np.ndarray | None = None
            self._rows = np.zeros(0, dtype=np.int64)
            return
        r = ratings[ratings["rating"].to_numpy(np.float64) >= min_rating] if min_rating > 0 else ratings
        rows = catalog.rows(r["movieId"].to_numpy(np.int64))
        ts = r["timestamp"].to_numpy(np.int64)
        keep = rows >= 0
        order = np.argsort(ts[keep], kind="stable")
        self._ts = ts[keep][order]
        self._rows = rows[keep][order]

    @property
    def last_timestamp(self) -> int | None:
        return int(self._ts[-1]) if self._ts is not None and len(self._ts) else None

    def counts(self, as_of: int | None = None, window_s: int | None = None) -> np.ndarray:
        """(N,) float64 counts aligned with the catalog rows (read-only: do not modify)."""
        key = (as_of, window_s)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        out = self._compute(as_of, window_s)
        out.setflags(write=False)
        with self._lock:
            self._cache[key] = out
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return out

    def _compute(self, as_of: int | None, window_s: int | None) -> np.ndarray:
        n = len(self.catalog)
        if self._ts is None:
            if as_of is not None or window_s is not None:
                raise ValueError("popularity as of a time or over a window needs the ratings (Popularity(catalog, ratings))")
            return self.catalog.rating_count.astype(np.float64).copy()
        hi = len(self._ts) if as_of is None else int(np.searchsorted(self._ts, as_of, side="left"))
        lo = 0
        if window_s is not None:
            end = as_of if as_of is not None else (int(self._ts[-1]) + 1 if len(self._ts) else 0)
            lo = int(np.searchsorted(self._ts, end - window_s, side="left"))
        return np.bincount(self._rows[lo:hi], minlength=n).astype(np.float64)

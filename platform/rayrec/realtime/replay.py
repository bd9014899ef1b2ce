"""The event log back into training data: nothing users did online is lost between trainings.

:func:`replay` reads the ratings of the event log and the movies of the items log, merges them with
the source dataset (a (user, movie) rated twice keeps its latest rating; on equal timestamps the log
wins, and within the log the later record) and writes a MovieLens folder (``ratings.csv``,
``movies.csv``, and ``links.csv``/``tags.csv`` when the source has them) that the next
``pipelines.features --dataset <folder>`` run reads like any other.
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rayrec.data.movielens import NO_GENRES, MovieLens
from rayrec.realtime.updater import EVENTS_LOG, ITEMS_LOG
from rayrec.store.base import EventLog

__all__ = ["ReplayResult", "read_log", "log_ratings", "log_items", "merge_ratings", "write_movielens", "replay"]

_PAGE = 10_000


@dataclass(frozen=True)
class ReplayResult:
    out: str
    source_ratings: int
    log_ratings: int  # rating events read from the log
    replaced: int  # source or earlier log ratings a later log rating replaced
    ratings: int  # ratings written
    new_items: int
    movies: int
    last_offset: str | None  # the event log's last offset included (trim up to it once trained)
    seconds: float


def read_log(store: EventLog, name: str, after: str | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every ``(offset, record)`` of a log after ``after``, page by page."""
    while True:
        page = store.read_log(name, after=after, limit=_PAGE)
        yield from page
        if len(page) < _PAGE:
            return
        after = page[-1][0]


def log_ratings(store: EventLog, after: str | None = None) -> tuple[pd.DataFrame, str | None]:
    """The rating events of the event log as MovieLens ratings (userId, movieId, rating, timestamp) in
    log order, and the last offset read (any kind)."""
    users: list[int] = []
    movies: list[int] = []
    values: list[float] = []
    times: list[int] = []
    last = None
    for offset, r in read_log(store, EVENTS_LOG, after):
        last = offset
        if r.get("kind") != "rating" or r.get("value") is None:
            continue
        users.append(int(r["user_id"]))
        movies.append(int(r["movie_id"]))
        values.append(float(r["value"]))
        times.append(int(r["timestamp"]))
    frame = pd.DataFrame(
        {
            "userId": np.asarray(users, dtype=np.int64),
            "movieId": np.asarray(movies, dtype=np.int64),
            "rating": np.asarray(values, dtype=np.float32),
            "timestamp": np.asarray(times, dtype=np.int64),
        }
    )
    return frame, last


def log_items(store: EventLog) -> pd.DataFrame:
    """Movies added online (the items log) as catalog rows: movieId, title, year, genres."""
    rows = [r for _, r in read_log(store, ITEMS_LOG) if r.get("kind") == "item"]
    return pd.DataFrame(
        {
            "movieId": np.asarray([int(r["movie_id"]) for r in rows], dtype=np.int64),
            "title": [str(r["title"]) for r in rows],
            "year": pd.array([r.get("year") for r in rows], dtype="Int64"),
            "genres": [list(r.get("genres") or []) for r in rows],
        }
    )


def merge_ratings(source: pd.DataFrame, new: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """``source`` ratings plus ``new`` ones (in log order); one rating per (user, movie): the latest
    timestamp, ties to the later row (``new`` after ``source``). Returns the ratings sorted by
    (userId, timestamp, movieId) and how many rows were replaced."""
    cols = ["userId", "movieId", "rating", "timestamp"]
    both = pd.concat([source[cols], new[cols]], ignore_index=True)
    both["_order"] = np.arange(len(both))
    both = both.sort_values(["userId", "movieId", "timestamp", "_order"], kind="stable")
    kept = both.drop_duplicates(["userId", "movieId"], keep="last")
    out = (
        kept.sort_values(["userId", "timestamp", "movieId"], kind="stable")
        .drop(columns="_order")
        .reset_index(drop=True)
    )
    out["rating"] = out["rating"].astype(np.float32)
    return out, len(both) - len(kept)


def _movie_rows(movies: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "movieId": movies["movieId"].to_numpy(np.int64),
            "title": movies["title"].astype(str).to_numpy(),
            "genres": ["|".join(g) if len(g) else NO_GENRES for g in movies["genres"]],
        }
    )


def write_movielens(
    out: str | os.PathLike[str],
    ratings: pd.DataFrame,
    movies: pd.DataFrame,
    *,
    links: pd.DataFrame | None = None,
    tags: pd.DataFrame | None = None,
) -> None:
    """Write a MovieLens folder (files written under a temporary name, then renamed)."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)

    def write(name: str, frame: pd.DataFrame) -> None:
        tmp = folder / f".{name}.tmp"
        frame.to_csv(tmp, index=False, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
        os.replace(tmp, folder / name)

    r = ratings[["userId", "movieId", "rating", "timestamp"]].copy()
    r["rating"] = r["rating"].astype(np.float64).map(lambda v: f"{v:.1f}")
    write("ratings.csv", r)
    write("movies.csv", _movie_rows(movies))
    if links is not None:
        write("links.csv", links[["movieId", "imdbId", "tmdbId"]])
    if tags is not None:
        write("tags.csv", tags[["userId", "movieId", "tag", "timestamp"]])


def replay(
    store: EventLog, source: MovieLens, out: str | os.PathLike[str], *, after: str | None = None
) -> ReplayResult:
    """Merge the event log (ratings after ``after``) and the items log into ``source`` and write the
    result as a MovieLens folder at ``out`` with a ``replay.json`` summary."""
    start = time.perf_counter()
    events, last = log_ratings(store, after)
    added = log_items(store)
    movies = source.movies
    if len(added):
        added = added[~added["movieId"].isin(movies["movieId"])]
        movies = pd.concat([movies, added[movies.columns.intersection(added.columns)]], ignore_index=True)
    merged, replaced = merge_ratings(source.ratings, events)
    unknown = ~merged["movieId"].isin(movies["movieId"])
    if unknown.any():  # a rating of a movie neither catalog knows: keep it visible, do not drop it silently
        raise ValueError(
            f"{int(unknown.sum())} rating(s) name movies missing from the source catalog and the items log "
            f"(e.g. movie {int(merged.loc[unknown, 'movieId'].iloc[0])}): replay against the dataset the store was loaded from"
        )
    write_movielens(out, merged, movies, links=source.links, tags=source.tags)
    result = ReplayResult(
        out=str(out),
        source_ratings=len(source.ratings),
        log_ratings=len(events),
        replaced=replaced,
        ratings=len(merged),
        new_items=len(added),
        movies=len(movies),
        last_offset=last,
        seconds=time.perf_counter() - start,
    )
    (Path(out) / "replay.json").write_text(json.dumps({**asdict(result), "source": source.source}, indent=2) + "\n")
    return result

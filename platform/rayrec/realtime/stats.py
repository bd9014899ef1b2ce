"""A user's online features, updated one event at a time, equal to a batch recompute.

The features pipeline writes each user's features as of the end of the data (count, mean and std of
their ratings and of the release years they rated, top genres of their positives, last positives).
To move those features with every new rating *exactly* as a recompute over all ratings would, the
user row also carries the sufficient statistics under the key ``"realtime"`` (:class:`UserStats`):

- Welford moments (count, mean, M2) of ratings and of known release years: one rating is added or
  removed in O(1) and stays numerically stable;
- per-genre counts of positive ratings (the top 5 are ``user_genres``);
- every rated movie with its rating and time (``rated``): a movie rated again replaces its earlier
  rating (the later timestamp wins, as in the replay), and it is the user's *seen* set;
- the last 5 positives with their times, most recent first (``user_recent_items``).

A row loaded by the features pipeline has no state yet. :func:`rayrec.realtime.seed_stats` adds the exact state
computed from the ratings; without it the first event seeds an *approximate* state from the batch
features (exact rating moments; year count taken as the rating count; genre counts estimated from the
top-5 order; rated movies unknown), flagged ``exact: False``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from rayrec.features.pointintime import N_RECENT_ITEMS, N_USER_GENRES
from rayrec.store.base import offset_order

__all__ = [
    "STATE_KEY",
    "Moments",
    "UserStats",
    "RatingChange",
    "user_features",
    "stats_from_ratings",
    "iter_stats",
    "seen_items",
    "item_with_rating",
    "as_list",
]

STATE_KEY = "realtime"
N_OFFSETS = 64  # latest applied event offsets kept per user, for exactly-once application
_HALF = 2  # ratings are stored as integer half-stars (rating * 2): compact and exact
STATS_USERS = 10_000  # users whose states are built at once (iter_stats)


def as_list(value: Any) -> list[Any]:
    """A list-valued feature as a list: None → [], numpy arrays and tuples → lists (rows may come from
    the store, which gives lists, or from a DataFrame, which may hold arrays)."""
    return [] if value is None else list(value)


@dataclass
class Moments:
    """Count, mean and M2 (sum of squared deviations) by Welford's method, with removal."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def add(self, x: float) -> None:
        self.n += 1
        delta = x - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (x - self.mean)

    def remove(self, x: float) -> None:
        if self.n <= 1:
            self.n, self.mean, self.m2 = 0, 0.0, 0.0
            return
        old_mean = self.mean
        self.n -= 1
        self.mean = (old_mean * (self.n + 1) - x) / self.n
        self.m2 = max(self.m2 - (x - old_mean) * (x - self.mean), 0.0)

    def mean_or_none(self) -> float | None:
        return self.mean if self.n else None

    def std_or_none(self) -> float | None:
        """Population std (as the batch features), None with no values."""
        return math.sqrt(max(self.m2, 0.0) / self.n) if self.n else None

    @classmethod
    def of(cls, n: int | None, mean: float | None, std: float | None) -> Moments:
        """From a batch row's count, mean and population std (M2 = std² · n)."""
        if not n or mean is None:
            return cls()
        return cls(int(n), float(mean), float(std or 0.0) ** 2 * int(n))


@dataclass
class RatingChange:
    """What one rating did to a user's state: ``previous`` rating of that movie (None if new) and
    whether it took effect (False when a later rating of the same movie already stood)."""

    applied: bool
    previous: float | None


@dataclass
class UserStats:
    """Sufficient statistics of one user's features (see the module docstring)."""

    ratings: Moments = field(default_factory=Moments)
    years: Moments = field(default_factory=Moments)
    genres: dict[str, int] = field(default_factory=dict)  # positives per genre
    rated: dict[int, tuple[int, int]] = field(default_factory=dict)  # movie → (half-stars, timestamp)
    recent: list[tuple[int, int]] = field(default_factory=list)  # (movie, timestamp), most recent first
    last_timestamp: int | None = None
    clicks: int = 0
    seq: int = 0  # events applied: the embedding writer uses it to detect a newer row
    exact: bool = True
    offsets: list[str] = field(default_factory=list)  # event-log offsets of the latest events applied, oldest first

    # -- exactly once -----------------------------------------------------------------------------

    def applied(self, offset: str) -> bool:
        """Whether the event at log ``offset`` was applied to this state: among the latest
        ``N_OFFSETS`` applied, or older than all of them when that many are kept."""
        if offset in self.offsets:
            return True
        if len(self.offsets) < N_OFFSETS:
            return False
        return offset_order(offset) < min(offset_order(o) for o in self.offsets)

    def mark(self, offset: str) -> None:
        """Record that the event at ``offset`` is applied by this update."""
        if offset:
            self.offsets = [*self.offsets, offset][-N_OFFSETS:]

    # -- updates ----------------------------------------------------------------------------------

    def rate(
        self, movie_id: int, rating: float, ts: int, genres: Iterable[str], year: float | None, threshold: float
    ) -> RatingChange:
        """Apply one rating of ``movie_id`` (its full ``genres`` and release ``year`` from the item row)."""
        self.seq += 1
        self._touch(ts)
        half = int(round(rating * _HALF))
        genres = list(genres)
        old = self.rated.get(movie_id)
        if old is not None:
            if old[1] > ts:  # a later rating of this movie stands (the replay keeps the latest too)
                return RatingChange(False, old[0] / _HALF)
            self._unrate(movie_id, old[0] / _HALF, old[1], genres, year, threshold)
        self.rated[movie_id] = (half, int(ts))
        self.ratings.add(rating)
        if year is not None and not math.isnan(year):
            self.years.add(float(year))
        if rating >= threshold:
            for g in genres:
                self.genres[g] = self.genres.get(g, 0) + 1
            self._push_recent(movie_id, int(ts))
        return RatingChange(True, None if old is None else old[0] / _HALF)

    def click(self, ts: int) -> None:
        self.seq += 1
        self.clicks += 1
        self._touch(ts)

    def _touch(self, ts: int) -> None:
        self.last_timestamp = int(ts) if self.last_timestamp is None else max(self.last_timestamp, int(ts))

    def _unrate(
        self, movie_id: int, rating: float, ts: int, genres: list[str], year: float | None, threshold: float
    ) -> None:
        self.ratings.remove(rating)
        if year is not None and not math.isnan(year):
            self.years.remove(float(year))
        if rating >= threshold:
            for g in genres:
                left = self.genres.get(g, 0) - 1
                if left > 0:
                    self.genres[g] = left
                else:
                    self.genres.pop(g, None)
            self.recent = [(m, t) for m, t in self.recent if m != movie_id]
            if self.exact:  # refill from every positive; approximate states cannot
                self.rated.pop(movie_id, None)
                self.recent = self._recent_from_rated(threshold)

    def _push_recent(self, movie_id: int, ts: int) -> None:
        # Most recent first, ties by the larger movie id (the batch sorts by (timestamp, movieId)).
        entries = [(m, t) for m, t in self.recent if m != movie_id] + [(movie_id, ts)]
        entries.sort(key=lambda e: (e[1], e[0]), reverse=True)
        self.recent = entries[:N_RECENT_ITEMS]

    def _recent_from_rated(self, threshold: float) -> list[tuple[int, int]]:
        limit = threshold * _HALF
        pos = [(m, t) for m, (h, t) in self.rated.items() if h >= limit - 1e-9]
        pos.sort(key=lambda e: (e[1], e[0]), reverse=True)
        return pos[:N_RECENT_ITEMS]

    # -- features ---------------------------------------------------------------------------------

    def top_genres(self) -> list[str]:
        ranked = sorted(((-c, g) for g, c in self.genres.items() if c > 0))
        return [g for _, g in ranked[:N_USER_GENRES]]

    def features(self) -> dict[str, Any]:
        """The user_* feature columns, as the features pipeline names them."""
        return {
            "user_rating_count": self.ratings.n,
            "user_rating_mean": self.ratings.mean_or_none(),
            "user_rating_std": self.ratings.std_or_none(),
            "user_year_mean": self.years.mean_or_none(),
            "user_year_std": self.years.std_or_none(),
            "user_genres": self.top_genres(),
            "user_recent_items": [m for m, _ in self.recent],
        }

    # -- storage ----------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Compact, MessagePack-friendly form (parallel lists decode fast)."""
        items = list(self.rated)
        return {
            "v": 1,
            "exact": self.exact,
            "ratings": [self.ratings.n, self.ratings.mean, self.ratings.m2],
            "years": [self.years.n, self.years.mean, self.years.m2],
            "genres": dict(self.genres),
            "items": items,
            "half": [self.rated[m][0] for m in items],
            "ts": [self.rated[m][1] for m in items],
            "recent": [[m, t] for m, t in self.recent],
            "last_timestamp": self.last_timestamp,
            "clicks": self.clicks,
            "seq": self.seq,
            "offsets": list(self.offsets),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> UserStats:
        if d.get("v") != 1:
            raise ValueError(f"unknown realtime state version {d.get('v')!r}")
        return cls(
            ratings=Moments(int(d["ratings"][0]), float(d["ratings"][1]), float(d["ratings"][2])),
            years=Moments(int(d["years"][0]), float(d["years"][1]), float(d["years"][2])),
            genres={str(g): int(c) for g, c in d["genres"].items()},
            rated={int(m): (int(h), int(t)) for m, h, t in zip(d["items"], d["half"], d["ts"])},
            recent=[(int(m), int(t)) for m, t in d["recent"]],
            last_timestamp=d.get("last_timestamp"),
            clicks=int(d.get("clicks", 0)),
            seq=int(d.get("seq", 0)),
            exact=bool(d["exact"]),
            offsets=[str(o) for o in d.get("offsets", ())],
        )

    @classmethod
    def of_row(cls, row: Mapping[str, Any] | None) -> UserStats:
        """The state kept in a user row; for a row without one (a batch load), an approximate state
        from its features; for no row, an empty (exact) state."""
        if row is None:
            return cls()
        stored = row.get(STATE_KEY)
        if stored is not None:
            return cls.from_dict(stored)
        n = row.get("user_rating_count") or 0
        if not n:
            return cls(last_timestamp=row.get("last_timestamp"))
        last = row.get("last_timestamp")
        top = as_list(row.get("user_genres"))
        # Genre counts are unknown: estimate them from the rank, scaled by how active the user is,
        # so that a few new positives move the ranking about as much as they would for real.
        scale = max(1, round(n / (2 * N_USER_GENRES)))
        recent_ts = int(last) if last is not None else 0
        return cls(
            ratings=Moments.of(n, row.get("user_rating_mean"), row.get("user_rating_std")),
            years=Moments.of(n, row.get("user_year_mean"), row.get("user_year_std")),
            genres={g: (len(top) - i) * scale for i, g in enumerate(top)},
            recent=[
                (int(m), recent_ts - i) for i, m in enumerate(as_list(row.get("user_recent_items"))[:N_RECENT_ITEMS])
            ],
            last_timestamp=None if last is None else int(last),
            exact=False,
        )


def user_features(user_id: int, state: UserStats, base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The full user row: ``base`` (other columns kept), the features from ``state``, and the state."""
    row = dict(base or {})
    row["userId"] = int(user_id)
    row.update(state.features())
    row["last_timestamp"] = state.last_timestamp
    row[STATE_KEY] = state.to_dict()
    return row


def seen_items(row: Mapping[str, Any] | None) -> set[int]:
    """Movies the user has rated, from a user row (exact once seeded; otherwise the ones rated since
    the features load plus the recent positives)."""
    if row is None:
        return set()
    stored = row.get(STATE_KEY)
    out = {int(m) for m in as_list(row.get("user_recent_items"))}
    if stored is not None:
        out.update(int(m) for m in stored.get("items", ()))
    return out


def item_with_rating(row: Mapping[str, Any] | None, rating: float, previous: float | None) -> dict[str, Any] | None:
    """An item row with one more rating (replacing ``previous`` when the user rated it before):
    count, mean and population std move exactly as a recompute would (M2 = std² · n)."""
    if row is None:
        return None
    m = Moments.of(row.get("item_rating_count"), row.get("item_rating_mean"), row.get("item_rating_std"))
    if previous is not None and m.n:
        m.remove(previous)
    m.add(rating)
    out = dict(row)
    out["item_rating_count"] = m.n
    out["item_rating_mean"] = m.mean_or_none()
    out["item_rating_std"] = m.std_or_none()
    return out


def stats_from_ratings(ratings: pd.DataFrame, movies: pd.DataFrame, threshold: float) -> dict[int, UserStats]:
    """Exact states of every user in ``ratings`` (userId, movieId, rating, timestamp), with the
    catalog ``movies`` (movieId, year, genres). A later rating of the same movie replaces an earlier
    one. All users at once: :func:`iter_stats` gives them a share at a time."""
    out: dict[int, UserStats] = {}
    for part in iter_stats(ratings, movies, threshold):
        out.update(part)
    return out


def iter_stats(ratings: pd.DataFrame, movies: pd.DataFrame, threshold: float, users: int = STATS_USERS) -> Iterator[dict[int, UserStats]]:
    """:func:`stats_from_ratings` for ``users`` users at a time (by userId, ascending): memory for one
    share's states and rows, not every user's (at ml-25m's size, 25M ratings, the states of all users
    took 3.4 GiB). A user's state is the same whatever the share: every computation is per user."""
    if users < 1:
        raise ValueError(f"users must be at least 1, got {users}")
    uid = ratings["userId"].to_numpy()
    ids = np.unique(uid)
    cat = movies.set_index("movieId")
    years = cat["year"].to_numpy(dtype=np.float64, na_value=np.nan)
    for start in range(0, len(ids), users):
        share = ids[start : start + users]
        rows = ratings if len(share) == len(ids) else ratings[(uid >= share[0]) & (uid <= share[-1])]
        yield _stats_of(rows, cat, years, threshold)


def _stats_of(ratings: pd.DataFrame, cat: pd.DataFrame, years: np.ndarray, threshold: float) -> dict[int, UserStats]:
    """The states of the users in ``ratings``: vectorised per column; the per-user Python work is only
    building the dicts, from each user's stretch of the rows sorted by user (no group object per user)."""
    r = ratings[["userId", "movieId", "rating", "timestamp"]].copy()
    r = r.sort_values(["userId", "movieId", "timestamp"], kind="stable").drop_duplicates(
        ["userId", "movieId"], keep="last"
    )
    pos_in_cat = cat.index.get_indexer(r["movieId"].to_numpy())
    r["year"] = np.where(pos_in_cat >= 0, years[np.maximum(pos_in_cat, 0)], np.nan)
    r["rating"] = r["rating"].astype(np.float64)
    r["positive"] = r["rating"] >= threshold

    def moments(col: str) -> pd.DataFrame:
        x = r[["userId", col]].dropna()
        g = x.groupby("userId")[col]
        mean = g.transform("mean")
        out = pd.DataFrame({"n": g.size(), "mean": g.mean()})
        out["m2"] = ((x[col] - mean) ** 2).groupby(x["userId"]).sum()
        return out

    pos = r[r["positive"]]
    pg = pos[["userId", "movieId"]].assign(genre=pos["movieId"].map(cat["genres"])).explode("genre")
    pg = pg.dropna(subset=["genre"])
    genre_counts: dict[int, dict[str, int]] = {}
    for (u, g), c in pg.groupby(["userId", "genre"]).size().items():
        genre_counts.setdefault(int(u), {})[str(g)] = int(c)
    recent = pos.sort_values(["userId", "timestamp", "movieId"]).groupby("userId").tail(N_RECENT_ITEMS)
    recent_by_user: dict[int, list[tuple[int, int]]] = {}
    for u, m, t in zip(recent["userId"].tolist(), recent["movieId"].tolist(), recent["timestamp"].tolist()):
        recent_by_user.setdefault(int(u), []).insert(0, (int(m), int(t)))
    user = r["userId"].to_numpy()
    if not len(user):
        return {}
    starts = np.flatnonzero(np.r_[True, user[1:] != user[:-1]])  # r is sorted by user
    ends = np.r_[starts[1:], len(user)]
    users = user[starts]
    rm, ym = moments("rating").reindex(users), moments("year").reindex(users)  # ym: NaN without a known year
    r_n, r_mean, r_m2 = rm["n"].to_numpy(), rm["mean"].to_numpy(), rm["m2"].to_numpy()
    y_n, y_mean, y_m2 = ym["n"].to_numpy(), ym["mean"].to_numpy(), ym["m2"].to_numpy()
    ts = r["timestamp"].to_numpy()
    last_ts = np.maximum.reduceat(ts, starts).tolist()
    movie, half, ts_list = r["movieId"].tolist(), np.rint(r["rating"].to_numpy() * _HALF).astype(np.int64).tolist(), ts.tolist()
    stats: dict[int, UserStats] = {}
    for i, (u, a, b) in enumerate(zip(users.tolist(), starts.tolist(), ends.tolist())):
        stats[int(u)] = UserStats(
            ratings=Moments(int(r_n[i]), float(r_mean[i]), float(r_m2[i])),
            years=Moments() if y_n[i] != y_n[i] else Moments(int(y_n[i]), float(y_mean[i]), float(y_m2[i])),
            genres=genre_counts.get(int(u), {}),
            rated=dict(zip(movie[a:b], zip(half[a:b], ts_list[a:b]))),
            recent=recent_by_user.get(int(u), []),
            last_timestamp=int(last_ts[i]),
            exact=True,
        )
    return stats

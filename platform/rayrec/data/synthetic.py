"""Synthetic MovieLens-like data: the four MovieLens CSV files, at any scale, from a seed.

Tests, benchmarks and offline machines need MovieLens-shaped data without a download, from a few
thousand ratings up to ml-25m size. The files use MovieLens's own headers and formats, so
:func:`rayrec.data.read_movielens` reads them like the real thing.

The data carry structure a recommender can learn:

- 19 genres, each with a latent direction. An item's factors are the mean of its genres' directions
  plus noise, so items sharing genres have correlated factors.
- Each user has three favourite genres. Their factors lean the same way, and about half of their
  picks come from those genres (a signal for implicit-feedback models as well as for ratings).
- rating = global mean + user bias + item bias + user·item + noise, clipped to 0.5..5.0 and rounded
  to half stars; the top is compressed so that, as in MovieLens, 4.0 is the commonest rating. Two
  users in five use whole stars only, so 4.0 and 3.0 outnumber 4.5 and 3.5 (MovieLens added half
  stars later).
- Item popularity is Zipf-like; user activity is log-normal (a heavy tail, at least 5 ratings each);
  each user rates within an active window and their timestamps increase through it.

Users are generated in fixed blocks, each from its own random stream, and written in chunks of about
``chunk_ratings`` ratings, so memory stays bounded at any size and the files do not depend on the
chunk size.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, fields
from numbers import Integral, Real
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from rayrec.data.movielens import NO_GENRES
from rayrec.data.synthetic_text import _TagVocab, _titles

__all__ = ["SyntheticConfig", "generate", "GENRES", "Truth", "truth"]

FILES = ("ratings.csv", "movies.csv", "links.csv", "tags.csv")
MARKER = "SYNTHETIC.json"
# Bump when the generated data change for the same config, so cached datasets are rebuilt.
_FORMAT_VERSION = 1
_MIN_RATINGS_PER_USER = 5
# Each user rates at most this share of the catalogue: distinct-item sampling stays fast.
_MAX_USER_SHARE = 0.5
_USERS_PER_BLOCK = 1024
_N_FAVOURITES = 3
_FAVOURITE_SHARE = 0.5  # share of a user's picks drawn from their favourite genres
_FAVOURITE_TILT = 0.5  # favourite genres are drawn with weight (genre size) ** tilt
_UNIFORM_SHARE = 0.1  # popularity mixes Zipf with a little uniform mass so tail items get picked
_ZIPF_EXPONENT = 1.0
_ACTIVITY_SIGMA = 1.2  # log-normal user activity: mean/median ≈ 2, as in MovieLens
_MAX_SAMPLING_ROUNDS = 40
# Users rating more than this share of the catalogue sample without replacement (exact, costs
# O(n_items) each); the rest draw with replacement and redraw duplicates (cheap when few collide).
_HEAVY_SHARE = 0.02
_HEAVY_BATCH = 64
# Rating model, in stars.
_GLOBAL_MEAN = 2.9
_USER_BIAS_SD = 0.45
_ITEM_BIAS_SD = 0.3
_POPULARITY_BIAS = 0.12  # popular items are rated a little higher
_INTERACTION_SCALE = 0.45
_NOISE_SD = 0.9
_GENRE_SHARE = 0.6  # share of an item's or user's factor variance that comes from genres
_SOFT_TOP, _TOP_SLOPE = 4.0, 0.6
_HALF_STAR_USERS = 0.6
_RATING_TEXT = tuple(f"{k / 2:.1f}" for k in range(1, 11))  # "0.5" … "5.0"
_GENERIC_TAG_SHARE = 0.35
_NO_GENRE_SHARE = 0.003
_NO_TMDB_SHARE = 0.002
_FIRST_YEAR, _LAST_YEAR = 1930, 2018

# The 19 MovieLens genres and how many ml-latest-small movies carry each (sampling weights).
_GENRE_COUNTS = {
    "Action": 1828, "Adventure": 1263, "Animation": 611, "Children": 664, "Comedy": 3756, "Crime": 1199,
    "Documentary": 440, "Drama": 4361, "Fantasy": 779, "Film-Noir": 87, "Horror": 978, "IMAX": 158,
    "Musical": 334, "Mystery": 573, "Romance": 1596, "Sci-Fi": 980, "Thriller": 1894, "War": 382, "Western": 167,
}  # fmt: skip
GENRES: tuple[str, ...] = tuple(_GENRE_COUNTS)
_GENRE_WEIGHTS = np.array(list(_GENRE_COUNTS.values()), dtype=np.float64)
@dataclass(frozen=True)
class SyntheticConfig:
    """Size, seed and time span of a synthetic dataset; the defaults make a laptop-sized one.

    ``chunk_ratings`` bounds memory (ratings generated and written per chunk) and does not change the
    files. ``start_ts``/``end_ts`` bound every timestamp (Unix seconds, ``start_ts`` ≤ t < ``end_ts``).
    """

    n_users: int = 2_000
    n_items: int = 3_000
    n_ratings: int = 200_000
    n_factors: int = 16
    seed: int = 0
    chunk_ratings: int = 1_000_000  # ratings generated and written per chunk (bounds memory)
    start_ts: int = 1_104_537_600  # 2005-01-01 UTC
    end_ts: int = 1_546_300_800  # 2019-01-01 UTC
    tags_per_1k_ratings: float = 5.0

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "tags_per_1k_ratings":
                ok = isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v) and 0 <= v <= 1000
                want = "a number in 0..1000"
            elif f.name in ("seed", "start_ts", "end_ts"):
                ok, want = isinstance(v, Integral) and not isinstance(v, bool) and v >= 0, "an int >= 0"
            else:
                ok, want = isinstance(v, Integral) and not isinstance(v, bool) and v > 0, "a positive int"
            if not ok:
                raise ValueError(f"SyntheticConfig.{f.name} must be {want}, got {v!r}")
            # Plain Python numbers, so numpy scalars compare equal and serialise to SYNTHETIC.json.
            object.__setattr__(self, f.name, float(v) if f.name == "tags_per_1k_ratings" else int(v))
        if self.n_items < 2 * _MIN_RATINGS_PER_USER:
            raise ValueError(
                f"SyntheticConfig.n_items must be at least {2 * _MIN_RATINGS_PER_USER}: every user rates at "
                f"least {_MIN_RATINGS_PER_USER} distinct items and at most half the catalogue (got {self.n_items})"
            )
        low = _MIN_RATINGS_PER_USER * self.n_users
        if self.n_ratings < low:
            raise ValueError(
                f"SyntheticConfig.n_ratings={self.n_ratings} is below {_MIN_RATINGS_PER_USER} per user "
                f"({low} for {self.n_users} users); raise n_ratings or lower n_users"
            )
        high = self.n_users * _max_per_user(self.n_items)
        if self.n_ratings > high:
            raise ValueError(
                f"SyntheticConfig.n_ratings={self.n_ratings} is more than {self.n_users} users × "
                f"{self.n_items} items allows (at most {high}: each user rates at most half the items); "
                "lower n_ratings or raise n_users/n_items"
            )
        if self.start_ts >= self.end_ts:
            raise ValueError(f"SyntheticConfig needs start_ts < end_ts, got {self.start_ts} >= {self.end_ts}")


def _max_per_user(n_items: int) -> int:
    return max(_MIN_RATINGS_PER_USER, int(n_items * _MAX_USER_SHARE))


def _rng(config: SyntheticConfig, stream: int, block: int = 0) -> np.random.Generator:
    """An independent random stream per purpose (and per user block), all derived from the seed."""
    return np.random.default_rng([config.seed, stream, block])


# --------------------------------------------------------------------------------------------- items


@dataclass(frozen=True)
class _Items:
    ids: np.ndarray  # (I,) int64 movieId, increasing, 1-based, with gaps
    genres: np.ndarray  # (I, G) bool
    factors: np.ndarray  # (I, F) float32
    bias: np.ndarray  # (I,) float32
    weight: np.ndarray  # (I,) float64 popularity, sums to 1
    year: np.ndarray  # (I,) int64


def _genre_order(rng: np.random.Generator, n: int, weights: np.ndarray) -> np.ndarray:
    """(n, G) genre indices per row in a random order by weight (Gumbel top-k): every prefix is a
    weighted sample without replacement. Zero-weight genres come last."""
    keys = np.log(np.maximum(weights, 1e-300)) + rng.gumbel(size=(n, len(weights)))  # (n, G)
    return np.argsort(-keys, axis=1, kind="stable")


def _genre_directions(config: SyntheticConfig) -> np.ndarray:
    return _rng(config, 1).standard_normal((len(GENRES), config.n_factors))  # (G, F)


def _mix(genre_part: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Factors with _GENRE_SHARE of their variance from genres; scaled so that the dot product of two
    unrelated vectors has unit variance."""
    f = genre_part.shape[1]
    out = math.sqrt(_GENRE_SHARE) * genre_part + math.sqrt(1 - _GENRE_SHARE) * noise
    return (out / f**0.25).astype(np.float32)


def _make_items(config: SyntheticConfig) -> _Items:
    rng = _rng(config, 2)
    n = config.n_items
    steps = rng.geometric(0.7, n)  # gaps between movieIds, as in MovieLens
    ids = np.cumsum(steps) - steps[0] + 1
    k = 1 + rng.binomial(3, 0.4, n)  # 1..4 genres, mean ≈ 2.2
    genres = np.zeros((n, len(GENRES)), dtype=bool)
    genres[np.arange(n)[:, None], _genre_order(rng, n, _GENRE_WEIGHTS)] = np.arange(len(GENRES)) < k[:, None]
    genres[rng.random(n) < _NO_GENRE_SHARE] = False
    n_genres = genres.sum(axis=1, keepdims=True)
    genre_part = (genres @ _genre_directions(config)) / np.sqrt(np.maximum(n_genres, 1))  # (I, F)
    factors = _mix(genre_part, rng.standard_normal((n, config.n_factors)))
    rank = rng.permutation(n) + 1
    zipf = rank.astype(np.float64) ** -_ZIPF_EXPONENT
    weight = (1 - _UNIFORM_SHARE) * zipf / zipf.sum() + _UNIFORM_SHARE / n
    log_pop = np.log(zipf)
    bias = _ITEM_BIAS_SD * rng.standard_normal(n) + _POPULARITY_BIAS * (log_pop - log_pop.mean()) / log_pop.std()
    # Release years 1930..2018, skewed recent (mode in the 2000s, like the MovieLens catalogue).
    year = _LAST_YEAR - np.floor((_LAST_YEAR - _FIRST_YEAR + 1) * rng.beta(1.3, 3.0, n)).astype(np.int64)
    return _Items(ids, genres, factors, bias.astype(np.float32), weight, np.clip(year, _FIRST_YEAR, _LAST_YEAR))


class _Sampler:
    """Picks items for users: a share from the whole catalogue by popularity, the rest from one of the
    user's favourite genres by popularity.

    Light users draw with replacement and drop duplicates: one ``searchsorted`` over all the per-genre
    CDFs laid end to end (segment g spans (g, g+1], the last segment is the catalogue). Heavy users,
    who would lose most draws to duplicates, sample without replacement exactly (exponential races
    over their own mixture of the per-genre distributions)."""

    def __init__(self, items: _Items) -> None:
        n_items, n_genres = items.genres.shape
        cdfs, members, last = [], [], []
        columns = np.zeros((n_items, n_genres + 1), dtype=np.float32)  # (I, G+1) per-segment probabilities
        for g in range(n_genres + 1):
            idx = np.flatnonzero(items.genres[:, g]) if g < n_genres else np.arange(n_items)
            if len(idx):
                c = np.cumsum(items.weight[idx])
                cdfs.append(g + c / c[-1])
                members.append(idx)
                columns[idx, g] = items.weight[idx] / c[-1]
            last.append(sum(len(m) for m in members) - 1)
        self.cdf = np.concatenate(cdfs)
        self.items = np.concatenate(members)
        self.last = np.asarray(last)  # last position of each segment
        self.columns = columns
        self.sizes = items.genres.sum(axis=0)  # (G,) items per genre; favourites come from non-empty ones
        self.catalogue = n_genres  # segment index of the whole catalogue

    def draw(self, rng: np.random.Generator, user: np.ndarray, favourites: np.ndarray) -> np.ndarray:
        """One item per entry of ``user`` (indices into ``favourites``), with replacement."""
        pick = favourites[user, rng.integers(0, favourites.shape[1], len(user))]
        segment = np.where(rng.random(len(user)) < _FAVOURITE_SHARE, pick, self.catalogue)
        u = np.minimum(rng.random(len(user)), 1 - 1e-9)
        pos = np.searchsorted(self.cdf, segment + u, side="right")
        return self.items[np.minimum(pos, self.last[segment])]

    def distinct(self, rng: np.random.Generator, counts: np.ndarray, favourites: np.ndarray) -> list[np.ndarray]:
        """``counts[j]`` distinct items for each user j, without replacement."""
        out: list[np.ndarray] = []
        for lo in range(0, len(counts), _HEAVY_BATCH):
            fav = favourites[lo : lo + _HEAVY_BATCH]  # (h, 3)
            mix = np.zeros((len(fav), self.columns.shape[1]))  # (h, G+1)
            mix[:, self.catalogue] = 1 - _FAVOURITE_SHARE
            np.add.at(mix, (np.arange(len(fav))[:, None], fav), _FAVOURITE_SHARE / fav.shape[1])
            # Exponential races: the k largest w/E (E ~ Exp(1)) are a weighted sample without replacement.
            race = rng.standard_exponential(size=(len(fav), self.columns.shape[0]), dtype=np.float32)  # (h, I)
            np.maximum(race, np.finfo(np.float32).tiny, out=race)
            keys = (mix.astype(np.float32) @ self.columns.T) / race  # (h, I)
            for j, k in enumerate(counts[lo : lo + _HEAVY_BATCH].tolist()):
                out.append(np.argpartition(keys[j], len(keys[j]) - k)[-k:])
        return out


# --------------------------------------------------------------------------------------------- users


def _user_counts(config: SyntheticConfig) -> np.ndarray:
    """Ratings per user: ≥ 5 each, log-normal above that, capped at half the catalogue, summing to
    exactly ``n_ratings``."""
    rng = _rng(config, 3)
    n, floor_, cap = config.n_users, _MIN_RATINGS_PER_USER, _max_per_user(config.n_items)
    raw = rng.lognormal(0.0, _ACTIVITY_SIGMA, n)
    target = config.n_ratings - floor_ * n
    extra = np.zeros(n)
    free = np.ones(n, dtype=bool)
    while free.any():  # scale the free users to the remaining total; those over the cap stop there
        remaining = target - extra[~free].sum()
        e = raw * (remaining / raw[free].sum())
        over = free & (e > cap - floor_)
        if not over.any():
            extra[free] = e[free]
            break
        extra[over] = cap - floor_
        free &= ~over
    counts = floor_ + np.floor(extra).astype(np.int64)
    short = config.n_ratings - int(counts.sum())
    frac = np.where(counts < cap, extra - np.floor(extra), -1.0)
    counts[np.argsort(-frac, kind="stable")[:short]] += 1
    return counts


@dataclass(frozen=True)
class _Users:
    counts: np.ndarray  # (U,) int64 ratings per user
    favourites: np.ndarray  # (U, 3) int64 genre indices
    factors: np.ndarray  # (U, F) float32
    bias: np.ndarray  # (U,) float32
    half_stars: np.ndarray  # (U,) bool: uses half stars
    start: np.ndarray  # (U,) int64 first timestamp
    span: np.ndarray  # (U,) int64 seconds the user stays active


def _make_users(config: SyntheticConfig, sizes: np.ndarray) -> _Users:
    rng = _rng(config, 4)
    n, f = config.n_users, config.n_factors
    counts = _user_counts(config)
    # Favourites lean to common genres, less than the catalogue does, so niche tastes exist too.
    taste = np.where(sizes > 0, _GENRE_WEIGHTS**_FAVOURITE_TILT, 0.0)
    favourites = _genre_order(rng, n, taste)[:, :_N_FAVOURITES]
    genre_part = _genre_directions(config)[favourites].sum(axis=1) / math.sqrt(_N_FAVOURITES)  # (U, F)
    factors = _mix(genre_part, rng.standard_normal((n, f)))
    bias = (_USER_BIAS_SD * rng.standard_normal(n)).astype(np.float32)
    half_stars = rng.random(n) < _HALF_STAR_USERS
    # Active windows: users join throughout the span, a bit more later on; a third rate in one sitting,
    # the rest over weeks to years, the busiest for longest.
    total = config.end_ts - config.start_ts
    start = config.start_ts + np.floor(rng.beta(1.4, 1.1, n) * total).astype(np.int64)
    session = rng.random(n) < 0.35
    days = np.exp(rng.normal(math.log(60), 1.5, n)) * np.sqrt(counts / np.median(counts))
    hours = np.exp(rng.normal(0.0, 1.0, n))
    span = np.where(session, hours * 3600, days * 86400)
    span = np.minimum(span, config.end_ts - 1 - start).astype(np.int64)
    return _Users(counts, favourites, factors, bias, half_stars, start, np.maximum(span, 0))


# ------------------------------------------------------------------------------------------- ratings


@dataclass
class _Chunk:
    user: np.ndarray  # (N,) int64 userId
    movie: np.ndarray  # (N,) int64 movieId
    code: np.ndarray  # (N,) int8 rating index into _RATING_TEXT
    ts: np.ndarray  # (N,) int64
    tags: list[tuple[int, int, str, int]]


def _sample_pairs(
    rng: np.random.Generator, counts: np.ndarray, favourites: np.ndarray, sampler: _Sampler, n_items: int
) -> np.ndarray:
    """Distinct (user, item) keys ``user * n_items + item``, ``counts[u]`` for each user u."""
    heavy = np.flatnonzero(counts > n_items * _HEAVY_SHARE)
    light = counts.copy()
    light[heavy] = 0
    exact = sampler.distinct(rng, counts[heavy], favourites[heavy])
    parts = [_sample_light(rng, light, favourites, sampler, n_items)]
    parts += [u * n_items + items for u, items in zip(heavy.tolist(), exact)]
    return np.concatenate(parts)


def _sample_light(
    rng: np.random.Generator, counts: np.ndarray, favourites: np.ndarray, sampler: _Sampler, n_items: int
) -> np.ndarray:
    """Draw with replacement, drop duplicates, redraw what is missing; users leave the working set as
    soon as they have their count. May leave a user short after the last round (rare)."""
    done: list[np.ndarray] = []
    keys = np.empty(0, dtype=np.int64)  # sorted keys of users still short
    finished = counts == 0
    have = np.zeros(len(counts), dtype=np.int64)
    for round_ in range(_MAX_SAMPLING_ROUNDS):
        missing = np.where(finished, 0, counts - have)
        if not missing.any():
            break
        # Later rounds overdraw: the users still short are those losing many draws to duplicates.
        n_draw = missing if round_ == 0 else np.where(finished, 0, 2 * missing + 1)
        user = np.repeat(np.arange(len(counts)), n_draw)
        keys = np.sort(np.concatenate([keys, user * n_items + sampler.draw(rng, user, favourites)]))
        keys = keys[np.concatenate([[True], keys[1:] != keys[:-1]])]
        user_of = keys // n_items
        have = np.bincount(user_of, minlength=len(counts))
        if (have > counts).any():  # drop a random surplus so each user keeps exactly counts[u]
            order = np.lexsort((rng.random(len(keys)), user_of))
            starts = np.concatenate([[0], np.cumsum(have)[:-1]])
            rank = np.arange(len(keys)) - starts[user_of[order]]
            keys = np.sort(keys[order[rank < counts[user_of[order]]]])
            user_of = keys // n_items
            have = np.minimum(have, counts)
        now = ~finished & (have >= counts)
        leaving = now[user_of]
        done.append(keys[leaving])
        keys = keys[~leaving]
        finished |= now
    done.append(keys)
    return np.concatenate(done)


def _make_block(
    config: SyntheticConfig, block: int, users: _Users, items: _Items, sampler: _Sampler, tag_vocab: _TagVocab
) -> _Chunk:
    """Ratings (and tags) of users ``block * _USERS_PER_BLOCK`` onward, from the block's own stream."""
    rng = _rng(config, 5, block)
    lo = block * _USERS_PER_BLOCK
    hi = min(lo + _USERS_PER_BLOCK, config.n_users)
    keys = _sample_pairs(rng, users.counts[lo:hi], users.favourites[lo:hi], sampler, config.n_items)
    u = lo + keys // config.n_items  # (N,) user index
    i = keys % config.n_items  # (N,) item index
    # Timestamps spread through each user's window; file order is user, then time.
    ts = users.start[u] + np.floor(rng.random(len(u)) * (users.span[u] + 1)).astype(np.int64)
    order = np.lexsort((ts, u))
    u, i, ts = u[order], i[order], ts[order]
    affinity = np.einsum("nf,nf->n", users.factors[u], items.factors[i])  # (N,)
    noise = _NOISE_SD * rng.standard_normal(len(u))
    x = _GLOBAL_MEAN + users.bias[u] + items.bias[i] + _INTERACTION_SCALE * affinity + noise
    # Compress the top: MovieLens ratings are skewed left, with fewer 5s than a symmetric model gives.
    x = np.where(x > _SOFT_TOP, _SOFT_TOP + _TOP_SLOPE * (x - _SOFT_TOP), x)
    half = np.clip(np.rint(2 * x), 1, 10)
    whole = 2 * np.clip(np.rint(x), 1, 5)
    code = (np.where(users.half_stars[u], half, whole) - 1).astype(np.int8)
    tags = tag_vocab.draw(rng, u, i, np.minimum(ts + rng.integers(0, 600, len(u)), config.end_ts - 1), items)
    return _Chunk(u + 1, items.ids[i], code, ts, tags)


_RATINGS_SCHEMA = pa.schema(
    [("userId", pa.int64()), ("movieId", pa.int64()), ("rating", pa.dictionary(pa.int8(), pa.string())),
     ("timestamp", pa.int64())]
)  # fmt: skip


def _ratings_table(chunks: list[_Chunk]) -> pa.Table:
    code = pa.array(np.concatenate([c.code for c in chunks]), pa.int8())
    columns = [np.concatenate([getattr(c, name) for c in chunks]) for name in ("user", "movie", "ts")]
    rating = pa.DictionaryArray.from_arrays(code, pa.array(_RATING_TEXT))
    return pa.Table.from_arrays([columns[0], columns[1], rating, columns[2]], schema=_RATINGS_SCHEMA)


def _write_movies(path: Path, config: SyntheticConfig, items: _Items) -> None:
    titles = _titles(_rng(config, 6), len(items.ids))
    # Genre strings per distinct genre set (MovieLens lists them alphabetically, as GENRES is).
    sets, which = np.unique(items.genres, axis=0, return_inverse=True)
    names = ["|".join(g for g, on in zip(GENRES, row) if on) or NO_GENRES for row in sets.tolist()]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["movieId", "title", "genres"])
        w.writerows(
            (movie_id, f"{t} ({year})", names[k])
            for movie_id, t, year, k in zip(items.ids.tolist(), titles, items.year.tolist(), which.ravel().tolist())
        )


def _write_links(path: Path, config: SyntheticConfig, items: _Items) -> None:
    rng = _rng(config, 7)
    n = len(items.ids)
    # IMDb ids grow with release year; TMDb ids are distinct but unordered; a few TMDb ids are missing.
    by_year = np.lexsort((rng.random(n), items.year))
    imdb = np.empty(n, dtype=np.int64)
    imdb[by_year] = 10_000 + np.cumsum(rng.integers(1, 60, n))
    tmdb = rng.permutation(2 + np.cumsum(rng.integers(1, 8, n)))
    missing = rng.random(n) < _NO_TMDB_SHARE
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["movieId", "imdbId", "tmdbId"])
        for movie_id, imdb_id, tmdb_id, gone in zip(items.ids.tolist(), imdb.tolist(), tmdb.tolist(), missing):
            w.writerow([movie_id, f"{imdb_id:07d}", "" if gone else tmdb_id])


def _comparable(config: SyntheticConfig) -> dict[str, object]:
    """The config fields that determine the files (the chunk size only bounds memory)."""
    d = asdict(config)
    d.pop("chunk_ratings")
    return d


def _is_cached(out: Path, config: SyntheticConfig) -> bool:
    try:
        marker = json.loads((out / MARKER).read_text(encoding="utf-8"))
        return (
            marker.get("format_version") == _FORMAT_VERSION
            and marker.get("config") == _comparable(config)
            and all((out / name).stat().st_size == size for name, size in marker["bytes"].items())
            and set(marker["bytes"]) == set(FILES)
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def generate(out_dir: str | Path, config: SyntheticConfig = SyntheticConfig(), *, progress: bool = False) -> Path:
    """Write ``ratings.csv``, ``movies.csv``, ``links.csv`` and ``tags.csv`` for ``config`` into
    ``out_dir`` and return it.

    The same config gives byte-identical files. If ``out_dir`` already holds a complete dataset for
    this config (its ``SYNTHETIC.json`` matches and every file is whole) nothing is written. Files are
    written under temporary names and renamed at the end; ``SYNTHETIC.json`` is written last, so an
    interrupted run never leaves a dataset that passes for complete.

    Every user gets at least 5 ratings, and the per-user counts are drawn to sum to ``n_ratings``. The
    total written can fall slightly short only if a user's redraws of duplicate items run out (not seen
    at any size tested, up to ml-25m scale; the tests hold it within 1%). ``SYNTHETIC.json`` records
    the count written.
    """
    out = Path(out_dir)
    if _is_cached(out, config):
        return out
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).unlink(missing_ok=True)
    started = time.perf_counter()
    partial = {name: out / f".{name}.{os.getpid()}.partial" for name in FILES}
    try:
        counts = _write_all(partial, config, progress, started)
        for name in FILES:
            os.replace(partial[name], out / name)
    finally:
        for p in partial.values():
            p.unlink(missing_ok=True)
    marker = {
        "format_version": _FORMAT_VERSION,
        "config": _comparable(config),
        "ratings": counts[0],
        "tags": counts[1],
        "bytes": {name: (out / name).stat().st_size for name in FILES},
    }
    tmp = out / f".{MARKER}.{os.getpid()}.partial"
    tmp.write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, out / MARKER)
    if progress:
        _say(f"synthetic: wrote {out} ({counts[0]:,} ratings) in {time.perf_counter() - started:.1f}s")
    return out


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _write_all(paths: dict[str, Path], config: SyntheticConfig, progress: bool, started: float) -> tuple[int, int]:
    """Generate everything into ``paths``; returns (ratings, tags) written."""
    items = _make_items(config)
    sampler = _Sampler(items)
    users = _make_users(config, sampler.sizes)
    _write_movies(paths["movies.csv"], config, items)
    _write_links(paths["links.csv"], config, items)
    tag_vocab = _TagVocab(config.tags_per_1k_ratings)
    n_ratings = n_tags = 0
    n_blocks = -(-config.n_users // _USERS_PER_BLOCK)
    options = pacsv.WriteOptions(include_header=False, quoting_style="none")
    with (
        pa.OSFile(str(paths["ratings.csv"]), "wb") as ratings_file,
        open(paths["tags.csv"], "w", newline="", encoding="utf-8") as tags_file,
    ):
        ratings_file.write(b"userId,movieId,rating,timestamp\n")
        tags = csv.writer(tags_file, lineterminator="\n")
        tags.writerow(["userId", "movieId", "tag", "timestamp"])
        writer = pacsv.CSVWriter(ratings_file, _RATINGS_SCHEMA, write_options=options)
        pending: list[_Chunk] = []
        for block in range(n_blocks):
            pending.append(_make_block(config, block, users, items, sampler, tag_vocab))
            if sum(len(c.user) for c in pending) < config.chunk_ratings and block < n_blocks - 1:
                continue
            writer.write_table(_ratings_table(pending))
            for c in pending:
                tags.writerows(c.tags)
                n_ratings += len(c.user)
                n_tags += len(c.tags)
            pending = []
            if progress:
                rate = n_ratings / max(time.perf_counter() - started, 1e-9)
                share = n_ratings / config.n_ratings
                _say(f"synthetic: {n_ratings:,}/{config.n_ratings:,} ratings ({share:.0%}), {rate:,.0f} ratings/s")
        writer.close()
    return n_ratings, n_tags


# the hidden preferences, for simulators (defined beside the generator's internals they rebuild)
from rayrec.data.synthetic_truth import Truth, truth  # noqa: E402

"""Online store benchmark: bulk load rate and read latency of SQLite and Redis, against the floor of a
raw redis-py ``MGET`` of the same keys holding pre-serialised rows.

Rows are shaped like the features pipeline's latest user and item features, computed from
ml-latest-small (``rayrec.data.read_movielens``) or, with ``--synthetic`` or when the data is absent,
generated with the same columns and sizes.

    .venv/bin/python tests/perf/bench_store.py [--iterations 3000] [--redis redis://127.0.0.1:6379/9]
                                               [--users 162000 --items 62000] [--ray]

``--users/--items`` give synthetic rows at that scale (ml-25m's is 162k users and 62k items). ``--ray``
also times the main job's path: ``load_table`` of the same rows from Parquet, written by parallel Ray
Data tasks on a local Ray, against the same call without Ray.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from rayrec.config import shared_movielens_dir
from rayrec.store import OnlineStore, StoreUnavailable, open_store
from rayrec.store.codec import pack, unpack

GENRES = ["Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
          "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western"]  # fmt: skip
RECENT = 50  # items in user_recent_items


def movielens_rows() -> tuple[list[tuple[int, dict]], list[tuple[int, dict]]] | None:
    """(item rows, user rows) from ml-latest-small; None when the copy is absent."""
    folder = shared_movielens_dir()
    if folder is None:
        return None
    from rayrec.data import read_movielens

    ml = read_movielens(folder)
    ratings, movies = ml.ratings, ml.movies.set_index("movieId")
    by_item = ratings.groupby("movieId")["rating"].agg(["count", "mean", "std"])
    items = []
    for movie_id, m in movies.iterrows():
        count, mean, std = by_item.loc[movie_id] if movie_id in by_item.index else (0, np.nan, np.nan)
        items.append((int(movie_id), {
            "movieId": int(movie_id), "title": m["title"],
            "item_year": None if pd.isna(m["year"]) else int(m["year"]),
            "genres": list(m["genres"]), "item_genres": list(m["genres"])[:3],
            "item_rating_count": int(count), "item_rating_mean": float(mean), "item_rating_std": float(std),
        }))  # fmt: skip
    years = movies["year"].astype("float64")
    users = []
    for user_id, r in ratings.sort_values("timestamp").groupby("userId"):
        liked = r.loc[r["rating"] >= 3.5, "movieId"]
        genre_counts = pd.Series([g for mid in liked for g in movies.at[mid, "genres"]]).value_counts()
        ys = years.reindex(r["movieId"]).dropna()
        users.append((int(user_id), {
            "userId": int(user_id), "user_rating_count": len(r),
            "user_rating_mean": float(r["rating"].mean()), "user_rating_std": float(r["rating"].std()),
            "user_year_mean": float(ys.mean()), "user_year_std": float(ys.std()),
            "user_genres": genre_counts.index[:5].tolist(),
            "user_recent_items": r["movieId"].iloc[::-1][:RECENT].astype(int).tolist(),
            "last_timestamp": int(r["timestamp"].iloc[-1]),
        }))  # fmt: skip
    return items, users


def synthetic_rows(n_items: int = 9742, n_users: int = 610, seed: int = 0) -> tuple[list, list]:
    """Rows with the columns and sizes of ml-latest-small's features, random values."""
    rng = np.random.default_rng(seed)
    items = []
    for i in range(1, n_items + 1):
        genres = rng.choice(GENRES, size=int(rng.integers(1, 5)), replace=False).tolist()
        year = int(rng.integers(1920, 2018))
        items.append((i, {
            "movieId": i, "title": f"Synthetic Movie {i} ({year})", "item_year": year, "genres": genres,
            "item_genres": genres[:3], "item_rating_count": int(rng.integers(1, 330)),
            "item_rating_mean": float(rng.uniform(0.5, 5)), "item_rating_std": float(rng.uniform(0, 2)),
        }))  # fmt: skip
    users = []
    for u in range(1, n_users + 1):
        users.append((u, {
            "userId": u, "user_rating_count": int(rng.integers(20, 2700)),
            "user_rating_mean": float(rng.uniform(1, 5)), "user_rating_std": float(rng.uniform(0, 2)),
            "user_year_mean": float(rng.uniform(1970, 2015)), "user_year_std": float(rng.uniform(0, 20)),
            "user_genres": rng.choice(GENRES, size=5, replace=False).tolist(),
            "user_recent_items": rng.integers(1, n_items + 1, size=RECENT).tolist(),
            "last_timestamp": int(rng.integers(828_000_000, 1_538_000_000)),
        }))  # fmt: skip
    return items, users


def percentiles(fn: Callable[[Any], Any], args: Sequence[Any], warmup: int = 100) -> tuple[float, float]:
    """p50 and p99 latency of ``fn(arg)`` over ``args``, in milliseconds."""
    for a in args[:warmup]:
        fn(a)
    times = np.empty(len(args))
    for k, a in enumerate(args):
        t = time.perf_counter_ns()
        fn(a)
        times[k] = time.perf_counter_ns() - t
    p50, p99 = np.percentile(times, [50, 99]) / 1e6
    return float(p50), float(p99)


def load_rate(store: OnlineStore, entity: str, rows: list, repeats: int = 3) -> float:
    """Best rows/s of ``repeats`` full versioned loads (write, swap, delete the old version)."""
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        store.load(entity, rows)
        best = max(best, len(rows) / (time.perf_counter() - t))
    return best


def bench_backend(url: str, items: list, users: list, batches: list, user_ids: list) -> dict[str, Any]:
    store = open_store(url)
    store.ping()
    out = {"load_item": load_rate(store, "item", items), "load_user": load_rate(store, "user", users)}
    assert all(r is not None for r in store.get("item", batches[0]))
    out["get500"] = percentiles(lambda ids: store.get("item", ids), batches)
    out["get1"] = percentiles(lambda uid: store.get("user", [uid]), user_ids)
    store.close()
    return out


def bench_raw_mget(redis_url: str, prefix: str, items: list, batches: list) -> dict[str, Any]:
    """The floor: MGET of the same 500 keys, values pre-serialised, keys pre-built, no decoding."""
    import redis

    r = redis.Redis.from_url(redis_url)
    base = f"{prefix}:raw:"
    pipe = r.pipeline(transaction=False)
    for i, row in items:
        pipe.set(base + str(i), pack(row))
    pipe.execute()
    keys = [[base + str(i) for i in ids] for ids in batches]
    out = {"raw": percentiles(r.mget, keys)}
    out["raw_decode"] = percentiles(lambda ks: [unpack(v) for v in r.mget(ks)], keys)
    r.close()
    return out


def write_parquet(items: list, users: list, folder: str) -> dict[str, str]:
    """The rows as the features job's Parquet tables: {entity: path}."""
    out = {}
    for entity, rows in (("item", items), ("user", users)):
        path = f"{folder}/{entity}s.parquet"
        pd.DataFrame([r for _, r in rows]).to_parquet(path, index=False)
        out[entity] = path
    return out


def load_table_rates(url: str, tables: dict[str, str], use_ray: bool) -> tuple[float, float]:
    """(item rows/s, user rows/s) of one ``load_table`` each, from Parquet (Ray started first, not timed)."""
    from rayrec.store.loader import load_table

    if use_ray:
        import ray

        if not ray.is_initialized():
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    rates = []
    for entity, key in (("item", "movieId"), ("user", "userId")):
        _, rows, secs = load_table(url, entity, tables[entity], key, use_ray=use_ray)
        rates.append(rows / secs)
    return rates[0], rates[1]


def cleanup(redis_url: str, prefix: str) -> None:
    import redis

    r = redis.Redis.from_url(redis_url)
    batch = []
    for key in r.scan_iter(match=f"{prefix}:*", count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            r.unlink(*batch)
            batch = []
    if batch:
        r.unlink(*batch)
    r.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=3000, help="timed reads per measurement")
    parser.add_argument("--batch", type=int, default=500, help="item ids per batched read")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/9", help="Redis server (a unique prefix is used)")
    parser.add_argument("--synthetic", action="store_true", help="synthetic rows even if MovieLens is present")
    parser.add_argument("--users", type=int, default=None, help="synthetic user rows (implies --synthetic)")
    parser.add_argument("--items", type=int, default=None, help="synthetic item rows (implies --synthetic)")
    parser.add_argument("--ray", action="store_true", help="also time load_table from Parquet, with and without Ray Data writers")
    args = parser.parse_args(argv)
    if args.users is not None or args.items is not None:
        args.synthetic = True

    rows = None if args.synthetic else movielens_rows()
    source = "ml-latest-small"
    if rows is None:
        if not args.synthetic:
            print("ml-latest-small not found (set RAYREC_MOVIELENS_DIR): using synthetic rows of the same shape")
        rows, source = synthetic_rows(n_items=args.items or 9742, n_users=args.users or 610), "synthetic"
    items, users = rows
    rng = np.random.default_rng(0)
    item_ids = np.array([i for i, _ in items])
    batches = [rng.choice(item_ids, size=args.batch, replace=False).tolist() for _ in range(args.iterations)]
    user_ids = rng.choice([u for u, _ in users], size=args.iterations).tolist()
    print(f"rows: {len(items)} items, {len(users)} users ({source}); {args.iterations} timed reads each")

    prefix = f"rayrec-bench-{uuid.uuid4().hex[:8]}"
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        results["sqlite"] = bench_backend(f"sqlite://{tmp}/store.db", items, users, batches, user_ids)
        if args.ray:
            tables = write_parquet(items, users, tmp)
            loads = {f"sqlite, {how}": load_table_rates(f"sqlite://{tmp}/tables.db", tables, ray) for how, ray in (("load_table", False), ("Ray Data", True))}
    redis_url = f"{args.redis}?prefix={prefix}"
    try:
        results["redis"] = bench_backend(redis_url, items, users, batches, user_ids)
        if args.ray:
            with tempfile.TemporaryDirectory() as tmp:
                tables = write_parquet(items, users, tmp)
                for how, ray in (("load_table", False), ("Ray Data", True)):
                    loads[f"redis, {how}"] = load_table_rates(redis_url, tables, ray)
        floor = bench_raw_mget(args.redis, prefix, items, batches)
    except StoreUnavailable as e:
        print(f"redis skipped: {e}")
        floor = None
    finally:
        if "redis" in results or floor is not None:
            cleanup(args.redis, prefix)

    header = (
        f"{'backend':<22}{'load item rows/s':>17}{'load user rows/s':>17}"
        f"{f'get {args.batch} items p50/p99 ms':>28}{'get 1 user p50/p99 ms':>24}{'p50 / raw MGET':>16}"
    )
    print("\n" + header + "\n" + "-" * len(header))
    for name, r in results.items():
        ratio = f"{r['get500'][0] / floor['raw'][0]:.2f}x" if floor else "-"
        print(
            f"{name:<22}{r['load_item']:>17,.0f}{r['load_user']:>17,.0f}"
            f"{r['get500'][0]:>19.3f} / {r['get500'][1]:<6.3f}{r['get1'][0]:>15.3f} / {r['get1'][1]:<6.3f}{ratio:>16}"
        )
    if args.ray:
        print(f"\n{'load_table from Parquet':<28}{'item rows/s':>14}{'user rows/s':>14}")
        for name, (item_rate, user_rate) in loads.items():
            print(f"{name:<28}{item_rate:>14,.0f}{user_rate:>14,.0f}")
    if floor:
        for name, key in (("raw MGET (floor)", "raw"), ("raw MGET + decode", "raw_decode")):
            p50, p99 = floor[key]
            print(
                f"{name:<22}{'-':>17}{'-':>17}{p50:>19.3f} / {p99:<6.3f}{'-':>24}{p50 / floor['raw'][0]:>15.2f}x"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

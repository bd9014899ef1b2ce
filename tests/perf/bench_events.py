"""``POST /events`` benchmark: events/s sustained and latency percentiles over HTTP on the recommender
app (Ray Serve, local Ray with 2 CPUs), the time from an event's acknowledgement to its effect on
``/recommend``, and the in-process floor of the real-time path (no HTTP) on the same store.

    .venv/bin/python tests/perf/bench_events.py [--backend sqlite|redis] [--seconds 20]
        [--concurrency 1,4,8] [--trials 30] [--workdir /tmp/rayrec-bench-events] [--artifacts DIR]

Without ``--artifacts`` it builds small artifacts once in ``--workdir`` (features of the first 120 users of
ml-latest-small, or the synthetic generator; the online store; an SVD index; tiny models when the
training job exists), deploys the app with its default scaling and measures it. The load is a
closed loop: each of N keep-alive connections posts its next event as soon as the previous answer
arrives (raw asyncio HTTP/1.1, so the client costs little of the 2 cores it shares with the server).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

N_USERS = 120


# -- artifacts and the app --------------------------------------------------------------------------


def build_artifacts(workdir: Path) -> tuple[str, str]:
    """(artifacts, features version path), built once and reused."""
    from rayrec.config import shared_movielens_dir
    from rayrec.data import read_movielens
    from rayrec.data.synthetic import SyntheticConfig, generate
    from rayrec.features import FeaturesConfig, run_features
    from rayrec.retrieval import IndexConfig, run_index

    art = workdir / "artifacts"
    done = workdir / "features_path"
    if done.exists():
        return str(art), done.read_text()
    found = shared_movielens_dir()
    if found is not None:
        data = read_movielens(found)
        data.ratings = data.ratings[data.ratings["userId"] <= N_USERS].reset_index(drop=True)
    else:
        generate(workdir / "synthetic", SyntheticConfig(n_users=N_USERS, n_items=600, n_ratings=12_000))
        data = read_movielens(workdir / "synthetic")
    result = run_features(data, FeaturesConfig(artifacts=str(art), num_blocks=2))
    try:
        from pipelines import train

        for model in ("ranker", "retriever"):
            assert train.main(["--model", model, "--artifacts", str(art), "--epochs", "2", "--num-workers", "1"]) == 0
        embeddings = "model"
    except ImportError:
        embeddings = "svd"
    run_index(
        IndexConfig(artifacts=str(art), embeddings=embeddings, svd_dim=32, recall_queries=100, latency_queries=10)
    )
    done.write_text(result.path)
    return str(art), result.path


def fresh_store(backend: str, workdir: Path, features_path: str) -> str:
    """A store holding the features version, new for this run (earlier runs' events do not count)."""
    from rayrec.store.loader import load_table

    if backend == "sqlite":
        url = f"sqlite://{workdir}/store-{uuid.uuid4().hex[:8]}.db"
    else:
        url = f"redis://127.0.0.1:6379/9?prefix=bench-events-{uuid.uuid4().hex[:8]}"
    for entity, table, key in (("user", "users", "userId"), ("item", "items", "movieId")):
        load_table(url, entity, f"{features_path}/online/{table}.parquet", key)
    return url


def drop_store(url: str) -> None:
    if url.startswith("redis"):
        import redis

        prefix = url.split("prefix=", 1)[1]
        client = redis.Redis.from_url(url.split("?", 1)[0])
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.unlink(*keys)
        client.close()


# -- closed-loop HTTP POST load -------------------------------------------------------------------------


async def _response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = 0
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
        elif name.strip().lower() == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if not chunked:
        return status, await reader.readexactly(length)
    body = b""
    while True:
        size = int((await reader.readuntil(b"\r\n")).strip(), 16)
        body += await reader.readexactly(size + 2)
        if size == 0:
            return status, body


async def post_load(
    url: str, bodies: list[bytes], concurrency: int, seconds: float, timeout: float = 10.0, path: str = "/events"
) -> dict[str, Any]:
    """Closed-loop POSTs of ``bodies`` to ``path`` (or GETs of ``path`` when ``bodies`` is empty)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = (parts.path.rstrip("/") or "") + path
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    errors = 0
    next_body = iter(range(10**12))
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, port)
        while time.perf_counter() < stop_at:
            if bodies:
                body = bodies[next(next_body) % len(bodies)]
                req = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                       f"Content-Length: {len(body)}\r\n\r\n").encode() + body  # fmt: skip
            else:
                req = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
            t = time.perf_counter()
            try:
                writer.write(req)
                status, _ = await asyncio.wait_for(_response(reader), timeout)
            except (asyncio.TimeoutError, ConnectionError, asyncio.IncompleteReadError):
                errors += 1
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
                continue
            statuses[status] += 1
            if 200 <= status < 300:
                latencies.append((time.perf_counter() - t) * 1e3)
        writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    lat = np.asarray(latencies)
    pct = (lambda q: round(float(np.percentile(lat, q)), 2)) if len(lat) else (lambda q: None)
    return {
        "concurrency": concurrency,
        "seconds": round(elapsed, 2),
        "per_s": round(len(lat) / elapsed, 1),
        "p50_ms": pct(50),
        "p95_ms": pct(95),
        "p99_ms": pct(99),
        "ok": len(lat),
        "non_2xx": {k: v for k, v in statuses.items() if not 200 <= k < 300},
        "errors": errors,
    }


def event_bodies(users: list[int], movies: list[int], n: int, seed: int = 0) -> list[bytes]:
    rng = random.Random(seed)
    return [
        json.dumps(
            {
                "kind": "rating",
                "user_id": rng.choice(users),
                "movie_id": rng.choice(movies),
                "value": rng.randint(1, 10) / 2,
            }
        ).encode()
        for _ in range(n)
    ]


# -- acknowledgement → effect ---------------------------------------------------------------------------


def call(url: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        url, data=data, method="GET" if body is None else "POST", headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def ack_to_effect(url: str, users: list[int], trials: int) -> dict[str, Any]:
    """Per trial: a user's current top item is rated; from the event's acknowledgement, /recommend is
    called until the item has left the list. The latency is ack → the first answer without it."""
    delays, first_read, reads = [], 0, []
    for u in users[:trials]:
        top = call(f"{url}/recommend?user_id={u}&k=10")["items"][0]["movie_id"]
        call(f"{url}/events", {"kind": "rating", "user_id": u, "movie_id": top, "value": 5.0})
        acked = time.perf_counter()
        for attempt in range(1, 200):
            items = call(f"{url}/recommend?user_id={u}&k=10")["items"]
            if top not in [i["movie_id"] for i in items]:
                delays.append((time.perf_counter() - acked) * 1e3)
                first_read += attempt == 1
                reads.append(attempt)
                break
    d = np.asarray(delays)
    return {
        "trials": len(users[:trials]),
        "reflected": len(d),
        "on_first_read": first_read,
        "ack_to_effect_p50_ms": round(float(np.percentile(d, 50)), 2) if len(d) else None,
        "ack_to_effect_p99_ms": round(float(np.percentile(d, 99)), 2) if len(d) else None,
        "ack_to_effect_max_ms": round(float(d.max()), 2) if len(d) else None,
    }


# -- in-process floor ---------------------------------------------------------------------------------------


def floor(store_url: str, artifacts: str, users: list[int], movies: list[int], n: int) -> dict[str, Any]:
    """The real-time path without HTTP, Serve or the event loop, as a replica configures it."""
    from rayrec.serving.bundle import ServingConfig, load_bundle
    from rayrec.serving.events import EventSink
    from rayrec.store import open_store

    store = open_store(store_url)
    sink = EventSink(store, load_bundle(artifacts, ServingConfig()))
    rng = random.Random(1)
    lat = []
    start = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        sink.ingest(
            {
                "kind": "rating",
                "user_id": rng.choice(users),
                "movie_id": rng.choice(movies),
                "value": rng.randint(1, 10) / 2,
            }
        )
        lat.append((time.perf_counter() - t) * 1e3)
    elapsed = time.perf_counter() - start
    store.close()
    a = np.asarray(lat)
    return {
        "events_per_s": round(n / elapsed, 1),
        "p50_ms": round(float(np.percentile(a, 50)), 3),
        "p99_ms": round(float(np.percentile(a, 99)), 3),
        "user_embedding": sink.rt.config.user_embedding,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", choices=("sqlite", "redis"), default="sqlite")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--concurrency", default="1,4,8")
    p.add_argument("--trials", type=int, default=30)
    p.add_argument("--floor-events", type=int, default=2000)
    p.add_argument("--workdir", default="/tmp/rayrec-bench-events")
    p.add_argument("--artifacts", default=None,
                   help="serve these artifacts (e.g. the main job's, with its trained models) instead of building small ones")
    p.add_argument("--port", type=int, default=18200)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)

    import ray

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # pipelines/ and serve_apps/
    from rayrec.retrieval import ItemCatalog, read_ratings

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False, address="local")
    if args.artifacts:
        from rayrec import uri

        artifacts = args.artifacts
        features_path = uri.resolve_version(uri.join(artifacts, "features"), "latest")
    else:
        artifacts, features_path = build_artifacts(workdir)
    ratings = read_ratings(features_path)
    users = sorted(int(u) for u in ratings["userId"].unique())
    movies = ItemCatalog.load(features_path).movie_ids.tolist()
    results: dict[str, Any] = {"backend": args.backend, "users": len(users), "movies": len(movies)}

    from pipelines.serve import deploy

    store = fresh_store(args.backend, workdir, features_path)
    try:
        url = deploy(artifacts, store, port=args.port, name="bench-events")
        call(f"{url}/events", {"kind": "click", "user_id": users[0], "movie_id": movies[0]})  # warm-up
        asyncio.run(post_load(url, event_bodies(users, movies, 200, seed=99), 4, 3.0))
        results["http"], results["healthz"] = [], []
        for c in (int(x) for x in args.concurrency.split(",")):
            r = asyncio.run(post_load(url, event_bodies(users, movies, 5000, seed=c), c, args.seconds))
            print(json.dumps({"http_post_events": r}), flush=True)
            results["http"].append(r)
            # the HTTP floor under the same contention: GET /healthz (no store, no work) at the same load
            h = asyncio.run(post_load(url, [], c, min(args.seconds, 5.0), path="/healthz"))
            print(json.dumps({"http_get_healthz": h}), flush=True)
            results["healthz"].append(h)
        # users not touched by the load above would be cleaner, but every user was: the effect is
        # measured on each user's current top item, whatever their history
        results["ack_to_effect"] = ack_to_effect(url, users, args.trials)
        print(json.dumps({"ack_to_effect": results["ack_to_effect"]}), flush=True)
        from ray import serve

        serve.delete("bench-events")
        results["floor"] = floor(store, artifacts, users, movies, args.floor_events)
        print(json.dumps({"in_process_floor": results["floor"]}), flush=True)
    finally:
        drop_store(store)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

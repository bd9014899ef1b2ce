"""The price of durable events: ``/recommend`` p50/p99 and ``POST /events`` per second with the
SQLite store at ``synchronous=normal`` (a power cut may lose the last acknowledged events) and at
``synchronous=full`` (the default: an acknowledged event is on disk), in one run, rounds interleaved.

    .venv/bin/python tests/perf/bench_durability.py [--seconds 10] [--rounds 2] [--recommend 4] [--events 2]
        [--workdir /tmp/rayrec-bench-durability]

One replica's serving code in process (the FastAPI app over :class:`RecommenderService`, driven through
``httpx.ASGITransport``: no Serve, no network), on artifacts built once in ``--workdir`` (as
bench_events.py builds them). Each round loads a fresh store from the same features, then runs
``--recommend`` closed-loop ``/recommend`` clients beside ``--events`` closed-loop event posters for
``--seconds``, then ``--events`` closed-loop event posters alone (in one process a mixed run measures
the GIL's scheduling more than the disk).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from bench_events import build_artifacts, fresh_store  # noqa: E402


async def mixed_load(app: Any, users: list[int], movies: list[int], seconds: float, n_rec: int, n_ev: int) -> dict[str, Any]:
    import httpx

    rec_ms: list[float] = []
    ev_ms: list[float] = []
    statuses: dict[int, int] = {}
    stop = time.perf_counter() + seconds
    rng = random.Random(0)

    async def recommend(c: httpx.AsyncClient) -> None:
        while time.perf_counter() < stop:
            t = time.perf_counter()
            r = await c.get(f"/recommend?user_id={rng.choice(users)}&k=10")
            rec_ms.append((time.perf_counter() - t) * 1e3)
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            # in process nothing else yields (SQLite reads run inline): let the writes' completions in,
            # as a real server's socket I/O does
            await asyncio.sleep(0)

    async def events(c: httpx.AsyncClient) -> None:
        while time.perf_counter() < stop:
            body = {"kind": "rating", "user_id": rng.choice(users), "movie_id": rng.choice(movies),
                    "value": rng.randint(1, 10) / 2}  # fmt: skip
            t = time.perf_counter()
            r = await c.post("/events", json=body)
            ev_ms.append((time.perf_counter() - t) * 1e3)
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as c:
        await asyncio.gather(*[recommend(c) for _ in range(n_rec)], *[events(c) for _ in range(n_ev)])
    r, e = np.asarray(rec_ms), np.asarray(ev_ms)
    return {
        "recommend_p50_ms": round(float(np.percentile(r, 50)), 2) if len(r) else None,
        "recommend_p99_ms": round(float(np.percentile(r, 99)), 2) if len(r) else None,
        "recommend_per_s": round(len(r) / seconds, 1),
        "events_per_s": round(len(e) / seconds, 1),
        "event_p50_ms": round(float(np.percentile(e, 50)), 2) if len(e) else None,
        "event_p99_ms": round(float(np.percentile(e, 99)), 2) if len(e) else None,
        "statuses": statuses,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--recommend", type=int, default=4, help="concurrent /recommend clients")
    p.add_argument("--events", type=int, default=4, help="concurrent POST /events clients")
    p.add_argument("--workdir", default="/tmp/rayrec-bench-durability")
    args = p.parse_args(argv)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if not (workdir / "features_path").exists():
        import ray

        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
        build_artifacts(workdir)
        ray.shutdown()
    artifacts, features_path = str(workdir / "artifacts"), (workdir / "features_path").read_text()

    import pandas as pd

    from rayrec.serving import RecommenderService, ServingConfig, create_app
    from rayrec.serving.security import SecurityConfig

    users = pd.read_parquet(f"{features_path}/online/users.parquet", columns=["userId"])["userId"].astype(int).tolist()
    movies = pd.read_parquet(f"{features_path}/online/items.parquet", columns=["movieId"])["movieId"].astype(int).tolist()
    results: dict[str, list[dict[str, Any]]] = {"normal": [], "full": []}
    for round_ in range(args.rounds):
        for mode in ("normal", "full"):
            url = fresh_store("sqlite", workdir, features_path) + f"?synchronous={mode}"
            service = RecommenderService.create(artifacts, url, ServingConfig())
            app = create_app(service, security=SecurityConfig())
            # each alone: in one process the GIL, not the disk, would decide a mixed run
            reads = asyncio.run(mixed_load(app, users, movies, args.seconds, args.recommend, 0))
            writes = asyncio.run(mixed_load(app, users, movies, args.seconds, 0, args.events))
            out = {k: v for k, v in reads.items() if k.startswith("recommend")}
            out.update({k: v for k, v in writes.items() if k.startswith("event")})
            out["statuses"] = {str(c): reads["statuses"].get(c, 0) + writes["statuses"].get(c, 0)
                               for c in {*reads["statuses"], *writes["statuses"]}}  # fmt: skip
            service.close()
            results[mode].append(out)
            print(json.dumps({"round": round_, "synchronous": mode, **out}), flush=True)
    summary = {mode: {k: float(np.median([r[k] or 0 for r in rs])) for k in rs[0] if k != "statuses"}
               for mode, rs in results.items()}  # fmt: skip
    print(json.dumps({"median_of_rounds": summary}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

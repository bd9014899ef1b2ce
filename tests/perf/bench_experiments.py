"""What experiments cost on ``/recommend``: p50/p99 latency in one process, through the HTTP app, for

- ``off``: no experiment, impressions not logged;
- ``none``: no experiment, every list logged to the impressions log (the default);
- ``ab``: every user in a two-arm A/B test (the arms differ in ``rank_weight``: one ranking per request);
- ``interleave``: every user in an interleaving experiment (two rankings per request, team draft);
- ``optimized``: the same by optimized interleaving (two rankings and a linear program per request;
  a pair of lists seen before is answered from a cache, so users do not repeat within a run when
  there are enough of them).

Rounds are interleaved (round by round, config by config) so background load hits all alike; each
figure is over all rounds. The store is a scratch copy of the artifacts' SQLite store.

    .venv/bin/python tests/perf/bench_experiments.py --artifacts DIR [--requests 300] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from rayrec.serving import ServingConfig, create_app  # noqa: E402
from rayrec.serving.bundle import load_bundle  # noqa: E402
from rayrec.serving.service import RecommenderService  # noqa: E402
from rayrec.store import open_store  # noqa: E402
from rayrec.store.sqlite import copy_file  # noqa: E402

VARIANTS = [{"name": "a"}, {"name": "b", "overrides": {"rank_weight": 1.0}}]
CONFIGS = {
    "off": {"impressions": False},
    "none": {},
    "ab": {"experiments": [{"name": "bench-ab", "variants": VARIANTS}]},
    "interleave": {"experiments": [{"name": "bench-il", "mode": "interleave", "variants": VARIANTS}]},
    "optimized": {"experiments": [{"name": "bench-oi", "mode": "interleave", "interleaving": "optimized", "variants": VARIANTS}]},
}


async def measure(artifacts: str, store: str, requests: int, rounds: int, users: list[int]) -> dict[str, list[float]]:
    services = {name: RecommenderService(artifacts, open_store(store), load_bundle(artifacts, ServingConfig.model_validate(cfg)))
                for name, cfg in CONFIGS.items()}  # fmt: skip
    clients = {name: httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(svc)), base_url="http://bench")
               for name, svc in services.items()}  # fmt: skip
    took: dict[str, list[float]] = {name: [] for name in CONFIGS}
    try:
        for c in clients.values():  # warm up: caches, traced forwards
            for u in users[:20]:
                (await c.get(f"/recommend?user_id={u}&k=10")).raise_for_status()
        for r in range(rounds):
            for name, c in clients.items():
                for i in range(requests):
                    u = users[(r * requests + i) % len(users)]
                    t = time.perf_counter()
                    resp = await c.get(f"/recommend?user_id={u}&k=10")
                    took[name].append((time.perf_counter() - t) * 1e3)
                    resp.raise_for_status()
                await services[name].flush_impressions()
    finally:
        for c in clients.values():
            await c.aclose()
        for svc in services.values():
            svc.close()
    return took


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--artifacts", required=True)
    p.add_argument("--requests", type=int, default=300, help="requests per config per round")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store.sqlite"
        copy_file(Path(args.artifacts) / "online" / "store.sqlite", store)
        users = list(range(1, 1001))
        took = asyncio.run(measure(args.artifacts, str(store), args.requests, args.rounds, users))
    base = np.percentile(took["off"], 50)
    print(f"/recommend in process over ASGI, k=10, {args.rounds} rounds × {args.requests} requests per config")
    print("| config | p50 ms | p99 ms | mean ms | p50 vs off |")
    print("|---|---|---|---|---|")
    for name, xs in took.items():
        a = np.asarray(xs)
        print(f"| {name} | {np.percentile(a, 50):.2f} | {np.percentile(a, 99):.2f} | {a.mean():.2f} | {np.percentile(a, 50) / base:.2f}× |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Serving benchmark: QPS and p50/p99 latency of ``/recommend`` at several concurrencies, for

(a) the full app (each composition asked for: fused with 1 or 2 ingress replicas, ranker, chain),
(b) a no-op Serve app on the same machine (the platform's floor; plus no-op chains of N handle hops),
(c) the same recall → rank → rerank code called in process, without Serve or HTTP (the compute floor),

with the ratios (a)/(b) and (a)/(c). Every app is deployed at once on one local Ray (2 CPUs) under
its own route prefix, and the measurements are interleaved (round by round, concurrency by
concurrency, target by target, the in-process floor included), so background load on a shared
machine hits all targets alike; each row is the median over ``--rounds``. The load generator is a
closed loop over keep-alive connections on 127.0.0.1 (tests/loadgen.py); a 503 is counted, not
retried early. Last, ``--overload`` connections hit the first app, with clients that retry a 503 at
once and with clients that wait 100 ms first: excess load must be refused with 503s, not time out.

``--ingress`` picks Serve's front door for the whole run (rayrec.serving.ingress: HAProxy or Serve's
Python proxy; it is fixed when Ray starts). ``--ingress haproxy,proxy`` measures each in turn, in a
fresh Ray of its own (one after the other, so not interleaved), and prints both tables.

    .venv/bin/python tests/perf/bench_serving.py --artifacts DIR [--store URL] [--seconds 5]
        [--concurrency 1,8,32] [--compositions fused@2,fused@2/b16,fused,ranker,chain] [--hops 1,2] [--rounds 2]
        [--overload 128] [--floor-batch 1] [--ingress auto|haproxy|proxy|haproxy,proxy]

The artifacts need features loaded into the store, an index and (for the ranker) trained models:
the main job's output (python -m pipelines.main --no-serve) is what it is meant for.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root: serve_apps, pipelines
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the load generator

from loadgen import LoadResult, load  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def user_paths(artifacts: str, n: int = 500) -> list[str]:
    from rayrec import uri
    from rayrec.retrieval import read_ratings

    features = uri.resolve_version(uri.join(artifacts, "features"), "latest")
    users = np.unique(read_ratings(features)["userId"].to_numpy())
    rng = np.random.default_rng(0)
    picked = rng.choice(users, size=min(n, len(users)), replace=False)
    return [f"/recommend?user_id={int(u)}&k=10" for u in picked]


class InProcess:
    """The compute floor: the serving backend's ``recommend`` called in this process, no Serve and no
    HTTP (store reads, recall, rank, rerank; ranking batched across concurrent callers when ``batch`` > 1,
    as the ingress's ``serve.batch`` then does)."""

    def __init__(self, artifacts: str, store: str | None, paths: list[str], batch: int = 1) -> None:
        from rayrec.serving import RecommenderService
        from rayrec.serving.threads import single_threaded

        single_threaded()  # as in a replica
        self.svc = RecommenderService.create(artifacts, store)
        self.ids = [int(p.split("user_id=")[1].split("&")[0]) for p in paths]
        self.batch = batch

    def load(self, concurrency: int, seconds: float, warmup: float) -> LoadResult:
        from batching import MicroBatcher

        svc, ids = self.svc, self.ids
        # as the fused ingress ranks: each request directly, or batched across callers (bound to this run's loop)
        svc.rank_fn = MicroBatcher(svc.rank_batch, max_batch_size=self.batch, wait_s=0.0) if self.batch > 1 else svc.rank_local

        async def run() -> LoadResult:
            loop = asyncio.get_running_loop()
            t0 = loop.time() + warmup
            t1 = t0 + seconds
            lat: list[float] = []
            n = iter(range(10**9))

            async def worker() -> None:
                # a closed loop: each worker asks again as soon as its answer is in, so a request is
                # issued when the previous one finished (waiting behind the other workers counts)
                t = time.perf_counter()
                while loop.time() < t1:
                    i = next(n)
                    await svc.recommend(ids[i % len(ids)], 10)
                    done = time.perf_counter()
                    if loop.time() >= t0:
                        lat.append((done - t) * 1e3)
                    t = done
                    await asyncio.sleep(0)  # let the other workers' requests run, as a server's loop would

            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return LoadResult(concurrency, seconds, len(lat), latencies_ms=np.asarray(lat))

        return asyncio.run(run())


def median_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-field median over rounds (counts summed), so one noisy round on a shared machine does not
    decide a row."""
    out = dict(runs[0])
    for key in ("qps", "p50_ms", "p99_ms"):
        vals = [r[key] for r in runs if r[key] == r[key]]
        out[key] = round(float(np.median(vals)), 2) if vals else float("nan")
    for key in ("ok", "503", "timeouts", "errors"):
        out[key] = sum(r[key] for r in runs)
    out["rounds"] = [r["qps"] for r in runs]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--artifacts", default=None)
    p.add_argument("--store", default=None)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--compositions", default="fused@2,fused,ranker,chain",
                   help="apps to measure: a composition, @N for N ingress replicas (default 1), /bN for "
                   "rank batches of at most N (b1: no batching; default: the composition's)")
    p.add_argument("--hops", default="", help="also measure no-op chains with these numbers of handle hops, e.g. 1,2")
    p.add_argument("--overload", type=int, default=128, help="connections of the overload row (0: skip)")
    p.add_argument("--rounds", type=int, default=2, help="rounds over all targets; rows report the median")
    p.add_argument("--floor-batch", type=int, default=1,
                   help="rank batch size of the in-process floor (1: none, as the default fused app)")
    p.add_argument("--ingress", default="auto",
                   help="Serve's front door: auto, haproxy, proxy, or several comma-separated (each in its own Ray)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    modes = [m for m in args.ingress.split(",") if m]
    if len(modes) > 1:
        return _each_ingress(modes, sys.argv[1:] if argv is None else argv, args)

    from rayrec.serving.ingress import apply_ingress

    door = apply_ingress(modes[0] if modes else None)  # before Ray starts: Serve's controller reads it

    import ray
    from ray import serve

    from pipelines.serve import deploy
    from rayrec.config import default_artifacts
    from serve_apps.noop import build_noop_app

    artifacts = args.artifacts or default_artifacts()
    conc = [int(c) for c in args.concurrency.split(",")]
    comps = [c for c in args.compositions.split(",") if c]
    paths = user_paths(artifacts)
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    port = free_port()
    small = {"num_cpus": 0.1, "min_replicas": 1, "max_replicas": 1}  # logical CPUs: the apps share 2 cores
    targets: dict[str, str] = {}
    t = time.perf_counter()
    for spec in comps:  # "fused", "fused@2", "fused@2/b1": composition, ingress replicas, max batch size
        head, _, batch = spec.partition("/b")
        comp, _, n = head.partition("@")
        replicas = int(n or 1)
        ingress = {**small, "min_replicas": replicas, "max_replicas": replicas}
        slug = spec.replace("@", "-").replace("/", "-")
        batching = {"max_batch_size": int(batch)} if batch else {}
        targets[f"app:{spec}"] = deploy(artifacts, args.store, port=port, composition=comp, name=f"app-{slug}",
                                        route_prefix=f"/{slug}", ingress=ingress, ranker=small, recall=small,
                                        reranker=small, batching=batching)  # fmt: skip
    serve.run(build_noop_app({"num_cpus": 0.1}), name="noop", route_prefix="/noop")
    targets["noop"] = f"http://127.0.0.1:{port}/noop"
    for h in [int(x) for x in args.hops.split(",") if x]:
        serve.run(build_noop_app({"num_cpus": 0.1, "hops": h}), name=f"noop{h}", route_prefix=f"/noop{h}")
        targets[f"noop+{h}hop"] = f"http://127.0.0.1:{port}/noop{h}"
    print(f"deployed {len(targets)} apps in {time.perf_counter() - t:.0f}s on port {port} behind {door}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)  # fmt: skip

    floor = InProcess(artifacts, args.store, paths, batch=args.floor_batch)
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {name: {c: [] for c in conc} for name in [*targets, "in-process"]}
    for rnd in range(args.rounds):  # interleaved: background load on a shared machine hits every target alike
        for c in conc:
            for name in runs:
                if name == "in-process":
                    r = floor.load(c, args.seconds, args.warmup)
                else:
                    r = load(targets[name], paths, concurrency=c, seconds=args.seconds, warmup=args.warmup)
                runs[name][c].append(r.summary())
                print(f"round {rnd + 1} {name:>14} c={c:<3} {json.dumps(r.summary())}", flush=True)
    results = {name: {c: median_summary(rs) for c, rs in by_c.items()} for name, by_c in runs.items()}
    overload: dict[str, Any] = {}
    if args.overload and comps:
        url = targets[f"app:{comps[0]}"]
        for backoff in (0.0, 0.1):  # clients that retry at once, and clients that wait 100 ms after a 503
            r = load(url, paths, concurrency=args.overload, seconds=args.seconds, warmup=args.warmup, backoff_503=backoff)
            overload[f"backoff {backoff:g}s"] = r.summary()
            print(f"{'overload':>14} c={args.overload:<3} backoff={backoff:g}s {json.dumps(r.summary())}", flush=True)
    floor.svc.close()
    serve.shutdown()
    ray.shutdown()
    print(f"load average at the end {os.getloadavg()[0]:.1f}")

    report = {"ingress": door, "results": results, "overload": overload}
    print("\n" + render(report, conc, comps, args.overload))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


def _each_ingress(modes: list[str], argv: list[str], args: argparse.Namespace) -> int:
    """The benchmark once per front door, each in a subprocess with a Ray of its own; both reports."""
    reports = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in modes:
            out = f"{tmp}/{mode}.json"
            print(f"== front door: {mode}", flush=True)
            # the same arguments; argparse keeps the last --ingress and --out, this run's own
            rc = subprocess.call([sys.executable, __file__, *argv, "--ingress", mode, "--out", out])
            if rc:
                return rc
            report = json.loads(Path(out).read_text())
            report["results"] = {n: {int(c): r for c, r in by_c.items()} for n, by_c in report["results"].items()}  # JSON keys are strings
            reports.append(report)
    conc = [int(c) for c in args.concurrency.split(",")]
    comps = [c for c in args.compositions.split(",") if c]
    print("\n== all front doors (measured one after the other)")
    for report in reports:
        print(f"\n### front door: {report['ingress']}\n" + render(report, conc, comps, args.overload))
    if args.out:
        Path(args.out).write_text(json.dumps(reports, indent=2))
    return 0


def render(report: dict[str, Any], conc: list[int], comps: list[str], connections: int) -> str:
    lines = [table(report["results"], conc, comps)]
    for how, o in report["overload"].items():
        lines.append(f"overload, {connections} connections on app:{comps[0]}, {how} after a 503: {o['qps']} ok/s "
                     f"(p99 {o['p99_ms']} ms); {o['503']} answered 503 (p99 {o['p99_503_ms']} ms); {o['timeouts']} "
                     f"timeouts, {o['errors']} connection errors")  # fmt: skip
    return "\n".join(lines)


def table(results: dict[str, dict[int, dict[str, Any]]], conc: list[int], comps: list[str]) -> str:
    rows = ["| target | c | QPS | p50 ms | p99 ms | 503 | timeouts | QPS (a)/(b) | QPS (a)/(c) | QPS per round |",
            "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, by_c in results.items():
        for c in conc:
            r = by_c.get(c)
            if r is None:
                continue
            ratio_b = ratio_c = ""
            if name.startswith("app:"):
                ratio_b = f"{r['qps'] / results['noop'][c]['qps']:.2f}" if results["noop"][c]["qps"] else "-"
                ratio_c = f"{r['qps'] / results['in-process'][c]['qps']:.2f}" if results["in-process"].get(c, {}).get("qps") else "-"
            rows.append(f"| {name} | {c} | {r['qps']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['503']} | "
                        f"{r['timeouts']} | {ratio_b} | {ratio_c} | {' / '.join(f'{q:.0f}' for q in r['rounds'])} |")  # fmt: skip
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())

"""Item index benchmark: build time, QPS (single query and batched) and recall@100 against exact
search for Flat, HNSW, IVF (and LSH, for comparison) on synthetic catalogs of 10k, 100k and 1M items.

Catalogs: unit vectors (d=64) drawn around ``--clusters`` centres with a power-law spectrum (axis j
scaled by j^-decay, then a random rotation) — the shape of learned embeddings, where a few directions
carry most of the variance. Queries are fresh points of the same distribution. Ground truth is exact
inner-product search (the Flat index). Single-query QPS goes through ``ItemIndex.search`` one query at
a time (as serving calls it, one OpenMP thread); batched QPS is one call with every query.

    .venv/bin/python tests/perf/bench_index.py [--sizes 10000,100000,1000000] [--queries 1000]
        [--factories Flat,HNSW,IVF,LSH] [--hnsw-m 16] [--ef-construction 20] [--ef-search 128]

Other jobs may share the CPUs: the load average is printed before and after; figures taken under
load are pessimistic.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time

import faiss
import numpy as np

from rayrec.retrieval import ItemIndex, normalize
from rayrec.retrieval.index import default_search_params, resolve_factory


def catalog(n: int, d: int, clusters: int, decay: float, spread: float, seed: int) -> np.ndarray:
    """(n, d) unit vectors: cluster centres + within-cluster noise, both with a power-law spectrum."""
    rng = np.random.default_rng(seed)
    rotation = np.linalg.qr(rng.standard_normal((d, d)))[0].astype(np.float32)
    scale = (1.0 / np.arange(1, d + 1) ** decay).astype(np.float32)
    centres = rng.standard_normal((clusters, d)).astype(np.float32) * scale
    out = np.empty((n, d), dtype=np.float32)
    for lo in range(0, n, 200_000):  # chunks bound the temporary memory
        hi = min(n, lo + 200_000)
        x = centres[rng.integers(0, clusters, hi - lo)] + spread * rng.standard_normal((hi - lo, d)).astype(np.float32) * scale
        out[lo:hi] = normalize(x @ rotation)
    return out


def timed_single(index: ItemIndex, queries: np.ndarray, k: int, seconds: float) -> tuple[float, float]:
    """Single-query (QPS, CPU µs per query): queries one at a time for about ``seconds`` (at least 20).
    CPU time is this process's, so it stays meaningful when other jobs share the cores."""
    done, start, cpu = 0, time.perf_counter(), time.process_time()
    while done < len(queries) and (done < 20 or time.perf_counter() - start < seconds):
        index.search(queries[done : done + 1], k)
        done += 1
    return done / (time.perf_counter() - start), (time.process_time() - cpu) / done * 1e6


def recall(got: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(g[g >= 0], t)) / len(t) for g, t in zip(got, truth)]))


def run_size(n: int, args: argparse.Namespace, factories: list[str]) -> list[dict]:
    t = time.perf_counter()
    data = catalog(n + args.queries, args.dim, args.clusters, args.decay, args.spread, seed=n)
    x, queries = data[:n], data[n:]
    ids = np.arange(n, dtype=np.int64)
    print(f"\n[{n:,} items] catalog generated in {time.perf_counter() - t:.1f}s", flush=True)
    rows, truth = [], None
    for name in factories:
        factory = resolve_factory(name, n)
        if factory.startswith("HNSW") and name in ("HNSW", "HNSW32") and args.hnsw_m:
            factory = f"HNSW{args.hnsw_m}"
        params = default_search_params(factory)
        if factory.startswith("HNSW"):
            params = f"efSearch={args.ef_search}"
        t = time.perf_counter()
        index = ItemIndex.build(
            ids, x, factory, search_params=params,
            ef_construction=args.ef_construction if factory.startswith("HNSW") else None,
        )  # fmt: skip
        build_s = time.perf_counter() - t
        t, cpu = time.perf_counter(), time.process_time()
        got, _ = index.search(queries, args.k)
        batch_qps = len(queries) / (time.perf_counter() - t)
        batch_cpu_us = (time.process_time() - cpu) / len(queries) * 1e6
        if truth is None:  # exact ground truth from the Flat index (always first)
            if factory != "Flat":
                raise SystemExit("the first factory must be Flat: it is the ground truth")
            truth = got
        single_qps, single_cpu_us = timed_single(index, queries, args.k, args.single_seconds)
        row = {
            "n": n, "factory": factory, "params": params, "build_s": build_s, "single_qps": single_qps,
            "single_cpu_us": single_cpu_us, "batch_qps": batch_qps, "batch_cpu_us": batch_cpu_us,
            "recall": recall(got, truth),
        }  # fmt: skip
        rows.append(row)
        print(
            f"  {factory:<16}{params:<14} build {build_s:8.2f}s  single {single_qps:9,.0f} QPS "
            f"({single_cpu_us:,.0f} CPU-µs/q)  batch {batch_qps:9,.0f} QPS ({batch_cpu_us:,.0f} CPU-µs/q)  "
            f"recall@{args.k} {row['recall']:.4f}",
            flush=True,
        )
        del index
        gc.collect()
    return rows


def family(factory: str) -> str:
    for name in ("HNSW", "IVF", "LSH"):
        if name in factory:
            return name
    return factory


def table(rows: list[dict], k: int) -> str:
    factories = list(dict.fromkeys(family(r["factory"]) for r in rows))
    by = {(r["n"], family(r["factory"])): r for r in rows}
    sizes = sorted({r["n"] for r in rows})
    w = 44
    head = f"{'items':>10} | " + " | ".join(f"{f:^{w}}" for f in factories)
    sub = f"{'':>10} | " + " | ".join(f"{'1-q QPS':>8} {'CPU-µs':>7} {'batch QPS':>10} {'CPU-µs':>7} {f'R@{k}':>6}  " for _ in factories)
    lines = [head, sub, "-" * len(sub)]
    for n in sizes:
        cells = []
        for f in factories:
            r = by.get((n, f))
            cells.append(
                f"{r['single_qps']:>8,.0f} {r['single_cpu_us']:>7,.0f} {r['batch_qps']:>10,.0f} {r['batch_cpu_us']:>7,.0f} "
                f"{r['recall']:>6.3f}  " if r else f"{'-':^{w}}"
            )
        lines.append(f"{n:>10,} | " + " | ".join(cells))
    lines.append("")
    lines.append("concrete indexes: " + "; ".join(f"{r['n']:,}: {r['factory']} {r['params']} (build {r['build_s']:.1f}s)"
                                              for r in rows if not r["factory"].startswith("Flat")))  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="10000,100000,1000000")
    p.add_argument("--factories", default="Flat,HNSW,IVF,LSH", help="Flat first (ground truth)")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("-k", type=int, default=100)
    p.add_argument("--clusters", type=int, default=256)
    p.add_argument("--decay", type=float, default=1.0)
    p.add_argument("--spread", type=float, default=1.0, help="within-cluster noise relative to the centres")
    p.add_argument("--hnsw-m", type=int, default=16, help="HNSW links per node (the index job's HNSW default is 32)")
    p.add_argument("--ef-construction", type=int, default=20)
    p.add_argument("--ef-search", type=int, default=128)
    p.add_argument("--single-seconds", type=float, default=3.0, help="time spent measuring single queries")
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    factories = [f.strip() for f in args.factories.split(",")]
    started = time.perf_counter()
    load0 = os.getloadavg()
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} OpenMP threads for batches, 1 for single queries; "
          f"{os.cpu_count()} CPUs, load average {load0[0]:.1f} at start")  # fmt: skip
    print(f"catalogs: d={args.dim}, {args.clusters} clusters, spectrum j^-{args.decay}, spread {args.spread}; "
          f"{args.queries} fresh queries; k={args.k}")  # fmt: skip
    print(f"HNSW: M={args.hnsw_m}, efConstruction={args.ef_construction}, efSearch={args.ef_search}; "
          "IVF: sqrt(n) lists (≤ n/39), trained on 64 x nlist sampled vectors, nprobe=max(16, nlist/16); LSH: nbits=d")  # fmt: skip
    rows = []
    for n in sizes:
        rows += run_size(n, args, factories)
    load1 = os.getloadavg()
    print(f"\nrecall@{args.k} against exact search; QPS (wall clock) and CPU-µs per query of ItemIndex.search; "
          f"{time.perf_counter() - started:.0f}s in all; "
          f"load average {load0[0]:.1f} at start, {load1[0]:.1f} at end on {os.cpu_count()} CPUs"
          + (" (contended: figures are pessimistic)" if max(load0[0], load1[0]) > (os.cpu_count() or 1) else ""))  # fmt: skip
    print(table(rows, args.k))
    return 0


if __name__ == "__main__":
    sys.exit(main())

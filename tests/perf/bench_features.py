"""Benchmark: the feature pipeline on Ray Data against a single-process pandas run, on the same data.

    python tests/perf/bench_features.py                    # ml-latest-small (if present) and 5M synthetic
    python tests/perf/bench_features.py --synthetic 1000000 --skip-movielens

"pandas" is the same point-in-time transforms (``item_pass`` then ``user_pass``) applied by plain pandas
to the whole frame in this process, plus the same sample/online Parquet writes and the FeatureSpec fit:
the speed a single machine gets without Ray. Both outputs are compared row for row (they must agree).
(The by-definition reference in tests/reference.py is quadratic: it checks correctness on small data
in the test suite and would not finish at these sizes.)

Peak memory: the highest summed RSS of this process and all its children (Ray's raylet, GCS and
workers) sampled every 100 ms; shared pages count once per process, so it is an upper bound. Beside
it, the highest summed PSS (:class:`rayrec.costs.TreeMemory`, what the scale run reports: each shared
page divided among the processes that map it, and Ray's object store is shared memory that every
worker reading a block maps), the tree's actual footprint.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

from rayrec.config import shared_movielens_dir
from rayrec.costs import TreeMemory
from rayrec.data import SyntheticConfig, generate, read_movielens
from rayrec.data.movielens import MovieLens
from rayrec.features import FeaturesConfig, run_features
from rayrec.features.pipeline import SAMPLE_COLUMNS
from rayrec.features.pointintime import item_pass, user_pass
from rayrec.features.spec import FeatureSpec, SpecPartial


class PeakRss:
    """Highest summed RSS of this process tree, sampled in a thread."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval, self.peak = interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        me = psutil.Process()
        total = me.memory_info().rss
        for c in me.children(recursive=True):
            try:
                total += c.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRss:
        self.peak = self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def pandas_features(data: MovieLens, out: str) -> None:
    """The same transforms in one process: item pass, user pass, samples + online tables, spec. Its
    samples are compared from the files, after both runs: held in this process, they would count in
    the Ray Data run's peak."""
    a = item_pass(data.ratings, data.movies)
    b = user_pass(a[~a["sentinel"]].drop(columns=["sentinel"]), data.movies)
    samples = b[~b["sentinel"]]
    for split in ("train", "test"):
        samples.loc[samples["split"] == split, list(SAMPLE_COLUMNS)].to_parquet(f"{out}/samples-{split}.parquet")
    b[b["sentinel"]].to_parquet(f"{out}/users.parquet")
    a[a["sentinel"]].drop(columns=["userId"], errors="ignore").to_parquet(f"{out}/items.parquet")
    FeatureSpec.fit(SpecPartial.of(samples[samples["split"] == "train"]), label_threshold=3.5)


def run_one(name: str, data: MovieLens, workdir: str, with_pandas: bool = True) -> dict:
    import ray

    n = len(data.ratings)
    if not with_pandas:
        return ray_only(name, data, workdir)
    with PeakRss() as mem_pd, TreeMemory(interval=0.1) as pss_pd:
        t = time.perf_counter()
        os.makedirs(f"{workdir}/pandas", exist_ok=True)
        pandas_features(data, f"{workdir}/pandas")
        pd_s = time.perf_counter() - t
    with PeakRss() as mem_ray, TreeMemory(interval=0.1) as pss_ray:
        t = time.perf_counter()
        res = run_features(data, FeaturesConfig(artifacts=f"{workdir}/ray"))
        ray_s = time.perf_counter() - t
    got = pd.concat([pd.read_parquet(res.uri("samples", s)) for s in ("train", "test")], ignore_index=True)
    keys = ["userId", "movieId"]
    got = got.sort_values(keys).reset_index(drop=True)
    ref = pd.concat([pd.read_parquet(f"{workdir}/pandas/samples-{s}.parquet") for s in ("train", "test")], ignore_index=True)
    exp = ref.sort_values(keys).reset_index(drop=True)
    agree = len(got) == len(exp) and all(
        np.allclose(got[c].to_numpy(np.float64), exp[c].to_numpy(np.float64), equal_nan=True)
        for c in ("label", "user_rating_count", "user_rating_mean", "item_rating_count", "item_rating_std")
    ) and all(list(x) == list(y) for x, y in zip(got["user_recent_items"], exp["user_recent_items"]))
    print(f"\n== {name}: {n:,} ratings ==", flush=True)
    print(f"  ray data  {ray_s:7.1f} s  {n / ray_s:11,.0f} ratings/s  peak RSS (tree) {mem_ray.peak / 2**30:5.2f} GiB"
          f"  PSS {pss_ray.peak / 2**30:5.2f} GiB (at {pss_ray.peak_at:.0f} s)")
    print("            stages: " + ", ".join(f"{k} {v:.1f}" for k, v in res.timings.items()))
    print(f"  pandas    {pd_s:7.1f} s  {n / pd_s:11,.0f} ratings/s  peak RSS (tree) {mem_pd.peak / 2**30:5.2f} GiB"
          f"  PSS {pss_pd.peak / 2**30:5.2f} GiB")
    print(f"  throughput ratio ray/pandas = {pd_s / ray_s:.2f}   outputs agree: {agree}", flush=True)
    ray.data.DataContext.get_current()  # keep Ray up between datasets
    return {"name": name, "ratings": n, "ray_s": ray_s, "pandas_s": pd_s, "agree": agree,
            "ray_pss_gib": pss_ray.peak / 2**30, "pandas_pss_gib": pss_pd.peak / 2**30}  # fmt: skip


def ray_only(name: str, data: MovieLens, workdir: str) -> dict:
    """The Ray Data run alone (sizes where the pandas reference does not fit this machine)."""
    n = len(data.ratings)
    with PeakRss() as mem_ray, TreeMemory(interval=0.1) as pss_ray:
        t = time.perf_counter()
        res = run_features(data, FeaturesConfig(artifacts=f"{workdir}/ray"))
        ray_s = time.perf_counter() - t
    print(f"\n== {name}: {n:,} ratings (Ray Data only) ==", flush=True)
    print(f"  ray data  {ray_s:7.1f} s  {n / ray_s:11,.0f} ratings/s  peak RSS (tree) {mem_ray.peak / 2**30:5.2f} GiB"
          f"  PSS {pss_ray.peak / 2**30:5.2f} GiB (at {pss_ray.peak_at:.0f} s)")
    print("            stages: " + ", ".join(f"{k} {v:.1f}" for k, v in res.timings.items()), flush=True)
    return {"name": name, "ratings": n, "ray_s": ray_s, "pandas_s": float("nan"), "agree": True,
            "ray_pss_gib": pss_ray.peak / 2**30, "pandas_pss_gib": float("nan")}  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--synthetic", type=int, default=5_000_000, help="synthetic ratings (0 to skip)")
    p.add_argument("--skip-movielens", action="store_true")
    p.add_argument("--skip-pandas", action="store_true",
                   help="synthetic data: the Ray Data run alone (the pandas reference needs about 1.7 GiB per million ratings)")
    p.add_argument("--object-store-gib", type=float, default=None,
                   help="cap Ray's object store (GiB; blocks beyond it spill to disk); default: Ray's own (30%% of memory)")
    args = p.parse_args()
    import ray

    store = {"object_store_memory": int(args.object_store_gib * 2**30)} if args.object_store_gib else {}
    ray.init(include_dashboard=False, logging_level="ERROR", log_to_driver=False, **store)
    ray.data.DataContext.get_current().enable_progress_bars = False
    print(f"cpus {os.cpu_count()}, ray {ray.__version__}, pandas {pd.__version__}, "
          f"object store {ray.available_resources().get('object_store_memory', 0) / 2**30:.1f} GiB")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        ml = shared_movielens_dir()
        if ml and not args.skip_movielens:
            results.append(run_one("ml-latest-small", read_movielens(ml), f"{tmp}/ml"))
        elif not args.skip_movielens:
            print("ml-latest-small not found: skipped (set RAYREC_MOVIELENS_DIR)")
        if args.synthetic:
            n = args.synthetic
            cfg = SyntheticConfig(n_users=max(100, n // 80), n_items=max(100, n // 300), n_ratings=n, seed=0)
            t = time.perf_counter()
            folder = generate(Path(tmp) / "syn", cfg)
            data = read_movielens(folder, source=f"synthetic {n:,}")
            print(f"\n(synthetic {n:,} ratings generated and read in {time.perf_counter() - t:.1f}s; "
                  f"{cfg.n_users:,} users, {cfg.n_items:,} items)")
            results.append(run_one(f"synthetic {n:,}", data, f"{tmp}/syn-out", with_pandas=not args.skip_pandas))
    print("\nsummary")
    for r in results:
        print(f"  {r['name']:<22} ray {r['ray_s']:6.1f}s  pandas {r['pandas_s']:6.1f}s  "
              f"ratio {r['pandas_s'] / r['ray_s']:.2f}  peak PSS ray {r['ray_pss_gib']:.2f} GiB, "
              f"pandas {r['pandas_pss_gib']:.2f} GiB  agree {r['agree']}")
    return 0 if all(r["agree"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: generate a synthetic dataset at ml-25m scale and report time, throughput and memory.

    python tests/perf/bench_synthetic.py                      # 162k users, 62k items, 25M ratings
    python tests/perf/bench_synthetic.py --ratings 2500000    # users scale with ratings
    python tests/perf/bench_synthetic.py --out /data/syn25m   # keep the files

Peak memory is the process's high-water mark (``ru_maxrss``, which includes the interpreter and
imports) and the highest RSS psutil saw while generating (sampled every 50 ms).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from rayrec.data.synthetic import SyntheticConfig, generate

ML25M_USERS, ML25M_ITEMS, ML25M_RATINGS = 162_000, 62_000, 25_000_000


class _PeakRss:
    """Samples this process's RSS in a thread; ``peak`` is the highest value seen, in bytes."""

    def __init__(self, interval: float = 0.05) -> None:
        self.process = psutil.Process()
        self.peak = self.process.memory_info().rss
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> _PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratings", type=int, default=ML25M_RATINGS)
    parser.add_argument("--users", type=int, help=f"default: {ML25M_USERS:,} scaled by ratings / 25M")
    parser.add_argument("--items", type=int, default=ML25M_ITEMS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="output folder, kept (default: a temporary folder, removed)")
    args = parser.parse_args(argv)
    users = args.users or max(1, round(ML25M_USERS * args.ratings / ML25M_RATINGS))
    config = SyntheticConfig(n_users=users, n_items=args.items, n_ratings=args.ratings, seed=args.seed)
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-synthetic-"))
    if (out / "SYNTHETIC.json").exists():
        print(f"note: {out} already holds a dataset; if it matches, nothing is generated", file=sys.stderr)
    print(f"config: {config}")
    rss_before = psutil.Process().memory_info().rss
    try:
        with _PeakRss() as rss:
            started = time.perf_counter()
            generate(out, config, progress=True)
            wall = time.perf_counter() - started
        marker = json.loads((out / "SYNTHETIC.json").read_text())
        n = marker["ratings"]
        print(f"wall time:        {wall:,.1f} s")
        print(f"ratings:          {n:,} ({n / config.n_ratings - 1:+.3%} vs requested), tags: {marker['tags']:,}")
        print(f"throughput:       {n / wall:,.0f} ratings/s")
        print(f"peak RSS (ru_maxrss):       {_mib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)}")
        print(f"peak RSS (psutil, sampled): {_mib(rss.peak)} (before generating: {_mib(rss_before)})")
        for name, size in sorted(marker["bytes"].items()):
            print(f"  {name:<12} {_mib(size):>12}")
        print(f"  total        {_mib(sum(marker['bytes'].values())):>12}  in {out}")
    finally:
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()

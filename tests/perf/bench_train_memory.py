"""Benchmark: the memory of one training job, and of the samples it holds.

    python tests/perf/bench_train_memory.py --artifacts DIR [--model ranker] [--epochs 1]

On a features version already built under ``DIR`` (e.g. ``python -m pipelines.synthetic --out D
--users 32508 --items 12485 --ratings 5000000`` then ``python -m pipelines.features --dataset D
--artifacts DIR``), two measurements, each in a fresh process:

1. the samples: ``open_features`` alone, and the growth of that process's RSS once loaded (garbage
   collected, Arrow's pool trimmed), per sample: what the training job's driver holds for the whole job;
2. the job: ``python -m pipelines.train --model M --epochs E --no-publish``, with the peak memory of its
   whole process tree (Ray's processes included; PSS sampled every 0.5 s by
   :class:`rayrec.costs.TreeMemory`, as the scale run reports it), when the peak came, its wall time,
   and the job's own summary (its metrics, to compare runs of two versions of the code).

Run it with the ``PYTHONPATH`` of the code to measure (``platform`` and the repository root): two
checkouts of the code give a before and an after on the same features.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SAMPLES = """
import gc, sys, psutil, pyarrow as pa
from rayrec.training.data import open_features
p = psutil.Process(); gc.collect(); before = p.memory_info().rss
fv = open_features(sys.argv[1])
gc.collect(); pa.default_memory_pool().release_unused()
grown = p.memory_info().rss - before
n = len(fv.train) + len(fv.test)
print(f"{n} {grown}")
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--artifacts", required=True, help="artifacts folder holding the features version")
    p.add_argument("--model", default="ranker", choices=["ranker", "retriever"])
    p.add_argument("--epochs", type=int, default=1)
    args = p.parse_args(argv)
    from rayrec.costs import TreeMemory

    env = {**os.environ}
    env.setdefault("PYTHONPATH", f"{ROOT / 'platform'}{os.pathsep}{ROOT}")
    out = subprocess.run([sys.executable, "-c", SAMPLES, args.artifacts], env=env, capture_output=True, text=True, check=True)
    n, grown = (int(x) for x in out.stdout.split()[-2:])
    print(f"samples: {n:,}; RSS once loaded {grown / 2**30:.2f} GiB, {grown / max(n, 1):.0f} bytes a sample")

    cmd = [sys.executable, "-m", "pipelines.train", "--model", args.model, "--epochs", str(args.epochs), "--no-publish",
           "--artifacts", args.artifacts]  # fmt: skip
    t = time.perf_counter()
    job = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with TreeMemory(job.pid, interval=0.5) as mem:
        log = job.communicate()[0]
    took = time.perf_counter() - t
    summary = [line for line in log.splitlines() if line.split(" ", 1)[0] in ("test", "selection", "timings", "popularity")]
    print("\n".join(summary))
    print(f"{args.model} job: exit {job.returncode}, {took:.0f} s, peak {mem.peak / 2**30:.2f} GiB (PSS of the process tree) "
          f"at {mem.peak_at:.0f} s")  # fmt: skip
    if job.returncode != 0:
        print(log[-3000:])
    return job.returncode


if __name__ == "__main__":
    sys.exit(main())

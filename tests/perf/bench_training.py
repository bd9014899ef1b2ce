"""Training throughput: the same model on the same data in a plain single-process PyTorch loop, and on
Ray Train with 1 and 2 workers; samples/s of each and the ratios to the plain loop.

The data are the encoded training rows of a features version (the live one under the artifacts URI,
ml-latest-small after ``python -m pipelines.features``). Every setting trains the same model class
with the same config, batch size, optimizer and epochs; samples/s is the median over epochs after the
first (warm-up), counting training steps only (Ray Train: the loop's own ``samples_per_s``, measured
around the shard iteration, so validation-free, checkpoint-free). Ratios are to the plain loop with one
thread, the compute each Ray worker gets (0.5 CPU → 1 torch thread); the plain loop with all threads is
shown too. Ray start-up and the end-to-end wall time of each ``fit`` are printed: on small data they
dominate.

    .venv/bin/python tests/perf/bench_training.py [--model ranker|retriever] [--epochs 4] [--workers 1 2]

On a shared 2-core machine the figures are pessimistic and noisy; rerun for stable numbers.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

from rayrec.config import default_artifacts
from rayrec.models import model_config
from rayrec.models.inputs import encode_pairs, to_tensors
from rayrec.training import default_train_config
from rayrec.training.data import open_features, to_dataset
from rayrec.training.jobs import ranker_rows, retriever_rows
from rayrec.training.loop import make_optimizer
from rayrec.training.tasks import HISTORY_END, HISTORY_LEN, RankTask, RetrieveTask
from rayrec.training.trainer import fit


def build(name: str, fv) -> tuple[object, object, dict[str, np.ndarray]]:  # noqa: ANN001
    """(task without validation, Ray Dataset, encoded arrays) of the whole training split."""
    mc = model_config(name)
    if name == "ranker":
        # the job's rows: the rated samples and, for the top-N objective, their sampled negatives
        rows = ranker_rows(fv.train, fv, mc, seed=0)
        arrays = encode_pairs(fv.spec, rows)
        return RankTask(mc, fv.spec.sizes, rows=len(rows)), to_dataset(rows, fv.spec), arrays
    rows, likes = retriever_rows(fv.train, fv.movies, mc.history_len)
    refs = (HISTORY_END, HISTORY_LEN)  # both loops gather each batch's histories from them (the task's loss)
    arrays = encode_pairs(fv.spec, rows) | {c: rows[c].to_numpy(np.int64) for c in refs}
    counts = np.bincount(arrays["item_id"], minlength=fv.spec.sizes["item_vocab"])
    task = RetrieveTask(mc, fv.spec.sizes, rows=len(rows), item_counts=counts, history_likes=fv.spec.vocabs["item"].lookup(likes))
    return task, to_dataset(rows, fv.spec, carry=refs), arrays


def plain_loop(task, arrays: dict[str, np.ndarray], tc) -> list[float]:  # noqa: ANN001
    """The reference: one process, tensors in memory, shuffled index batches."""
    torch.manual_seed(tc.seed)
    torch.set_flush_denormal(True)
    model = task.build()
    opt = make_optimizer(model, tc, lazy=tc.lazy_tables)  # the training loop's optimizer for one CPU worker
    data = to_tensors(arrays)
    n = len(arrays["item_id"])
    rates = []
    for _ in range(tc.epochs):
        model.train()
        perm = torch.randperm(n)
        t0, seen = time.perf_counter(), 0
        for start in range(0, n, tc.batch_size):
            idx = perm[start : start + tc.batch_size]
            if task.drop_last and len(idx) < tc.batch_size:
                break
            batch = {k: v[idx] for k, v in data.items()}
            loss = task.loss(model, model, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(idx)
        if hasattr(opt, "flush"):
            opt.flush()  # as the training loop does at each epoch's end
        rates.append(seen / (time.perf_counter() - t0))
    return rates


def steady(rates: list[float]) -> float:
    return statistics.median(rates[1:] if len(rates) > 1 else rates)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["ranker", "retriever"], default="ranker")
    parser.add_argument("--artifacts", default=None)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args(argv)

    try:
        fv = open_features(args.artifacts or default_artifacts())
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import ray

    t = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    ray_start = time.perf_counter() - t
    tc = default_train_config(args.model, epochs=args.epochs, batch_size=args.batch_size, schedule="constant")
    task, ds, arrays = build(args.model, fv)
    n = len(arrays["item_id"])
    print(f"{args.model}: {n:,} training rows (features {fv.version}), batch {tc.batch_size}, {tc.epochs} epochs; "
          f"ray.init {ray_start:.1f}s; torch threads in this process {torch.get_num_threads()}")  # fmt: skip

    results: list[tuple[str, float, float, str]] = []
    threads = torch.get_num_threads()
    # the plain loop with 1 thread like each Ray worker (0.5 CPU each), then with this process's threads
    for n_threads in sorted({1, threads}):
        torch.set_num_threads(n_threads)
        t = time.perf_counter()
        rates = plain_loop(task, arrays, tc)
        results.append((f"plain PyTorch ({n_threads} thr)", steady(rates), time.perf_counter() - t, ""))
    torch.set_num_threads(threads)
    for w in args.workers:
        with tempfile.TemporaryDirectory() as storage:
            t = time.perf_counter()
            # fractional CPUs: 2 workers × 1 CPU with a Ray Data shard each starves on 2 cores
            out = fit(task, ds, tc.with_(num_workers=w, cpus_per_worker=0.5), name=f"bench-{w}", storage=storage)
            wall = time.perf_counter() - t
        rates = [h["samples_per_s"] for h in out.progress["history"]]
        worker_threads = out.progress["history"][-1].get("torch_threads", "?")
        # of the steady epochs' training time: waiting for input, and for the first batch alone
        later = out.progress["history"][1:] or out.progress["history"]
        wait = statistics.median(h["input_wait_s"] / h["train_s"] for h in later)
        first = statistics.median(h["first_batch_s"] for h in later)
        results.append((f"Ray Train, {w} worker(s) ({worker_threads} thr)", steady(rates), wall, f"{wait:.1%} ({first:.2f} s first batch)"))

    base = results[0][1]  # the plain loop, 1 thread: the same compute each Ray worker gets
    print(f"\n{'setting':<34} {'samples/s':>12} {'ratio':>7} {'wall s':>8}  input wait")
    for name, rate, wall, wait in results:
        print(f"{name:<34} {rate:>12,.0f} {rate / base:>7.2f} {wall:>8.1f}  {wait}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

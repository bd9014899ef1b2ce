"""Benchmark: the whole offline job at several sizes, and how its cost grows (the scale run's table).

    python tests/perf/bench_scale.py                                   # 1M and 5M ratings, 1 epoch
    python tests/perf/bench_scale.py --ratings 1000000,5000000,25000000 --epochs 1 --out /tmp/scale
    python tests/perf/bench_scale.py --ratings 5000000 --object-store-gib 2   # a capped object store

Each size runs ``python -m pipelines.main --dataset synthetic --ratings N --epochs E --no-serve`` in a
fresh process (a fresh local Ray), reads the ``reports/costs.json`` it writes (wall time, peak memory
of the whole process tree, ratings/s per step) and prints one table of every step at every size, with
each step's growth against the size before it (1.0× per size ratio = linear). A size that fails (out of
memory, say) is reported with its exit code and the end of its output; the sizes after it still run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_size(ratings: int, epochs: int, out: Path, data: Path, timeout_s: float, store_gib: float | None = None) -> dict:
    art = out / f"artifacts-{ratings}"
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'platform'}{os.pathsep}{ROOT}", "RAYREC_DATA": str(data)}
    cmd = [sys.executable, "-m", "pipelines.main", "--dataset", "synthetic", "--ratings", str(ratings),
           "--epochs", str(epochs), "--no-serve", "--artifacts", str(art)]  # fmt: skip
    if store_gib is not None:
        cmd += ["--object-store-gib", str(store_gib)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
    took = time.perf_counter() - t
    if proc.returncode != 0:
        return {"ratings": ratings, "rc": proc.returncode, "wall_s": took, "tail": (proc.stdout + proc.stderr)[-2000:]}
    costs = json.loads((art / "reports" / "costs.json").read_text())
    return {"ratings": ratings, "rc": 0, "wall_s": took, "object_store_gib": store_gib, "costs": costs}


def table(results: list[dict]) -> str:
    ok = [r for r in results if r["rc"] == 0]
    steps = [s["step"] for s in ok[0]["costs"]["steps"]] + ["total"] if ok else []
    head = "| step | " + " | ".join(f"{r['ratings']:,}: wall / peak GiB / rows/s" for r in ok) + " | growth (wall, peak) per size step |"
    lines = [head, "|" + "---|" * (len(ok) + 2)]
    for name in steps:
        cells, growth = [], []
        prev = None
        for r in ok:
            by = {s["step"]: s for s in r["costs"]["steps"]}
            s = by.get(name) or r["costs"]["total"]
            at = f" (at {s['peak_at_s']:.0f}s)" if "peak_at_s" in s else ""  # when in the step the peak came
            cells.append(f"{s['wall_s']:.1f}s / {s['peak_bytes'] / 2**30:.2f}{at} / {s['rows_per_s']:,.0f}")
            if prev is not None:
                size = r["ratings"] / prev[0]
                growth.append(f"×{size:g} data: wall ×{s['wall_s'] / max(prev[1], 1e-9):.2f}, peak ×{s['peak_bytes'] / max(prev[2], 1):.2f}")
            prev = (r["ratings"], s["wall_s"], s["peak_bytes"])
        lines.append(f"| {name} | " + " | ".join(cells) + " | " + "; ".join(growth) + " |")
    for r in results:
        if r["rc"] != 0:
            lines.append(f"\n{r['ratings']:,} ratings FAILED (exit {r['rc']}) after {r['wall_s']:.0f}s:\n{r['tail']}")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ratings", default="1000000,5000000", help="comma-separated sizes, smallest first")
    p.add_argument("--epochs", type=int, default=1, help="epochs per model (the default job trains up to 12)")
    p.add_argument("--out", default=None, help="folder for the artifacts and the data cache (default: a temp dir)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds one size may take")
    p.add_argument("--object-store-gib", type=float, default=None,
                   help="the main job's --object-store-gib (default: the job's own default)")
    args = p.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="rayrec-scale-"))
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for n in [int(x) for x in args.ratings.split(",")]:
        print(f"== {n:,} ratings …", flush=True)
        r = run_size(n, args.epochs, out, out / "data", args.timeout, args.object_store_gib)
        print(f"   {'ok' if r['rc'] == 0 else 'FAILED'} in {r['wall_s']:.0f}s", flush=True)
        results.append(r)
    print(table(results))
    (out / "scale.json").write_text(json.dumps(results, indent=1))
    print(f"results: {out / 'scale.json'}")
    return 0 if all(r["rc"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

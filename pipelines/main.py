"""The whole job on one machine: features → train both models → index → serve.

    python -m pipelines.main [--dataset auto] [--artifacts DIR] [--store URL] [--port 8000] [--no-serve]

Embedded defaults: dataset ``auto`` (MovieLens if found locally, else synthetic), local artifacts under
./artifacts, the SQLite online store in the artifacts folder, a local Ray. Each step is the same job
a cluster runs with ``ray job submit`` (pipelines.features, .train, .index, .serve), called in-process
so they share one Ray session. Ends by serving until Ctrl-C, after printing the URL and an example curl.
"""

from __future__ import annotations

import argparse
import sys
import time

from pipelines import features, index, serve, train
from pipelines._common import init_ray, setup_logging
from rayrec.reaper import become_subreaper
from rayrec.serving.ingress import MODES, IngressUnavailable


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Run the whole pipeline on the embedded defaults, then serve.")
    p.add_argument("--dataset", default="auto")
    p.add_argument("--artifacts", default=None, help="artifacts URI (default: ./artifacts)")
    p.add_argument("--store", default="default", help="online store URL ('default' = embedded SQLite)")
    p.add_argument("--num-workers", type=int, default=1, help="Ray Train workers per model")
    p.add_argument("--epochs", type=int, default=None, help="override the models' default epochs")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--ingress", choices=MODES, default=None,
                   help="Serve's front door: haproxy, Serve's Python proxy, or auto (haproxy when installed; "
                   "default: RAYREC_INGRESS, else auto)")
    p.add_argument("--no-serve", action="store_true", help="stop after the offline steps")
    args = p.parse_args(argv)
    setup_logging()
    if not args.no_serve:
        become_subreaper()  # before Ray starts: no child outlives the job (pipelines.serve --blocking reaps)
    try:
        init_ray(ingress=args.ingress)
    except (IngressUnavailable, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    common = ["--artifacts", args.artifacts] if args.artifacts else []
    store = [] if args.store == "default" else ["--store", args.store]
    started = time.perf_counter()

    def step(name: str, fn, argv: list[str]) -> None:
        print(f"\n=== {name} ===", flush=True)
        t = time.perf_counter()
        rc = fn(argv)
        if rc:
            raise SystemExit(f"{name} failed (exit {rc})")
        print(f"=== {name} done in {time.perf_counter() - t:.1f}s ===", flush=True)

    step("features", features.main, ["--dataset", args.dataset, "--online-store", args.store, *common])
    epochs = ["--epochs", str(args.epochs)] if args.epochs else []
    for model in ("ranker", "retriever"):
        step(f"train {model}", train.main, ["--model", model, "--num-workers", str(args.num_workers), *epochs, *common])
    step("index", index.main, common)
    print(f"\noffline pipeline finished in {time.perf_counter() - started:.0f}s", flush=True)
    if args.no_serve:
        return 0
    return serve.main([*common, *store, "--port", str(args.port), "--blocking"])


if __name__ == "__main__":
    sys.exit(main())

"""The whole job on one machine: features → train both models → index → serve.

    python -m pipelines.main [--dataset auto] [--artifacts DIR] [--store URL] [--port 8000] [--no-serve]
    python -m pipelines.main --dataset synthetic --ratings 25000000 [--users N --items N] --no-serve

Embedded defaults: dataset ``auto`` (MovieLens if found locally, else synthetic), local artifacts under
./artifacts, the SQLite online store in the artifacts folder, a local Ray. Each step is the same job
a cluster runs with ``ray job submit`` (pipelines.features, .train, .index, .serve), called in-process
so they share one Ray session. Ends by serving until Ctrl-C, after printing the URL and an example curl.

After the offline steps it prints what each cost (wall time, peak memory of the whole process tree
with Ray's processes, ratings per second; :mod:`rayrec.costs`) and writes it to
``<artifacts>/reports/costs.json``. ``--ratings`` sizes the synthetic dataset (generated once into
the data cache, its own step); users and items follow ml-25m's proportions unless given.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from pipelines import features, index, serve, train
from pipelines._common import HelpFormatter, artifacts_arg, init_ray, setup_logging
from rayrec import headlines, uri
from rayrec.console import Console, interruptible, ray_logs_dir
from rayrec.costs import Costs, format_costs, release_memory
from rayrec.reaper import become_subreaper
from rayrec.reports import write_report
from rayrec.runtime import DEFAULT_OBJECT_STORE_GIB, OBJECT_STORE_ENV
from rayrec.serving.ingress import DOOR_NAMES, INGRESS_ENV, MODES, IngressUnavailable


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Run the whole pipeline on the embedded defaults, then serve.",
                                formatter_class=HelpFormatter)
    p.add_argument("--dataset", default="auto", help="auto, synthetic, ml-latest-small, …, or a MovieLens folder")
    p.add_argument("--artifacts", default=None, help="artifacts URI (default: RAYREC_ARTIFACTS or ./artifacts)")
    p.add_argument("--store", default="default", help="online store URL ('default' = embedded SQLite)")
    p.add_argument("--num-workers", type=int, default=1, help="Ray Train workers per model")
    p.add_argument("--epochs", type=int, default=None, help="override the models' default epochs")
    p.add_argument("--port", type=int, default=8000, help="HTTP port")
    p.add_argument("--ingress", choices=MODES, default=None,
                   help="Serve's front door: haproxy, Serve's Python proxy, or auto (haproxy when installed; "
                   "default: RAYREC_INGRESS, else auto)")
    p.add_argument("--no-serve", action="store_true", help="stop after the offline steps")
    p.add_argument("--ratings", type=int, default=None,
                   help="with --dataset synthetic: generate this many ratings (users and items scale with it)")
    p.add_argument("--users", type=int, default=None, help="with --ratings: synthetic users (default: ml-25m's share)")
    p.add_argument("--items", type=int, default=None, help="with --ratings: synthetic items (default: ml-25m's share)")
    p.add_argument("--object-store-gib", type=float, default=None,
                   help="size of the local Ray's object store, GiB; objects beyond it spill to disk (default: "
                   f"{OBJECT_STORE_ENV}, else {DEFAULT_OBJECT_STORE_GIB:g} GiB or 30%% of memory where less)")
    p.add_argument("-v", "--verbose", action="store_true", help="print everything (Ray's output included) as it comes")
    p.set_defaults(synthetic=None)  # the SyntheticConfig of --ratings
    args = p.parse_args(argv)
    artifacts = artifacts_arg(args.artifacts)
    if args.object_store_gib is not None:
        if not 0 < args.object_store_gib < float("inf"):
            p.error(f"--object-store-gib must be a positive number of GiB (got {args.object_store_gib:g})")
        os.environ[OBJECT_STORE_ENV] = repr(args.object_store_gib)  # read by init_ray
    if args.ratings is None and (args.users is not None or args.items is not None):
        p.error("--users and --items size a synthetic dataset: give --ratings too")
    if args.ratings is not None:
        if args.dataset != "synthetic":
            p.error(f"--ratings sizes a synthetic dataset: use --dataset synthetic (got --dataset {args.dataset})")
        try:
            args.synthetic = scaled_synthetic(args.ratings, args.users, args.items)
        except ValueError as e:
            p.error(str(e))
    if args.verbose:
        setup_logging(True)
        console = None
    else:
        import ray  # noqa: F401  (Ray configures its loggers on import; the console then routes them)

        console = Console(uri.join(artifacts, "logs") if "://" not in artifacts else "logs")
        console.capture_logging()
    say = console.say if console else print
    if not args.no_serve:
        become_subreaper()  # before Ray starts: no child outlives the job (serving reaps what is left)
    try:
        init_ray(ingress=args.ingress)
    except (IngressUnavailable, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        return _run(args, artifacts, console, say)
    except KeyboardInterrupt:
        say("interrupted")
        serve.stop(local=True)
        return 130
    finally:
        if console:
            console.close()


def _run(args: argparse.Namespace, artifacts: str, console: Console | None, say) -> int:  # noqa: ANN001
    import ray

    ray.data.DataContext.get_current().enable_progress_bars = False
    if console:
        console.route_ray_loggers()
        console.capture_workers()
        console.total = 5 if args.no_serve else 6
        res = ray.cluster_resources()
        say(f"rayrec: the whole pipeline on a local Ray ({res.get('CPU', 0):g} CPUs, "
            f"object store {res.get('object_store_memory', 0) / 2**30:.1f} GiB)")
        say(f"        logs: this job {console.log_path}; Ray's workers {console.workers_path}; Ray {ray_logs_dir()}")
    common = ["--artifacts", artifacts]
    store = [] if args.store == "default" else ["--store", args.store]
    epochs = ["--epochs", str(args.epochs)] if args.epochs else []
    # the local Ray runs one step at a time: a model's workers share the machine's cores (a worker
    # reserves half a CPU, and Ray would start it on one thread)
    threads = ["--threads", str(max(1, len(os.sched_getaffinity(0)) // args.num_workers))]
    started = time.perf_counter()
    costs = Costs()

    def step(name: str, fn, argv: list[str], headline=None) -> None:  # noqa: ANN001
        interruptible()  # a training step leaves Ray Train's SIGINT handler behind
        release_memory()  # what the step before freed, so that its high-water mark is not this step's floor
        with costs.step(name):
            if console:
                console.step(name, lambda: fn(argv), headline)
                return
            rc = fn(argv)
        if rc:
            raise SystemExit(f"{name} failed (exit {rc})")

    dataset = args.dataset
    if args.synthetic is not None:
        if console:
            console.total += 1
        held: dict[str, str] = {}

        def generate(_: list[str]) -> int:
            from rayrec.data.source import synthetic_folder

            held["folder"] = str(synthetic_folder(args.synthetic))
            return 0

        cfg = args.synthetic
        step("data", generate, [], lambda: f"synthetic: {cfg.n_ratings:,} ratings, {cfg.n_users:,} users, "
             f"{cfg.n_items:,} items at {held['folder']}")
        dataset = held["folder"]
    step("features", features.main, ["--dataset", dataset, "--online-store", args.store, *common],
         lambda: headlines.features_line(artifacts))
    stats = headlines.latest_json(artifacts, "features", "stats.json")
    costs.rows = int(stats.get("ratings") or 0)
    if console:
        say(f"        dataset: {stats.get('source')}")
    for model in ("ranker", "retriever"):
        step(model, train.main, ["--model", model, "--num-workers", str(args.num_workers), *threads, *epochs, *common],
             lambda m=model: headlines.model_line(artifacts, m))
    step("index", index.main, common, lambda: headlines.index_line(artifacts))
    report: dict[str, str] = {}

    def write(_: list[str]) -> int:
        report["path"] = write_report(artifacts)
        return 0

    step("report", write, [], lambda: f"features, training curves, evaluation: {report['path']}")
    interruptible()
    say(f"offline pipeline finished in {time.perf_counter() - started:.0f}s; what each step cost "
        f"(peak memory: this process and Ray's, together):")
    for line in format_costs(costs):
        say(f"        {line}")
    uri.makedirs(uri.join(artifacts, "reports"))
    uri.write_json(uri.join(artifacts, "reports", "costs.json"), costs.to_dict())
    if args.no_serve:
        return 0
    holder: dict[str, str] = {}

    def deploy(_: list[str]) -> int:
        holder["url"] = serve.deploy(artifacts, None if args.store == "default" else args.store, port=args.port)
        return 0

    if console:
        step("serve", deploy, store, lambda: f"front door {DOOR_NAMES.get(os.environ.get(INGRESS_ENV, ''), 'Serve')}")
        console.route_ray_loggers()  # Serve configured its loggers on start
    else:
        deploy([])
    say(serve.banner(holder["url"], os.environ.get(INGRESS_ENV)))
    say(f"the report (pictures): {holder['url']}/report")
    node = next((n for n in ray.nodes() if n.get("Alive") and n.get("MetricsExportPort")), None)
    if node:
        say(f"Prometheus metrics (ray_rayrec_*): http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics")
    say("Ctrl-C stops serving and Ray.")
    serve.serve_until_interrupted(local=True, say=say)
    return 0


# ml-25m's shape: 25,000,095 ratings by 162,541 users of 62,423 movies
_ML25M = (25_000_095, 162_541, 62_423)


def scaled_synthetic(ratings: int, users: int | None = None, items: int | None = None):  # noqa: ANN201
    """The SyntheticConfig of a scale run: ``ratings`` ratings, users and items in ml-25m's
    proportions unless given (at least 50 users and 100 items, and items enough that the average
    user rates at most a quarter of them)."""
    from rayrec.data.synthetic import SyntheticConfig

    if ratings < 1:
        raise ValueError(f"--ratings must be ≥ 1, got {ratings}")
    n, u, i = _ML25M
    users = users if users is not None else max(50, round(ratings * u / n))
    # enough items that users rate at most a quarter of them on average (each may rate up to half)
    items = items if items is not None else max(100, round(ratings * i / n), -(-4 * ratings // users))
    return SyntheticConfig(n_users=users, n_items=items, n_ratings=ratings)  # checks that they fit


if __name__ == "__main__":
    sys.exit(main())

"""The whole job on one machine: features → train both models → index → serve.

    python -m pipelines.main [--dataset auto] [--artifacts DIR] [--store URL] [--port 8000] [--no-serve]

Embedded defaults: dataset ``auto`` (MovieLens if found locally, else synthetic), local artifacts under
./artifacts, the SQLite online store in the artifacts folder, a local Ray. Each step is the same job
a cluster runs with ``ray job submit`` (pipelines.features, .train, .index, .serve), called in-process
so they share one Ray session. Ends by serving until Ctrl-C, after printing the URL and an example curl.
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
from rayrec.reaper import become_subreaper
from rayrec.reports import write_report
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
    p.add_argument("-v", "--verbose", action="store_true", help="print everything (Ray's output included) as it comes")
    args = p.parse_args(argv)
    artifacts = artifacts_arg(args.artifacts)
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
        say(f"rayrec: the whole pipeline on a local Ray ({ray.cluster_resources().get('CPU', 0):g} CPUs)")
        say(f"        logs: this job {console.log_path}; Ray's workers {console.workers_path}; Ray {ray_logs_dir()}")
    common = ["--artifacts", artifacts]
    store = [] if args.store == "default" else ["--store", args.store]
    epochs = ["--epochs", str(args.epochs)] if args.epochs else []
    started = time.perf_counter()

    def step(name: str, fn, argv: list[str], headline=None) -> None:  # noqa: ANN001
        interruptible()  # a training step leaves Ray Train's SIGINT handler behind
        if console:
            console.step(name, lambda: fn(argv), headline)
            return
        rc = fn(argv)
        if rc:
            raise SystemExit(f"{name} failed (exit {rc})")

    step("features", features.main, ["--dataset", args.dataset, "--online-store", args.store, *common],
         lambda: headlines.features_line(artifacts))
    if console:
        say(f"        dataset: {headlines.latest_json(artifacts, 'features', 'stats.json').get('source')}")
    for model in ("ranker", "retriever"):
        step(model, train.main, ["--model", model, "--num-workers", str(args.num_workers), *epochs, *common],
             lambda m=model: headlines.model_line(artifacts, m))
    step("index", index.main, common, lambda: headlines.index_line(artifacts))
    report: dict[str, str] = {}

    def write(_: list[str]) -> int:
        report["path"] = write_report(artifacts)
        return 0

    step("report", write, [], lambda: f"features, training curves, evaluation: {report['path']}")
    interruptible()
    say(f"offline pipeline finished in {time.perf_counter() - started:.0f}s")
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


if __name__ == "__main__":
    sys.exit(main())

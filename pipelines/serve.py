"""The serving job: deploy the recommender on Ray Serve and print where it answers.

    python -m pipelines.serve [--artifacts URI] [--store URL] [--port 8000] [--host 127.0.0.1]
                              [--composition fused|ranker|chain] [--ingress auto|haproxy|proxy]
                              [--blocking] [--reload] [--allow-open]

The API token comes from the environment (``RAYREC_API_TOKEN`` or ``RAYREC_API_TOKEN_FILE``, never a
flag: other users can read a command line); a non-loopback ``--host`` without one is refused unless
``--allow-open`` (see rayrec.serving.security).

Single-node local mode by default (a local Ray is started; its front door, HAProxy where installed or
Serve's Python proxy, listens on 127.0.0.1: see rayrec.serving.ingress).
``--reload`` re-reads the registry's LATEST pointers of a running app through ``user_config``
(a hot swap: no replica restarts, no failed request). The same app deploys to a cluster with the
Serve config: ``serve deploy serve_apps/config.yaml`` (``serve run serve_apps/config.yaml`` locally).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
import urllib.request
from typing import Any

from pipelines._common import HelpFormatter, add_common_args, artifacts_arg, init_ray, setup_logging
from rayrec import reaper, secrets
from rayrec.serving.ingress import DOOR_NAMES, INGRESS_ENV, MODES, IngressUnavailable
from rayrec.serving.security import SecurityConfig, check_bind

log = logging.getLogger("pipelines.serve")

APP_NAME = "rayrec"


def deploy(
    artifacts: str | None = None,
    store: str | None = None,
    *,
    port: int = 8000,
    host: str = "127.0.0.1",
    composition: str = "fused",
    name: str = APP_NAME,
    route_prefix: str = "/",
    serving: dict[str, Any] | None = None,
    wait_s: float = 120.0,
    allow_open: bool | None = None,
    **overrides: Any,
) -> str:
    """Deploy the app on the running Ray (a local one is started if none) and return its URL once
    ``/healthz`` answers. Serve's HTTP options (host, port) are fixed when Serve first starts on a
    cluster; deploying again with other ones keeps the first. ``serving`` is the ServingConfig sent as
    ``user_config``; ``overrides`` are further :class:`serve_apps.recommender.AppArgs` fields. A
    non-loopback ``host`` needs an API token in the environment, or ``allow_open``."""
    from ray import serve

    from serve_apps.recommender import build_app

    check_bind(host, SecurityConfig.from_env(), allow_open)
    init_ray()
    serve.start(http_options={"host": host, "port": port, "request_timeout_s": 30})
    args: dict[str, Any] = {"artifacts": artifacts_arg(artifacts), "store": store, "composition": composition, **overrides}
    if serving is not None:
        args["serving"] = serving
    serve.run(build_app(args), name=name, route_prefix=route_prefix, blocking=False)
    host, port = _http_address(host, port)
    url = f"http://{host}:{port}{route_prefix.rstrip('/')}"
    _wait_healthy(url, wait_s)
    return url


def reload(name: str = APP_NAME, **deploy_kwargs: Any) -> str:
    """Pick up new LATEST versions in a running app: redeploy with a new ``generation`` in the
    serving config; Serve calls ``reconfigure`` on the live replicas (no restart)."""
    serving = dict(deploy_kwargs.pop("serving", None) or {})
    serving["generation"] = time.time_ns() // 1_000_000
    return deploy(name=name, serving=serving, **deploy_kwargs)


def _http_address(host: str, port: int) -> tuple[str, int]:
    """Where Serve's proxy really listens: HTTP options are fixed by the first start on a cluster."""
    try:
        from ray.serve.context import _get_global_client

        client = _get_global_client()
        if client is None:
            return host, port
        cfg = client.http_config
        if cfg.port != port or (cfg.host or host) != host:
            log.warning("Serve was already running on %s:%s; the app answers there", cfg.host, cfg.port)
        return (cfg.host or host), int(cfg.port)
    except Exception:  # private API moved: trust the arguments
        return host, port


def _wait_healthy(url: str, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=5) as r:
                if r.status == 200:
                    return
        except Exception as e:  # not up yet
            last = e
        time.sleep(0.5)
    raise TimeoutError(f"the app did not answer {url}/healthz within {wait_s:.0f}s (last error: {last})")


def banner(url: str, ingress: str | None = None) -> str:
    door = DOOR_NAMES.get(ingress or "")
    return "\n".join([
        f"rayrec is serving at {url}/  (web page; API docs at {url}/docs)" + (f"; front door: {door}" if door else ""),
        "try:",
        f"  curl '{url}/recommend?user_id=1&k=5'",
        f"  curl '{url}/similar?movie_id=1&k=5'",
        f"  curl -X POST {url}/events -H 'content-type: application/json' "
        "-d '{\"kind\": \"rating\", \"user_id\": 1, \"movie_id\": 1, \"value\": 4.5}'",
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(formatter_class=HelpFormatter, description="Serve the recommender on Ray Serve.")
    add_common_args(p)
    p.add_argument("--store", default=None, help="online store URL (default: SQLite under the artifacts)")
    p.add_argument("--host", default="127.0.0.1", help="HTTP host (127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port")
    p.add_argument("--composition", choices=("fused", "ranker", "chain"), default="fused",
                   help="fused: one deployment; ranker: a Ranker deployment apart; chain: three stages")
    p.add_argument("--ingress", choices=MODES, default=None,
                   help="front door of a local Ray's Serve: haproxy, Serve's Python proxy, or auto (haproxy "
                   "when installed; default: RAYREC_INGRESS, else auto). A cluster's own environment decides there")
    p.add_argument("--blocking", action="store_true", help="keep serving until Ctrl-C")
    p.add_argument("--reload", action="store_true", help="hot-swap a running app to the LATEST artifacts")
    p.add_argument("--allow-open", action="store_true",
                   help="serve a non-loopback --host without an API token (RAYREC_API_TOKEN / RAYREC_API_TOKEN_FILE): "
                   "anyone who reaches the port can then write events and items")  # fmt: skip
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    secrets.install()
    store = None if args.store in (None, "default") else args.store
    kwargs = dict(artifacts=args.artifacts, store=store, port=args.port, host=args.host, composition=args.composition,
                  allow_open=args.allow_open or None)  # fmt: skip
    try:
        check_bind(args.host, SecurityConfig.from_env(), args.allow_open or None)  # before Ray starts
        if args.blocking:
            reaper.become_subreaper()  # before Ray: orphaned descendants (HAProxy) come back to this job
        init_ray(args.address, ingress=args.ingress)
        url = reload(**kwargs) if args.reload else deploy(**kwargs)
    except (FileNotFoundError, TimeoutError, ValueError, IngressUnavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    local = not (args.address or os.environ.get("RAY_ADDRESS"))  # a cluster's own environment chose its ingress
    print(banner(url, os.environ.get(INGRESS_ENV) if local else None), flush=True)
    if args.blocking:
        serve_until_interrupted(local)
    return 0


def serve_until_interrupted(local: bool, say=print) -> None:  # noqa: ANN001
    """Block until Ctrl-C (or SIGTERM, SIGHUP), then stop Serve and, for a Ray this job started, Ray: within
    seconds, leaving no process behind. Ray Train's SIGINT handler (left installed by a training step
    in the same process) is replaced first, so Ctrl-C reaches this loop."""
    import signal

    from rayrec.console import interruptible

    interruptible()
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGHUP, _raise_interrupt)  # a closed terminal
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        say("stopping: Serve, then Ray …")
        t = time.perf_counter()
        stop(local)
        say(f"stopped in {time.perf_counter() - t:.1f}s")
        # Everything is shut down; the interpreter's own teardown after Ray's (native) shutdown took
        # a further 5 s here, so the job ends now.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _raise_interrupt(signum, frame) -> None:  # noqa: ANN001
    raise KeyboardInterrupt


def stop(local: bool, timeout_s: float = 2.0) -> None:
    """Shut Serve down (its controller stops the proxies, HAProxy included, and the replicas), waiting
    at most ``timeout_s``; then, when this job started its own Ray, Ray itself, and whatever process
    of this job's tree outlived it (a replica still draining, an HAProxy whose manager was killed).
    On a cluster Serve is shut down and only this job's connection ends."""
    import ray
    from ray import serve

    tree = _descendants() if local else []
    t = time.perf_counter()
    try:
        from ray.serve.context import _get_global_client

        client = _get_global_client()
        if client is not None:
            client.shutdown(timeout_s=timeout_s)
        serve.shutdown()  # forgets the client; nothing left to stop
    except Exception as e:  # Serve already gone, or the private API moved
        log.debug("Serve shutdown: %s", e)
    log.info("Serve shut down in %.1fs", time.perf_counter() - t)
    if not local:
        return
    t = time.perf_counter()
    ray.shutdown()
    log.info("Ray shut down in %.1fs", time.perf_counter() - t)
    _reap(tree)
    reaper.reap(timeout_s=2.0)  # orphans re-parented to this job (it is their subreaper), HAProxy's included


def _descendants() -> list[Any]:
    try:
        import psutil

        return psutil.Process().children(recursive=True)
    except Exception:  # psutil missing, or the process table unreadable
        return []


def _reap(procs: list[Any], grace_s: float = 2.0) -> None:
    """Terminate, then kill, the processes of ``procs`` (psutil handles taken before Ray stopped:
    a pid reused since is not touched) still running."""
    import psutil

    alive = [p for p in procs if p.is_running()]
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, alive = psutil.wait_procs(alive, timeout=grace_s)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    if alive:
        log.info("killed %d process(es) that outlived Ray", len(alive))


if __name__ == "__main__":
    sys.exit(main())

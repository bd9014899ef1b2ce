"""Deploying, reloading and stopping the recommender app on Ray Serve: what the serving job and the
main job do, kept here so the jobs stay thin.

The app is named by its builder's import path (``module:function``, default
``serve_apps.recommender:build_app``, as ``serve run`` and a Serve config name it), so this package
never imports the app's module itself. A local Ray is started when none is running
(:func:`rayrec.runtime.init_ray` joins ``RAY_ADDRESS`` otherwise).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from rayrec import reaper
from rayrec.config import default_artifacts
from rayrec.runtime import init_ray
from rayrec.serving.security import SecurityConfig, check_bind

__all__ = ["deploy", "reload", "stop", "serve_until_interrupted", "app_builder", "APP_NAME", "DEFAULT_APP"]

log = logging.getLogger("rayrec.serving.deploy")

APP_NAME = "rayrec"
DEFAULT_APP = "serve_apps.recommender:build_app"


def app_builder(path: str) -> Callable[[Any], Any]:
    """The app builder named ``module:function`` (a ValueError naming the path when it is not there)."""
    module, sep, name = path.partition(":")
    if not sep or not module or not name:
        raise ValueError(f"app {path!r}: expected an import path module:function, e.g. {DEFAULT_APP}")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"app {path!r} cannot be imported: {e}") from None
    if not callable(fn):
        raise ValueError(f"app {path!r} is not a function")
    return fn  # type: ignore[no-any-return]


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
    app: str = DEFAULT_APP,
    **overrides: Any,
) -> str:
    """Deploy the app on the running Ray (a local one is started if none) and return its URL once
    ``/healthz`` answers. Serve's HTTP options (host, port) are fixed when Serve first starts on a
    cluster; deploying again with other ones keeps the first. ``serving`` is the ServingConfig sent as
    ``user_config``; ``overrides`` are further fields of the app's args (``serve_apps.recommender.AppArgs``
    for the default ``app``, the builder's import path). A
    non-loopback ``host`` needs an API token in the environment, or ``allow_open``."""
    from ray import serve

    build_app = app_builder(app)
    check_bind(host, SecurityConfig.from_env(), allow_open)
    init_ray()
    serve.start(http_options={"host": host, "port": port, "request_timeout_s": 30})
    args: dict[str, Any] = {"artifacts": artifacts or default_artifacts(), "store": store, "composition": composition, **overrides}
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



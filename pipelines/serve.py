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
import os
import sys

from pipelines._common import HelpFormatter, add_common_args, init_ray, setup_logging
from rayrec import reaper, secrets
from rayrec.serving.deploy import APP_NAME, DEFAULT_APP, deploy, reload, serve_until_interrupted, stop
from rayrec.serving.ingress import DOOR_NAMES, INGRESS_ENV, MODES, IngressUnavailable
from rayrec.serving.security import SecurityConfig, check_bind

__all__ = ["main", "deploy", "reload", "stop", "serve_until_interrupted", "banner", "APP_NAME"]


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
    p.add_argument("--app", default=DEFAULT_APP, help="the app builder's import path (module:function)")
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
                  allow_open=args.allow_open or None, app=args.app)  # fmt: skip
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


if __name__ == "__main__":
    sys.exit(main())

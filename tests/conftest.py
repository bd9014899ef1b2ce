"""Shared fixtures: one local Ray for the whole session, test data, the real MovieLens copy."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Let tests import the pandas reference and factories beside them (tests/ is not a package).
sys.path.insert(0, str(Path(__file__).parent))

from rayrec.config import shared_movielens_dir  # noqa: E402


#: the ports Serve's HAProxy mode would take at fixed defaults (8404, 9101, 8500, 9500): on a machine
#: where other Serve instances start at the same time, checking that a default is free before Ray
#: starts leaves a race that another instance wins (HAProxy then exits: "cannot bind socket")
FIXED_PORTS = ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT",
               "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT", "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT")  # fmt: skip


#: Serve's checks of its proxy (HAProxy's manager), with room for a shared 2-core machine under heavy
#: load: at the defaults (ready within 5 s, health checks of 10 s) a load average of 70 got the proxy
#: killed as unhealthy while it was starting, and every deploy of the session failed
SLOW_MACHINE = {"RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": 60, "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": 60}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray with 2 CPUs, started once: Ray start-up costs seconds. Its Serve gets the front
    door the jobs would pick here (HAProxy where installed; ``RAYREC_INGRESS=proxy`` for Serve's proxy)."""
    import ray

    from rayrec.runtime import train_env
    from rayrec.serving.ingress import apply_ingress

    if not ray.is_initialized():
        for name in FIXED_PORTS:  # HAProxy's stats/metrics pages and the fallback proxy: never the shared defaults
            os.environ.setdefault(name, str(_free_port()))
        for name, seconds in SLOW_MACHINE.items():
            os.environ.setdefault(name, str(seconds))
        apply_ingress()
        train_env()
        ray.init(
            address="local",  # never attach to a cluster someone started with `ray start`
            num_cpus=2,
            include_dashboard=False,
            logging_level="WARNING",
            log_to_driver=False,
            runtime_env={"env_vars": {"RAY_DATA_DISABLE_PROGRESS_BARS": "1"}},
        )
        ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    # left running until the interpreter exits: later tests (serving) reuse it


@pytest.fixture(scope="session")
def movielens_dir() -> Path:
    found = shared_movielens_dir()
    if found is None:
        pytest.skip("MovieLens ml-latest-small not found (set RAYREC_MOVIELENS_DIR or place it at ../shared/data)")
    return found


@pytest.fixture(scope="session")
def movielens(movielens_dir):
    from rayrec.data import read_movielens

    return read_movielens(movielens_dir)


@pytest.fixture(scope="session")
def redis_down() -> str | None:
    """Why the Redis backend cannot be tested here, or None when Redis answers."""
    from realtime_doubles import redis_down as why

    return why()


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request, tmp_path, redis_down):
    """A fresh, empty store of each backend (Redis: a unique key prefix in a test db, removed after)."""
    from realtime_doubles import store_urls

    yield from store_urls(request.param, tmp_path)


@pytest.fixture
def store(store_url):
    from rayrec.store import open_store

    s = open_store(store_url)
    yield s
    s.close()


@pytest.fixture()
def artifacts(tmp_path) -> str:
    return str(tmp_path / "artifacts")


def pytest_configure(config):
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")

"""A Serve replica is SIGKILLed under a fixed request rate: a client that retries a failed request once
(an HTTP 5xx, a reset or refused connection, a timeout) loses none. The app runs two ingress replicas
behind the session's front door (HAProxy where installed) on a Ray of this test's own; Serve replaces
the killed replica, and the new one serves.

Loopback only; bounded: a fixed number of requests at a fixed rate."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest

APP = "rayrec-fault-kill"
RATE = 20.0  # requests per second, open loop: the schedule does not wait for answers
SECONDS = 24.0
KILL_AT_S = 8.0
TIMEOUT_S = 10.0  # one attempt's bound; a replica's answer takes well under 1 s at this rate


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def attempt(url: str) -> str:
    """``ok``, or the kind of failure: ``http_<code>``, ``timeout``, ``connection``."""
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as r:
            r.read()
            return "ok" if r.status == 200 else f"http_{r.status}"
    except urllib.error.HTTPError as e:
        return f"http_{e.code}"
    except TimeoutError:
        return "timeout"
    except (urllib.error.URLError, OSError) as e:
        return "timeout" if isinstance(getattr(e, "reason", None), TimeoutError) else "connection"


def ingress_replicas() -> dict[int, str]:
    """Pid → process title of the app's live ingress replicas: the worker processes of this test's
    own Ray (the local Ray's processes descend from this one) titled ``ray::ServeReplica:<app>:Ingress``."""
    out = {}
    for p in psutil.Process().children(recursive=True):
        try:
            title = " ".join(p.cmdline())
            if title.startswith(f"ray::ServeReplica:{APP}:Ingress") and p.status() != psutil.STATUS_ZOMBIE:
                out[p.pid] = title
        except psutil.Error:
            pass
    return out


def wait_for(what: str, check, timeout: float):  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout:.0f}s")


@pytest.mark.slow
def test_a_killed_replica_costs_a_client_that_retries_once_nothing(serving_artifacts) -> None:
    import ray
    from ray import serve

    from pipelines.serve import deploy
    from rayrec.runtime import init_ray

    init_ray()
    try:
        two = {"num_cpus": 0.1, "min_replicas": 2, "max_replicas": 2}
        base = deploy(serving_artifacts.artifacts, serving_artifacts.store, port=free_port(), name=APP, ingress=two)
        before = wait_for("two ingress replicas", lambda: (r := ingress_replicas()) and len(r) == 2 and r, 120)
        users = [int(u) for u in range(1, 60)]
        first: Counter[str] = Counter()
        final: Counter[str] = Counter()
        lock = threading.Lock()

        def request(i: int) -> None:
            url = f"{base}/recommend?user_id={users[i % len(users)]}&k=10"
            outcome = attempt(url)
            retried = outcome if outcome == "ok" else attempt(url)  # the one retry
            with lock:
                first[outcome] += 1
                final[retried] += 1

        killed: dict[int, int] = {}
        n = int(RATE * SECONDS)
        start = time.monotonic()
        with ThreadPoolExecutor(max_workers=32) as pool:
            for i in range(n):
                due = start + i / RATE
                if not killed and due - start >= KILL_AT_S:
                    pid = sorted(before)[0]
                    os.kill(pid, signal.SIGKILL)
                    killed[pid] = pid
                time.sleep(max(0.0, due - time.monotonic()))
                pool.submit(request, i)
        # Serve replaces the replica: two live ones again, the victim not among them
        after = wait_for("a replacement replica", lambda: (r := ingress_replicas()) and len(r) == 2 and not set(killed) & set(r) and r, 120)
        assert attempt(f"{base}/recommend?user_id=1&k=10") == "ok"
        print(f"\nreplica kill: {n} requests at {RATE:.0f}/s, killed pid {list(killed.values())} at {KILL_AT_S:.0f}s; "
              f"first attempts {dict(first)}, after one retry {dict(final)}; replicas {sorted(before)} -> "
              f"{sorted(after)}")  # fmt: skip
        assert sum(final.values()) == n
        assert final["ok"] == n, f"lost after one retry: {dict(final)} (first attempts {dict(first)})"
        serve.delete(APP)
    finally:
        serve.shutdown()
        ray.shutdown()

"""The serving job (``python -m pipelines.serve --blocking``, HAProxy front door where installed) gets
SIGTERM, SIGHUP or SIGINT on its whole process group, as a closed terminal or ``kill -- -PGID`` sends
(after checking, behind the real front door, that its token guards a per-user read: 401, 403, 200):
it exits, no process it started outlives it (HAProxy runs in a process group of its own, so the group
signal does not reach it), and its port is free again. Before that, HAProxy's listeners are checked:
all on loopback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def alive(pids: list[int]) -> list[str]:
    out = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            if p.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{pid} {' '.join(p.cmdline())[:120]}")
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=lambda s: s.name)
def test_no_process_outlives_the_serving_job(serving_artifacts, tmp_path, sig: signal.Signals) -> None:
    port = free_port()
    store = serving_artifacts.store.replace("sqlite://", "")
    token = "fault-test-token-" + os.urandom(8).hex()  # the replicas inherit it from the job's environment
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "platform"), str(ROOT)]), "RAY_ADDRESS": "",
           "RAYREC_API_TOKEN": token}  # fmt: skip
    log = open(tmp_path / "serve.log", "w")
    pids: list[int] = []
    job = subprocess.Popen([sys.executable, "-m", "pipelines.serve", "--artifacts", serving_artifacts.artifacts,
                            "--store", f"sqlite://{store}", "--port", str(port), "--blocking"],
                           cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            assert job.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(1)
        else:
            raise AssertionError("the serving job did not answer within 300 s")
        user = f"http://127.0.0.1:{port}/users/1"
        assert _status(user) == 401 and _status(user, "wrong-" + token) == 403 and _status(user, token) == 200
        time.sleep(2)  # the banner is printed after /healthz: the job is now waiting for a signal
        tree = psutil.Process(job.pid).children(recursive=True)
        pids[:] = [p.pid for p in tree]
        # HAProxy's listeners (the app, its stats page, its Prometheus exporter): all on loopback
        listening = [c for p in tree if p.name() == "haproxy" for c in _listening(p)]
        if any(p.name() == "haproxy" for p in tree):
            assert len(listening) >= 3 and all(a.ip in ("127.0.0.1", "::1") for a in listening), listening
        started = time.monotonic()
        os.killpg(job.pid, sig)
        rc = job.wait(90)
        assert rc == 0, f"the job did not exit cleanly on {sig.name} (exit {rc}): " + (tmp_path / "serve.log").read_text()[-2000:]
        took = time.monotonic() - started
        left = []
        for _ in range(50):  # the last ones are ending
            left = alive(pids)
            if not left:
                break
            time.sleep(0.2)
        assert not left, f"left running after {sig.name}: {left}"
        with socket.socket() as s:  # the port is free again (SO_REUSEADDR, as servers do: TIME_WAIT is not a listener)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
        print(f"\n{sig.name}: job exited in {took:.1f}s, {len(pids)} descendants, none left; listeners were {sorted({a.port for a in listening})} on loopback")
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
        for pid in pids:  # whatever a failed case left behind (HAProxy runs in a group of its own)
            try:
                psutil.Process(pid).kill()
            except psutil.Error:
                pass
        log.close()


def _listening(p: psutil.Process) -> list:
    try:
        return [c.laddr for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []


def _status(url: str, token: str | None = None) -> int:
    req = urllib.request.Request(url, headers={"authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code

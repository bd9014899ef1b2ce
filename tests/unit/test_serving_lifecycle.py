"""Bounds of the serving job's processes: HAProxy's stats and metrics listeners bind loopback only,
and no child process outlives the job on SIGINT, SIGTERM or SIGHUP, even one whose parent died first
(as Serve's HAProxy does when its actor is killed). Real processes, no Ray."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from rayrec.serving import ingress

ROOT = Path(__file__).resolve().parents[2]


def test_the_wrapper_binds_haproxy_stats_and_metrics_to_loopback(tmp_path) -> None:
    seen = tmp_path / "seen.cfg"
    fake = tmp_path / "haproxy"
    fake.write_text(f"#!/bin/sh\nwhile [ \"$1\" != -f ]; do shift; done\ncp \"$2\" {seen}\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text("frontend prometheus\n    bind :9101\nfrontend http_frontend\n    bind 0.0.0.0:8000\n"
                   "frontend other\n    bind :8000\nlisten stats\n  bind *:8404\n  stats enable\n"
                   "frontend prometheus\n    bind :7777\nlisten stats\n  bind *:7778\n")  # fmt: skip
    wrapper = ingress.loopback_wrapper(str(fake), folder=str(tmp_path))
    subprocess.run([wrapper, "-db", "-f", str(cfg)], check=True, timeout=10)
    lines = [line.strip() for line in seen.read_text().splitlines() if line.strip().startswith("bind")]
    assert lines == ["bind 127.0.0.1:9101", "bind 0.0.0.0:8000", "bind :8000", "bind 127.0.0.1:8404",
                     "bind 127.0.0.1:7777", "bind 127.0.0.1:7778"]  # any port, sections in any order
    text = seen.read_text().splitlines()
    at = text.index("frontend http_frontend")
    assert text[at + 1] == ingress.RETRY_AFTER_RULE  # the app's frontend only, once
    assert sum(line == ingress.RETRY_AFTER_RULE for line in text) == 1


def test_the_wrapped_config_passes_haproxys_own_check(tmp_path) -> None:
    binary = ingress._bundled_haproxy() or ingress.shutil.which("haproxy")
    if binary is None:
        pytest.skip("no HAProxy binary here")
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text("defaults\n    mode http\n    timeout client 5s\n    timeout server 5s\n    timeout connect 1s\n"
                   "frontend prometheus\n    bind :19101\n    http-request use-service prometheus-exporter\n"
                   "listen stats\n  bind *:18404\n  stats enable\n  stats uri /stats\n"
                   "frontend http_frontend\n    bind 127.0.0.1:18000\n    default_backend app\n"
                   "backend app\n    server a 127.0.0.1:18001\n")  # fmt: skip
    wrapper = ingress.loopback_wrapper(binary, folder=str(tmp_path))
    out = subprocess.run([wrapper, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert ingress.RETRY_AFTER_RULE in cfg.read_text()
    assert "bind 127.0.0.1:18404" in cfg.read_text() and "bind 127.0.0.1:19101" in cfg.read_text()


# A job like pipelines.serve --blocking: it starts a child (standing in for a Ray actor) that starts a
# grandchild in a session of its own (standing in for HAProxy) and dies on the first signal, leaving the
# grandchild orphaned. With --reap the job is a subreaper and ends what is left; without, it does not.
JOB = textwrap.dedent("""
    import subprocess, sys, time
    from rayrec import reaper
    use = sys.argv[1] == "--reap"
    if use:
        reaper.become_subreaper()
    child = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys, time;"
        "g = subprocess.Popen(['sleep', '300'], start_new_session=True);"
        "print(g.pid, flush=True); time.sleep(300)")], stdout=subprocess.PIPE, text=True)
    grandchild = int(child.stdout.readline())
    print(child.pid, grandchild, flush=True)
    if use:
        sig = reaper.wait_for_signal()
        reaper.shutdown([lambda: time.sleep(0.1)])
    else:
        time.sleep(300)
""")


def run_job(reap: bool, sig: signal.Signals) -> tuple[subprocess.Popen, int, int]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "platform")}
    job = subprocess.Popen([sys.executable, "-c", JOB, "--reap" if reap else "--no"], stdout=subprocess.PIPE,
                           text=True, env=env, start_new_session=True)  # fmt: skip
    child, grandchild = map(int, job.stdout.readline().split())  # type: ignore[union-attr]
    time.sleep(0.3)  # the job is waiting now
    os.killpg(job.pid, sig)  # the whole process group, as a closed terminal or `kill -- -PGID` does
    return job, child, grandchild


def gone(pid: int, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_no_child_outlives_the_job_on_a_signal(sig: signal.Signals) -> None:
    job, child, grandchild = run_job(True, sig)
    assert job.wait(30) == 0, f"the job did not exit cleanly on {sig.name}"
    assert gone(child, 5) and gone(grandchild, 5), f"a child outlived the job on {sig.name}"


def test_without_the_reaper_the_orphan_would_survive() -> None:
    """The scenario above is real: without the subreaper the grandchild outlives the job."""
    job, child, grandchild = run_job(False, signal.SIGTERM)
    job.wait(30)
    try:
        assert gone(child, 5) and not gone(grandchild, 1)
    finally:
        try:
            os.kill(grandchild, signal.SIGKILL)
        except ProcessLookupError:
            pass

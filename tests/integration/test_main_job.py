"""The main job as a user runs it: ``python -m pipelines.main`` on a small synthetic dataset prints a
short story ending with the URL, serves, and stops cleanly on Ctrl-C.

The job runs in a session of its own (``start_new_session``), on a Ray of its own; the processes it
leaves behind are looked for in its own process tree (taken while it serves) and its session only:
other Ray sessions on the machine are none of this test's business.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
STOP_WITHIN_S = 30.0  # measured 4-7 s on 2 cores: Serve's drain (≤ 2 s), Ray's shutdown, exit; slack for a loaded host


def _session_members(sid: int) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == sid:
                out.append(p)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return out


@pytest.mark.slow
def test_main_job_tells_a_short_story_and_stops_on_ctrl_c(tmp_path, unused_port):
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'platform'}{os.pathsep}{ROOT}", "RAYREC_DATA": str(tmp_path / "data")}
    for name in ("RAYREC_INGRESS", "RAY_SERVE_ENABLE_HA_PROXY", "RAY_ADDRESS"):
        env.pop(name, None)
    out_path = tmp_path / "main.out"
    # the scale run's flags: the job generates its synthetic dataset as a step of its own
    cmd = [sys.executable, "-m", "pipelines.main", "--dataset", "synthetic", "--ratings", "3000", "--users", "100",
           "--items", "300", "--artifacts", str(tmp_path / "art"), "--epochs", "1", "--port", str(unused_port)]  # fmt: skip
    url = f"http://127.0.0.1:{unused_port}"
    with open(out_path, "w") as out:
        job = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    tree: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 900  # the offline steps: ~2 min on 2 idle cores
        while f"serving at {url}/" not in out_path.read_text():
            assert job.poll() is None, f"the main job exited with {job.returncode}:\n{out_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"the main job did not come up:\n{out_path.read_text()[-3000:]}"
            time.sleep(1)
        with urllib.request.urlopen(f"{url}/healthz", timeout=10) as r:
            assert r.status == 200 and json.loads(r.read())["status"] == "ok"
        with urllib.request.urlopen(f"{url}/report", timeout=60) as r:  # the report, linked from the page
            assert r.status == 200 and r.read().count(b"data:image/png;base64,") >= 5
        with urllib.request.urlopen(f"{url}/", timeout=10) as r:
            assert b'href="report"' in r.read()
        tree = psutil.Process(job.pid).children(recursive=True)
        names = {p.name() for p in tree}
        assert "raylet" in names and "gcs_server" in names, names  # the job's own Ray is in its tree

        t = time.monotonic()
        job.send_signal(signal.SIGINT)
        try:
            rc = job.wait(STOP_WITHIN_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the main job did not stop within {STOP_WITHIN_S:.0f}s of Ctrl-C:\n{out_path.read_text()[-2000:]}")
        took = time.monotonic() - t
        assert rc == 0, f"exit {rc} after Ctrl-C:\n{out_path.read_text()[-2000:]}"
        time.sleep(1)
        stray = [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not stray, f"processes of the job outlived it: {[(p.pid, p.name()) for p in stray]}"
        left = [p for p in _session_members(job.pid) if p.status() != psutil.STATUS_ZOMBIE]
        assert not left, f"processes of the job's session outlived it: {[(p.pid, p.name()) for p in left]}"
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait(10)
        for p in tree:
            if p.is_running():
                p.kill()

    text = out_path.read_text()
    lines = text.splitlines()
    # the story: one line per step with its time, the URL, the stop; Ray's own output went to files
    assert len(lines) <= 40, f"{len(lines)} lines:\n{text}"
    took_re = r"(\d+m)?\d+(\.\d)?s"
    steps = ("data", "features", "ranker", "retriever", "index", "report", "serve")
    for n, step in enumerate(steps, start=1):
        assert re.search(rf"^\[{n}/7\] {step} +{took_re} ", text, re.M), f"no line for {step}:\n{text}"
    assert "synthetic: 3,000 ratings, 100 users, 300 items at " in text
    assert re.search(rf"^\[2/7\] features +{took_re} +3,000 ratings, 100 users, ", text, re.M), text  # read back
    # what each step cost: a table line per offline step, the whole tree's memory (Ray's processes: > 0.5 GiB)
    costs = json.loads((tmp_path / "art" / "reports" / "costs.json").read_text())
    assert [s["step"] for s in costs["steps"]] == list(steps[:-1])
    assert costs["total"]["rows"] == 3000 and costs["total"]["peak_bytes"] > 2**29
    for s in costs["steps"]:
        gib = s["peak_bytes"] / 2**30
        assert re.search(rf"^ +{s['step']} +{s['wall_s']:.1f}s +{gib:.2f} GiB +[\d,]+$", text, re.M), (s, text)
    assert re.search(rf"ranker +{took_re} +test auc \d\.\d{{3}}", text), text
    assert "ranker [████████████] epoch 1/1" in text  # progress of the long steps, with its bar
    assert "Traceback" not in text and "PlacementGroupCleaner" not in text and "INFO" not in text, text
    logs = re.search(r"logs: this job (\S+);", text)
    assert logs and Path(logs.group(1)).is_file() and "===== ranker =====" in Path(logs.group(1)).read_text()
    assert "stopped in" in lines[-1], lines[-3:]
    report = re.search(r"evaluation: (\S+report\.html)", text)
    assert report and "data:image/png;base64," in Path(report.group(1)).read_text()
    assert round(took) <= STOP_WITHIN_S

"""From laptop to cluster, for real: a head and a worker raylet on this machine (token auth on), the
README's three commands run verbatim (the offline jobs through ``ray job submit --working-dir .``,
``serve deploy`` of cluster/serve.yaml, a ``/recommend`` over HTTP), then a node lost mid-training.

Asserts: every job SUCCEEDED; a Train worker of each model ran on each node (node ids recorded in the
model's metrics); the library the jobs ran came from the job's upload, not the node's install; Serve's
ingress replicas ran on both nodes, reading artifacts and the Redis store from the nodes' environment;
the Redis URL appeared on no command line and in no job log; after the worker node's raylet is killed
mid-training the job resumes from its last checkpoint and finishes; no process of the cluster is left.

Run with ``make test-cluster`` (15-20 minutes on 2 cores shared with other work); prints what it measured.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from localcluster import BIN, LocalCluster, free_ports

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
README_MARK = "<!-- laptop-to-cluster: the cluster test runs these three commands verbatim -->"


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split(README_MARK, 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    cmds = [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert len(cmds) == 3, cmds
    return cmds


def say(*lines: str) -> None:
    print(*lines, sep="\n", flush=True)


def run(cmd: str | list[str], env: dict[str, str], timeout: float, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, shell=isinstance(cmd, str), env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=timeout, executable="/bin/bash" if isinstance(cmd, str) else None)  # fmt: skip
    if check and out.returncode != 0:
        raise AssertionError(f"{cmd!r} exited {out.returncode}:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}")
    return out


def build_image(root: Path) -> Path:
    """What cluster/Dockerfile puts on every node: rayrec installed (not editable) and the app folder
    (pipelines/, serve_apps/) on PYTHONPATH. Offline: this environment already holds the dependencies."""
    src, image = root / "src", root / "image"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "platform", src / "platform", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--no-build-isolation",
                    "--disable-pip-version-check", "--target", str(image / "site"), str(src)],
                   check=True, capture_output=True, timeout=300)  # fmt: skip
    for name in ("pipelines", "serve_apps"):
        shutil.copytree(ROOT / name, image / "app" / name, ignore=shutil.ignore_patterns("__pycache__"))
    return image


def job_status(cluster: LocalCluster, job_id: str) -> dict:
    (job,) = [j for j in cluster.state("jobs") if j.get("submission_id") == job_id]
    return job


def job_id_of(output: str) -> str:
    return re.findall(r"raysubmit_\w+", output)[0]


def wait_for(what: str, check, timeout: float, every: float = 2.0):  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"{what}: not within {timeout:.0f}s")


def registry_metrics(artifacts: Path, name: str) -> dict:
    version = (artifacts / "models" / name / "LATEST").read_text().strip()
    return json.loads((artifacts / "models" / name / version / "metrics.json").read_text())


@pytest.fixture(scope="module")
def redis_url():
    redis = pytest.importorskip("redis")
    client = redis.Redis(host="127.0.0.1", port=6379, db=0, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError as e:
        pytest.skip(f"Redis not answering on 127.0.0.1:6379 ({e})")
    prefix = f"rrc{uuid.uuid4().hex[:10]}"
    yield f"redis://127.0.0.1:6379/0?prefix={prefix}", prefix
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))  # only this test's keys
    for i in range(0, len(keys), 500):
        client.delete(*keys[i : i + 500])


@pytest.fixture(scope="module")
def cluster(redis_url):
    url, _ = redis_url
    root = Path(tempfile.mkdtemp(prefix="rrc-", dir="/tmp"))
    t = time.perf_counter()
    image = build_image(root)
    data = root / "movielens"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAY_ADDRESS")}
    subprocess.run([sys.executable, "-m", "pipelines.synthetic", "--out", str(data), "--users", "300", "--items", "400",
                    "--ratings", "6000", "--seed", "7"], check=True, capture_output=True, timeout=300,
                   env={**env, "PYTHONPATH": f"{ROOT / 'platform'}:{ROOT}"}, cwd=ROOT)  # fmt: skip
    node_env = {
        **env,
        "PATH": f"{BIN}:{env.get('PATH', '')}",
        "PYTHONPATH": f"{image / 'site'}:{image / 'app'}",  # the image's install (cluster/Dockerfile)
        "RAYREC_ARTIFACTS": str(root / "artifacts"),  # one path every node reads (here: one disk)
        "RAYREC_STORE_URL": url,  # as a Secret would set it
        "RAYREC_MOVIELENS_DIR": str(data),
        "RAYREC_DATA": str(root / "cache"),
        "RAY_SERVE_DEFAULT_HTTP_HOST": "127.0.0.1",
    }
    c = LocalCluster(root, node_env)
    try:
        head = c.start_head()
        worker = c.add_worker()
        say(f"\n== cluster up in {time.perf_counter() - t:.0f}s: head {c.address} (dashboard {c.dashboard}), "
            f"sessions {head.session} {worker.session}")  # fmt: skip
        yield c
    finally:
        left = c.teardown()
        say(f"== teardown: {len(c.nodes)} node sessions ended; processes left: {left or 'none'}")
        assert not left, left
        shutil.rmtree(root, ignore_errors=True)


def test_laptop_to_cluster(cluster: LocalCluster, redis_url):
    url, prefix = redis_url
    artifacts = Path(cluster.env["RAYREC_ARTIFACTS"])
    nodes = cluster.alive()
    head_id = next(n for n, v in nodes.items() if v["is_head_node"])
    worker_id = next(n for n in nodes if n != head_id)
    short = {head_id: "head", worker_id: "worker"}
    say(f"nodes: head {head_id[:12]} ({nodes[head_id]['resources_total'].get('CPU')} CPU), "
        f"worker {worker_id[:12]} ({nodes[worker_id]['resources_total'].get('CPU')} CPU)")  # fmt: skip

    (serve_port,) = free_ports(1)
    env = {**cluster.client_env(), "RAY_DASHBOARD_ADDRESS": cluster.dashboard, "RAYREC_URL": f"http://127.0.0.1:{serve_port}"}
    # Serve's HTTP port is fixed when Serve starts: on a shared machine, start it on a free one first
    run([str(BIN / "serve"), "start", "--address", cluster.address, "--http-host", "127.0.0.1",
         "--http-port", str(serve_port), "--proxy-location", "HeadOnly"], env, timeout=180)  # fmt: skip
    submit, deploy, curl = readme_commands()

    # 1. the offline jobs: features (Redis), both models on 2 workers, the index
    t = time.perf_counter()
    out = run(submit, env, timeout=1500)
    offline_s = time.perf_counter() - t
    job = job_status(cluster, job_id_of(out.stdout + out.stderr))
    steps = re.findall(r"^\[\d+/\d+\] (\S+)\s+([\d.]+)s", out.stdout, re.MULTILINE)  # the console's step lines
    say(f"job {job['submission_id']} (README command 1): {job['status']} in {offline_s:.0f}s",
        *(f"  {name:<16} {secs:>6}s" for name, secs in steps))  # fmt: skip
    assert job["status"] == "SUCCEEDED"
    assert [s for s, _ in steps] == ["features", "ranker", "retriever", "index", "report"]
    for name in ("ranker", "retriever"):
        m = registry_metrics(artifacts, name)
        for stage, workers in m["workers"].items():
            where = sorted((w["rank"], short.get(w["node_id"], w["node_id"][:12])) for w in workers)
            say(f"  {name} {stage}: Train workers (rank, node) {where}")
            assert len(workers) == 2 and {w["node_id"] for w in workers} == {head_id, worker_id}, (name, stage, workers)
    logs = run([str(BIN / "ray"), "job", "logs", job["submission_id"]], env, timeout=120).stdout
    (job_log_path,) = re.findall(r"logs: this job (\S+);", logs)  # the steps' own output: in the job's log file
    job_log = Path(job_log_path).read_text()
    assert "online store" in job_log and "rows loaded" in job_log
    # the features went to the store of RAYREC_STORE_URL
    import redis

    assert next(redis.Redis(host="127.0.0.1", port=6379, db=0).scan_iter(match=f"{prefix}:*", count=1000), None)
    assert prefix not in logs + job_log + out.stdout + out.stderr, "the store URL leaked into the job's logs"

    # the jobs ran this checkout's library, shipped by the runtime env, not the node's install
    probe = run(submit.split(" -- ")[0] + " -- python -c 'import rayrec, pipelines; print(\"rayrec at\", rayrec.__file__)'",
                env, timeout=300)  # fmt: skip
    (where,) = re.findall(r"rayrec at (\S+)", probe.stdout)
    say(f"job probe: rayrec imported from {where}")
    assert "runtime_resources/py_modules_files" in where

    # samples/s: 1 worker vs the 2 workers on 2 nodes of command 1 (same features version, batch, model)
    one = run(submit.split(" -- ")[0] + " -- python -m pipelines.train --model ranker --num-workers 1 --epochs 2 "
              "--no-refit --run-name one-worker", env, timeout=900)  # fmt: skip
    assert job_status(cluster, job_id_of(one.stdout + one.stderr))["status"] == "SUCCEEDED"
    one_m = registry_metrics(artifacts, "ranker")
    two_hist = _two_hist(artifacts)
    one_e = [round(h["samples_per_s"]) for h in one_m["valid"]["history"]]
    two_e = [round(h["samples_per_s"]) for h in two_hist]
    say(f"ranker training samples/s per epoch (the first one warms up): 1 worker {one_e}; 2 workers on 2 nodes {two_e}; "
        f"last epoch {two_e[-1] / one_e[-1]:.2f}x")  # fmt: skip
    assert one_e and two_e and min(one_e + two_e) > 0

    # 2. serve deploy of the cluster Serve config; 3. /recommend over HTTP
    t = time.perf_counter()
    run(deploy, env, timeout=180)

    def running() -> bool:
        status = run([str(BIN / "serve"), "status", "--address", cluster.dashboard], env, timeout=60, check=False).stdout
        if "DEPLOY_FAILED" in status:
            raise AssertionError(status)
        return bool(re.search(r"rayrec:\s*\n\s*status: RUNNING", status))

    wait_for("the Serve app RUNNING", running, timeout=420, every=3)
    say(f"serve deploy cluster/serve.yaml (README command 2): RUNNING after {time.perf_counter() - t:.0f}s")
    replicas = cluster.state("actors", "class_name=ServeReplica:rayrec:Ingress", "state=ALIVE")
    say(f"  Ingress replicas: {sorted(short.get(r['node_id'], r['node_id'][:12]) for r in replicas)}")
    assert {r["node_id"] for r in replicas} == {head_id, worker_id}
    answers = []
    for _ in range(6):  # several requests: the proxy spreads them over both replicas
        answers.append(json.loads(run(curl, env, timeout=60).stdout))
    answer = answers[0]
    say(f"/recommend (README command 3): user {answer['user_id']}, {len(answer['items'])} items, model "
        f"{answer['model_version']}, index {answer['index_version']}, degraded {answer['degraded']}, {answer['took_ms']:.0f} ms",
        *(f"  {i['movie_id']:>5} {i['score']:.3f} {','.join(i['paths']):<28} {i['title'][:40]}" for i in answer["items"][:5]))  # fmt: skip
    movies = {int(line.split(",", 1)[0]) for line in (Path(cluster.env["RAYREC_MOVIELENS_DIR"]) / "movies.csv").read_text().splitlines()[1:]}
    for a in answers:
        ids = [i["movie_id"] for i in a["items"]]
        assert a["k"] == 10 and len(ids) == 10 and len(set(ids)) == 10 and set(ids) <= movies
        assert not a["degraded"] and not a["cold_start"] and a["model_version"] and a["index_version"]
    cmdlines = []
    for p in cluster.processes():  # the Redis URL is in the nodes' environment only
        try:
            cmdlines.append(" ".join(p.cmdline()))
        except Exception:  # noqa: BLE001,S112 (a process that just ended)
            continue
    assert cmdlines and not [c for c in cmdlines if prefix in c]

    # Ray Data's tasks want a whole CPU, which the replicas' quarter CPUs leave on no node of this
    # 2-CPU cluster: take the app down before training again
    run([str(BIN / "serve"), "shutdown", "-y", "--address", cluster.dashboard], env, timeout=180)

    # a node lost mid-training: kill the worker node's raylet after the first checkpoint
    for _attempt in range(3):  # SPREAD is best effort: a run whose workers all landed on the head is run again
        run_name = f"node-loss-{uuid.uuid4().hex[:6]}"
        t = time.perf_counter()
        started = run(submit.split(" -- ")[0] + " --no-wait -- python -m pipelines.train --model ranker --num-workers 2 "
                      f"--cpus-per-worker 0.25 --epochs 6 --no-refit --run-name {run_name}", env, timeout=300)  # fmt: skip
        job_id = job_id_of(started.stdout + started.stderr)
        first = wait_for("the first checkpoint", lambda run_name=run_name: glob.glob(str(artifacts / "train_runs" / run_name / "select" / "epoch-*")),
                         timeout=600, every=0.5)  # fmt: skip
        ranks = [a["node_id"] for a in cluster.state("actors", "state=ALIVE") if "RayTrainWorker" in a.get("class_name", "")]
        if worker_id in ranks:
            break
        say(f"  run {run_name}: Train workers on {sorted(short.get(n, n[:12]) for n in ranks)}, none on the worker node: again")
        wait_for("the job to end", lambda job_id=job_id: job_status(cluster, job_id)["status"] in ("SUCCEEDED", "FAILED", "STOPPED"), timeout=900)
    else:
        raise AssertionError("three runs placed no Train worker on the worker node")
    pid = cluster.kill_raylet(next(n for n in cluster.nodes[1:] if not n.killed))
    say(f"node loss: killed the worker node's raylet (pid {pid}) {time.perf_counter() - t:.0f}s into job {job_id}, "
        f"after {Path(first[0]).name}; Train workers were on {sorted(short.get(n, n[:12]) for n in ranks)}")  # fmt: skip
    final = wait_for("the job to end", lambda: (s := job_status(cluster, job_id))["status"] in ("SUCCEEDED", "FAILED", "STOPPED") and s,
                     timeout=900, every=3)  # fmt: skip
    m = registry_metrics(artifacts, "ranker")
    starts, workers = m["starts"]["select"], m["workers"]["select"]
    say(f"  job {job_id}: {final['status']} after {time.perf_counter() - t:.0f}s; attempts started at epochs {starts}; "
        f"last worker group on {sorted(short.get(w['node_id'], w['node_id'][:12]) for w in workers)}; "
        f"{m['epochs']} epochs in all")  # fmt: skip
    assert final["status"] == "SUCCEEDED"
    assert len(starts) >= 2 and starts[0] == 0 and starts[-1] >= 1  # resumed from a checkpoint, not from scratch
    assert {w["node_id"] for w in workers} == {head_id}  # the restarted group: on the node that is left
    wait_for("the lost node reported dead", lambda: worker_id not in cluster.alive(), timeout=300, every=3)


def _two_hist(artifacts: Path) -> list[dict]:
    """The 2-worker ranker's per-epoch history from command 1 (the registry's previous ranker version)."""
    root = artifacts / "models" / "ranker"
    for version in sorted(p.name for p in root.iterdir() if p.is_dir()):
        m = json.loads((root / version / "metrics.json").read_text())
        if len(m.get("workers", {}).get("select", [])) == 2:
            return m["valid"]["history"]
    return []

"""The cluster files parse and point at things that exist: job modules, ports that do not clash with Redis."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_launcher_config_keeps_off_the_redis_port():
    cfg = docs(ROOT / "cluster" / "ray-cluster.yaml")[0]
    head = " ".join(cfg["head_start_ray_commands"])
    assert "--port=6380" in head
    assert all("6380" in c for c in cfg["worker_start_ray_commands"] if "--address" in c)


def test_kuberay_manifests_are_valid_and_run_existing_jobs():
    found = 0
    for path in sorted((ROOT / "cluster" / "kuberay").glob("*.yaml")):
        for d in docs(path):
            assert d["apiVersion"] == "ray.io/v1", path
            assert d["kind"] in {"RayCluster", "RayJob", "RayService"}, path
            spec = d["spec"].get("rayClusterSpec", d["spec"])
            assert spec["rayVersion"] == "2.60.0"
            for module in re.findall(r"python -m ([\w.]+)", d["spec"].get("entrypoint", "")):
                assert importlib.util.find_spec(module) is not None or (ROOT / (module.replace(".", "/") + ".py")).is_file(), module
            found += 1
    assert found >= 2


def test_dockerfile_pins_cpu_torch_and_ray():
    text = (ROOT / "cluster" / "Dockerfile").read_text()
    assert "torch==2.13.0" in text
    assert "rayproject/ray:2.60.0" in text


def test_the_serving_cluster_fronts_serve_with_haproxy_on_every_node():
    (cluster,) = docs(ROOT / "cluster" / "kuberay" / "raycluster.yaml")
    groups = [cluster["spec"]["headGroupSpec"], *cluster["spec"]["workerGroupSpecs"]]
    for group in groups:
        for container in group["template"]["spec"]["containers"]:
            env = {e["name"]: e["value"] for e in container["env"]}
            assert env.get("RAY_SERVE_ENABLE_HA_PROXY") == "1", container["name"]

"""The cluster files parse, validate against KubeRay's CRDs, point at things that exist, and are secure
by default: token auth everywhere, the store URL only from a Secret, nothing exposed by default."""

from __future__ import annotations

import copy
import functools
import importlib.util
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBERAY = ROOT / "cluster" / "kuberay"
CRDS = ROOT.parent / "shared" / "kuberay-crds"
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml", "RayService": "ray.io_rayservices.yaml"}
PLAIN_KINDS = {("apps/v1", "Deployment"), ("v1", "Service"), ("networking.k8s.io/v1", "NetworkPolicy")}


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def manifests() -> list[tuple[Path, dict]]:
    return [(p, d) for p in sorted(KUBERAY.glob("*.yaml")) for d in docs(p)]


def ray_manifests() -> list[tuple[Path, dict]]:
    return [(p, d) for p, d in manifests() if d["apiVersion"] == "ray.io/v1"]


def cluster_spec(d: dict) -> dict:
    return d["spec"].get("rayClusterSpec") or d["spec"].get("rayClusterConfig") or d["spec"]


def ray_containers(d: dict) -> list[dict]:
    spec = cluster_spec(d)
    groups = [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


# -- validation against the CRDs ---------------------------------------------------------------------
def _strict(schema: Any) -> Any:
    """The CRD schema as the API server applies it with strict field validation: an object with listed
    properties accepts no other field (unless it preserves unknown fields)."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if "properties" in out and not schema.get("x-kubernetes-preserve-unknown-fields") and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@functools.cache
def validator(kind: str, version: str) -> Any:
    jsonschema = pytest.importorskip("jsonschema")
    path = CRDS / CRD_FILES[kind]
    if not path.is_file():
        pytest.skip(f"KubeRay CRDs not found at {CRDS} (see ../shared/kuberay-crds/SOURCE.md)")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are 1-1.4 MB of YAML
    crd = yaml.load(path.read_text(), Loader=loader)  # noqa: S506 (a safe loader)
    assert crd["spec"]["names"]["kind"] == kind
    (ver,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema = _strict(ver["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object"}
    return jsonschema.Draft7Validator(schema)


def schema_errors(d: dict) -> list[str]:
    group, version = d["apiVersion"].split("/")
    assert group == "ray.io", d["apiVersion"]
    v = validator(d["kind"], version)
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in v.iter_errors(d)]


@pytest.mark.parametrize("path,doc", ray_manifests(), ids=lambda x: x.name if isinstance(x, Path) else x["kind"])
def test_every_ray_manifest_validates_against_its_crd(path, doc):
    errors = schema_errors(doc)
    assert not errors, f"{path.name} ({doc['kind']}):\n" + "\n".join(errors)


def test_every_kind_is_covered_and_known():
    kinds = {d["kind"] for _, d in ray_manifests()}
    assert kinds == {"RayCluster", "RayJob", "RayService"}
    for path, d in manifests():
        assert d["apiVersion"] == "ray.io/v1" or (d["apiVersion"], d["kind"]) in PLAIN_KINDS, path


def test_the_validation_catches_a_misspelt_field_and_a_wrong_type():
    (_, cluster) = next((p, d) for p, d in ray_manifests() if d["kind"] == "RayCluster")
    typo = copy.deepcopy(cluster)
    typo["spec"]["headGroupSpec"]["rayStartParam"] = typo["spec"]["headGroupSpec"].pop("rayStartParams")
    assert any("rayStartParam" in e for e in schema_errors(typo))
    wrong = copy.deepcopy(cluster)
    wrong["spec"]["workerGroupSpecs"][0]["replicas"] = "two"
    assert any("replicas" in e for e in schema_errors(wrong))
    bad_auth = copy.deepcopy(cluster)
    bad_auth["spec"]["authOptions"]["mode"] = "password"
    assert any("authOptions" in e for e in schema_errors(bad_auth))


# -- what the manifests say ----------------------------------------------------------------------------
def test_manifests_run_existing_jobs_on_the_pinned_ray():
    for path, d in ray_manifests():
        assert cluster_spec(d)["rayVersion"] == "2.60.0", path
        entry = d["spec"].get("entrypoint", "")
        assert "$" not in entry, f"{path.name}: the submitter pod's shell would expand {entry!r}"
        for module in re.findall(r"python -m ([\w.]+)", entry):
            assert importlib.util.find_spec(module) is not None, module


def test_token_auth_on_and_the_dashboard_not_exposed():
    for path, d in ray_manifests():
        spec = cluster_spec(d)
        assert spec["authOptions"] == {"mode": "token", "secretName": "rayrec-ray-token"}, path
        assert spec["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP", path
    policies = {d["metadata"]["name"]: d for _, d in manifests() if d["kind"] == "NetworkPolicy"}
    ray_rules = policies["rayrec-ray"]["spec"]["ingress"]
    open_ports = [r for r in ray_rules if "from" not in r]  # rules open to any source
    assert [p["port"] for r in open_ports for p in r["ports"]] == [8000]


def test_the_store_url_comes_from_the_secret_in_every_ray_container():
    for path, d in ray_manifests():
        for c in ray_containers(d):
            env = {e["name"]: e for e in c["env"]}
            assert env["RAYREC_STORE_URL"] == {"name": "RAYREC_STORE_URL", "valueFrom": {"secretKeyRef": {"name": "rayrec-redis", "key": "url"}}}, path
            assert env["RAYREC_ARTIFACTS"]["value"].startswith("s3://"), path
            assert "redis://" not in yaml.safe_dump(c), path


def test_redis_takes_its_password_from_a_file_not_its_arguments():
    (deploy,) = [d for _, d in manifests() if d["kind"] == "Deployment"]
    (c,) = deploy["spec"]["template"]["spec"]["containers"]
    assert c["args"][0] == "/etc/redis/redis.conf" and "--requirepass" not in c["args"]
    assert deploy["spec"]["template"]["spec"]["volumes"][0]["secret"]["secretName"] == "rayrec-redis"


def test_the_rayservice_serves_the_cluster_serve_config():
    (svc,) = [d for _, d in ray_manifests() if d["kind"] == "RayService"]
    assert yaml.safe_load(svc["spec"]["serveConfigV2"]) == yaml.safe_load((ROOT / "cluster" / "serve.yaml").read_text())


def test_the_cluster_serve_config_names_no_node_local_path_nor_store():
    from serve_apps.recommender import AppArgs

    cfg = yaml.safe_load((ROOT / "cluster" / "serve.yaml").read_text())
    (app,) = cfg["applications"]
    assert "artifacts" not in app["args"] and "store" not in app["args"]  # both from each node's environment
    AppArgs.model_validate(app["args"])  # the args the app builder takes
    (ingress,) = app["deployments"]
    assert ingress["max_replicas_per_node"] == 1 and ingress["autoscaling_config"]["min_replicas"] >= 2


def test_the_serving_cluster_fronts_serve_with_haproxy_on_every_node():
    (cluster,) = docs(KUBERAY / "raycluster.yaml")
    groups = [cluster["spec"]["headGroupSpec"], *cluster["spec"]["workerGroupSpecs"]]
    for group in groups:
        for container in group["template"]["spec"]["containers"]:
            env = {e["name"]: e.get("value") for e in container["env"]}
            assert env.get("RAY_SERVE_ENABLE_HA_PROXY") == "1", container["name"]


# -- launcher, job packaging ---------------------------------------------------------------------------
def test_launcher_config_keeps_off_the_redis_port_and_wants_a_token():
    cfg = docs(ROOT / "cluster" / "ray-cluster.yaml")[0]
    head = " ".join(cfg["head_start_ray_commands"])
    assert "--port=6380" in head
    assert "dashboard-host" not in head  # the dashboard stays on the head's loopback (ray dashboard tunnels)
    assert all("6380" in c for c in cfg["worker_start_ray_commands"] if "--address" in c)
    assert "--env RAY_AUTH_MODE=token" in cfg["docker"]["run_options"]


def test_jobs_ship_the_library_and_leave_data_out():
    env = yaml.safe_load((ROOT / "cluster" / "runtime-env.yaml").read_text())
    assert env["py_modules"] == ["platform/rayrec"] and (ROOT / "platform" / "rayrec" / "__init__.py").is_file()
    ignored = (ROOT / ".rayignore").read_text().split()
    assert {"data/", "artifacts/", ".venv/"} <= set(ignored)

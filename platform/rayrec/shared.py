"""Artifacts every node can read: the check a job runs before its workers write anywhere.

On a cluster, a job's tasks and Train workers run on any node, and each writes its part of the
artifacts (Ray Data's Parquet blocks, Ray Train's checkpoints) where the artifacts URI points. With a
node-local path (``./artifacts``, ``/data/rayrec``) each node would write to its own disk and the next
job, or the driver, would find half the files. So before any of that, the job writes a marker file
under the artifacts path and asks one task pinned to each alive node to read it back; a node that
cannot is named in one clear error. URIs of object stores (``s3://``, ``gs://``, through
``pyarrow.fs``) are shared by nature and skip the check; so does a one-node Ray (a laptop).
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Mapping, Sequence

__all__ = ["ArtifactsNotShared", "local_path", "check_shared", "ray_probe"]

log = logging.getLogger(__name__)

#: (node ids, marker path, token) → node id → whether that node read the token from the marker
Probe = Callable[[Sequence[str], str, str], Mapping[str, bool]]


class ArtifactsNotShared(RuntimeError):
    """The artifacts URI is a path some nodes of the cluster cannot read."""


def local_path(artifacts: str) -> str | None:
    """The filesystem path of a local artifacts URI (a plain path or ``file://``), None for remote ones."""
    if artifacts.startswith("file://"):
        return artifacts.removeprefix("file://")
    if "://" in artifacts:
        return None
    return os.path.abspath(artifacts)


def _alive_nodes() -> list[str]:
    import ray

    return [n["NodeID"] for n in ray.nodes() if n.get("Alive")]


def ray_probe(nodes: Sequence[str], marker: str, token: str) -> dict[str, bool]:
    """One zero-CPU task pinned to each node reads ``marker``; True where it holds ``token``."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=0, max_retries=0)
    def read(path: str) -> str | None:
        try:
            with open(path, encoding="utf-8") as f:
                return f.read()
        except OSError:
            return None

    refs = {n: read.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote(marker)
            for n in nodes}  # fmt: skip
    return {n: ray.get(ref, timeout=120) == token for n, ref in refs.items()}


def check_shared(artifacts: str, *, nodes: Sequence[str] | None = None, probe: Probe | None = None) -> None:
    """Raise :class:`ArtifactsNotShared` when ``artifacts`` is a local path that some alive node of the
    connected Ray cluster cannot read. ``nodes``/``probe`` default to the cluster's alive nodes and
    :func:`ray_probe` (tests pass their own)."""
    path = local_path(artifacts)
    if path is None:
        return
    nodes = list(nodes) if nodes is not None else _alive_nodes()
    if len(nodes) <= 1:
        return
    os.makedirs(path, exist_ok=True)
    token = uuid.uuid4().hex
    marker = os.path.join(path, f".shared-{token}")
    with open(marker, "w", encoding="utf-8") as f:
        f.write(token)
    try:
        seen = (probe or ray_probe)(nodes, marker, token)
    finally:
        os.remove(marker)
    blind = sorted(n for n in nodes if not seen.get(n))
    if blind:
        raise ArtifactsNotShared(
            f"the artifacts path {path} is local to the node this job runs on: {len(blind)} of the "
            f"{len(nodes)} nodes of this cluster cannot read it ({', '.join(n[:12] for n in blind)}), so workers "
            "there would write files no other node sees. Point --artifacts / RAYREC_ARTIFACTS at storage every "
            "node reads: s3://bucket/prefix or gs://bucket/prefix (pyarrow.fs), or a filesystem mounted at "
            "the same path on every node."
        )
    log.info("artifacts %s: readable from all %d nodes", path, len(nodes))

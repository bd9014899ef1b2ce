"""Old artifact versions removed, never one in use: the garbage collector of ``features/``,
``models/<name>/`` and ``index/``.

Every run of the offline jobs publishes a new version and moves ``LATEST``; nothing else removes the
old ones, so the artifacts grow without bound. :func:`collect` keeps, per kind:

- the version ``LATEST`` names, and the newest ``keep`` versions (names sort by time);
- versions younger than ``min_age_s`` (a job may still be writing one it has not published);
- every version a serving replica holds a lease on: replicas write ``leases/<replica>.json`` (the
  versions of every bundle they serve, experiment arms included) every ``LEASE_EVERY_S`` seconds with
  an expiry; a lease not renewed within ``LEASE_TTL_S`` lapses (the replica is gone);
- every version a kept version names: a model's features version, an index's retriever model and
  features versions (so what is kept still loads).

Everything else is deleted (``dry_run``: only listed).

The online store's users who never rated (clicks only, from ids the features never saw) get a row
and a history each: :func:`prune_unrated_users` deletes those idle for longer than a TTL, so such
state stays bounded by the traffic of one TTL. Users with a rating are never pruned.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow.fs as pafs

from rayrec import uri

__all__ = [
    "KINDS", "Lease", "Decision", "collect", "write_lease", "drop_lease", "read_leases", "replica_id", "LEASE_TTL_S",
    "LEASE_EVERY_S", "prune_unrated_users",
]  # fmt: skip

log = logging.getLogger(__name__)

KINDS = ("features", "models/ranker", "models/retriever", "index")
LEASE_DIR = "leases"
LEASE_TTL_S = 120.0
LEASE_EVERY_S = 30.0
_KIND_OF = {"features": "features", "ranker": "models/ranker", "retriever": "models/retriever", "index": "index"}


@dataclass
class Decision:
    """One version's fate, with why it is kept."""

    kind: str
    version: str
    keep: bool
    reasons: list[str] = field(default_factory=list)
    bytes: int = 0


@dataclass(frozen=True)
class Lease:
    """What a replica serves until ``until`` (Unix seconds): ``{kind: [versions]}``."""

    replica: str
    until: float
    versions: Mapping[str, tuple[str, ...]]


def replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def write_lease(artifacts: str, replica: str, versions: Iterable[Mapping[str, str | None]], ttl_s: float = LEASE_TTL_S) -> None:
    """Record (or renew) that ``replica`` serves these bundles' versions (``{"ranker": v, …}`` each)."""
    held: dict[str, set[str]] = {}
    for vs in versions:
        for name, v in vs.items():
            kind = _KIND_OF.get(name)
            if kind is not None and v:
                held.setdefault(kind, set()).add(str(v))
    body = {"replica": replica, "until": time.time() + ttl_s, "versions": {k: sorted(v) for k, v in held.items()}}
    uri.write_json(uri.join(artifacts, LEASE_DIR, f"{replica}.json"), body)  # atomic: a rename


def drop_lease(artifacts: str, replica: str) -> None:
    """Give the lease up (a replica shutting down)."""
    fs, p = uri.filesystem(uri.join(artifacts, LEASE_DIR, f"{replica}.json"))
    try:
        fs.delete_file(p)
    except (FileNotFoundError, OSError):
        pass


def read_leases(artifacts: str, now: float | None = None) -> list[Lease]:
    """The leases not yet lapsed (unreadable files are skipped, with a warning)."""
    now = time.time() if now is None else now
    fs, root = uri.filesystem(uri.join(artifacts, LEASE_DIR))
    if fs.get_file_info(root).type == pafs.FileType.NotFound:
        return []
    out: list[Lease] = []
    for info in fs.get_file_info(pafs.FileSelector(root)):
        if not info.base_name.endswith(".json"):
            continue
        try:
            d = json.loads(uri.read_bytes(uri.join(artifacts, LEASE_DIR, info.base_name)))
            lease = Lease(str(d["replica"]), float(d["until"]), {k: tuple(v) for k, v in dict(d["versions"]).items()})
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("lease %s unreadable (%s): ignored", info.base_name, e)
            continue
        if lease.until >= now:
            out.append(lease)
    return out


def _meta(artifacts: str, kind: str, version: str) -> dict[str, Any]:
    try:
        out: dict[str, Any] = json.loads(uri.read_bytes(uri.join(artifacts, *kind.split("/"), version, "meta.json")))
        return out
    except (FileNotFoundError, OSError, ValueError):
        return {}


def _refs(artifacts: str, kind: str, version: str) -> list[tuple[str, str]]:
    """The (kind, version) pairs a version needs to load."""
    meta = _meta(artifacts, kind, version)
    out: list[tuple[str, str]] = []
    if kind.startswith("models/") and meta.get("features_version"):
        out.append(("features", str(meta["features_version"])))
    if kind == "index":
        emb = meta.get("embeddings") or {}
        model = meta.get("model_version") or emb.get("model_version")
        if model and emb.get("kind") != "svd":
            out.append(("models/retriever", str(model)))
        if emb.get("features_version"):
            out.append(("features", str(emb["features_version"])))
    return out


def _size(fs: pafs.FileSystem, path: str) -> int:
    return sum(i.size or 0 for i in fs.get_file_info(pafs.FileSelector(path, recursive=True)) if i.type == pafs.FileType.File)


def _age_s(fs: pafs.FileSystem, path: str, now: float) -> float:
    info = fs.get_file_info(path)
    mtime = info.mtime.timestamp() if info.mtime is not None else 0.0
    return now - mtime


def collect(artifacts: str, *, keep: int = 3, min_age_s: float = 3600.0, dry_run: bool = False, now: float | None = None) -> list[Decision]:
    """Delete the versions no rule keeps (see the module docstring); returns every version's fate."""
    if keep < 1:
        raise ValueError(f"keep must be at least 1 (the newest versions kept per kind), got {keep}")
    now = time.time() if now is None else now
    decisions: dict[tuple[str, str], Decision] = {}
    for kind in KINDS:
        base = uri.join(artifacts, *kind.split("/"))
        versions = uri.list_versions(base)
        latest = uri.latest(base)
        fs, _ = uri.filesystem(base)
        for i, v in enumerate(sorted(versions, reverse=True)):
            d = Decision(kind, v, keep=False)
            path = uri.filesystem(uri.join(base, v))[1]
            if v == latest:
                d.reasons.append("LATEST")
            if i < keep:
                d.reasons.append(f"newest {keep}")
            if _age_s(fs, path, now) < min_age_s:
                d.reasons.append(f"younger than {min_age_s:g}s")
            d.bytes = _size(fs, path)
            decisions[(kind, v)] = d
    for lease in read_leases(artifacts, now):
        for kind, vs in lease.versions.items():
            for v in vs:
                if (kind, v) in decisions:
                    decisions[(kind, v)].reasons.append(f"served by {lease.replica}")
    # what a kept version needs is kept too (models need their features, an index its retriever)
    todo = [key for key, d in decisions.items() if d.reasons]
    while todo:
        kind, v = todo.pop()
        for ref in _refs(artifacts, kind, v):
            needed = decisions.get(ref)
            if needed is not None:
                first = not needed.reasons
                needed.reasons.append(f"needed by {kind} {v}")
                if first:
                    todo.append(ref)
    for d in decisions.values():
        d.keep = bool(d.reasons)
        if not d.keep and not dry_run:
            fs, path = uri.filesystem(uri.join(artifacts, *d.kind.split("/"), d.version))
            fs.delete_dir(path)
            log.info("deleted %s %s (%d bytes)", d.kind, d.version, d.bytes)
    return sorted(decisions.values(), key=lambda d: (KINDS.index(d.kind), d.version))


def prune_unrated_users(store: Any, idle_s: float, now: float | None = None) -> list[int]:
    """Delete the online store's users with no rating whose last event (``last_timestamp``, event
    time in seconds) is more than ``idle_s`` old, each with its history; returns their ids. A user
    who rates (or acts) meanwhile is kept: the store checks each row and deletes it atomically."""
    if idle_s <= 0:
        raise ValueError(f"idle_s must be > 0, got {idle_s}")
    cutoff = (time.time() if now is None else now) - idle_s

    def stale(_: int, row: Mapping[str, Any]) -> bool:
        return int(row.get("user_rating_count") or 0) == 0 and float(row.get("last_timestamp") or 0) < cutoff

    pruned: list[int] = store.prune_users(stale)
    log.info("pruned %d never-rated users idle for more than %.0f s", len(pruned), idle_s)
    return pruned

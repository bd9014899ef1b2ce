"""The artifacts' garbage collector keeps LATEST, the newest versions, young ones, leased ones and what
kept versions need, and deletes the rest."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from pipelines import gc as gc_job
from rayrec import gc, uri

HOUR = 3600.0


def _version(root: Path, kind: str, name: str, meta: dict | None = None, age_h: float = 48.0) -> None:
    d = root.joinpath(*kind.split("/"), name)
    d.mkdir(parents=True)
    (d / "payload.bin").write_bytes(b"x" * 1000)
    if meta is not None:
        (d / "meta.json").write_text(json.dumps(meta))
    t = time.time() - age_h * HOUR
    os.utime(d, (t, t))


def _tree(tmp_path: Path) -> Path:
    """features f1..f5; rankers r1..r4 (r1 needs f1, the rest f5); retrievers t1..t3; indexes i1..i3
    (i1 built from t1 on f2); LATEST: f5, r3 (not the newest), t3, i3; f5 and r4 are an hour old or less."""
    root = tmp_path / "artifacts"
    for i in range(1, 6):
        _version(root, "features", f"f{i}", age_h=0.5 if i == 5 else 48)
    for i in range(1, 5):
        _version(root, "models/ranker", f"r{i}", {"features_version": "f1" if i == 1 else "f5"}, age_h=0.2 if i == 4 else 48)
    for i in range(1, 4):
        _version(root, "models/retriever", f"t{i}", {"features_version": "f5"})
    for i in range(1, 4):
        emb = {"kind": "model", "model_version": f"t{i}", "features_version": "f2" if i == 1 else "f5"}
        _version(root, "index", f"i{i}", {"model_version": f"t{i}", "embeddings": emb})
    for kind, v in (("features", "f5"), ("models/ranker", "r3"), ("models/retriever", "t3"), ("index", "i3")):
        uri.set_latest(str(root.joinpath(*kind.split("/"))), v)
    return root


def _alive(root: Path) -> dict[str, set[str]]:
    return {k: set(uri.list_versions(str(root.joinpath(*k.split("/"))))) for k in gc.KINDS}


def test_collect_keeps_what_is_needed_and_deletes_the_rest(tmp_path) -> None:
    root = _tree(tmp_path)
    # a replica still serves the oldest index (and so its retriever t1 and features f2)
    gc.write_lease(str(root), "replica-a", [{"features": "f5", "ranker": "r3", "retriever": "t3", "index": "i1"}])
    # a lapsed lease protects nothing
    gc.write_lease(str(root), "replica-gone", [{"ranker": "r1"}], ttl_s=-1)
    before = _alive(root)
    planned = gc.collect(str(root), keep=1, min_age_s=HOUR, dry_run=True)
    assert _alive(root) == before, "a dry run deletes nothing"
    decisions = gc.collect(str(root), keep=1, min_age_s=HOUR)
    assert [(d.kind, d.version, d.keep) for d in decisions] == [(d.kind, d.version, d.keep) for d in planned]
    assert _alive(root) == {
        "features": {"f2", "f5"},  # f5: LATEST; f2: the leased index's
        "models/ranker": {"r3", "r4"},  # r3: LATEST; r4: newest and young (r1's lease lapsed)
        "models/retriever": {"t1", "t3"},  # t3: LATEST; t1: the leased index's
        "index": {"i1", "i3"},  # i3: LATEST; i1: leased
    }
    why = {(d.kind, d.version): d.reasons for d in decisions}
    assert "served by replica-a" in why[("index", "i1")] and any("needed by index i1" in r for r in why[("models/retriever", "t1")])
    assert not why[("models/ranker", "r1")] and sum(d.bytes for d in decisions if not d.keep) >= 7 * 1000
    for kind, v in (("features", "f5"), ("models/ranker", "r3"), ("index", "i3")):
        assert uri.latest(str(root.joinpath(*kind.split("/")))) == v, "LATEST still points at a version that is there"


def test_lease_lifecycle_and_the_job(tmp_path, capsys) -> None:
    root = _tree(tmp_path)
    gc.write_lease(str(root), "r-1", [{"ranker": "r1", "index": None}], ttl_s=60)
    assert [(le.replica, dict(le.versions)) for le in gc.read_leases(str(root))] == [("r-1", {"models/ranker": ("r1",)})]
    assert gc.read_leases(str(root), now=time.time() + 120) == [], "a lease not renewed lapses"
    gc.drop_lease(str(root), "r-1")
    assert gc.read_leases(str(root)) == []
    (root / "leases" / "junk.json").write_text("{not json")
    assert gc.read_leases(str(root)) == [], "an unreadable lease is skipped"
    assert gc_job.main(["--artifacts", str(root), "--keep", "2", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would delete" in out and "would free" in out
    assert gc_job.main(["--artifacts", str(root), "--keep", "0"]) == 2


def test_the_job_prunes_idle_never_rated_users_of_the_default_store(tmp_path, capsys, monkeypatch) -> None:
    from rayrec.store import default_store_url, open_store

    monkeypatch.delenv("RAYREC_STORE_URL", raising=False)
    root = _tree(tmp_path)
    now = time.time()
    with open_store(default_store_url(str(root))) as store:
        store.put("user", [(1, {"user_rating_count": 0, "last_timestamp": int(now - 40 * 86400)}),
                           (2, {"user_rating_count": 0, "last_timestamp": int(now - 86400)}),
                           (3, {"user_rating_count": 2, "last_timestamp": int(now - 400 * 86400)})])  # fmt: skip
    with pytest.raises(SystemExit):  # must be > 0
        gc_job.main(["--artifacts", str(root), "--unrated-users-idle-days", "0"])
    assert gc_job.main(["--artifacts", str(root), "--unrated-users-idle-days", "30", "--dry-run"]) == 0
    with open_store(default_store_url(str(root))) as store:
        assert all(r is not None for r in store.get("user", [1, 2, 3])), "a dry run deleted users"
    assert gc_job.main(["--artifacts", str(root), "--unrated-users-idle-days", "30"]) == 0
    assert "1 never-rated users idle for more than 30 days pruned" in capsys.readouterr().out
    with open_store(default_store_url(str(root))) as store:
        got = store.get("user", [1, 2, 3])
    assert got[0] is None and got[1] is not None and got[2] is not None

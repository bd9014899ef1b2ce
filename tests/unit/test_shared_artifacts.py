"""A job refuses node-local artifacts when some node of its cluster cannot read them."""

from __future__ import annotations

import os

import pytest

from rayrec.shared import ArtifactsNotShared, check_shared, local_path


def reads_marker(path_seen_by: dict[str, bool]):
    """A probe that really reads the marker on 'nodes' that share this disk and sees nothing elsewhere."""

    def probe(nodes, marker, token):
        out = {}
        for n in nodes:
            out[n] = path_seen_by[n] and open(marker).read() == token
        return out

    return probe


def test_remote_and_single_node_artifacts_are_not_probed(tmp_path):
    called = []
    probe = lambda *a: called.append(a) or {}  # noqa: E731
    check_shared("s3://bucket/rayrec", nodes=["a", "b"], probe=probe)
    check_shared(str(tmp_path), nodes=["a"], probe=probe)
    assert called == []
    assert local_path("gs://b/x") is None
    assert local_path("file:///data/x") == "/data/x"
    assert local_path("rel") == os.path.abspath("rel")


def test_every_node_reads_the_path_passes_and_leaves_no_marker(tmp_path):
    check_shared(str(tmp_path), nodes=["a", "b"], probe=reads_marker({"a": True, "b": True}))
    assert list(tmp_path.iterdir()) == []


def test_a_node_that_cannot_read_the_path_fails_naming_it(tmp_path):
    with pytest.raises(ArtifactsNotShared) as e:
        check_shared(str(tmp_path), nodes=["headnode0001", "workernode02"],
                     probe=reads_marker({"headnode0001": True, "workernode02": False}))
    msg = str(e.value)
    assert "workernode02" in msg and "1 of the 2 nodes" in msg and "s3://" in msg and str(tmp_path) in msg
    assert list(tmp_path.iterdir()) == []  # the marker is removed either way

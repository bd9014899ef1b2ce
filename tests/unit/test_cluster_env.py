"""What every node of a cluster sets in its environment is what the code reads: the store URL and the
artifacts, so neither needs a command line; and the Train placement knob is checked."""

from __future__ import annotations

import pytest

from rayrec.config import default_artifacts
from rayrec.serving.service import store_for
from rayrec.store import default_store_url, parse_store_url
from rayrec.training.config import TrainConfig


def test_the_store_url_comes_from_the_environment_when_set(monkeypatch, tmp_path):
    monkeypatch.delenv("RAYREC_STORE_URL", raising=False)
    assert default_store_url(str(tmp_path)) == str(tmp_path / "online" / "store.sqlite")
    assert store_for(str(tmp_path)) == str(tmp_path / "online" / "store.sqlite")
    with pytest.raises(ValueError, match="store URL"):
        default_store_url("s3://bucket/rayrec")  # remote artifacts and no store: a clear error
    url = "redis://:secret@redis.example:6379/3?prefix=prod"
    monkeypatch.setenv("RAYREC_STORE_URL", url)
    assert default_store_url(str(tmp_path)) == url
    assert default_store_url("s3://bucket/rayrec") == url
    assert store_for("s3://bucket/rayrec") == url
    assert parse_store_url(default_store_url()).type == "redis"


def test_the_artifacts_come_from_the_environment_when_set(monkeypatch):
    monkeypatch.setenv("RAYREC_ARTIFACTS", "s3://bucket/rayrec")
    assert default_artifacts() == "s3://bucket/rayrec"


def test_train_placement_is_spread_or_pack():
    assert TrainConfig().placement == "SPREAD"
    assert TrainConfig(placement="PACK").placement == "PACK"
    with pytest.raises(ValueError, match="placement"):
        TrainConfig(placement="STRICT")  # type: ignore[arg-type]

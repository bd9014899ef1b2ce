"""Dataset ``auto``: a local copy, else ml-latest-small downloaded, else synthetic data, and the
source says which and why. No network here: the download is replaced by a function of the test."""

from __future__ import annotations

import importlib

import pytest

import rayrec.data.source as source
from rayrec.data.download import DownloadError
from rayrec.data.synthetic import SyntheticConfig, generate

download_mod = importlib.import_module("rayrec.data.download")  # the package re-exports a function of that name
SMALL = SyntheticConfig(n_users=20, n_items=40, n_ratings=400)


@pytest.fixture
def no_local_copy(monkeypatch, tmp_path):
    monkeypatch.setattr(source, "shared_movielens_dir", lambda: None)
    monkeypatch.delenv("RAYREC_OFFLINE", raising=False)
    return tmp_path / "cache"


def test_without_a_local_copy_it_downloads(no_local_copy, monkeypatch, tmp_path):
    calls = []

    def fake_download(name, cache_dir, *, timeout):
        calls.append((name, cache_dir, timeout))
        return generate(tmp_path / "fetched", SMALL)  # a MovieLens-layout folder, as the archive unpacks

    monkeypatch.setattr(download_mod, "download", fake_download)
    data = source.load_dataset("auto", cache_dir=no_local_copy, synthetic=SMALL)
    assert calls == [("ml-latest-small", no_local_copy, source.AUTO_TIMEOUT_S)]
    assert "downloaded, no local copy found" in data.source and len(data.ratings) == 400


def test_a_failed_download_falls_back_to_synthetic_and_says_why(no_local_copy, monkeypatch, caplog):
    def offline(name, cache_dir, *, timeout):
        raise DownloadError("https://files.grouplens.org/…: Network is unreachable\nTo work offline, …")

    monkeypatch.setattr(download_mod, "download", offline)
    data = source.load_dataset("auto", cache_dir=no_local_copy, synthetic=SMALL)
    assert data.source.startswith("synthetic (20 users")
    assert "downloading ml-latest-small failed: https://files.grouplens.org/…: Network is unreachable" in data.source
    assert "using the synthetic generator" in caplog.text


def test_offline_mode_and_a_local_copy_skip_the_download(no_local_copy, monkeypatch):
    def must_not_download(*a, **k):
        raise AssertionError("no download expected")

    monkeypatch.setattr(download_mod, "download", must_not_download)
    monkeypatch.setenv("RAYREC_OFFLINE", "1")
    assert "RAYREC_OFFLINE is set" in source.load_dataset("auto", cache_dir=no_local_copy, synthetic=SMALL).source
    monkeypatch.delenv("RAYREC_OFFLINE")
    generate(no_local_copy / "ml-latest-small", SMALL)  # a copy in the data cache
    assert "a local copy" in source.load_dataset("auto", cache_dir=no_local_copy, synthetic=SMALL).source

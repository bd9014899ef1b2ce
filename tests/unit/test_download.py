"""The GroupLens downloader against local stand-ins: a zip served from 127.0.0.1, a closed port and a
server that never answers. No test reaches the network."""

from __future__ import annotations

import hashlib
import socket
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from rayrec.data import DATASETS, DatasetInfo, DownloadError, download, read_movielens

NAME = "ml-latest-small"
RATINGS = "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,3.5,964981247\n2,1,5.0,964982224\n"
MOVIES = "movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n3,\"Heat, The (1995)\",Crime\n"


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loopback requests must not be sent to a proxy configured in the environment."""
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(base URL, folder it serves) for a local HTTP server on a free loopback port."""
    root = tmp_path / "served"
    root.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    finally:
        httpd.shutdown()
        httpd.server_close()


def _zip(path: Path, folder: str = NAME) -> bytes:
    """A MovieLens-shaped archive (files under one top folder, as GroupLens ships them)."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{folder}/ratings.csv", RATINGS)
        zf.writestr(f"{folder}/movies.csv", MOVIES)
        zf.writestr(f"{folder}/README.txt", "test archive\n")
    return path.read_bytes()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


@pytest.mark.parametrize("algo", ["md5", "sha256"])
def test_downloads_verifies_and_unpacks(
    server: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, algo: str
) -> None:
    base, root = server
    data = _zip(root / f"{NAME}.zip")
    digest = hashlib.new(algo, data).hexdigest()
    monkeypatch.setitem(DATASETS, NAME, DatasetInfo(f"{base}/{NAME}.zip", **{algo: digest}))
    cache = tmp_path / "cache"

    path = download(NAME, cache)

    assert path == cache / NAME
    assert (path / "ratings.csv").read_text() == RATINGS
    assert _leftovers(cache) == [NAME]  # no temporary folders or archive left behind
    ml = read_movielens(path)
    assert ml.report.total_bad == 0 and len(ml.ratings) == 3


def test_cached_dataset_needs_no_network(
    server: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, root = server
    _zip(root / f"{NAME}.zip")
    monkeypatch.setitem(DATASETS, NAME, DatasetInfo(f"{base}/{NAME}.zip"))
    first = download(NAME, tmp_path / "cache")
    monkeypatch.setitem(DATASETS, NAME, DatasetInfo(f"http://127.0.0.1:{_closed_port()}/{NAME}.zip"))
    assert download(NAME, tmp_path / "cache") == first


def test_default_cache_is_the_data_dir(
    server: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, root = server
    _zip(root / f"{NAME}.zip")
    monkeypatch.setitem(DATASETS, NAME, DatasetInfo(f"{base}/{NAME}.zip"))
    monkeypatch.setenv("RAYREC_DATA", str(tmp_path / "data"))
    assert download(NAME) == (tmp_path / "data" / NAME).resolve()


def test_unreachable_host_names_url_reason_and_offline_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/x.zip"
    monkeypatch.setitem(DATASETS, NAME, replace(DATASETS[NAME], url=url))
    with pytest.raises(DownloadError) as e:
        download(NAME, tmp_path / "cache")
    message = str(e.value)
    assert url in message and "refused" in message.lower()
    assert str(tmp_path / "cache" / NAME) in message
    assert "RAYREC_MOVIELENS_DIR" in message and "--dataset synthetic" in message
    assert _leftovers(tmp_path / "cache") == []


def test_http_error_is_reported(
    server: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, _ = server
    monkeypatch.setitem(DATASETS, NAME, DatasetInfo(f"{base}/missing.zip"))
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(NAME, tmp_path / "cache")
    assert _leftovers(tmp_path / "cache") == []


def test_silent_server_times_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as listener:  # accepts connections (backlog) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/{NAME}.zip"
        monkeypatch.setitem(DATASETS, NAME, DatasetInfo(url))
        with pytest.raises(DownloadError, match="timed out") as e:
            download(NAME, tmp_path, timeout=0.3)
    assert url in str(e.value)
    assert _leftovers(tmp_path) == []


def test_checksum_mismatch_keeps_nothing(
    server: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, root = server
    _zip(root / f"{NAME}.zip")
    monkeypatch.setitem(DATASETS, NAME, DatasetInfo(f"{base}/{NAME}.zip", md5="0" * 32))
    with pytest.raises(DownloadError, match="md5 checksum mismatch"):
        download(NAME, tmp_path / "cache")
    assert _leftovers(tmp_path / "cache") == []


def test_archive_without_ratings_is_rejected(
    server: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, root = server
    with zipfile.ZipFile(root / "other.zip", "w") as zf:
        zf.writestr("other/readme.txt", "not movielens\n")
    (root / "broken.zip").write_bytes(b"not a zip at all")
    for file, reason in (("other.zip", "no ratings.csv"), ("broken.zip", "not a readable zip")):
        monkeypatch.setitem(DATASETS, NAME, DatasetInfo(f"{base}/{file}"))
        with pytest.raises(DownloadError, match=reason):
            download(NAME, tmp_path / "cache")
        assert _leftovers(tmp_path / "cache") == []


def test_unknown_name_lists_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ml-100m") as e:
        download("ml-100m", tmp_path)
    assert all(name in str(e.value) for name in DATASETS)


def test_catalogue_points_at_grouplens() -> None:
    assert set(DATASETS) == {"ml-latest-small", "ml-latest", "ml-20m", "ml-25m", "ml-32m"}
    for name, info in DATASETS.items():
        assert info.url == f"https://files.grouplens.org/datasets/movielens/{name}.zip"
        assert info.md5 is None or len(info.md5) == 32
        assert info.sha256 is None or len(info.sha256) == 64
        assert info.approx_mb > 0

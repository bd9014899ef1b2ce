"""GroupLens downloader: fetch a MovieLens zip once, verify it, unpack it into the data cache.

A dataset lives at ``<cache_dir>/<name>`` (``rayrec.config.default_data_dir()`` by default); once
there, :func:`download` returns it without touching the network. Machines without network use the
same folder: put the extracted dataset there, point ``RAYREC_MOVIELENS_DIR`` at a copy, or generate
synthetic data instead (:mod:`rayrec.data.synthetic`).
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import socket
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from rayrec.config import default_data_dir

__all__ = ["DATASETS", "DatasetInfo", "DownloadError", "download"]

log = logging.getLogger(__name__)
_BASE_URL = "https://files.grouplens.org/datasets/movielens"
_CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A dataset could not be fetched or unpacked (no network, HTTP error, timeout, bad archive)."""


@dataclass(frozen=True)
class DatasetInfo:
    """Where a MovieLens archive lives and how to check it.

    ``md5``/``sha256`` are the published checksums where GroupLens's ``.md5`` files are stable; the
    ``ml-latest`` archives are re-issued with new data, so they carry none and are not verified.
    """

    url: str
    md5: str | None = None
    sha256: str | None = None
    approx_mb: int = 0  # compressed size, for messages


DATASETS: dict[str, DatasetInfo] = {
    "ml-latest-small": DatasetInfo(f"{_BASE_URL}/ml-latest-small.zip", approx_mb=1),
    "ml-latest": DatasetInfo(f"{_BASE_URL}/ml-latest.zip", approx_mb=335),
    "ml-20m": DatasetInfo(f"{_BASE_URL}/ml-20m.zip", md5="cd245b17a1ae2cc31bb14903e1204af3", approx_mb=190),
    "ml-25m": DatasetInfo(f"{_BASE_URL}/ml-25m.zip", md5="6b51fb2759a8657d3bfcbfc42b592ada", approx_mb=250),
    "ml-32m": DatasetInfo(f"{_BASE_URL}/ml-32m.zip", md5="d472be332d4daa821edc399621853b57", approx_mb=228),
}


def download(name: str, cache_dir: str | Path | None = None, *, timeout: float = 30.0) -> Path:
    """The folder holding ``ratings.csv`` for the MovieLens dataset ``name``, downloading and
    unpacking it into ``<cache_dir>/<name>`` on first use.

    The archive is streamed to a temporary file, checked against its published checksum when there is
    one, unpacked, and moved into place in one rename, so an interrupted download leaves nothing that
    looks cached. ``timeout`` applies to connecting and to each read. Raises ``ValueError`` for an
    unknown name and :class:`DownloadError` (naming the URL, the reason and the offline options) when
    the download fails.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown MovieLens dataset {name!r}; valid names: {', '.join(DATASETS)}")
    info = DATASETS[name]
    root = Path(cache_dir) if cache_dir is not None else default_data_dir()
    target = root / name
    if (target / "ratings.csv").is_file():
        return target
    try:
        root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    except OSError as e:
        raise DownloadError(f"cannot create the cache folder {root} ({e}); pass another cache_dir") from e
    try:
        archive = work / f"{name}.zip"
        _fetch(name, info, archive, target, timeout)
        folder = _extract(archive, work / "extracted")
        if target.exists():
            try:
                target.rmdir()  # an empty leftover folder; anything else is the user's and stays
            except OSError as e:
                raise DownloadError(f"{target} exists but holds no ratings.csv; move it away and retry") from e
        os.replace(folder, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("MovieLens %s ready at %s", name, target)
    return target


def _offline_hint(target: Path) -> str:
    return (
        f"To work offline, place the extracted folder at {target}, set RAYREC_MOVIELENS_DIR, "
        "or use --dataset synthetic."
    )


def _fetch(name: str, info: DatasetInfo, dest: Path, target: Path, timeout: float) -> None:
    """Stream ``info.url`` to ``dest``, hashing as it goes; any failure becomes a DownloadError."""
    md5 = hashlib.md5(usedforsecurity=False)
    sha256 = hashlib.sha256()
    log.info("downloading %s (about %d MB) from %s", name, info.approx_mb, info.url)
    request = urllib.request.Request(info.url, headers={"User-Agent": "rayrec"})
    opener = urllib.request.build_opener()  # reads the proxy settings of the environment now, not at first use
    try:
        with opener.open(request, timeout=timeout) as response, open(dest, "wb") as out:
            expected = response.headers.get("Content-Length")
            got = 0
            total = int(expected) if expected is not None and expected.isdigit() else 0
            shown = 0
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                md5.update(chunk)
                sha256.update(chunk)
                got += len(chunk)
                if total and got * 10 // total > shown:  # progress every 10%
                    shown = got * 10 // total
                    log.info("downloading %s: %d%% (%.1f of %.1f MB)", name, 100 * got // total, got / 1e6, total / 1e6)
            if expected is not None and expected.isdigit() and got != int(expected):
                raise DownloadError(_failure(name, info, target, f"connection closed after {got} of {expected} bytes"))
    except urllib.error.HTTPError as e:
        raise DownloadError(_failure(name, info, target, f"HTTP {e.code} {e.reason}")) from e
    except urllib.error.URLError as e:
        reason = "timed out" if isinstance(e.reason, (TimeoutError, socket.timeout)) else str(e.reason)
        raise DownloadError(_failure(name, info, target, reason)) from e
    except TimeoutError as e:
        raise DownloadError(_failure(name, info, target, f"timed out after {timeout:g}s")) from e
    except (OSError, http.client.HTTPException) as e:
        raise DownloadError(_failure(name, info, target, f"{type(e).__name__}: {e}")) from e
    for algo, want, digest in (("md5", info.md5, md5), ("sha256", info.sha256, sha256)):
        if want is not None and digest.hexdigest() != want.lower():
            raise DownloadError(
                f"{info.url}: {algo} checksum mismatch (got {digest.hexdigest()}, expected {want}); the download "
                f"is corrupt or the file changed upstream. Retry, or download it yourself. {_offline_hint(target)}"
            )


def _failure(name: str, info: DatasetInfo, target: Path, reason: str) -> str:
    return f"cannot download MovieLens {name!r} from {info.url}: {reason}. {_offline_hint(target)}"


def _extract(archive: Path, dest: Path) -> Path:
    """Unpack ``archive`` under ``dest`` and return the folder inside that holds ratings.csv."""
    try:
        with zipfile.ZipFile(archive) as zf:
            root = dest.resolve()
            for member in zf.namelist():
                path = (root / member).resolve()
                if path != root and root not in path.parents:
                    raise DownloadError(f"{archive.name}: unsafe path {member!r} in the archive; not extracting")
            zf.extractall(dest)
    except (zipfile.BadZipFile, zipfile.LargeZipFile) as e:
        raise DownloadError(f"{archive.name}: not a readable zip archive ({e})") from e
    except OSError as e:
        raise DownloadError(f"cannot unpack {archive.name} into {dest} ({e})") from e
    found = sorted(p.parent for p in dest.rglob("ratings.csv"))
    if not found:
        raise DownloadError(f"{archive.name}: no ratings.csv inside; not a MovieLens archive")
    return found[0]

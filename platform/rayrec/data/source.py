"""Dataset choice: ``auto`` (MovieLens if found locally, else synthetic), a MovieLens name, or a path."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from rayrec.config import default_data_dir, shared_movielens_dir
from rayrec.data.movielens import DataError, MovieLens, read_movielens

if TYPE_CHECKING:
    from rayrec.data.synthetic import SyntheticConfig

__all__ = ["load_dataset", "synthetic_folder", "DATASET_CHOICES"]

log = logging.getLogger(__name__)
DATASET_CHOICES = ("auto", "movielens", "synthetic", "ml-latest-small", "ml-latest", "ml-20m", "ml-25m", "ml-32m")


def _local_movielens(cache: Path) -> Path | None:
    found = shared_movielens_dir()
    if found:
        return found
    for name in ("ml-latest-small", "ml-latest", "ml-25m", "ml-20m", "ml-32m"):
        if (cache / name / "ratings.csv").is_file():
            return cache / name
    return None


AUTO_DOWNLOAD = "ml-latest-small"
AUTO_TIMEOUT_S = 10.0  # an offline machine must not wait long before falling back to synthetic data


def _auto(cache: Path, synthetic: SyntheticConfig | None) -> MovieLens:
    """A local copy, else a download of ml-latest-small, else synthetic data; the source says why."""
    from rayrec.data.download import DownloadError, download

    local = _local_movielens(cache)
    if local is not None:
        return read_movielens(local, source=f"movielens ({local}: a local copy)")
    if os.environ.get("RAYREC_OFFLINE", "") not in ("", "0"):
        why = "RAYREC_OFFLINE is set"
    else:
        try:
            folder = download(AUTO_DOWNLOAD, cache, timeout=AUTO_TIMEOUT_S)
            return read_movielens(folder, source=f"{AUTO_DOWNLOAD} ({folder}: downloaded, no local copy found)")
        except DownloadError as e:
            why = f"downloading {AUTO_DOWNLOAD} failed: {str(e).splitlines()[0]}"
    log.warning("no local MovieLens copy, and %s; using the synthetic generator", why)
    data = _synthetic(synthetic, cache)
    data.source = f"{data.source}: no local MovieLens copy, and {why}"
    return data


def synthetic_folder(cfg: SyntheticConfig | None = None, cache_dir: str | Path | None = None) -> Path:
    """The folder of the synthetic dataset ``cfg`` in the data cache, generated the first time."""
    from rayrec.data.synthetic import SyntheticConfig, generate

    cfg = cfg or SyntheticConfig()
    cache = Path(cache_dir) if cache_dir else default_data_dir()
    tag = hashlib.sha256(json.dumps(asdict(cfg), sort_keys=True).encode()).hexdigest()[:10]
    return generate(cache / f"synthetic-{tag}", cfg)


def _synthetic(cfg: SyntheticConfig | None, cache: Path) -> MovieLens:
    from rayrec.data.synthetic import SyntheticConfig

    cfg = cfg or SyntheticConfig()
    out = synthetic_folder(cfg, cache)
    return read_movielens(out, source=f"synthetic ({cfg.n_users} users, {cfg.n_items} items, seed {cfg.seed})")


def load_dataset(
    name: str = "auto",
    *,
    path: str | Path | None = None,
    synthetic: SyntheticConfig | None = None,
    cache_dir: str | Path | None = None,
) -> MovieLens:
    """Load the dataset a job asked for and say which one it is.

    - ``auto``: a local MovieLens copy (``RAYREC_MOVIELENS_DIR``, ``../shared/data/ml-latest-small``
      or the data cache) if there is one, else ml-latest-small downloaded into the cache (checksum
      checked, progress logged; skipped when ``RAYREC_OFFLINE=1``), else the synthetic generator;
      ``source`` says which, and why.
    - ``movielens``: that local copy, or ``path``; an error naming the options if there is none.
    - ``ml-latest-small`` … ``ml-32m``: the GroupLens archive, downloaded once into the cache.
    - ``synthetic``: generated from ``synthetic`` (seeded, cached).
    - any other value: a folder in the MovieLens layout.
    """
    cache = Path(cache_dir) if cache_dir else default_data_dir()
    if path is not None:
        data = read_movielens(path)
    elif name == "auto":
        data = _auto(cache, synthetic)
    elif name == "movielens":
        local = _local_movielens(cache)
        if local is None:
            raise DataError(
                "no local MovieLens copy: set RAYREC_MOVIELENS_DIR to an extracted ml-* folder, "
                "use --dataset ml-latest-small to download it, or --dataset synthetic"
            )
        data = read_movielens(local, source=f"movielens ({local})")
    elif name == "synthetic":
        data = _synthetic(synthetic, cache)
    elif name.startswith("ml-"):
        from rayrec.data.download import download

        folder = download(name, cache)
        data = read_movielens(folder, source=f"{name} ({folder})")
    else:
        data = read_movielens(name)
    log.info("dataset: %s", data.source)
    return data

"""Where things live: the repository root and the default artifacts URI.

Paths resolve against the repository (or ``RAYREC_HOME``), never against the current directory, so a
job started from anywhere finds the same artifacts.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["repo_root", "default_artifacts", "configured_store_url", "default_data_dir", "shared_movielens_dir"]

#: the environment variables a cluster sets on every node (cluster/): where artifacts and the online store live
ARTIFACTS_ENV, STORE_ENV = "RAYREC_ARTIFACTS", "RAYREC_STORE_URL"


def repo_root() -> Path:
    """The project root: ``RAYREC_HOME`` if set, else the folder holding ``pyproject.toml`` above this
    package (an editable or source checkout), else the current directory."""
    env = os.environ.get("RAYREC_HOME")
    if env:
        return Path(env).resolve()
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "pyproject.toml").is_file() and (parent / "platform").is_dir():
            return parent
    return Path.cwd().resolve()


def default_artifacts() -> str:
    """Artifacts URI: ``RAYREC_ARTIFACTS`` (a path or ``s3://…``), else ``<repo>/artifacts``."""
    return os.environ.get(ARTIFACTS_ENV) or str(repo_root() / "artifacts")


def configured_store_url() -> str | None:
    """The online store every node of a cluster uses: ``RAYREC_STORE_URL`` (e.g. ``redis://…`` from a
    Secret), None when unset. Read from the environment so a password never travels on a command line."""
    return os.environ.get(STORE_ENV) or None


def default_data_dir() -> Path:
    """Where downloaded or generated datasets are cached: ``RAYREC_DATA`` or ``<repo>/data``."""
    env = os.environ.get("RAYREC_DATA")
    return Path(env).resolve() if env else repo_root() / "data"


def shared_movielens_dir() -> Path | None:
    """A local ml-latest-small copy: ``RAYREC_MOVIELENS_DIR`` or ``../shared/data/ml-latest-small``
    beside the repository. None when absent."""
    env = os.environ.get("RAYREC_MOVIELENS_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(repo_root().parent / "shared" / "data" / "ml-latest-small")
    for c in candidates:
        if (c / "ratings.csv").is_file() and (c / "movies.csv").is_file():
            return c.resolve()
    return None

"""Shared fixtures: one local Ray for the whole session, test data, the real MovieLens copy."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

# Let tests import the pandas reference and factories beside them (tests/ is not a package).
sys.path.insert(0, str(Path(__file__).parent))

from rayrec.config import shared_movielens_dir  # noqa: E402


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray with 2 CPUs, started once: Ray start-up costs seconds."""
    import ray

    if not ray.is_initialized():
        ray.init(
            address="local",  # never attach to a cluster someone started with `ray start`
            num_cpus=2,
            include_dashboard=False,
            logging_level="WARNING",
            log_to_driver=False,
            runtime_env={"env_vars": {"RAY_DATA_DISABLE_PROGRESS_BARS": "1"}},
        )
        ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    # left running until the interpreter exits: later tests (serving) reuse it


@pytest.fixture(scope="session")
def movielens_dir() -> Path:
    found = shared_movielens_dir()
    if found is None:
        pytest.skip("MovieLens ml-latest-small not found (set RAYREC_MOVIELENS_DIR or place it at ../shared/data)")
    return found


@pytest.fixture(scope="session")
def movielens(movielens_dir):
    from rayrec.data import read_movielens

    return read_movielens(movielens_dir)


@pytest.fixture()
def artifacts(tmp_path) -> str:
    return str(tmp_path / "artifacts")


def pytest_configure(config):
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")

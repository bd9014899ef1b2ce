"""A serving process caps its compute pools at one thread (rayrec.serving.threads)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

_CHILD = """
import json
import numpy as np
from rayrec.serving.threads import pool_sizes, single_threaded
before = pool_sizes()
after = single_threaded()
a = np.random.default_rng(0).standard_normal((1, 32)).astype(np.float32)
b = np.random.default_rng(1).standard_normal((32, 10000)).astype(np.float32)
ok = bool(np.allclose(a @ b, (a.astype(np.float64) @ b.astype(np.float64)), atol=1e-3))
print(json.dumps({"before": before, "after": after, "again": pool_sizes(), "product_ok": ok}))
"""


@pytest.fixture(scope="module")
def child() -> dict:
    """Run in a fresh process, with the pools at their defaults (no thread variables set), so that
    this test session's own pools are left alone."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_every_pool_is_capped_at_one_thread(child):
    assert {"torch", "openblas", "openmp"} <= set(child["before"]), child["before"]
    assert child["after"] == {name: 1 for name in child["before"]}
    assert child["again"] == child["after"]  # the cap stays after the call returns


def test_defaults_use_every_core_so_the_cap_changes_something(child):
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: the default pools are one thread already")
    assert max(child["before"].values()) >= 2, child["before"]


def test_products_are_right_after_the_cap(child):
    assert child["product_ok"]

"""A local Ray started by a job: its object store takes the size the environment asks for, and what
does not fit spills to disk instead of failing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# in a process of its own: the tests' session Ray is already up in this one
SCRIPT = """
import numpy as np, ray
from rayrec.runtime import init_ray
init_ray()
store = ray.cluster_resources()["object_store_memory"]
refs = [ray.put(np.full(40 * 2**20 // 8, i, dtype=np.float64)) for i in range(8)]  # 320 MiB into a 160 MiB store
ok = all(float(ray.get(r)[0]) == i for i, r in enumerate(refs))
print("RESULT", store, ok)
ray.shutdown()
"""


def test_local_ray_object_store_takes_the_size_asked_for_and_spills_beyond_it(tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'platform'}{os.pathsep}{ROOT}", "RAYREC_OBJECT_STORE_GIB": "0.15625"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))
    _, store, ok = line.split()
    assert abs(float(store) - 160 * 2**20) < 2**20, store  # 0.15625 GiB
    assert ok == "True"  # every object read back, half of them from disk

"""The per-step cost table of the main job: the memory of the whole process tree, and the scale flags."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import psutil
import pytest

from pipelines import main as main_job
from rayrec.costs import Costs, TreeMemory, format_costs, release_memory
from rayrec.runtime import DEFAULT_OBJECT_STORE_GIB, OBJECT_STORE_ENV, object_store_bytes

MIB = 2**20


def test_tree_memory_counts_the_memory_of_a_grandchild_process():
    """A grandchild that writes 300 MiB shows in the peak of its grandparent's tree, whose own
    process holds a small share of it. The tree is rooted at a process of the test's own, so the
    other children of this process (a local Ray's, say) do not enter the figure."""
    grandchild = "import time; b = b'x' * (300 * 2**20); print('ready', flush=True); time.sleep(60)"
    parent = (
        "import subprocess, sys, time\n"
        f"c = subprocess.Popen([sys.executable, '-c', {grandchild!r}], stdout=subprocess.PIPE, text=True)\n"
        "print(c.stdout.readline().strip(), c.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        ready, pid = proc.stdout.readline().split()
        assert ready == "ready"
        with TreeMemory(proc.pid, interval=0.05, max_share=1.0) as mem:  # every 0.05 s, whatever a sample costs
            time.sleep(0.3)
        assert mem.samples >= 3
        assert mem.peak >= 300 * MIB, mem.peak / MIB
        assert TreeMemory(proc.pid).sample() - TreeMemory(int(pid)).sample() < 100 * MIB  # the parent: small
    finally:
        for p in psutil.Process(proc.pid).children(recursive=True):
            p.kill()
        proc.kill()
        proc.wait(10)


def test_tree_memory_says_when_the_peak_came() -> None:
    grows = "import time; time.sleep(0.5); b = b'x' * (300 * 2**20); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", grows])
    try:
        with TreeMemory(proc.pid, interval=0.05) as mem:
            deadline = time.monotonic() + 30
            while mem.peak < 300 * MIB and time.monotonic() < deadline:
                time.sleep(0.05)
        assert mem.peak >= 300 * MIB, mem.peak / MIB
        assert mem.peak_at >= 0.5, "the peak came after the child's half-second sleep"
    finally:
        proc.kill()
        proc.wait()


class _Costly(TreeMemory):
    """A tree of 1 MiB whose every sample takes ``cost`` seconds of this thread's CPU (not the real
    tree: under the test session's Ray a real sample costs more than the cheap case allows)."""

    def __init__(self, cost: float, *, interval: float, max_share: float) -> None:
        super().__init__(interval=interval, max_share=max_share)
        self.cost = cost

    def _tree_bytes(self) -> int:
        end = time.perf_counter() + self.cost
        while time.perf_counter() < end:
            pass
        return MIB


def test_tree_memory_keeps_its_sampling_within_its_share_of_a_core() -> None:
    # the first sample (on entering) sets the pace: 40 ms within 10% of a core is one every 0.4 s
    with _Costly(0.04, interval=0.01, max_share=0.1) as mem:
        time.sleep(1.2)
    assert mem.wait_s() >= 0.04 * 9 * 0.99
    assert 3 <= mem.samples <= 6, mem.samples  # entering, about three in 1.2 s, leaving; every 10 ms would be ~25
    assert mem.sampling_s <= 0.15 * 1.2 + 0.08, mem.sampling_s  # the share, with the enter and exit samples
    assert mem.peak > 0
    # a cheap sample keeps the interval asked for
    with _Costly(0.0, interval=0.02, max_share=0.1) as cheap:
        time.sleep(0.5)
    assert cheap.samples >= 8, cheap.samples


def test_tree_memory_refuses_a_share_outside_zero_to_one() -> None:
    for interval, share in ((0.5, 0.0), (0.5, 1.5), (0.0, 0.03)):
        with pytest.raises(ValueError, match="max_share"):
            TreeMemory(interval=interval, max_share=share)


def test_costs_table_and_json():
    costs = Costs(interval=0.05)
    with costs.step("data"):
        time.sleep(0.1)
    costs.rows = 1000  # the data size, known after the first step, applies to it too
    with costs.step("features"):
        time.sleep(0.1)
    d = costs.to_dict()
    assert [s["step"] for s in d["steps"]] == ["data", "features"]
    assert all(s["rows"] == 1000 and s["wall_s"] >= 0.1 and s["peak_bytes"] > 0 for s in d["steps"])
    assert all(0 <= s["peak_at_s"] <= s["wall_s"] and s["samples"] >= 2 for s in d["steps"])
    assert d["steps"][0]["rows_per_s"] == pytest.approx(1000 / d["steps"][0]["wall_s"])
    assert d["total"]["peak_bytes"] == max(s["peak_bytes"] for s in d["steps"])
    json.dumps(d)
    lines = format_costs(costs)
    assert lines[0].split() == ["step", "wall", "peak", "memory", "rows/s"]
    assert lines[1].startswith("data") and lines[2].startswith("features") and lines[-1].startswith("total")
    assert "GiB" in lines[1]


def test_scale_run_sizes_follow_ml25m_unless_given():
    cfg = main_job.scaled_synthetic(25_000_000)
    assert (cfg.n_users, cfg.n_items, cfg.n_ratings) == (162_540, 62_423, 25_000_000)
    small = main_job.scaled_synthetic(20_000)  # too few items at ml-25m's share: each user would rate half
    assert small.n_users == 130 and small.n_items >= 4 * 20_000 // 130
    assert main_job.scaled_synthetic(1_000, users=60, items=400).n_users == 60
    with pytest.raises(ValueError, match="n_ratings"):
        main_job.scaled_synthetic(100_000, users=10, items=100)
    with pytest.raises(ValueError, match="ratings must be"):
        main_job.scaled_synthetic(0)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--ratings", "1000"], "use --dataset synthetic"),
        (["--dataset", "synthetic", "--users", "10"], "give --ratings too"),
        (["--dataset", "synthetic", "--ratings", "100000", "--users", "10", "--items", "100"], "n_ratings"),
        (["--object-store-gib", "0"], "--object-store-gib must be a positive number of GiB"),
        (["--object-store-gib", "-2"], "--object-store-gib must be a positive number of GiB"),
        (["--object-store-gib", "nan"], "--object-store-gib must be a positive number of GiB"),
    ],
)
def test_scale_flags_are_checked_before_anything_runs(argv, message, capsys, monkeypatch):
    monkeypatch.delenv(OBJECT_STORE_ENV, raising=False)
    with pytest.raises(SystemExit) as e:
        main_job.main([*argv, "--no-serve"])
    assert e.value.code == 2
    assert message in capsys.readouterr().err
    assert OBJECT_STORE_ENV not in os.environ  # refused before it is passed on


@pytest.mark.parametrize("raw, gib", [("2", 2.0), (" 0.5 ", 0.5), ("1e-3", None)])
def test_object_store_size_from_the_environment(raw, gib, monkeypatch):
    monkeypatch.setenv(OBJECT_STORE_ENV, raw)
    # Ray refuses a store under 75 MiB: a smaller request gets 80 MiB
    assert object_store_bytes() == (int(gib * 2**30) if gib else 80 * MIB)
    monkeypatch.setenv(OBJECT_STORE_ENV, " Ray ")
    assert object_store_bytes() is None  # Ray's own size


def test_object_store_size_defaults_to_two_gib_or_ray_share_where_less(monkeypatch):
    from collections import namedtuple

    mem = namedtuple("mem", "total")
    for env in ("", None):
        if env is None:
            monkeypatch.delenv(OBJECT_STORE_ENV, raising=False)
        else:
            monkeypatch.setenv(OBJECT_STORE_ENV, env)
        monkeypatch.setattr(psutil, "virtual_memory", lambda: mem(24 * 2**30))
        assert object_store_bytes() == int(DEFAULT_OBJECT_STORE_GIB * 2**30) == 2 * 2**30
        monkeypatch.setattr(psutil, "virtual_memory", lambda: mem(4 * 2**30))  # a small machine: Ray's 30%
        assert object_store_bytes() == int(0.3 * 4 * 2**30)


@pytest.mark.parametrize("raw", ["0", "-1", "two", "nan", "inf", "rays"])
def test_object_store_size_refuses_what_is_not_a_positive_size(raw, monkeypatch):
    monkeypatch.setenv(OBJECT_STORE_ENV, raw)
    with pytest.raises(ValueError, match=f"{OBJECT_STORE_ENV}=.*positive number of GiB"):
        object_store_bytes()


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's malloc_trim")
def test_release_memory_gives_freed_heap_pages_back():
    """Freed blocks between live ones stay in the process (the heap cannot shrink past a live block)
    until the step boundary's release gives their pages back."""
    proc = psutil.Process()
    blocks = [b"x" * 100_000 for _ in range(2_000)]  # 200 MB in heap-sized blocks, every page written
    del blocks[::2]  # 100 MB freed in holes between live blocks
    held = proc.memory_info().rss
    release_memory()
    assert held - proc.memory_info().rss > 50 * 2**20
    assert len(blocks) == 1_000

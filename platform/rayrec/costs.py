"""What each step of a job costs: wall time, the peak memory of the whole process tree, rows per second.

The memory is that of the job's process and every process under it (a local Ray's GCS, raylet and
workers, whose object store pages are shared): sampled in a background thread, each process counted
by its proportional set size (PSS: a page shared by n processes counts 1/n in each, so the sum is the
tree's real footprint; RSS where PSS cannot be read). A job that joins a running cluster sees only its
own driver's tree, and says so.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import psutil

__all__ = ["TreeMemory", "StepCost", "Costs", "format_costs"]


def _footprint(p: psutil.Process) -> int:
    try:
        return int(p.memory_full_info().pss)
    except (psutil.AccessDenied, AttributeError):
        return int(p.memory_info().rss)


class TreeMemory:
    """Samples the memory of process ``pid`` (default: this one) and all its descendants every
    ``interval`` seconds while in use as a context manager; ``peak`` is the largest sum seen (bytes),
    ``peak_at`` when it was seen (seconds after entering).

    A process's PSS is summed by the kernel over every page it maps, so a sample costs more the more
    memory the tree holds: at 25M ratings (a 10 GiB driver, a 2.6 GiB training worker, the object
    store's spill workers) one took 145-175 ms of a core, and every 0.5 s that was a quarter of one of
    the machine's two cores, taken from the training it measured. The wait after a sample is therefore
    at least what keeps sampling within ``max_share`` of one core (``sampling_s`` is its total): at
    that size a sample every 5 s or so, so a peak shorter than that may be missed; a small tree is
    still sampled every ``interval``."""

    def __init__(self, pid: int | None = None, interval: float = 0.5, max_share: float = 0.03) -> None:
        if interval <= 0 or not 0 < max_share <= 1:
            raise ValueError(f"interval must be > 0 and max_share in (0, 1], got {interval} and {max_share}")
        self.root = psutil.Process(pid)
        self.interval = interval
        self.max_share = max_share
        self.peak = 0
        self.peak_at = 0.0
        self.samples = 0
        self.sampling_s = 0.0  # time spent sampling, in all
        self._last_s = 0.0  # what the last sample took
        self._t0 = time.perf_counter()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> int:
        t = time.perf_counter()
        total = self._tree_bytes()
        self._last_s = time.perf_counter() - t
        self.sampling_s += self._last_s
        if total > self.peak:
            self.peak, self.peak_at = total, time.perf_counter() - self._t0
        self.samples += 1
        return total

    def _tree_bytes(self) -> int:
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return 0
        total = 0
        for p in procs:
            try:
                total += _footprint(p)
            except psutil.Error:  # a process that ended between listing and reading
                continue
        return total

    def wait_s(self) -> float:
        """The wait before the next sample: ``interval``, or longer where the last sample took so
        long that sampling would take more than ``max_share`` of a core."""
        return max(self.interval, self._last_s * (1.0 / self.max_share - 1.0))

    def _run(self) -> None:
        while not self._stop.wait(self.wait_s()):
            self.sample()

    def __enter__(self) -> TreeMemory:
        self._t0 = time.perf_counter()
        self.sample()
        self._thread = threading.Thread(target=self._run, name="rayrec-tree-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()


@dataclass(frozen=True)
class StepCost:
    step: str
    wall_s: float
    peak_bytes: int
    peak_at_s: float = 0.0  # when in the step the peak was sampled: which of its phases to look at
    samples: int = 0  # memory samples taken (a peak between two of them is missed)


def release_memory() -> None:
    """Give the memory this process freed back to the system: a job of several steps in one process
    (``pipelines.main``) otherwise carries one step's high-water mark into the next. Collects garbage,
    then trims Arrow's pool (which keeps freed buffers for reuse) and the C heap (glibc's
    ``malloc_trim``; nothing where the C library has none)."""
    import ctypes
    import ctypes.util
    import gc

    import pyarrow as pa

    gc.collect()
    pa.default_memory_pool().release_unused()
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        trim = None
    if trim is not None:
        trim(0)


def _rate(rows: int, wall_s: float) -> float:
    return rows / wall_s if wall_s > 0 else 0.0


class Costs:
    """The costs of a job's steps, in order. ``rows`` (the dataset's ratings, known once the data is
    read) is what every step's rows/s is counted against."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.steps: list[StepCost] = []
        self.rows = 0

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        with TreeMemory(interval=self.interval) as mem:
            yield
        self.steps.append(StepCost(name, time.perf_counter() - t, mem.peak, mem.peak_at, mem.samples))

    def to_dict(self) -> dict[str, Any]:
        wall = sum(s.wall_s for s in self.steps)
        total = {"wall_s": wall, "peak_bytes": max((s.peak_bytes for s in self.steps), default=0), "rows": self.rows}
        steps = [{**asdict(s), "rows": self.rows, "rows_per_s": _rate(self.rows, s.wall_s)} for s in self.steps]
        return {"steps": steps, "total": {**total, "rows_per_s": _rate(self.rows, wall)}}


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def format_costs(costs: Costs) -> list[str]:
    """The per-step table, one line per step and a total."""
    d = costs.to_dict()
    lines = [f"{'step':<10} {'wall':>9} {'peak memory':>12} {'rows/s':>12}"]
    for s in [*d["steps"], {**d["total"], "step": "total"}]:
        lines.append(f"{s['step']:<10} {s['wall_s']:>8.1f}s {_gib(s['peak_bytes']):>12} {s['rows_per_s']:>12,.0f}")
    return lines

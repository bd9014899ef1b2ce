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
    ``interval`` seconds while in use as a context manager; ``peak`` is the largest sum seen (bytes)."""

    def __init__(self, pid: int | None = None, interval: float = 0.5) -> None:
        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> int:
        total = 0
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return 0
        for p in procs:
            try:
                total += _footprint(p)
            except psutil.Error:  # a process that ended between listing and reading
                continue
        self.peak = max(self.peak, total)
        self.samples += 1
        return total

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> TreeMemory:
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
    rows: int  # rows the step stands for (the dataset's ratings), for rows/s

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.wall_s if self.wall_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rows_per_s": self.rows_per_s}


class Costs:
    """The costs of a job's steps, in order; ``rows`` is set once the data size is known."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.steps: list[StepCost] = []
        self.rows = 0

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        with TreeMemory(interval=self.interval) as mem:
            yield
        self.steps.append(StepCost(name, time.perf_counter() - t, mem.peak, self.rows))

    def finish_rows(self, rows: int) -> None:
        """Set the rows of every step so far (the data size is known after the first step)."""
        self.rows = rows
        self.steps = [StepCost(s.step, s.wall_s, s.peak_bytes, rows) for s in self.steps]

    def to_dict(self) -> dict[str, Any]:
        total = sum(s.wall_s for s in self.steps)
        peak = max((s.peak_bytes for s in self.steps), default=0)
        return {"steps": [s.to_dict() for s in self.steps], "total": {"wall_s": total, "peak_bytes": peak, "rows": self.rows}}


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def format_costs(costs: Costs) -> list[str]:
    """The per-step table, one line per step and a total."""
    lines = [f"{'step':<10} {'wall':>9} {'peak memory':>12} {'rows/s':>12}"]
    for s in costs.steps:
        lines.append(f"{s.step:<10} {s.wall_s:>8.1f}s {_gib(s.peak_bytes):>12} {s.rows_per_s:>12,.0f}")
    d = costs.to_dict()["total"]
    rate = d["rows"] / d["wall_s"] if d["wall_s"] > 0 else 0.0
    lines.append(f"{'total':<10} {d['wall_s']:>8.1f}s {_gib(d['peak_bytes']):>12} {rate:>12,.0f}")
    return lines

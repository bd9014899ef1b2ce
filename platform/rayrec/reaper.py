"""No child process outlives the job: the serving job waits for SIGINT, SIGTERM or SIGHUP (Ctrl-C,
``kill``, a closed terminal), stops Serve and Ray, then ends whatever processes it started that are
still alive, including those whose parent died first.

Serve's HAProxy runs as a child of a Ray actor: when a signal reaches the job's whole process group,
the actor dies at once and HAProxy, orphaned, would keep the app's port (and its stats ports) open.
On Linux the job makes itself a *child subreaper* (``prctl(PR_SET_CHILD_SUBREAPER)``) before Ray
starts, so orphaned descendants are re-parented to the job instead of to init, and :func:`reap` can
still find and end them. SIGKILL of the job itself cannot be handled (nothing can be).
"""

from __future__ import annotations

import ctypes
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable

import psutil

__all__ = ["SIGNALS", "become_subreaper", "wait_for_signal", "reap", "shutdown"]

log = logging.getLogger(__name__)

SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Make this process the subreaper of its descendants (Linux; False elsewhere or if refused).
    Call it before starting Ray."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def wait_for_signal(signals: Iterable[signal.Signals] = SIGNALS) -> signal.Signals:
    """Block the main thread until one of ``signals`` arrives and return it; the handlers stay
    installed, so a second signal during the shutdown that follows does not kill the job halfway."""
    got: list[signal.Signals] = []
    arrived = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        if not got:
            got.append(signal.Signals(signum))
        arrived.set()

    for s in signals:
        signal.signal(s, handler)
    while not arrived.wait(0.5):
        pass
    return got[0]


def reap(timeout_s: float = 10.0, exclude: Iterable[int] = ()) -> list[int]:
    """End every live descendant of this process: SIGTERM, then SIGKILL after ``timeout_s``. Returns
    the pids that had to be ended."""
    skip = set(exclude)
    try:
        children = [p for p in psutil.Process().children(recursive=True) if p.pid not in skip]
    except psutil.Error:
        return []
    for p in children:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(children, timeout=timeout_s)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
    return [p.pid for p in children]


def shutdown(steps: Iterable[Callable[[], object]], timeout_s: float = 10.0) -> list[int]:
    """Run the shutdown ``steps`` in order (each at most ``timeout_s``, on a helper thread: a step
    waiting on a dead process must not hang the job), then :func:`reap` what is left. A step still
    running after its time ends the sequence: a later step would race it (``ray.shutdown`` while
    ``serve.shutdown`` still talks to Ray aborts the process), and reaping ends what it waits on.
    Returns the pids reaped; the caller should then leave with ``os._exit``."""
    for step in steps:
        t = threading.Thread(target=_quiet(step), daemon=True)
        started = time.monotonic()
        t.start()
        t.join(timeout_s)
        if t.is_alive():
            name = getattr(step, "__name__", step)
            log.warning("shutdown step %s still running after %.0fs; ending the processes left", name, time.monotonic() - started)
            break
    ended = reap()
    if ended:
        log.info("ended %d leftover child process(es): %s", len(ended), ended)
    return ended


def _quiet(step: Callable[[], object]) -> Callable[[], None]:
    def run() -> None:
        try:
            step()
        except Exception as e:  # the cluster may already be gone: keep shutting down
            log.warning("shutdown step %s failed: %s", getattr(step, "__name__", step), e)

    return run

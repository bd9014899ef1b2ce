"""The main job's console: one line per step, Ray's own output in files, and a Ctrl-C that stops.

A local run of the whole pipeline used to print hundreds of lines of Ray internals (execution plans,
actor tracebacks of Ray's own monitors, deprecation notices) around the few that matter. Here:

- :meth:`Console.step` runs a job with its prints and logs captured into the job log
  (``<artifacts>/logs/main-<time>.log``) and prints one line: the step, its time and its headline;
- Ray's driver loggers (``ray.*``) write to that job log too (errors still reach the console), and
  the output of Ray's workers and actors, forwarded to the driver, goes to ``workers.log`` beside it,
  except the per-epoch lines of the training loop, which are the progress of the long steps;
- warnings known to be harmless (:data:`HARMLESS_WARNINGS`) are filtered; any other one is shown.

Ray keeps its own per-process logs under its session folder; :func:`ray_logs_dir` says where.
Nothing here is needed by the library: only the jobs use it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["Console", "HARMLESS_WARNINGS", "ray_logs_dir", "interruptible", "progress_bar"]

#: (message regex, category name, why it is harmless). Matched against Python warnings raised in the
#: driver; worker output never reaches the console anyway.
HARMLESS_WARNINGS: tuple[tuple[str, str, str], ...] = (
    (r".*exclude_resources.*", "DeprecationWarning", "Ray Train's own use of a Ray Data option it deprecated"),
    (r".*pkg_resources is deprecated.*", "UserWarning", "imported by a dependency, not by rayrec"),
)
#: worker lines shown on the console: the training loop's per-epoch line
PROGRESS = re.compile(r"\[(?P<model>\w+)\] (?P<what>epoch \d+/\d+ .*)$")
_EPOCH = re.compile(r"epoch (\d+)/(\d+)")
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def ray_logs_dir() -> str | None:
    """The local Ray session's log folder (Ray's per-process logs), None when unknown."""
    try:
        import ray._private.worker as rw

        node = rw._global_node
        return str(node.get_logs_dir_path()) if node is not None else None
    except Exception:  # private API moved
        return None


def filter_harmless_warnings() -> None:
    """Hide the warnings of :data:`HARMLESS_WARNINGS` (by message and category)."""
    import builtins

    for message, category, _why in HARMLESS_WARNINGS:
        cls = getattr(builtins, category, Warning)
        warnings.filterwarnings("ignore", message=message, category=cls)


class _Workers:
    """Receives what Ray's workers print (through Ray's driver-side dispatcher): every line into
    ``workers.log``; the training loop's epoch lines also to the console."""

    def __init__(self, path: Path, show: Callable[[str], None]) -> None:
        self.file = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 (closed by Console.close)
        self.show = show
        self.lock = threading.Lock()

    def __call__(self, data: dict[str, Any]) -> None:
        who = data.get("actor_name") or data.get("task_name") or ""
        pid = data.get("pid")
        with self.lock:
            for line in data.get("lines") or ():
                self.file.write(f"({who} pid={pid}) {line}\n")
                m = PROGRESS.search(line)
                if m:
                    self.show(f"        {m['model']} {progress_bar(m['what'])}{m['what']}")


def progress_bar(what: str, cells: int = 12) -> str:
    """``[██████······] `` for a line that says ``epoch N/M`` (N of M done), else ''."""
    m = _EPOCH.match(what)
    if not m or int(m[2]) <= 0:
        return ""
    done = min(cells, round(cells * int(m[1]) / int(m[2])))
    return f"[{'█' * done}{'·' * (cells - done)}] "


class Console:
    """The story the main job prints (see the module docstring). ``out`` is the console stream."""

    def __init__(self, log_dir: str | Path, *, name: str = "main", out: IO[str] | None = None) -> None:
        self.out = out or sys.stdout
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S")
        self.log_path = self.log_dir / f"{name}-{stamp}.log"
        self.workers_path = self.log_dir / f"{name}-{stamp}-workers.log"
        self.log = open(self.log_path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 (closed in close())
        self._lock = threading.Lock()
        self._handler = logging.StreamHandler(self.log)
        self._handler.setFormatter(logging.Formatter(_FORMAT, "%H:%M:%S"))
        self._workers: _Workers | None = None
        self.steps = 0
        self.total = 0

    # -- output -----------------------------------------------------------------------------------
    def say(self, line: str) -> None:
        """One line to the console (and the job log)."""
        with self._lock:
            print(line, file=self.out, flush=True)
            print(line, file=self.log, flush=True)

    def capture_logging(self, verbose: bool = False) -> None:
        """Every log record into the job log; WARNING and above of rayrec's own loggers, and errors of
        any, to the console too."""
        root = logging.getLogger()
        for h in list(root.handlers):
            root.removeHandler(h)
        root.setLevel(logging.DEBUG if verbose else logging.INFO)
        root.addHandler(self._handler)
        console = logging.StreamHandler(self.out)
        console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        console.setLevel(logging.WARNING)
        console.addFilter(lambda r: r.levelno >= logging.ERROR or not (r.name == "ray" or r.name.startswith("ray.")))
        root.addHandler(console)
        filter_harmless_warnings()
        logging.captureWarnings(True)
        self.route_ray_loggers()

    def route_ray_loggers(self) -> None:
        """Ray configures its loggers (``ray``, ``ray.data``, ``ray.serve``…) with handlers of their own
        that write to the terminal: swap those for the job log. Call again after Ray starts a library
        that configures its logger late (Serve)."""
        names = [n for n in logging.root.manager.loggerDict if n == "ray" or n.startswith("ray.")]
        for name in names:
            lg = logging.getLogger(name)
            streams = [h for h in lg.handlers if type(h) is logging.StreamHandler or h.__class__.__name__ == "PlainRayHandler"]
            for h in streams:
                lg.removeHandler(h)
            if streams and self._handler not in lg.handlers:
                lg.addHandler(self._handler)
            if not lg.propagate and not lg.handlers:
                lg.addHandler(self._handler)

    def capture_workers(self) -> bool:
        """Take over what Ray forwards from workers to the driver (after ``ray.init``): into
        ``workers.log``, epoch lines to the console. False when this Ray has no such hook."""
        try:
            from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
        except ImportError:
            return False
        dispatcher.remove_handler("ray_print_logs")
        self._workers = _Workers(self.workers_path, self.say)
        dispatcher.add_handler("rayrec_console", self._workers)
        return True

    # -- steps ------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def captured(self) -> Iterator[io.StringIO]:
        """Whatever a job prints goes to the job log (and a buffer, to show it if the job fails)."""
        buf = io.StringIO()
        tee = _Tee(self.log, buf)
        with contextlib.redirect_stdout(tee), contextlib.redirect_stderr(tee):
            yield buf

    def step(self, name: str, fn: Callable[[], int], headline: Callable[[], str] | None = None) -> float:
        """Run one job (``fn`` returns its exit code) with its output in the job log; print
        ``[n/N] name  time  headline``. A failing job raises SystemExit with the end of its output."""
        self.steps += 1
        print(f"\n===== {name} =====", file=self.log, flush=True)
        t = time.perf_counter()
        with self.captured() as buf:
            rc = fn()
        took = time.perf_counter() - t
        if rc:
            tail = "\n".join(buf.getvalue().strip().splitlines()[-15:])
            raise SystemExit(f"{name} failed (exit {rc}) after {took:.1f}s:\n{tail}\n(full log: {self.log_path})")
        text = ""
        if headline is not None:
            try:
                text = headline()
            except Exception as e:  # a missing figure must not fail a finished step
                text = f"(no summary: {e})"
        counter = f"[{self.steps}/{self.total}]" if self.total else f"[{self.steps}]"
        self.say(f"{counter} {name:<10} {_secs(took):>7}  {text}".rstrip())
        return took

    def close(self) -> None:
        if self._workers is not None:
            with contextlib.suppress(Exception):
                from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

                dispatcher.remove_handler("rayrec_console")
            self._workers.file.close()
        logging.getLogger().removeHandler(self._handler)
        self.log.close()


class _Tee(io.TextIOBase):
    def __init__(self, *streams: IO[str]) -> None:
        self.streams = streams

    def write(self, s: str) -> int:
        for st in self.streams:
            st.write(s)
        return len(s)

    def flush(self) -> None:
        for st in self.streams:
            st.flush()

    def isatty(self) -> bool:
        return False


def _secs(s: float) -> str:
    if s < 100:
        return f"{s:.1f}s"
    whole = round(s)  # rounded first: 5939.7 s is 99m00s, not 98m60s
    return f"{whole // 60}m{whole % 60:02d}s"


def interruptible() -> None:
    """Make Ctrl-C raise KeyboardInterrupt in this (main) thread again. Ray Train installs a SIGINT
    handler of its own in the driver while a run trains (it aborts the run) and leaves it installed
    after; a job that goes on to serve must take Ctrl-C back."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)

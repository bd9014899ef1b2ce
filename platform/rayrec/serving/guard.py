"""Store calls with a deadline and a circuit breaker, for the async request path.

A shared store outage must cost each request at most ``timeout_s``, and then nothing: after a
failure the breaker opens for ``cooldown_s`` and requests skip the store (answering from popularity)
instead of piling threads onto a dead connection. After the cooldown one request probes the store;
its success closes the breaker. Store calls run on a small dedicated thread pool, so a hung store
cannot exhaust the event loop's default executor.

Writes (:meth:`StoreGuard.write`) are different: a write waits for the others (SQLite has one
writer at a time), so it always runs on the pool, gets a longer deadline, and only a store error
opens the breaker. A write past its deadline is not called failed (it may still land): the caller
is told it was not confirmed. At most ``max_writes`` writes may be running or queued at once,
counting those whose callers gave up: past that a write is refused at once (nothing recorded), so
writes that time out cannot pile up behind a slow store.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

from rayrec.store.base import StoreError, StoreUnavailable

__all__ = ["StoreGuard", "StoreDown", "WriteUnconfirmed"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class StoreDown(StoreUnavailable):
    """The breaker is open, or the call failed or missed its deadline."""


class WriteUnconfirmed(StoreUnavailable):
    """A write did not finish within its deadline: it may still be applied."""


class StoreGuard:
    """``inline=True`` calls the store on the event loop's thread instead of the pool: for the
    embedded SQLite file, whose reads (WAL mode) never wait on a network or a writer, the two thread
    hops per request cost more than the reads themselves. A slow or failing call still opens the
    breaker; only the deadline cannot interrupt an inline call."""

    def __init__(
        self,
        timeout_s: float = 0.3,
        cooldown_s: float = 2.0,
        threads: int = 8,
        *,
        inline: bool = False,
        write_timeout_s: float = 5.0,
        max_writes: int = 32,
    ) -> None:
        self.timeout_s, self.cooldown_s, self.inline = timeout_s, cooldown_s, inline
        self.write_timeout_s = write_timeout_s
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="store")
        self._lock = threading.Lock()
        self._open_until = 0.0
        self._probing = False
        self.last_error: str | None = None
        self.failures = 0
        self._closed = False
        self._busy = 0  # calls running on the pool's threads now
        self._idle = threading.Condition()
        self.max_writes = max_writes
        self._writes = 0  # running or queued on the pool, finished or not by their deadline

    def configure(self, timeout_s: float, cooldown_s: float, write_timeout_s: float | None = None) -> None:
        self.timeout_s, self.cooldown_s = timeout_s, cooldown_s
        if write_timeout_s is not None:
            self.write_timeout_s = write_timeout_s

    @property
    def healthy(self) -> bool:
        """False while the breaker is open."""
        return time.monotonic() >= self._open_until

    def _admit(self) -> bool:
        """Whether a call may go to the store now (closed breaker, or the one probe after cooldown)."""
        with self._lock:
            if time.monotonic() >= self._open_until:
                if self.failures and self._probing:
                    return False
                if self.failures:
                    self._probing = True
                return True
            return False

    def _record(self, error: BaseException | None) -> None:
        with self._lock:
            self._probing = False
            if error is None:
                self.failures = 0
                self.last_error = None
                return
            self.failures += 1
            self.last_error = str(error) or type(error).__name__
            self._open_until = time.monotonic() + self.cooldown_s
        log.warning("online store failed (%s); skipping it for %.1fs", self.last_error, self.cooldown_s)

    @contextmanager
    def _bookkeeping(self) -> Iterator[None]:
        """Around one admitted call: a store error opens the breaker (as :class:`StoreDown`); any
        other exception (a deadline, a bug) frees the probe slot and propagates."""
        try:
            yield
        except StoreError as e:
            self._record(e)
            raise StoreDown(str(e)) from e
        except BaseException:
            with self._lock:
                self._probing = False
            raise

    def _check_admitted(self) -> None:
        if not self._admit():
            raise StoreDown(f"online store skipped for {self.cooldown_s:g}s after a failure: {self.last_error}")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the store pool within the deadline; :class:`StoreDown` on an open breaker,
        a :class:`StoreError`, or a missed deadline. Other exceptions (bugs) propagate unchanged."""
        self._check_admitted()
        if self.inline:
            return self._run_inline(fn, *args)
        loop = asyncio.get_running_loop()
        try:
            with self._bookkeeping():
                out = await asyncio.wait_for(loop.run_in_executor(self._pool, self._tracked(fn), *args), self.timeout_s)
        except asyncio.TimeoutError:
            err = StoreDown(f"online store did not answer within {self.timeout_s:g}s")
            self._record(err)
            raise err from None
        self._record(None)
        return out

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)``, a write, on the store pool (never on the event loop: it may wait for another
        writer's lock). :class:`StoreDown` on an open breaker or a :class:`StoreError` (which opens
        it); :class:`WriteUnconfirmed` when it has not finished within ``write_timeout_s`` (it keeps
        running and may still be applied; contention is not an outage, so the breaker stays closed)."""
        self._check_admitted()
        with self._lock:
            if self._writes >= self.max_writes:
                busy = True
            else:
                busy, self._writes = False, self._writes + 1
        if busy:
            with self._lock:
                self._probing = False
            raise StoreDown(f"{self.max_writes} writes are still running (the store is slow): refused, not recorded")
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._pool, self._tracked(fn), *args)
        future.add_done_callback(self._write_done)
        try:
            with self._bookkeeping():
                out = await asyncio.wait_for(asyncio.shield(future), self.write_timeout_s)
        except asyncio.TimeoutError:
            raise WriteUnconfirmed(f"the online store did not confirm the write within {self.write_timeout_s:g}s") from None
        self._record(None)
        return out

    def _write_done(self, _: Any) -> None:
        with self._lock:
            self._writes -= 1

    @property
    def writes(self) -> int:
        """Writes running or queued now (including those whose callers stopped waiting)."""
        return self._writes

    def _run_inline(self, fn: Callable[..., T], *args: Any) -> T:
        t = time.monotonic()
        with self._bookkeeping():
            out = fn(*args)
        slow = time.monotonic() - t
        if slow > self.timeout_s:  # answered, but too late: skip the store for a while
            self._record(StoreDown(f"online store answered in {slow:.2f}s, over the {self.timeout_s:g}s deadline"))
        else:
            self._record(None)
        return out

    @property
    def closed(self) -> bool:
        return self._closed

    def _tracked(self, fn: Callable[..., T]) -> Callable[..., T]:
        """``fn`` counted while it runs on a pool thread, so :meth:`close` can wait for it."""

        def call(*args: Any) -> T:
            with self._idle:
                self._busy += 1
            try:
                return fn(*args)
            finally:
                with self._idle:
                    self._busy -= 1
                    self._idle.notify_all()

        return call

    def close(self, wait_s: float = 5.0) -> None:
        """Refuse new calls, drop queued ones, and wait up to ``wait_s`` for those running to finish:
        the caller closes the store next, and a connection must not be closed under a running call."""
        self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._idle:
            if not self._idle.wait_for(lambda: self._busy == 0, timeout=wait_s):
                log.warning("closing with %d store call(s) still running after %.1fs", self._busy, wait_s)

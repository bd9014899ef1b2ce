"""The impression log: every served list, appended to the store's durable ``impressions`` log.

A record holds the request id, the user, the experiment and variant (or the interleaving teams), the
items in list order, and the time. Clicks and ratings posted with the request id are attributed to it
by the analysis job (:mod:`rayrec.experiments.analysis`).

Writing is off the request path and batched (group commit): a request queues its record and returns;
one writer waits ``linger_s`` for more records (at low traffic a write per request cost a replica
about as much as the request's own compute: a store call on another thread, and its commit), then
appends everything queued in one store call, and whatever queued meanwhile goes in the next call.
A flush, or a full batch, ends the wait. A store outage keeps records queued (up to ``capacity``;
beyond it the oldest are dropped and counted) and they are written once it is back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

__all__ = ["IMPRESSIONS_LOG", "ImpressionLog", "impression_record"]

log = logging.getLogger(__name__)

IMPRESSIONS_LOG = "impressions"

Writer = Callable[[list[dict[str, Any]]], Awaitable[Any]]


def impression_record(
    request_id: str,
    user_id: int,
    items: list[int],
    *,
    experiment: str | None = None,
    mode: str | None = None,
    variant: str | None = None,
    variants: list[str] | None = None,
    teams: list[str] | None = None,
    credits: list[float] | None = None,
    interleaving: str | None = None,
    degraded: bool = False,
    ts: float | None = None,
) -> dict[str, Any]:
    """One served list as the impressions log stores it (an interleaved one with each item's team and
    the credit a click on it gives: > 0 the first variant, < 0 the second)."""
    return {
        "request_id": request_id, "user_id": int(user_id), "ts": round(time.time() if ts is None else ts, 3),
        "experiment": experiment, "mode": mode, "variant": variant, "variants": variants,
        "items": [int(m) for m in items], "teams": teams,
        "credits": [float(c) for c in credits] if credits is not None else None, "interleaving": interleaving,
        "degraded": bool(degraded),
    }  # fmt: skip


class ImpressionLog:
    """Queue impression records and append them in batches through ``write`` (an async callable
    that appends a list of records, e.g. the store guard's write path)."""

    def __init__(self, write: Writer, *, capacity: int = 20_000, batch: int = 500, linger_s: float = 0.05) -> None:
        if linger_s < 0:
            raise ValueError(f"linger_s must be ≥ 0, got {linger_s}")
        self._write = write
        self.capacity, self.batch, self.linger_s = capacity, batch, linger_s
        self._flushing = False
        self._lingering: asyncio.Future[None] | None = None  # done early by a flush, or a full batch
        self._queue: deque[dict[str, Any]] = deque()
        self._task: asyncio.Task[None] | None = None
        self.written = 0
        self.dropped = 0
        self.failures = 0

    @property
    def pending(self) -> int:
        return len(self._queue)

    def record(self, rec: Mapping[str, Any]) -> None:
        """Queue one record and make sure a writer runs (call on the event loop)."""
        if len(self._queue) >= self.capacity:
            self._queue.popleft()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("impression log: %d record(s) dropped, the store has not taken them", self.dropped)
        self._queue.append(dict(rec))
        if len(self._queue) >= self.batch:
            self._wake()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain())

    def _wake(self) -> None:
        """End the writer's linger now."""
        if self._lingering is not None and not self._lingering.done():
            self._lingering.set_result(None)

    async def _drain(self) -> None:
        if self.linger_s > 0 and len(self._queue) < self.batch and not self._flushing:
            # the records of the next linger_s go in the same write
            loop = asyncio.get_running_loop()
            self._lingering = waiter = loop.create_future()
            timer = loop.call_later(self.linger_s, self._wake)
            try:
                await waiter
            finally:
                timer.cancel()
                self._lingering = None
        while self._queue:
            chunk = [self._queue.popleft() for _ in range(min(self.batch, len(self._queue)))]
            try:
                await self._write(chunk)
                self.written += len(chunk)
            except Exception as e:  # the store is down or slow: keep them, retry with the next record
                self.failures += 1
                self._queue.extendleft(reversed(chunk))
                while len(self._queue) > self.capacity:
                    self._queue.popleft()
                    self.dropped += 1
                log.warning("impression log: %d record(s) not written yet: %s", len(self._queue), e)
                return

    async def flush(self, timeout_s: float = 10.0) -> bool:
        """Write everything queued; True when the queue is empty afterwards."""
        deadline = time.monotonic() + timeout_s
        self._flushing = True  # no linger: write now
        self._wake()
        try:
            return await self._flush(deadline)
        finally:
            self._flushing = False

    async def _flush(self, deadline: float) -> bool:
        while self._queue and time.monotonic() < deadline:
            if self._task is None or self._task.done():
                self._task = asyncio.get_running_loop().create_task(self._drain())
            await asyncio.wait({self._task}, timeout=max(0.0, deadline - time.monotonic()))
            if self._queue and self._task.done():
                await asyncio.sleep(0.05)  # the store refused: try again shortly
        if self._task is not None and not self._task.done():
            await asyncio.wait({self._task}, timeout=max(0.0, deadline - time.monotonic()))
        return not self._queue

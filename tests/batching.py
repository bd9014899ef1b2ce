"""A small asyncio micro-batcher for running the serving backend outside Serve.

Inside Serve the ingress batches ranking with ``@serve.batch``; the in-process compute floor of the
benchmark and standalone uses need the same behaviour without a replica context: calls that arrive
while a batch is forming (up to ``max_batch_size``, waiting at most ``wait_s`` after the first) run
as one call of ``fn(list) -> list``, one batch at a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

__all__ = ["MicroBatcher"]

In = TypeVar("In")
Out = TypeVar("Out")


class MicroBatcher(Generic[In, Out]):
    def __init__(self, fn: Callable[[list[In]], Awaitable[list[Out]]], max_batch_size: int = 8, wait_s: float = 0.002) -> None:
        self.fn, self.max_batch_size, self.wait_s = fn, max_batch_size, wait_s
        self._queue: list[tuple[In, asyncio.Future[Out]]] = []
        self._kick: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None

    async def __call__(self, item: In) -> Out:
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done():
            self._kick = asyncio.Event()
            self._worker = loop.create_task(self._run())
        fut: asyncio.Future[Out] = loop.create_future()
        self._queue.append((item, fut))
        assert self._kick is not None
        self._kick.set()
        return await fut

    async def _run(self) -> None:
        assert self._kick is not None
        while True:
            await self._kick.wait()
            self._kick.clear()
            if len(self._queue) < self.max_batch_size and self.wait_s > 0:
                await asyncio.sleep(self.wait_s)
            while self._queue:
                batch, self._queue = self._queue[: self.max_batch_size], self._queue[self.max_batch_size :]
                try:
                    outs = await self.fn([item for item, _ in batch])
                except Exception as e:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(e)
                    continue
                for (_, fut), out in zip(batch, outs):
                    if not fut.done():
                        fut.set_result(out)

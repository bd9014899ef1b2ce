"""The store guard: reads get a short deadline and a circuit breaker; writes wait for each other
off the event loop, and a slow write is reported unconfirmed without opening the breaker."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from rayrec.serving.guard import StoreDown, StoreGuard, WriteUnconfirmed
from rayrec.store.base import StoreUnavailable


def run(coro):
    return asyncio.run(coro)


def test_a_read_past_its_deadline_opens_the_breaker_until_a_probe_succeeds() -> None:
    guard = StoreGuard(timeout_s=0.05, cooldown_s=0.2)

    async def scenario() -> None:
        with pytest.raises(StoreDown, match="did not answer within 0.05s"):
            await guard.run(time.sleep, 0.3)
        assert not guard.healthy
        calls = []
        with pytest.raises(StoreDown, match="skipped"):
            await guard.run(calls.append, 1)
        assert calls == []  # the store was not called while the breaker was open
        await asyncio.sleep(0.25)
        assert await guard.run(lambda: "ok") == "ok"  # the probe closes it
        assert guard.healthy and guard.failures == 0

    run(scenario())
    guard.close()


def test_a_slow_inline_read_opens_the_breaker_and_a_failing_one_too() -> None:
    guard = StoreGuard(timeout_s=0.02, cooldown_s=0.1, inline=True)

    async def scenario() -> None:
        assert await guard.run(lambda: (time.sleep(0.05), "late")[1]) == "late"  # answered, too late
        assert not guard.healthy
        await asyncio.sleep(0.12)

        def refuse() -> None:
            raise StoreUnavailable("connection refused")

        with pytest.raises(StoreDown, match="connection refused"):
            await guard.run(refuse)
        assert not guard.healthy

    run(scenario())
    guard.close()


def test_writes_wait_for_each_other_off_the_loop_and_a_slow_one_is_unconfirmed_not_a_failure() -> None:
    guard = StoreGuard(timeout_s=0.05, cooldown_s=5.0, inline=True, write_timeout_s=0.3)
    lock = threading.Lock()  # one writer at a time, as in SQLite
    done: list[int] = []

    def write(i: int, hold: float) -> tuple[int, int]:
        with lock:
            time.sleep(hold)
            done.append(i)
        return i, threading.get_ident()

    async def scenario() -> None:
        loop_thread = threading.get_ident()
        # two writes of 0.1 s at once: the second waits for the first, longer than a read's deadline
        out = await asyncio.gather(*(guard.write(write, i, 0.1) for i in range(2)))
        assert sorted(i for i, _ in out) == [0, 1] and all(t != loop_thread for _, t in out)
        assert guard.healthy
        with pytest.raises(WriteUnconfirmed, match="did not confirm the write within 0.3s"):
            await guard.write(write, 9, 0.6)
        assert guard.healthy and guard.failures == 0  # contention is not an outage
        await asyncio.sleep(0.5)
        assert 9 in done  # it was applied after all

        def refuse() -> None:
            raise StoreUnavailable("connection refused")

        with pytest.raises(StoreDown, match="connection refused"):
            await guard.write(refuse)
        assert not guard.healthy
        with pytest.raises(StoreDown, match="skipped"):
            await guard.write(write, 10, 0.0)

    run(scenario())
    guard.close()

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


def wait_until(condition, seconds: float = 30.0) -> None:
    """Poll ``condition`` (bounded): tests wait on states, never on a guessed duration."""
    end = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.01)


def test_a_read_past_its_deadline_opens_the_breaker_until_a_probe_succeeds() -> None:
    # a cooldown no scheduling delay can outlast: the call right after the failure must be skipped
    guard = StoreGuard(timeout_s=0.05, cooldown_s=60.0)

    async def scenario() -> None:
        with pytest.raises(StoreDown, match="did not answer within 0.05s"):
            await guard.run(time.sleep, 0.3)
        assert not guard.healthy
        calls = []
        with pytest.raises(StoreDown, match="skipped"):
            await guard.run(calls.append, 1)
        assert calls == []  # the store was not called while the breaker was open

    async def probe() -> None:
        # a short cooldown: once it is over (whenever that is observed), one probe closes the breaker
        with pytest.raises(StoreDown, match="did not answer within 0.05s"):
            await short.run(time.sleep, 0.3)
        wait_until(lambda: short.healthy)
        assert await short.run(lambda: "ok") == "ok"
        assert short.healthy and short.failures == 0

    short = StoreGuard(timeout_s=0.05, cooldown_s=0.2)
    run(scenario())
    run(probe())
    guard.close()
    short.close()


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
    guard = StoreGuard(timeout_s=0.05, cooldown_s=60.0, inline=True, write_timeout_s=60.0)
    lock = threading.Lock()  # one writer at a time, as in SQLite
    done: list[int] = []
    release = threading.Event()

    def write(i: int, hold: float) -> tuple[int, int]:
        with lock:
            time.sleep(hold)
            done.append(i)
        return i, threading.get_ident()

    def stuck(i: int) -> None:
        with lock:
            assert release.wait(60)
            done.append(i)

    async def scenario() -> None:
        loop_thread = threading.get_ident()
        # two writes of 0.1 s at once: the second waits for the first, longer than a read's deadline
        out = await asyncio.gather(*(guard.write(write, i, 0.1) for i in range(2)))
        assert sorted(i for i, _ in out) == [0, 1] and all(t != loop_thread for _, t in out)
        assert guard.healthy
        # a write that cannot finish until released: past its deadline it is unconfirmed, not failed
        guard.configure(timeout_s=0.05, cooldown_s=60.0, write_timeout_s=0.3)
        with pytest.raises(WriteUnconfirmed, match="did not confirm the write within 0.3s"):
            await guard.write(stuck, 9)
        assert guard.healthy and guard.failures == 0  # contention is not an outage
        release.set()
        wait_until(lambda: 9 in done)  # it was applied after all

        def refuse() -> None:
            raise StoreUnavailable("connection refused")

        with pytest.raises(StoreDown, match="connection refused"):
            await guard.write(refuse)
        assert not guard.healthy
        with pytest.raises(StoreDown, match="skipped"):
            await guard.write(write, 10, 0.0)

    run(scenario())
    guard.close()

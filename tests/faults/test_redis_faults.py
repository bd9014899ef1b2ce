"""Redis stops answering (SIGSTOP), comes back (SIGCONT), dies (SIGKILL) and is restarted under
traffic: every /recommend answer is a 200 (degraded while the store is away) within its deadline and
every write a 200 or a clean 503, never a 500 or a timeout; once Redis answers again the same service
(no restart) serves undegraded answers. A private redis-server on a free loopback port (never the
shared one); one replica's serving code in process, on the integration tests' artifacts."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path  # noqa: F401

import httpx
import pytest

DEADLINE_S = 3.0  # a client's timeout: far above the store deadline (0.3 s) a degraded answer takes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(port: int, folder: Path) -> subprocess.Popen:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server not installed")
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    for _ in range(100):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError("redis-server did not start")


@pytest.mark.slow
def test_redis_stopped_killed_and_restarted_under_traffic(serving_artifacts, tmp_path) -> None:
    from rayrec.serving import RecommenderService, ServingConfig, create_app
    from rayrec.serving.security import SecurityConfig
    from rayrec.store.loader import load_table

    port = free_port()
    redis = start_redis(port, tmp_path)
    url = f"redis://127.0.0.1:{port}/0?timeout=0.2&durability=off"
    features = serving_artifacts.features_path
    for entity, table, key in (("user", "users", "userId"), ("item", "items", "movieId")):
        load_table(url, entity, f"{features}/online/{table}.parquet", key)
    svc = RecommenderService.create(serving_artifacts.artifacts, url, ServingConfig(store_cooldown_s=1.0))
    app = create_app(svc, security=SecurityConfig())
    import pandas as pd

    movie = int(pd.read_parquet(f"{features}/online/items.parquet", columns=["movieId"])["movieId"].iloc[0])
    tally: dict[str, Counter[str]] = {}
    reasons: Counter[str] = Counter()

    async def traffic(phase: str, seconds: float) -> None:
        counts = tally.setdefault(phase, Counter())
        stop = time.monotonic() + seconds

        async def reader(c: httpx.AsyncClient, n: int) -> None:
            while time.monotonic() < stop:
                try:
                    r = await c.get(f"/recommend?user_id={1 + n % 50}&k=10", timeout=DEADLINE_S)
                except httpx.TimeoutException:
                    counts["recommend timeout"] += 1
                    continue
                counts[f"recommend {r.status_code}"] += 1
                if r.status_code == 200 and r.json()["degraded"]:
                    counts["recommend degraded"] += 1
                    reasons[r.json()["degraded_reason"]] += 1
                n += 1
                await asyncio.sleep(0.02)  # a fixed pace (about 40 requests/s per reader), as clients over a network

        async def writer(c: httpx.AsyncClient) -> None:
            i = 0
            while time.monotonic() < stop:
                body = {"kind": "click", "user_id": 1 + i % 20, "movie_id": movie, "event_id": f"{phase.replace(' ', '_')}-{i}"}
                try:
                    r = await c.post("/events", json=body, timeout=DEADLINE_S)
                    counts[f"events {r.status_code}"] += 1
                except httpx.TimeoutException:
                    counts["events timeout"] += 1
                i += 1
                await asyncio.sleep(0.05)

        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as c:
            await asyncio.gather(*(reader(c, n * 7) for n in range(3)), writer(c))

    async def scenario() -> None:
        await traffic("before", 2)
        redis.send_signal(signal.SIGSTOP)
        await traffic("redis stopped", 4)
        redis.send_signal(signal.SIGCONT)
        await asyncio.sleep(1.5)  # the breaker's cooldown: one probe then closes it
        await traffic("redis continued", 3)
        redis.kill()
        redis.wait(10)
        await traffic("redis killed", 3)

    try:
        asyncio.run(scenario())
        nonlocal_redis = start_redis(port, tmp_path)  # restarted empty (no persistence): an operator reloads it
        for entity, table, key in (("user", "users", "userId"), ("item", "items", "movieId")):
            load_table(url, entity, f"{features}/online/{table}.parquet", key)
        try:
            async def after() -> None:
                await asyncio.sleep(1.5)
                await traffic("redis restarted", 3)

            asyncio.run(after())
        finally:
            nonlocal_redis.terminate()
            nonlocal_redis.wait(10)
    finally:
        if redis.poll() is None:
            redis.send_signal(signal.SIGCONT)
            redis.terminate()
            redis.wait(10)
        svc.close()
    print("\nRedis faults under traffic:", json.dumps({k: dict(v) for k, v in tally.items()}), "degraded because:", dict(reasons),
          f"breaker: failures={svc.guard.failures} last_error={svc.guard.last_error}")
    for phase, counts in tally.items():
        assert not [k for k in counts if k.endswith(("500", "502", "504", "timeout"))], (phase, counts)
        assert counts["recommend 200"] > 0, (phase, counts)
        assert set(counts) <= {"recommend 200", "recommend degraded", "events 200", "events 503"}, (phase, counts)
    assert tally["redis stopped"]["recommend degraded"] > 0 and tally["redis killed"]["events 503"] > 0
    assert tally["redis continued"]["recommend degraded"] < tally["redis continued"]["recommend 200"]
    assert tally["redis restarted"]["events 200"] > 0, "writes work again without restarting the service"
    assert tally["before"]["recommend degraded"] == 0

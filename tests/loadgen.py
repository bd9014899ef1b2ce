"""A small closed-loop HTTP load generator for benchmarks: N keep-alive connections, each sending
its next request as soon as the previous answer arrives.

Written on raw asyncio streams (HTTP/1.1, GET only) so that the client costs a fraction of what the
server under test does: on a 2-core machine the client shares the CPUs with the server, and a heavy
client (requests, httpx) would cap the figures it reports. Every request has a deadline; a request
that misses it counts as a timeout and its connection is reopened.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import numpy as np

__all__ = ["LoadResult", "run_load", "load"]


@dataclass
class LoadResult:
    """What one closed-loop run measured. Latencies are of successful (2xx) answers only."""

    concurrency: int
    seconds: float
    ok: int
    statuses: Counter[int] = field(default_factory=Counter)
    timeouts: int = 0
    errors: int = 0  # connection failures
    latencies_ms: np.ndarray = field(default_factory=lambda: np.zeros(0))
    rejected_ms: np.ndarray = field(default_factory=lambda: np.zeros(0))  # latency of 503 answers

    @property
    def qps(self) -> float:
        """Successful answers per second."""
        return self.ok / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if len(self.latencies_ms) else float("nan")

    @property
    def p50(self) -> float:
        return self.percentile(50)

    @property
    def p99(self) -> float:
        return self.percentile(99)

    def summary(self) -> dict[str, object]:
        rej = self.statuses.get(503, 0)
        return {
            "concurrency": self.concurrency,
            "qps": round(self.qps, 1),
            "p50_ms": round(self.p50, 2),
            "p99_ms": round(self.p99, 2),
            "ok": self.ok,
            "503": rej,
            "p99_503_ms": round(float(np.percentile(self.rejected_ms, 99)), 2) if len(self.rejected_ms) else None,
            "other_status": {k: v for k, v in self.statuses.items() if k not in (503,) and not 200 <= k < 300},
            "timeouts": self.timeouts,
            "errors": self.errors,
        }


async def _read_response(reader: asyncio.StreamReader) -> int:
    """Read one HTTP/1.1 response; returns the status code (body read and dropped)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = None
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status


async def run_load(
    url: str,
    paths: Sequence[str] | Callable[[int], str],
    *,
    concurrency: int,
    seconds: float,
    warmup: float = 1.0,
    timeout: float = 5.0,
    backoff_503: float = 0.0,
) -> LoadResult:
    """Closed-loop load on ``url`` (scheme://host:port) for ``seconds`` after ``warmup`` seconds.

    ``paths`` is a list of request paths used round-robin, or a function of the request number.
    ``backoff_503``: seconds a connection waits after a 503 before its next request (a client that
    honours back-pressure); 0 retries at once.
    """
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    prefix = parts.path.rstrip("/")
    counter = itertools.count()
    pick: Callable[[int], str]
    if callable(paths):
        pick = paths
    else:
        seq = list(paths)
        pick = lambda i: seq[i % len(seq)]  # noqa: E731
    loop = asyncio.get_running_loop()
    start = loop.time()
    t0, t1 = start + warmup, start + warmup + seconds
    lat: list[float] = []
    rej: list[float] = []
    statuses: Counter[int] = Counter()
    counts = {"timeouts": 0, "errors": 0}

    async def worker() -> None:
        reader = writer = None
        while True:
            now = loop.time()
            if now >= t1:
                break
            if writer is None:
                try:
                    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
                except (OSError, asyncio.TimeoutError):
                    if now >= t0:
                        counts["errors"] += 1
                    await asyncio.sleep(0.05)
                    continue
            path = prefix + pick(next(counter))
            req = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: application/json\r\n\r\n".encode()
            sent = time.perf_counter()
            assert reader is not None and writer is not None
            try:
                writer.write(req)
                status = await asyncio.wait_for(_read_response(reader), timeout)
            except (asyncio.TimeoutError, OSError, asyncio.IncompleteReadError, ValueError, IndexError) as e:
                if loop.time() >= t0:
                    counts["timeouts" if isinstance(e, asyncio.TimeoutError) else "errors"] += 1
                writer.close()
                reader = writer = None
                continue
            done = loop.time()
            if t0 <= done <= t1:
                ms = (time.perf_counter() - sent) * 1e3
                statuses[status] += 1
                if 200 <= status < 300:
                    lat.append(ms)
                elif status == 503:
                    rej.append(ms)
            if status == 503 and backoff_503 > 0:
                await asyncio.sleep(backoff_503)
        if writer is not None:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return LoadResult(
        concurrency=concurrency,
        seconds=seconds,
        ok=len(lat),
        statuses=statuses,
        timeouts=counts["timeouts"],
        errors=counts["errors"],
        latencies_ms=np.asarray(lat),
        rejected_ms=np.asarray(rej),
    )


def load(url: str, paths: Sequence[str] | Callable[[int], str], **kwargs: float) -> LoadResult:
    """:func:`run_load` from synchronous code (uses uvloop when installed)."""
    try:
        import uvloop

        runner: Callable[..., LoadResult] = uvloop.run
    except ImportError:  # pragma: no cover - uvloop ships with ray[serve]
        runner = asyncio.run
    return runner(run_load(url, paths, **kwargs))  # type: ignore[arg-type]

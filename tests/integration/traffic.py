"""Load for the serving tests: threads that call the app until told to stop, keeping every answer and
counting every failure by kind.

A failure is any request that does not end in a 2xx JSON answer: an HTTP error status (``http 503``),
a connection refused, reset or closed mid-answer (``connection ConnectionRefusedError``), a request
that missed its deadline (``timeout``), a body that is not JSON (``bad body``), or anything else
(``other <type>``). No exception ends a thread early: a test that allows no failure sees each one.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Answer:
    at: float  # time.monotonic() when the answer arrived
    status: int
    body: Any
    headers: dict[str, str]  # names in lower case


def classify(error: BaseException) -> str:
    """The failure kind of an exception raised by one urllib request."""
    if isinstance(error, urllib.error.HTTPError):
        return f"http {error.code}"
    reason = error.reason if isinstance(error, urllib.error.URLError) else error
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return "timeout"
    if isinstance(reason, (ConnectionError, http.client.RemoteDisconnected, http.client.IncompleteRead)):
        return f"connection {type(reason).__name__}"
    if isinstance(reason, OSError):
        return f"connection {type(reason).__name__}"
    return f"other {type(reason).__name__}"


def request(url: str, timeout: float, method: str = "GET", body: bytes | None = None) -> Answer:
    """One request; raises what urllib raises (HTTPError for a non-2xx status)."""
    req = urllib.request.Request(url, data=body, method=method, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        raw = r.read()
        return Answer(time.monotonic(), r.status, json.loads(raw), {k.lower(): v for k, v in r.headers.items()})


@dataclass
class Traffic:
    """Closed-loop load from ``threads`` threads on the paths ``path(i)`` (i: the request number)."""

    base: str
    path: Callable[[int], str]
    threads: int = 2
    timeout: float = 30.0
    max_seconds: float = 300.0  # a bound on every loop, whatever the test does
    answers: list[Answer] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)  # the first few failures, for the assertion message

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._count = 0
        self._workers = [threading.Thread(target=self._run, daemon=True) for _ in range(self.threads)]

    def _next(self) -> int:
        with self._lock:
            self._count += 1
            return self._count

    def _run(self) -> None:
        end = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < end:
            url = self.base + self.path(self._next())
            try:
                answer = request(url, self.timeout)
            except json.JSONDecodeError as e:
                kind, detail = "bad body", str(e)
            except Exception as e:  # noqa: BLE001 - every failure is counted, by kind
                kind, detail = classify(e), f"{type(e).__name__}: {e}"
            else:
                with self._lock:
                    self.answers.append(answer)
                continue
            with self._lock:
                self.failures[kind] += 1
                if len(self.errors) < 5:
                    self.errors.append(f"{url}: {detail}")

    def __enter__(self) -> Traffic:
        for t in self._workers:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._workers:
            t.join(self.timeout + 5)
        assert not any(t.is_alive() for t in self._workers), "a load thread did not stop"

    def wait_for(self, condition: Callable[[list[Answer]], bool], seconds: float) -> bool:
        """Block until ``condition(answers so far)`` holds or ``seconds`` pass; whether it held."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            with self._lock:
                snapshot = list(self.answers)
            if condition(snapshot):
                return True
            time.sleep(0.05)
        return False

    def snapshot(self) -> list[Answer]:
        with self._lock:
            return list(self.answers)

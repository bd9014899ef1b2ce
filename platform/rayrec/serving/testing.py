"""Test doubles that ship with the library: a store that fails or hangs on demand, and a ranker that
raises, for exercising the degrade paths without patching internals."""

from __future__ import annotations

import threading
import time
from typing import Any, Literal

from rayrec.store.base import OnlineStore, StoreUnavailable

__all__ = ["FaultyStore", "BrokenRanker"]

Mode = Literal["ok", "fail", "hang"]


class FaultyStore:
    """Wraps a real store. ``mode="fail"`` makes every call raise :class:`StoreUnavailable` (a refused
    connection); ``mode="hang"`` makes calls sleep ``hang_s`` first (an unresponsive server)."""

    def __init__(self, inner: OnlineStore, mode: Mode = "ok", hang_s: float = 5.0) -> None:
        self.inner, self.mode, self.hang_s = inner, mode, hang_s
        self.url = getattr(inner, "url", "faulty")
        self.calls = 0
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.inner, name)
        if not callable(target):
            return target

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                self.calls += 1
            if self.mode == "fail":
                raise StoreUnavailable(f"online store {self.url}: connection refused (injected)")
            if self.mode == "hang":
                time.sleep(self.hang_s)
            return target(*args, **kwargs)

        return call


class BrokenRanker:
    """A ranker whose every call raises, standing in for a corrupt model or an out-of-memory error."""

    version = "broken"

    def __init__(self, spec: Any = None) -> None:
        self.spec = spec

    def score_many(self, users: Any, items: Any) -> Any:
        raise RuntimeError("ranker exploded (injected)")

"""Test doubles that ship with the library: a store that fails or hangs on demand, a ranker that
raises, for exercising the degrade paths without patching internals, and :class:`EventsBackend`, the
HTTP backend over the real write path (guard, real-time path, a real store) with constant reads, for
exercising the API's input handling and the event path without artifacts."""

from __future__ import annotations

import threading
import time
from typing import Any, Literal

from rayrec.store.base import OnlineStore, StoreUnavailable

__all__ = ["FaultyStore", "BrokenRanker", "EventsBackend"]

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


class EventsBackend:
    """A :class:`rayrec.serving.http.Backend` whose writes take the path a replica's do (the store
    guard, :class:`rayrec.realtime.Realtime`, the store) and whose reads answer from constants (the
    recommendation) or the store (users, movies)."""

    def __init__(self, realtime: Any, guard: Any = None) -> None:
        from rayrec.serving.events import EventSink
        from rayrec.serving.guard import StoreGuard

        self.rt = realtime
        self.sink = EventSink(realtime.store, realtime=realtime)
        self.guard = guard if guard is not None else StoreGuard(write_timeout_s=5.0)

    async def recommend(self, user_id: int, k: int, context: Any = None) -> Any:
        from rayrec.serving.api import Recommendation

        return Recommendation(user_id=user_id, k=k, items=[], cold_start=True)

    async def similar(self, movie_id: int, k: int) -> Any:
        return None

    async def user(self, user_id: int) -> Any:
        from rayrec.serving.api import UserProfile

        row = self.rt.store.get("user", [user_id])[0]
        return None if row is None else UserProfile(user_id=user_id, known=True)

    async def movie(self, movie_id: int) -> Any:
        from rayrec.serving.api import Movie

        row = self.rt.store.get("item", [movie_id])[0]
        return None if row is None else Movie(movie_id=movie_id, title=row.get("title"))

    async def event(self, payload: Any) -> Any:
        from rayrec.serving.events import guarded_write

        return await guarded_write(self.guard, self.sink.ingest, payload, "event")

    async def add_item(self, payload: Any) -> Any:
        from rayrec.serving.events import guarded_write

        return await guarded_write(self.guard, self.sink.add_item, payload, "item")

    async def health(self) -> Any:
        from rayrec.serving.api import Health

        ok = self.guard.healthy
        return Health(status="ok" if ok else "degraded", store="ok" if ok else "unavailable")

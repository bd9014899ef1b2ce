"""Every event is applied once: a repeated ``event_id`` (a client retry, concurrent duplicates, an id
derived from identical fields) changes nothing the second time, and an event logged by a process that
died before applying it is applied by recovery, once. In process, over the HTTP app and both stores."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from realtime_doubles import item_rows, toy_movies

from rayrec.realtime import EVENTS_LOG, Event, Realtime, RealtimeConfig, UserStats
from rayrec.retrieval.catalog import ItemCatalog
from rayrec.serving import create_app
from rayrec.serving.security import SecurityConfig
from rayrec.serving.testing import EventsBackend
from rayrec.store import OnlineStore


@pytest.fixture
def rt(store: OnlineStore) -> Realtime:
    items = item_rows(toy_movies())
    store.load("item", items, key="movieId")
    return Realtime(store, RealtimeConfig(user_embedding="none"), catalog=ItemCatalog.from_frame(items))


def post_all(rt: Realtime, bodies: list[Any]) -> list[httpx.Response]:
    """All bodies at once, as concurrent requests to one app."""
    app = create_app(EventsBackend(rt), security=SecurityConfig())

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as c:
            return list(await asyncio.gather(*(c.post("/events", json=b) for b in bodies)))

    return asyncio.run(run())


def stats(rt: Realtime, user: int) -> UserStats:
    return UserStats.of_row(rt.store.get("user", [user])[0])


def test_twenty_identical_ratings_at_once_are_logged_and_applied_once(rt: Realtime) -> None:
    movie = int(rt.catalog.movie_ids[3])
    body = {"kind": "rating", "user_id": 5, "movie_id": movie, "value": 4.0, "timestamp": 1_700_000_000}
    acks = [r.json() for r in post_all(rt, [body] * 20)]
    assert all(a["event_id"] == acks[0]["event_id"] for a in acks) and acks[0]["event_id"].startswith("d-")
    assert sum(a["applied"] for a in acks) == 1 and sum(a["duplicate"] for a in acks) == 19
    assert len({a["offset"] for a in acks}) == 1
    assert rt.store.log_length(EVENTS_LOG) == 1
    s = stats(rt, 5)
    assert s.ratings.n == 1 and s.seq == 1
    assert len(rt.store.get_history(5)) == 1
    item = rt.store.get("item", [movie])[0]
    assert item["item_rating_count"] == 1


def test_a_retried_click_with_its_event_id_counts_once(rt: Realtime) -> None:
    movie = int(rt.catalog.movie_ids[0])
    clicks = [{"kind": "click", "user_id": 9, "movie_id": movie, "event_id": f"c-{i}"} for i in range(5)]
    first = post_all(rt, clicks)
    retry = post_all(rt, clicks[1:3] + [clicks[4]] * 3)  # the client retried some, some several times
    assert all(r.status_code == 200 for r in first + retry)
    assert [r.json()["duplicate"] for r in retry] == [True] * 5
    assert stats(rt, 9).clicks == 5 and rt.store.log_length(EVENTS_LOG) == 5
    # without ids, clicks at different times are different events
    post_all(rt, [{"kind": "click", "user_id": 9, "movie_id": movie, "timestamp": 1_700_000_000 + i} for i in range(3)])
    assert stats(rt, 9).clicks == 8
    # one request holding a duplicate: applied once
    r = post_all(rt, [[clicks[0], {**clicks[0], "event_id": "c-new"}, {**clicks[0], "event_id": "c-new"}]])[0].json()
    assert [a["duplicate"] for a in r] == [True, False, True] and stats(rt, 9).clicks == 9


def test_an_event_logged_but_never_applied_is_recovered_once(rt: Realtime) -> None:
    assert rt.recover(grace_s=0) == 0  # the first call marks the log's end
    movie = int(rt.catalog.movie_ids[1])
    done = Event.model_validate({"kind": "rating", "user_id": 3, "movie_id": movie, "value": 5.0, "event_id": "ok"})
    rt.ingest(done)
    other = int(rt.catalog.movie_ids[5])
    lost = [Event.model_validate({"kind": "rating", "user_id": u, "movie_id": other, "value": 3.0, "event_id": f"lost-{u}"})
            for u in (3, 4)]  # fmt: skip
    # what ingest does before a crash: the events are logged, the process dies before applying them
    rt.store.append_log_once(EVENTS_LOG, [{**e.record(), "logged_at": 0.0} for e in lost], [e.key for e in lost])
    assert stats(rt, 3).ratings.n == 1 and rt.store.get("user", [4])[0] is None
    assert rt.recover(grace_s=3600) == 0, "events inside the grace period are left to their process"
    assert rt.recover(grace_s=0) == 2
    assert stats(rt, 3).ratings.n == 2 and stats(rt, 4).ratings.n == 1
    assert rt.recover(grace_s=0) == 0 and rt.store.log_mark(EVENTS_LOG, "state") == rt.store.log_end(EVENTS_LOG)
    ack = rt.ingest(lost[1])[0]  # the client's retry after the crash
    assert ack.duplicate and stats(rt, 4).ratings.n == 1
    assert rt.store.get("item", [other])[0]["item_rating_count"] == 2


def test_a_retry_after_a_crash_completes_the_event(rt: Realtime) -> None:
    """Logged, not applied, and the client retries before any recovery: the retry applies it."""
    movie = int(rt.catalog.movie_ids[2])
    e = Event.model_validate({"kind": "click", "user_id": 11, "movie_id": movie, "event_id": "x1"})
    rt.store.append_log_once(EVENTS_LOG, [e.record()], [e.key])
    ack = rt.ingest(e)[0]
    assert not ack.duplicate and ack.applied and stats(rt, 11).clicks == 1
    assert rt.ingest(e)[0].duplicate and stats(rt, 11).clicks == 1


def test_writes_past_their_deadline_are_bounded() -> None:
    """A write that timed out keeps running (it may land), but at most ``max_writes`` do: further
    writes are refused at once, nothing recorded, until the slow ones finish."""
    import threading

    from rayrec.serving.guard import StoreDown, StoreGuard, WriteUnconfirmed

    release = threading.Event()
    guard = StoreGuard(write_timeout_s=0.05, threads=8, max_writes=3)
    done: list[int] = []

    def slow(i: int) -> int:
        release.wait(10)
        done.append(i)
        return i

    async def scenario() -> None:
        for i in range(3):
            with pytest.raises(WriteUnconfirmed):
                await guard.write(slow, i)
        assert guard.writes == 3
        with pytest.raises(StoreDown, match="3 writes are still running"):
            await guard.write(slow, 99)
        assert guard.healthy, "a busy store is not an outage: the breaker stays closed"
        release.set()
        for _ in range(100):
            if guard.writes == 0:
                break
            await asyncio.sleep(0.02)
        assert guard.writes == 0 and sorted(done) == [0, 1, 2]
        assert await guard.write(lambda: "ok") == "ok"

    asyncio.run(scenario())
    guard.close()

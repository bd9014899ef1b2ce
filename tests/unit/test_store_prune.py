"""Never-rated users' state is bounded: :func:`rayrec.gc.prune_unrated_users` deletes the users who
never rated and were idle longer than a TTL, with their histories, on every store backend (SQLite,
Redis), and never a user an event rated meanwhile."""

from __future__ import annotations

import threading

import pytest

from rayrec.gc import prune_unrated_users
from rayrec.store import OnlineStore, open_store

NOW = 1_700_000_000.0
DAY = 86_400.0


def user(ratings: int, last: float) -> dict:
    return {"user_rating_count": ratings, "last_timestamp": int(last), "user_genres": ["Drama"]}


def test_only_idle_never_rated_users_go_with_their_history(store: OnlineStore) -> None:
    rows = {1: user(0, NOW - 40 * DAY), 2: user(0, NOW - 31 * DAY), 3: user(0, NOW - 2 * DAY), 4: user(5, NOW - 400 * DAY)}
    store.put("user", rows.items())
    for uid in rows:
        store.append_history(uid, [{"kind": "click", "movie_id": 10 + uid, "timestamp": int(NOW - DAY)}])
    assert sorted(prune_unrated_users(store, 30 * DAY, now=NOW)) == [1, 2]
    assert store.get("user", [1, 2, 3, 4])[:2] == [None, None]
    assert [r["user_rating_count"] for r in store.get("user", [3, 4])] == [0, 5]
    assert store.get_history(1) == [] and store.get_history(2) == []
    assert [h["movie_id"] for h in store.get_history(3)] == [13] and [h["movie_id"] for h in store.get_history(4)] == [14]
    assert prune_unrated_users(store, 30 * DAY, now=NOW) == []  # nothing left to prune
    with pytest.raises(ValueError):
        prune_unrated_users(store, 0)


def test_a_user_rated_during_the_prune_is_never_deleted(store_url: str) -> None:
    """While the prune checks an idle never-rated user, another connection (a replica taking an
    event) rates that very user: the rating survives. Every 10th user is contested so: the prune's
    check asks the writer to rate the user and waits (bounded) for it, then says "stale". A prune
    whose check and delete are not one atomic step deletes the rated row."""
    import queue

    n = 100
    setup = open_store(store_url)
    setup.put("user", ((uid, user(0, NOW - 90 * DAY)) for uid in range(1, n + 1)))
    for uid in range(1, n + 1):
        setup.append_history(uid, [{"kind": "click", "movie_id": uid, "timestamp": int(NOW - 90 * DAY)}])
    setup.close()
    asks: queue.Queue[int | None] = queue.Queue()
    done: dict[int, threading.Event] = {uid: threading.Event() for uid in range(1, n + 1)}
    rated: list[int] = []
    failed: list[BaseException] = []

    def writer() -> None:
        w = open_store(store_url)
        try:
            while (uid := asks.get()) is not None:
                w.update("user", uid, lambda row: {**(row or {}), "user_rating_count": int((row or {}).get("user_rating_count") or 0) + 1,
                                                   "last_timestamp": int(NOW)})  # fmt: skip
                rated.append(uid)
                done[uid].set()
        except BaseException as e:  # noqa: BLE001 - reported by the test
            failed.append(e)
        finally:
            w.close()

    t = threading.Thread(target=writer)
    t.start()
    asked: set[int] = set()

    def stale(uid: int, row: dict) -> bool:
        if uid % 10 == 0 and uid not in asked:
            asked.add(uid)
            asks.put(uid)
            done[uid].wait(0.3)  # SQLite: the writer waits for this batch's transaction instead
            return True  # what the row said when it was read
        return int(row.get("user_rating_count") or 0) == 0 and float(row.get("last_timestamp") or 0) < NOW - 30 * DAY

    pruner = open_store(store_url)
    try:
        pruned = set(pruner.prune_users(stale, batch=8))
    finally:
        asks.put(None)
        t.join(60)
    rows = dict(zip(range(1, n + 1), pruner.get("user", list(range(1, n + 1)))))
    pruner.close()
    assert not failed, failed
    assert sorted(rated) == sorted(asked) and len(asked) == n // 10
    lost = [uid for uid in rated if rows[uid] is None or rows[uid]["user_rating_count"] < 1]
    assert not lost, f"users rated during the prune were deleted: {lost} {[rows[u] for u in lost[:2]]}"
    assert pruned >= set(range(1, n + 1)) - asked  # every other idle never-rated user went

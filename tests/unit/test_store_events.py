"""Contract of the event-log face (per-user history and the durable append-only logs) over every online store backend: SQLite (a
file in tmp_path) and Redis (a unique key prefix in database 9 unless ``RAYREC_TEST_REDIS_URL`` says
otherwise, removed afterwards; skipped when no server answers)."""

from __future__ import annotations

import multiprocessing
import os
import time
from typing import Any

import pytest

from rayrec.store import OnlineStore, open_store

REDIS_URL = os.environ.get("RAYREC_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")


def event(i: int, **extra: Any) -> dict[str, Any]:
    return {
        "kind": "rating",
        "user_id": 1 + i % 7,
        "movie_id": 100 + i,
        "value": 0.5 * (1 + i % 10),
        "timestamp": 1_600_000_000 + i,
        **extra,
    }


def test_append_returns_offsets_and_reads_back_in_order(store: OnlineStore) -> None:
    assert store.read_log("events") == [] and store.log_length("events") == 0  # an unknown log is empty
    first = store.append_log("events", [event(0)])
    more = store.append_log("events", [event(i) for i in range(1, 6)])
    offsets = first + more
    assert len(offsets) == 6 and len(set(offsets)) == 6 and all(isinstance(o, str) for o in offsets)
    got = store.read_log("events")
    assert [o for o, _ in got] == offsets
    assert [r for _, r in got] == [event(i) for i in range(6)]
    assert store.log_length("events") == 6
    assert store.append_log("events", []) == []


def test_read_after_an_offset_with_a_limit(store: OnlineStore) -> None:
    offsets = store.append_log("events", [event(i) for i in range(10)])
    assert [r["movie_id"] for _, r in store.read_log("events", after=offsets[3])] == list(range(104, 110))
    assert [o for o, _ in store.read_log("events", after=offsets[3], limit=2)] == offsets[4:6]
    assert store.read_log("events", after=offsets[-1]) == []
    assert store.read_log("events", limit=0) == []
    # paging with after= visits every record once
    seen, after = [], None
    while page := store.read_log("events", after=after, limit=3):
        seen += [r["movie_id"] for _, r in page]
        after = page[-1][0]
    assert seen == list(range(100, 110))


def test_logs_are_independent(store: OnlineStore) -> None:
    store.append_log("events", [event(1)])
    store.append_log("items", [{"kind": "item", "movie_id": 200_001, "title": "New (2024)"}])
    assert [r["kind"] for _, r in store.read_log("events")] == ["rating"]
    assert [r["kind"] for _, r in store.read_log("items")] == ["item"]
    assert store.log_length("items") == 1


def test_trim_deletes_up_to_and_including_an_offset(store: OnlineStore) -> None:
    offsets = store.append_log("events", [event(i) for i in range(8)])
    assert store.trim_log("events", offsets[4]) == 5
    assert [o for o, _ in store.read_log("events")] == offsets[5:]
    assert store.trim_log("events", offsets[4]) == 0  # nothing left before it
    later = store.append_log("events", [event(8)])
    assert [o for o, _ in store.read_log("events")] == offsets[5:] + later


def test_maxlen_keeps_about_the_newest(store: OnlineStore) -> None:
    for start in range(0, 300, 30):
        store.append_log("events", [event(i) for i in range(start, start + 30)], maxlen=20)
    n = store.log_length("events")
    # SQLite trims exactly; a Redis stream trims whole internal nodes (100 entries by default).
    assert 20 <= n <= 20 + 100
    got = store.read_log("events")
    assert [r["movie_id"] for _, r in got] == list(range(400 - n, 400))  # the newest, in order


def test_bad_names_and_offsets_are_value_errors(store: OnlineStore) -> None:
    with pytest.raises(ValueError, match="bad log name"):
        store.append_log("has space", [event(0)])
    with pytest.raises(ValueError, match="bad log offset"):
        store.read_log("events", after="not-an-offset")
    with pytest.raises(ValueError, match="bad log offset"):
        store.trim_log("events", "x")
    with pytest.raises(ValueError, match="maxlen"):
        store.append_log("events", [event(0)], maxlen=0)
    with pytest.raises(TypeError, match="cannot store"):
        store.append_log("events", [{"when": object()}])
    assert store.log_length("events") == 0


def test_records_survive_closing_and_reopening(store: OnlineStore, store_url: str) -> None:
    offsets = store.append_log("events", [event(i) for i in range(3)])
    store.close()
    again = open_store(store_url)
    try:
        assert [o for o, _ in again.read_log("events")] == offsets
    finally:
        again.close()


def test_a_store_file_written_before_logs_existed_gains_the_log(store: OnlineStore) -> None:
    store.put("user", [(1, {"userId": 1})])  # the file and its core tables exist first
    store.close()
    assert store.append_log("events", [event(0)])  # reopened lazily, the logs table is created
    assert store.get("user", [1]) == [{"userId": 1}]


def _append_many(url: str, worker: int, n: int, start_at: float) -> list[str]:
    store = open_store(url)
    time.sleep(max(0.0, start_at - time.time()))
    out: list[str] = []
    for i in range(n):
        out += store.append_log("events", [{"worker": worker, "i": i}])
    store.close()
    return out


def test_concurrent_appends_from_processes_keep_every_record_in_order(store: OnlineStore, store_url: str) -> None:
    workers, n = 4, 40
    start_at = time.time() + 0.3
    # fork: cheap to start; each worker opens its own store (connections never cross a fork)
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        offsets = pool.starmap(_append_many, [(store_url, w, n, start_at) for w in range(workers)])
    got = store.read_log("events")
    assert len(got) == workers * n
    assert sorted(o for per in offsets for o in per) == sorted(o for o, _ in got)  # every ack is in the log
    for w in range(workers):  # each writer's records keep its order
        assert [r["i"] for _, r in got if r["worker"] == w] == list(range(n))


def test_history_keeps_the_newest_in_order(store: OnlineStore) -> None:
    assert store.get_history(1) == []
    store.append_history(1, [{"movieId": i, "rating": 4.0} for i in range(5)], max_len=8)
    store.append_history(1, [{"movieId": i, "rating": 4.0} for i in range(5, 12)], max_len=8)
    store.append_history(2, [{"movieId": 99}], max_len=8)
    assert [e["movieId"] for e in store.get_history(1)] == list(range(4, 12))
    assert [e["movieId"] for e in store.get_history(1, limit=3)] == [9, 10, 11]
    assert store.get_history(1, limit=0) == []
    assert store.get_history(2) == [{"movieId": 99}]
    with pytest.raises(ValueError, match="max_len"):
        store.append_history(1, [{}], max_len=0)

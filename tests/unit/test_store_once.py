"""Contract of exactly-once logging and consumer marks over both store backends, and each backend's
durability: SQLite commits with synchronous=FULL, Redis reports (or refuses) a server without AOF."""

from __future__ import annotations

import logging
import multiprocessing
import shutil
import socket
import subprocess
import time
from typing import Any

import pytest

from rayrec.store import OnlineStore, open_store
from rayrec.store.base import NotDurable, check_durability, offset_order


def rec(i: int) -> dict[str, Any]:
    return {"kind": "click", "user_id": 1 + i % 3, "movie_id": 10 + i, "timestamp": 1_600_000_000 + i}


def test_a_repeated_id_is_logged_once(store: OnlineStore) -> None:
    first = store.append_log_once("events", [rec(0), rec(1), rec(0)], ["a", "b", "a"])
    assert [new for _, new in first] == [True, True, False] and first[2][0] == first[0][0]
    again = store.append_log_once("events", [rec(1), rec(2)], ["b", "c"])
    assert again[0] == (first[1][0], False) and again[1][1]
    assert [r["movie_id"] for _, r in store.read_log("events")] == [10, 11, 12]
    assert store.append_log_once("other", [rec(0)], ["a"])[0][1], "ids are per log"
    with pytest.raises(ValueError, match="ids"):
        store.append_log_once("events", [rec(0)], [])


def test_trimming_forgets_the_ids_of_trimmed_records(store: OnlineStore) -> None:
    out = store.append_log_once("events", [rec(i) for i in range(4)], ["a", "b", "c", "d"])
    store.trim_log("events", out[1][0])
    assert store.append_log_once("events", [rec(0), rec(2)], ["a", "c"]) [1] == (out[2][0], False)
    assert store.read_log("events")[-1][1] == rec(0)  # "a" was trimmed: logged anew


def test_marks_move_forward_only_and_log_end_precedes_new_records(store: OnlineStore) -> None:
    assert store.log_mark("events", "state") is None
    empty_end = store.log_end("events")
    offsets = [o for o, _ in store.append_log_once("events", [rec(i) for i in range(3)], ["a", "b", "c"])]
    assert [o for o, _ in store.read_log("events", after=empty_end)] == offsets
    assert store.log_end("events") == offsets[-1]
    assert store.set_log_mark("events", "state", offsets[1]) == offsets[1]
    assert store.set_log_mark("events", "state", offsets[0]) == offsets[1]  # never back
    assert store.log_mark("events", "state") == offsets[1] and store.log_mark("events", "other") is None
    assert offset_order(offsets[0]) < offset_order(offsets[1]) < offset_order(offsets[2])


def _append_same(url: str, start_at: float) -> list[bool]:
    s = open_store(url)
    while time.time() < start_at:
        time.sleep(0.001)
    out = [new for _, new in s.append_log_once("events", [rec(i) for i in range(5)], [f"e{i}" for i in range(5)])]
    s.close()
    return out


def test_concurrent_duplicates_from_processes_are_logged_once(store: OnlineStore, store_url: str) -> None:
    workers = 6
    start_at = time.time() + 1.0
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        results = pool.starmap(_append_same, [(store_url, start_at)] * workers)
    assert sum(sum(r) for r in results) == 5, results
    assert store.log_length("events") == 5


def test_sqlite_commits_with_synchronous_full_by_default(tmp_path) -> None:
    full = open_store(f"sqlite://{tmp_path}/a.db")
    normal = open_store(f"sqlite://{tmp_path}/b.db?synchronous=normal")
    full.ping(), normal.ping()
    assert full._conn().execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert normal._conn().execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert full.durability() is None and "power cut" in (normal.durability() or "")
    assert "synchronous=normal" in normal.url and "synchronous" not in full.url
    with pytest.raises(ValueError, match="synchronous"):
        open_store(f"sqlite://{tmp_path}/c.db?synchronous=off")
    full.close(), normal.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def aof_redis(tmp_path):
    """A private redis-server with appendonly yes on a free loopback port (stopped afterwards)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server not installed")
    port = _free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
                             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            open_store(url).ping()
            break
        except Exception:
            time.sleep(0.05)
    yield url
    proc.terminate()
    proc.wait(10)


def test_redis_durability_follows_the_servers_aof(redis_down, aof_redis, caplog) -> None:
    durable = open_store(aof_redis + "?durability=require")
    assert durable.durability() is None and check_durability(durable) is None
    if redis_down:
        pytest.skip(f"shared Redis not answering: {redis_down}")
    from realtime_doubles import REDIS_URL

    probe = open_store(REDIS_URL)
    if probe.durability() is None:
        pytest.skip("the shared Redis writes an AOF: nothing to refuse")
    with pytest.raises(NotDurable, match="appendonly"):
        check_durability(open_store(REDIS_URL + "?durability=require"))
    with caplog.at_level(logging.WARNING):
        assert "appendonly" in (check_durability(open_store(REDIS_URL), logging.getLogger("t")) or "")
    assert "NOT DURABLE" in caplog.text
    caplog.clear()
    check_durability(open_store(REDIS_URL + "?durability=off"), logging.getLogger("t"))
    assert "NOT DURABLE" not in caplog.text

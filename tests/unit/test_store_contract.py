"""One contract for every online store backend: SQLite (a file in tmp_path) and Redis (a unique key
prefix in its own database, removed afterwards; skipped when no server answers).

Set ``RAYREC_TEST_REDIS_URL`` to test another server (default ``redis://127.0.0.1:6379/9``).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import random
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rayrec.store import OnlineStore, StoreUnavailable, open_store, parse_store_url
from rayrec.store.loader import load_table

REDIS_URL = os.environ.get("RAYREC_TEST_REDIS_URL", "redis://127.0.0.1:6379/9")
BACKENDS = ["sqlite", "redis"]


@pytest.fixture(scope="module")
def pool() -> Iterator[Any]:
    """Worker processes, started once (spawn: a clean interpreter, no inherited connections)."""
    with multiprocessing.get_context("spawn").Pool(4) as p:
        p.map(_warm_up, range(4), chunksize=1)  # each worker imports this module once, up front
        yield p


def _warm_up(_: int) -> None:
    time.sleep(0.5)


def user_row(i: int, gen: int = 1) -> dict[str, Any]:
    rng = random.Random(i)
    return {
        "userId": i,
        "user_rating_count": rng.randint(1, 2000),
        "user_rating_mean": rng.uniform(0.5, 5.0),
        "user_rating_std": float("nan") if i % 7 == 0 else rng.uniform(0, 2),
        "user_year_mean": rng.uniform(1950, 2018),
        "user_year_std": rng.uniform(0, 20),
        "user_genres": rng.sample(["Action", "Drama", "Comedy", "Thriller", "Sci-Fi", "Romance"], 3),
        "user_recent_items": [rng.randint(1, 190_000) for _ in range(rng.randint(0, 50))],
        "last_timestamp": rng.randint(800_000_000, 1_600_000_000),
        "gen": gen,
    }


def item_row(i: int, gen: int = 1) -> dict[str, Any]:
    return {
        "movieId": i,
        "title": f"Movie {i} (199{i % 10})",
        "item_year": 1990 + i % 10 if i % 11 else None,
        "genres": ["Adventure", "Animation", "Children", "Comedy"][: 1 + i % 4],
        "item_genres": ["Adventure", "Animation", "Children"][: i % 4],
        "item_rating_count": i * 3,
        "item_rating_mean": 3.5 + (i % 10) / 10,
        "item_rating_std": 0.8,
        "gen": gen,
    }


def stored(value: Any) -> Any:
    """What the store gives back for ``value``: NaN becomes None (one missing marker), tuples lists."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, (list, tuple)):
        return [stored(v) for v in value]
    if isinstance(value, dict):
        return {k: stored(v) for k, v in value.items()}
    return value


def same(got: Any, want: Any) -> bool:
    """``got`` is what the store should return for ``want``, types included (1 is not 1.0 or True)."""
    want = stored(want)
    if isinstance(got, dict) and isinstance(want, dict):
        return got.keys() == want.keys() and all(same(got[k], want[k]) for k in got)
    if isinstance(got, list) and isinstance(want, list):
        return len(got) == len(want) and all(same(x, y) for x, y in zip(got, want))
    return type(got) is type(want) and got == want


# -- rows -------------------------------------------------------------------------------------


def test_round_trip_feature_rows(store: OnlineStore) -> None:
    users = {i: user_row(i) for i in range(1, 30)}
    items = {i: item_row(i) for i in range(1, 30)}
    store.load("user", users.items())
    store.load("item", items.items())
    assert all(same(got, users[i]) for i, got in zip(users, store.get("user", list(users))))
    assert all(same(got, items[i]) for i, got in zip(items, store.get("item", list(items))))
    assert store.get("user", [7])[0]["user_rating_std"] is None  # type: ignore[index]  # NaN reads back as None


def test_numpy_and_pandas_values_come_back_as_python(store: OnlineStore) -> None:
    row = {
        "i64": np.int64(5),
        "f32": np.float32(0.5),
        "arr": np.array([1, 2, 3]),
        "strs": np.array(["a", "b"], dtype=object),
        "na": pd.NA,
        "flag": np.bool_(True),
        "tuple": (1, "x"),
        "nan32": np.float32("nan"),
        "nans": np.array([1.5, np.nan]),
        "nested": {"a": [float("nan"), {"b": np.int32(2)}]},
    }
    store.put("item", [(np.int64(3), row)])
    assert store.get("item", [3]) == [
        {
            "i64": 5,
            "f32": 0.5,
            "arr": [1, 2, 3],
            "strs": ["a", "b"],
            "na": None,
            "flag": True,
            "tuple": [1, "x"],
            "nan32": None,
            "nans": [1.5, None],
            "nested": {"a": [None, {"b": 2}]},
        }
    ]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.dictionaries(st.text(max_size=8), json_values, max_size=5), min_size=1, max_size=5))
def test_round_trip_any_json_like_row(store: OnlineStore, rows: list[dict[str, Any]]) -> None:
    ids = list(range(len(rows)))
    store.put("item", zip(ids, rows))
    assert all(same(got, want) for got, want in zip(store.get("item", ids), rows))


def test_values_that_are_not_json_like_are_refused(store: OnlineStore) -> None:
    with pytest.raises(TypeError, match="cannot store a value of type"):
        store.put("item", [(1, {"when": pd.Timestamp("2020-01-01")})])
    with pytest.raises(TypeError, match="must be a dict"):
        store.put("item", [(1, [1, 2])])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="keys of a stored dict must be strings"):
        store.put("item", [(1, {"counts": {1: 2}})])
    assert store.get("item", [1]) == [None]  # nothing was written


def test_unknown_ids_are_none_in_order(store: OnlineStore) -> None:
    assert store.get("item", [1, 2]) == [None, None]  # nothing loaded yet
    assert store.get("item", []) == []
    store.load("item", [(i, item_row(i)) for i in (10, 20, 30)])
    got = store.get("item", [99, 20, -5, 10, 20, 2**63 - 1])
    assert [r and r["movieId"] for r in got] == [None, 20, None, 10, 20, None]


def test_batched_get_matches_a_dict(store: OnlineStore) -> None:
    rows = {i: item_row(i) for i in range(0, 3000, 3)}
    store.load("item", rows.items())
    rng = np.random.default_rng(0)
    for n in (500, 1500):  # 1500 > one statement's parameters in SQLite
        ids = rng.integers(0, 3000, size=n)  # a numpy array, with unknowns and repeats
        got = store.get("item", ids)
        assert len(got) == n
        assert all(same(g, rows.get(int(i))) if g is not None else int(i) not in rows for g, i in zip(got, ids))


def test_ids_must_be_integers(store: OnlineStore) -> None:
    with pytest.raises(TypeError, match="integers"):
        store.get("item", [1.5])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="integers"):
        store.get("item", np.array([1.0, 2.0]))


def test_unknown_entity_is_a_value_error(store: OnlineStore) -> None:
    for call in (
        lambda: store.get("movie", [1]),
        lambda: store.put("movie", []),
        lambda: store.load("movie", []),
        lambda: store.live_version("users"),
    ):
        with pytest.raises(ValueError, match="unknown entity 'movie'|unknown entity 'users'"):
            call()


# -- versioned loads ---------------------------------------------------------------------------


def stored_versions(store_url: str, entity: str) -> set[str]:
    """Versions of ``entity`` that still hold rows, read from the backend directly."""
    config = parse_store_url(store_url)
    if config.type == "sqlite":  # type: ignore[attr-defined]
        with sqlite3.connect(config.path) as conn:  # type: ignore[attr-defined]
            rows = conn.execute(
                "SELECT DISTINCT v.name FROM feature_rows AS f JOIN versions AS v ON v.vid = f.vid WHERE v.entity = ?",
                (entity,),
            ).fetchall()
        return {r[0] for r in rows}
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    base = f"{config.prefix}:{entity}:v"  # type: ignore[attr-defined]
    keys = [k.decode() for k in client.scan_iter(match=base + "*", count=1000)]
    client.close()
    return {k[len(base) :].rsplit(":", 1)[0] for k in keys}


def test_load_makes_a_new_version_live_and_deletes_the_old(store: OnlineStore, store_url: str) -> None:
    assert store.live_version("item") is None
    a = store.load("item", [(i, item_row(i, gen=1)) for i in range(100)])
    assert store.live_version("item") == a
    assert stored_versions(store_url, "item") == {a}
    b = store.load("item", [(i, item_row(i, gen=2)) for i in range(50, 150)])
    assert b != a and store.live_version("item") == b
    got = store.get("item", [10, 60, 140])
    assert got[0] is None and got[1]["gen"] == 2 and got[2]["gen"] == 2  # type: ignore[index]
    assert stored_versions(store_url, "item") == {b}
    assert store.live_version("user") is None  # entities are independent


def test_three_step_load_is_invisible_until_commit(store: OnlineStore, store_url: str) -> None:
    a = store.load("user", [(1, user_row(1, gen=1))])
    v = store.begin_load("user", "my-version.2")
    assert v == "my-version.2"
    assert store.write_rows("user", v, [(1, user_row(1, gen=2)), (2, user_row(2, gen=2))]) == 2
    assert store.write_rows("user", v, iter([(3, user_row(3, gen=2))])) == 1
    assert [r and r["gen"] for r in store.get("user", [1, 2, 3])] == [1, None, None]
    assert store.live_version("user") == a
    store.commit_load("user", v)
    assert [r and r["gen"] for r in store.get("user", [1, 2, 3])] == [2, 2, 2]
    store.commit_load("user", v)  # committing the live version again is a no-op
    assert stored_versions(store_url, "user") == {v}
    with pytest.raises(ValueError, match="begin_load"):
        store.write_rows("user", a, [(1, user_row(1))])  # the old version is gone
    with pytest.raises(ValueError, match="begin_load"):
        store.commit_load("user", "never-begun")
    with pytest.raises(ValueError, match="bad version name"):
        store.begin_load("user", "has:colon")


def test_abort_drops_a_started_version(store: OnlineStore, store_url: str) -> None:
    a = store.load("item", [(1, item_row(1))])
    v = store.begin_load("item")
    store.write_rows("item", v, [(2, item_row(2))])
    store.abort_load("item", v)
    assert stored_versions(store_url, "item") == {a}
    with pytest.raises(ValueError, match="live"):
        store.abort_load("item", a)


def test_failed_load_leaves_the_live_version(store: OnlineStore, store_url: str) -> None:
    a = store.load("item", [(1, item_row(1))])

    def rows() -> Iterator[tuple[int, dict[str, Any]]]:
        yield 2, item_row(2)
        raise RuntimeError("the source broke")

    with pytest.raises(RuntimeError, match="the source broke"):
        store.load("item", rows())
    assert store.live_version("item") == a
    assert stored_versions(store_url, "item") == {a}


def test_load_a_dataframe_or_arrow_table_by_key_column(store: OnlineStore) -> None:
    df = pd.DataFrame([item_row(i) for i in range(5, 12)])
    store.load("item", df, key="movieId")
    got = store.get("item", [7, 11])
    assert got[0]["title"] == "Movie 7 (1997)" and got[0]["genres"] == ["Adventure", "Animation", "Children", "Comedy"]  # type: ignore[index]
    assert got[1]["item_year"] is None  # type: ignore[index]  # NaN in a pandas column
    table = pa.Table.from_pylist([item_row(i, gen=2) for i in range(5, 12)])
    store.load("item", table, key="movieId")
    got = store.get("item", [7, 11])
    assert same(got[0], item_row(7, gen=2)) and same(got[1], item_row(11, gen=2))  # ints stay ints
    with pytest.raises(ValueError, match="key column 'itemId'"):
        store.load("item", df, key="itemId")
    with pytest.raises(ValueError, match="key="):
        store.load("item", df)


def test_load_table_from_parquet_without_ray(store: OnlineStore, store_url: str, tmp_path) -> None:
    path = tmp_path / "items.parquet"
    pd.DataFrame([item_row(i) for i in range(1, 1201)]).to_parquet(path)
    version, rows, seconds = load_table(store_url, "item", str(path), "movieId", batch_size=500)
    assert rows == 1200 and seconds > 0
    assert store.live_version("item") == version
    got = store.get("item", [1, 600, 1200, 1201])
    assert [r and r["movieId"] for r in got] == [1, 600, 1200, None]
    assert got[0]["genres"] == ["Adventure", "Animation"]  # type: ignore[index]  # list column from Parquet


# -- real-time writes --------------------------------------------------------------------------


def test_put_upserts_into_the_live_version(store: OnlineStore) -> None:
    store.put("user", [(1, user_row(1))])  # no load yet: a live version is created
    first = store.live_version("user")
    assert first is not None and store.get("user", [1])[0]["userId"] == 1  # type: ignore[index]
    v = store.load("user", [(i, user_row(i, gen=1)) for i in range(10)])
    store.put("user", [(3, {"userId": 3, "gen": 9}), (77, {"userId": 77, "gen": 9})])
    assert store.live_version("user") == v
    assert [r and r["gen"] for r in store.get("user", [2, 3, 77])] == [1, 9, 9]


def test_update_reads_and_writes_one_row(store: OnlineStore) -> None:
    seen: list[Any] = []

    def bump(row: dict[str, Any] | None) -> dict[str, Any]:
        seen.append(row)
        return {"n": (row or {"n": 0})["n"] + 1, "tags": (row or {}).get("tags", []) + ["x"]}

    assert store.update("user", 5, bump) == {"n": 1, "tags": ["x"]}
    assert store.update("user", 5, bump) == {"n": 2, "tags": ["x", "x"]}
    assert seen[0] is None and store.get("user", [5]) == [{"n": 2, "tags": ["x", "x"]}]
    with pytest.raises(ZeroDivisionError):
        store.update("user", 5, lambda row: {"n": 1 / 0})
    assert store.get("user", [5]) == [{"n": 2, "tags": ["x", "x"]}]  # a failing fn changes nothing


def test_update_many_replaces_rows_or_leaves_them(store: OnlineStore) -> None:
    store.put("user", [(i, {"n": i}) for i in range(0, 1300, 2)])  # even ids have a row
    calls: list[tuple[int, Any]] = []

    def bump(i: int, row: dict[str, Any] | None) -> dict[str, Any] | None:
        calls.append((i, row))
        if i % 3 == 0:
            return None  # left as it is (or absent)
        return {"n": (row or {"n": -1})["n"] + 1000}

    ids = list(range(1300))  # more than one write batch of the embedded store
    assert store.update_many("user", ids, bump) == sum(1 for i in ids if i % 3)
    assert sorted(i for i, _ in calls) == ids
    assert all(row == ({"n": i} if i % 2 == 0 else None) for i, row in calls)  # each fn saw the row before
    got = store.get("user", ids)
    for i, row in zip(ids, got):
        if i % 3 == 0:
            assert row == ({"n": i} if i % 2 == 0 else None)
        else:
            assert row == {"n": (i if i % 2 == 0 else -1) + 1000}
    assert store.update_many("user", [], bump) == 0
    # an id given twice is updated twice, the second time from the first's row
    assert store.update_many("user", [1, 1], bump) == 2 and store.get("user", [1]) == [{"n": -1 + 3000}]


def _increment(url: str, n: int, start_at: float) -> int:
    # what is tested is that no update is lost, not how fast: on a loaded machine four writers may
    # wait on the write lock longer than the default 5 s
    store = open_store(url + ("&" if "?" in url else "?") + "timeout=60")
    time.sleep(max(0.0, start_at - time.time()))
    for _ in range(n):
        store.update("user", 42, lambda row: {"count": (row or {"count": 0})["count"] + 1})
    store.close()
    return n


def test_concurrent_updates_from_processes_lose_nothing(store: OnlineStore, store_url: str, pool: Any) -> None:
    start_at = time.time() + 0.3  # all four begin together
    done = pool.starmap(_increment, [(store_url, 50, start_at)] * 4)
    assert sum(done) == 200
    assert store.get("user", [42]) == [{"count": 200}]


# -- embeddings --------------------------------------------------------------------------------


def test_embeddings_round_trip_with_missing_mask(store: OnlineStore) -> None:
    empty, found = store.get_embeddings("item", [1, 2])
    assert empty.shape == (2, 0) and not found.any()  # a kind never written has D = 0
    rng = np.random.default_rng(1)
    vecs = rng.normal(size=(20, 8)).astype(np.float32)
    store.put_embeddings("item", np.arange(100, 120), vecs)
    got, found = store.get_embeddings("item", [119, 5, 100, 100])
    assert got.dtype == np.float32 and got.shape == (4, 8)
    assert found.tolist() == [True, False, True, True]
    np.testing.assert_array_equal(got[[0, 2, 3]], vecs[[19, 0, 0]])
    np.testing.assert_array_equal(got[1], np.zeros(8, np.float32))
    assert store.get_embeddings("item", [7])[0].shape == (1, 8)  # D is known once written
    store.put_embeddings("item", [100], np.ones((1, 8)))  # float64 in, float32 stored
    np.testing.assert_array_equal(store.get_embeddings("item", [100])[0], np.ones((1, 8), np.float32))
    assert not store.get_embeddings("user", [100])[1].any()  # kinds are separate
    with pytest.raises(ValueError, match="dimension 8"):
        store.put_embeddings("item", [1], np.zeros((1, 4)))
    with pytest.raises(ValueError, match="shape"):
        store.put_embeddings("item", [1, 2], np.zeros((3, 8)))


# -- concurrency across processes --------------------------------------------------------------


def test_threads_can_share_one_store(store: OnlineStore) -> None:
    def work(k: int) -> None:
        for _ in range(25):
            store.update("user", 1, lambda row: {"count": (row or {"count": 0})["count"] + 1})
            store.get("user", [1, 2, 3])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.get("user", [1]) == [{"count": 100}]


def _use_after_fork(store: OnlineStore) -> None:
    # A forked child reusing the parent's store object must open its own connections.
    row = store.get("item", [1])[0]
    store.put("item", [(2, {"from": "child", "saw": row})])


def test_a_forked_child_opens_its_own_connections(store: OnlineStore) -> None:
    store.put("item", [(1, {"from": "parent"})])
    child = multiprocessing.get_context("fork").Process(target=_use_after_fork, args=(store,))
    child.start()
    child.join(timeout=30)
    assert child.exitcode == 0
    assert store.get("item", [1, 2]) == [{"from": "parent"}, {"from": "child", "saw": {"from": "parent"}}]
    store.put("item", [(3, {"from": "parent"})])  # the parent's connections still work
    assert store.get("item", [3]) == [{"from": "parent"}]


def test_redis_rows_expire_after_the_ttl(redis_down: str | None) -> None:
    if redis_down:
        pytest.skip(f"Redis not answering: {redis_down}")
    import redis

    prefix = f"rayrec-test-{uuid.uuid4().hex[:12]}"
    store = open_store(f"{REDIS_URL}?prefix={prefix}&ttl=100")
    store.put("item", [(1, {"a": 1})])
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:item:v*", count=1000))
        assert len(keys) == 1 and 0 < client.ttl(keys[0]) <= 100
        assert client.ttl(f"{prefix}:item:live") == -1  # the alias never expires
    finally:
        client.unlink(*client.scan_iter(match=f"{prefix}:*", count=1000))
        client.close()
        store.close()


def _read_during_swaps(url: str, ids: list[int], last_gen: int) -> dict[str, Any]:
    """Batched reads until the last generation shows up: count batches per generation and torn ones."""
    store = open_store(url)
    store.get("item", ids)
    store.update("user", 0, lambda row: {"ready": (row or {"ready": 0})["ready"] + 1})  # "reading now"
    per_gen: dict[int, int] = {}
    torn = errors = 0
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            rows = store.get("item", ids)
        except Exception:
            errors += 1
            continue
        gens = {r["gen"] if r is not None else None for r in rows}
        if len(gens) != 1 or None in gens:
            torn += 1
            continue
        (gen,) = gens
        per_gen[gen] = per_gen.get(gen, 0) + 1
        if gen == last_gen and per_gen[gen] >= 3:
            break
    store.close()
    return {"per_gen": per_gen, "torn": torn, "errors": errors}


def test_readers_never_see_a_mixed_batch_during_swaps(store: OnlineStore, store_url: str, pool: Any) -> None:
    ids = list(range(400))
    store.load("item", [(i, item_row(i, gen=1)) for i in ids])
    last_gen, n_readers = 30, 3
    readers = pool.starmap_async(_read_during_swaps, [(store_url, ids[::2], last_gen)] * n_readers)
    deadline = time.time() + 20
    while (store.get("user", [0])[0] or {}).get("ready", 0) < n_readers and time.time() < deadline:
        time.sleep(0.01)  # until every reader is reading
    for gen in range(2, last_gen + 1):
        store.load("item", [(i, item_row(i, gen=gen)) for i in ids])
    results = readers.get(timeout=30)
    for r in results:
        assert r["torn"] == 0 and r["errors"] == 0, r
        assert last_gen in r["per_gen"]
    assert sum(len(r["per_gen"]) for r in results) > len(results)  # reads did span swaps


def _write_one_by_one(url: str, n: int) -> int:
    store = open_store(url)
    for i in range(n):
        store.put("user", [(i, {"userId": i, "seq": i})])
    store.close()
    return n


def test_a_process_reads_while_another_writes(store: OnlineStore, store_url: str, pool: Any) -> None:
    store.put("user", [(0, {"userId": 0, "seq": 0})])
    n = 300
    writer = pool.apply_async(_write_one_by_one, (store_url, n))
    counts = []
    while not writer.ready():
        rows = store.get("user", list(range(n)))
        present = [r["seq"] for r in rows if r is not None]
        assert present == sorted(present)  # every row read is whole
        counts.append(len(present))
    assert writer.get(timeout=30) == n
    assert any(1 < c < n for c in counts), "no read overlapped the writes"
    assert [r and r["seq"] for r in store.get("user", list(range(n)))] == list(range(n))


# -- URLs, configs and errors ------------------------------------------------------------------


def test_unreachable_redis_fails_fast_with_a_clear_message() -> None:
    store = open_store("redis://admin:s3cret@127.0.0.1:1/0?timeout=0.5")
    start = time.perf_counter()
    with pytest.raises(StoreUnavailable) as err:
        store.ping()
    with pytest.raises(StoreUnavailable):
        store.get("item", [1])
    assert time.perf_counter() - start < 3
    msg = str(err.value)
    assert "redis://admin:***@127.0.0.1:1/0" in msg and "s3cret" not in msg
    assert "redis-server" in msg and "SQLite" in msg


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("http://example.com/store", "unsupported online store URL scheme 'http'"),
        ("postgres://u:pw@host/db", r"scheme 'postgres' in postgres://u:\*\*\*@host/db"),
        ("sqlite://relative/store.db", "three slashes"),
        ("sqlite:///tmp/x.db?pool=3", "unknown option"),
        ("redis://127.0.0.1:6379/zero", "database number"),
        ("redis://127.0.0.1:6379/0?timeout=abc", "timeout"),
        ("redis://127.0.0.1:6379/0?prefix=a*b", "prefix"),
        ("redis://127.0.0.1:6379/0?no_such_option=1", "bad connection option"),
        ("", "empty online store URL"),
    ],
)
def test_bad_urls_are_clear_value_errors(url: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        open_store(url)


def test_urls_and_configs_parse_to_typed_configs(tmp_path, monkeypatch) -> None:
    c = parse_store_url("rediss://reader:p%40ss@cache.internal:6380/2?prefix=rr&ttl=3600&timeout=0.25")
    assert (c.type, c.host, c.port, c.db, c.username, c.ssl) == ("redis", "cache.internal", 6380, 2, "reader", True)  # type: ignore[attr-defined]
    assert c.password.get_secret_value() == "p@ss" and (c.prefix, c.ttl, c.timeout) == ("rr", 3600, 0.25)  # type: ignore[attr-defined]
    assert "p@ss" not in repr(c) and "***" in c.to_url()  # type: ignore[attr-defined]
    assert parse_store_url("store/online.db").path.endswith("/store/online.db")  # type: ignore[attr-defined]
    s = open_store({"type": "sqlite", "path": str(tmp_path / "a.db")})
    s.put("item", [(1, {"a": 1})])
    assert s.get("item", [1]) == [{"a": 1}]
    with pytest.raises(ValueError, match="bad online store config"):
        open_store({"type": "sqlite", "path": str(tmp_path / "a.db"), "colour": "red"})
    with pytest.raises(ValueError, match="unknown online store type"):
        open_store({"type": "cassandra"})
    monkeypatch.setenv("RAYREC_ARTIFACTS", str(tmp_path / "artifacts"))
    default = open_store()
    assert default.url == f"sqlite://{tmp_path}/artifacts/online/store.sqlite"
    default.ping()
    assert (tmp_path / "artifacts" / "online" / "store.sqlite").is_file()


def test_sqlite_path_that_cannot_be_created_is_unavailable(tmp_path) -> None:
    (tmp_path / "file").write_text("not a folder")
    store = open_store(str(tmp_path / "file" / "store.db"))
    with pytest.raises(StoreUnavailable, match="cannot create the folder"):
        store.get("item", [1])

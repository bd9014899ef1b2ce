"""The real-time path: event validation, incremental user features equal to the batch features code,
atomic updates under concurrency, user vectors, new items, and the replay into training data.

Store-backed tests run over SQLite and Redis (database 9 unless ``RAYREC_TEST_REDIS_URL`` says
otherwise, a unique key prefix, removed afterwards)."""

from __future__ import annotations

import math
import multiprocessing
import threading
import time
from typing import Any

import numpy as np
import pandas as pd
import pytest

from realtime_doubles import FakeTowers, item_rows, item_vectors, random_ratings, toy_movies
from rayrec.data import read_movielens
from rayrec.features.pointintime import item_pass, user_pass
from rayrec.realtime import (
    EVENTS_LOG,
    ITEMS_LOG,
    STATE_KEY,
    Event,
    EventError,
    Realtime,
    RealtimeConfig,
    UnknownMovie,
    UserStats,
    iter_stats,
    merge_ratings,
    parse_events,
    replay,
    seed_stats,
    seen_items,
    stats_from_ratings,
)
from rayrec.retrieval import ItemCatalog, ItemIndex
from rayrec.features.pointintime import USER_FEATURES
from rayrec.store import OnlineStore, open_store

USER_COLS = USER_FEATURES  # the features pipeline's own list: the updates must keep every one
ITEM_COLS = ("item_rating_count", "item_rating_mean", "item_rating_std")


# -- references: the batch features code itself -------------------------------------------------


def dedupe(ratings: pd.DataFrame) -> pd.DataFrame:
    """One rating per (user, movie): the latest timestamp, ties to the later row (as the replay)."""
    r = ratings.assign(_o=np.arange(len(ratings))).sort_values(["userId", "movieId", "timestamp", "_o"], kind="stable")
    return r.drop_duplicates(["userId", "movieId"], keep="last").drop(columns="_o").reset_index(drop=True)


def batch_users(ratings: pd.DataFrame, movies: pd.DataFrame) -> pd.DataFrame:
    """The features pipeline's latest user features (its sentinel rows), by userId."""
    r = item_pass(dedupe(ratings), movies, sentinels=False)[["userId", "movieId", "rating", "timestamp", "item_year"]]
    out = user_pass(r, movies)
    return out[out["split"] == "latest"].set_index("userId")


def batch_items(ratings: pd.DataFrame, movies: pd.DataFrame) -> pd.DataFrame:
    out = item_pass(dedupe(ratings), movies)
    return out[out["sentinel"]].set_index("movieId")


def assert_same_features(got: dict[str, Any], want: Any, cols: tuple[str, ...] = USER_COLS) -> None:
    for c in cols:
        g, w = got[c], want[c]
        if isinstance(g, list):
            assert g == list(w), (c, g, list(w))
        elif w is None or (isinstance(w, float) and math.isnan(w)):
            assert g is None, (c, g)
        else:
            assert g == pytest.approx(float(w), rel=1e-9, abs=1e-9), (c, g, w)


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def movies() -> pd.DataFrame:
    return toy_movies()


@pytest.fixture
def loaded(store: OnlineStore, movies: pd.DataFrame) -> OnlineStore:
    store.load("item", item_rows(movies), key="movieId")
    return store


def make_realtime(store: OnlineStore, movies: pd.DataFrame, **config: Any) -> Realtime:
    items = item_rows(movies)
    index = ItemIndex.build(items["movieId"].to_numpy(), item_vectors(movies))
    return Realtime(
        store, RealtimeConfig(**config), encoder=FakeTowers(), index=index, catalog=ItemCatalog.from_frame(items)
    )


def rating(user: int, movie: int, value: float, ts: int) -> dict[str, Any]:
    return {"kind": "rating", "user_id": user, "movie_id": movie, "value": value, "timestamp": ts}


def as_events(ratings: pd.DataFrame) -> list[dict[str, Any]]:
    return [
        rating(int(u), int(m), float(v), int(t))
        for u, m, v, t in ratings[["userId", "movieId", "rating", "timestamp"]].itertuples(index=False)
    ]


# -- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "loc", "match"),
    [
        ({"kind": "rating", "user_id": 1, "movie_id": 2}, ["value"], "needs a value"),
        ({"kind": "rating", "user_id": 1, "movie_id": 2, "value": 4.2}, ["value"], "steps of 0.5"),
        ({"kind": "rating", "user_id": 1, "movie_id": 2, "value": 5.5}, ["value"], "0.5 to 5.0"),
        ({"kind": "rating", "user_id": 1, "movie_id": 2, "value": 0}, ["value"], "0.5 to 5.0"),
        ({"kind": "rating", "user_id": 0, "movie_id": 2, "value": 4}, ["user_id"], "greater than 0"),
        ({"kind": "rating", "user_id": 1, "movie_id": "2", "value": 4}, ["movie_id"], "integer"),
        ({"kind": "like", "user_id": 1, "movie_id": 2}, ["kind"], "'rating' or 'click'"),
        ({"kind": "click", "user_id": 1, "movie_id": 2, "value": -1}, ["value"], "negative"),
        ({"kind": "click", "user_id": 1, "movie_id": 2, "colour": "red"}, ["colour"], "Extra inputs"),
        (
            {"kind": "click", "user_id": 1, "movie_id": 2, "timestamp": int(time.time() * 1000)},
            ["timestamp"],
            "milliseconds",
        ),
    ],
)
def test_bad_events_name_the_field(event: dict[str, Any], loc: list[Any], match: str) -> None:
    with pytest.raises(EventError, match=match) as err:
        parse_events(event)
    assert [e["loc"] for e in err.value.errors] == [loc]
    with pytest.raises(EventError) as err:
        parse_events([rating(1, 2, 4.0, 1), event])  # in a list, the position comes first
    assert [e["loc"] for e in err.value.errors] == [[1, *loc]]


def test_good_events_are_normalised() -> None:
    before = int(time.time())
    (e,) = parse_events({"kind": "rating", "user_id": 1, "movie_id": 2, "value": 4})
    assert e.value == 4.0 and before <= e.ts <= time.time()  # timestamp defaults to now
    (c,) = parse_events(Event(kind="click", user_id=1, movie_id=2, timestamp=5))
    assert c.value is None and c.record()["timestamp"] == 5


# -- incremental features equal the batch features ------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_incremental_stats_equal_the_batch_features(movies: pd.DataFrame, seed: int) -> None:
    ratings = random_ratings(movies, 400, users=6, seed=seed)  # re-ratings, ties, times out of order
    cat = movies.set_index("movieId")
    stats: dict[int, UserStats] = {}
    for u, m, v, t in ratings.itertuples(index=False):
        year = cat.loc[m, "year"]
        stats.setdefault(int(u), UserStats()).rate(
            int(m), float(v), int(t), list(cat.loc[m, "genres"]), None if pd.isna(year) else float(year), 3.5
        )
    want = batch_users(ratings, movies)
    batch = stats_from_ratings(ratings, movies, 3.5)
    assert set(stats) == set(want.index) == set(batch)
    for u, s in stats.items():
        assert_same_features(s.features(), want.loc[u])
        assert_same_features(batch[u].features(), want.loc[u])
        assert s.last_timestamp == int(ratings.loc[ratings["userId"] == u, "timestamp"].max())
        assert set(s.rated) == set(ratings.loc[ratings["userId"] == u, "movieId"])
        # the stored form round-trips
        assert UserStats.from_dict(s.to_dict()).features() == s.features()
    # built a share of the users at a time (the seeding's bounded memory), every state is the same
    for users in (1, 4):
        shares = list(iter_stats(ratings, movies, 3.5, users=users))
        assert len(shares) == -(-len(batch) // users)
        merged = {u: s.to_dict() for share in shares for u, s in share.items()}
        assert merged == {u: s.to_dict() for u, s in batch.items()}
    with pytest.raises(ValueError, match="at least 1"):
        next(iter_stats(ratings, movies, 3.5, users=0))


def test_a_batch_row_without_stats_continues_with_exact_moments(movies: pd.DataFrame) -> None:
    with_year = movies[movies["year"].notna()]
    ratings = random_ratings(with_year, 200, users=3, seed=5)
    ratings = ratings.drop_duplicates(["userId", "movieId"]).sort_values("timestamp").reset_index(drop=True)
    old, new = ratings.iloc[:120], ratings.iloc[120:]
    new = new[~new.set_index(["userId", "movieId"]).index.isin(old.set_index(["userId", "movieId"]).index)]
    rows = batch_users(old, movies)
    cat = movies.set_index("movieId")
    want = batch_users(pd.concat([old, new]), movies)
    for u in rows.index:
        s = UserStats.of_row({"userId": u, **rows.loc[u].to_dict(), "last_timestamp": 0})
        assert not s.exact
        for _, m, v, t in new[new["userId"] == u].itertuples(index=False):
            s.rate(int(m), float(v), int(t), list(cat.loc[m, "genres"]), float(cat.loc[m, "year"]), 3.5)
        # count, mean and std of ratings and years are exact; genres and recent items are estimates
        assert_same_features(s.features(), want.loc[u], USER_COLS[:5])


# -- the event path over the store -----------------------------------------------------------------


def test_ingest_logs_then_updates_user_item_and_history(loaded: OnlineStore, movies: pd.DataFrame) -> None:
    rt = make_realtime(loaded, movies)
    ratings = random_ratings(movies, 60, users=2, seed=3)
    acks = rt.ingest(as_events(ratings.iloc[:10]))
    for _, r in ratings.iloc[10:].iterrows():  # one at a time too
        acks += rt.ingest(rating(int(r.userId), int(r.movieId), float(r.rating), int(r.timestamp)))
    acks += rt.ingest(
        {"kind": "click", "user_id": 1, "movie_id": int(movies["movieId"].iloc[0]), "timestamp": 1_600_000_000}
    )
    logged = loaded.read_log(EVENTS_LOG)
    assert [a.offset for a in acks] == [o for o, _ in logged]  # every ack is in the log, in order
    assert [r["kind"] for _, r in logged] == ["rating"] * 60 + ["click"]
    want_users, want_items = batch_users(ratings, movies), batch_items(ratings, movies)
    for u in want_users.index:
        row = loaded.get("user", [u])[0]
        assert_same_features(row, want_users.loc[u])
        assert row[STATE_KEY]["exact"] and seen_items(row) == set(ratings.loc[ratings.userId == u, "movieId"])
    assert loaded.get("user", [1])[0]["last_timestamp"] == 1_600_000_000  # the click moved it
    for m in want_items.index:
        assert_same_features(loaded.get("item", [m])[0], want_items.loc[m], ITEM_COLS)
    history = loaded.get_history(2)
    assert [h["movie_id"] for h in history] == ratings.loc[ratings.userId == 2, "movieId"].tolist()
    assert all(h["offset"] for h in history)


def test_bad_or_unknown_events_change_nothing(loaded: OnlineStore, movies: pd.DataFrame) -> None:
    rt = make_realtime(loaded, movies)
    good = rating(1, int(movies["movieId"].iloc[0]), 4.0, 1)
    with pytest.raises(EventError):
        rt.ingest([good, {**good, "value": 7}])
    with pytest.raises(UnknownMovie) as err:
        rt.ingest([good, rating(1, 10**9, 4.0, 1)])
    assert err.value.errors == [{"loc": [1, "movie_id"], "msg": "movie 1000000000 is not in the catalog"}]
    assert loaded.log_length(EVENTS_LOG) == 0 and loaded.get("user", [1]) == [None] and loaded.get_history(1) == []


def test_a_later_rating_replaces_an_earlier_one_and_an_older_one_is_ignored(
    loaded: OnlineStore, movies: pd.DataFrame
) -> None:
    rt = make_realtime(loaded, movies)
    m = int(movies["movieId"].iloc[1])
    rt.ingest(rating(1, m, 2.0, 100))
    (ack,) = rt.ingest(rating(1, m, 5.0, 200))
    assert ack.applied and ack.user_rating_count == 1
    (late,) = rt.ingest(rating(1, m, 1.0, 150))  # arrives late: the rating at 200 stands
    assert not late.applied
    row = loaded.get("user", [1])[0]
    assert row["user_rating_mean"] == 5.0 and row["user_recent_items"] == [m]
    item = loaded.get("item", [m])[0]
    assert (item["item_rating_count"], item["item_rating_mean"], item["item_rating_std"]) == (1, 5.0, 0.0)
    assert loaded.log_length(EVENTS_LOG) == 3  # everything is logged; the replay resolves it the same way


def _ingest_worker(url: str, movie_ids: list[int], start_at: float) -> int:
    store = open_store(url)
    rt = Realtime(store, RealtimeConfig(user_embedding="none"))
    time.sleep(max(0.0, start_at - time.time()))
    for i, m in enumerate(movie_ids):
        rt.ingest(rating(42, m, 0.5 + (i % 10) / 2, 1_600_000_000 + i))
    store.close()
    return len(movie_ids)


def test_concurrent_events_for_one_user_lose_no_update(
    loaded: OnlineStore, store_url: str, movies: pd.DataFrame
) -> None:
    ids = movies["movieId"].tolist()  # 60 distinct movies: 4 processes x 10 and 4 threads x 5
    start_at = time.time() + 0.3
    with multiprocessing.get_context("fork").Pool(4) as pool:
        done = pool.starmap(_ingest_worker, [(store_url, ids[w * 10 : (w + 1) * 10], start_at) for w in range(4)])
    assert sum(done) == 40
    rt = Realtime(loaded, RealtimeConfig(user_embedding="none"))
    threads = [
        threading.Thread(
            target=lambda w=w: [rt.ingest(rating(42, m, 4.0, 1_600_000_100)) for m in ids[40 + w * 5 : 45 + w * 5]]
        )
        for w in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    row = loaded.get("user", [42])[0]
    assert row["user_rating_count"] == 60 and len(seen_items(row)) == 60
    assert loaded.log_length(EVENTS_LOG) == 60 and len(loaded.get_history(42)) == 60
    logged = pd.DataFrame([r for _, r in loaded.read_log(EVENTS_LOG)]).rename(
        columns={"user_id": "userId", "movie_id": "movieId", "value": "rating"}
    )
    assert_same_features(row, batch_users(logged, movies).loc[42])  # the mean etc. too, not just the count
    assert sum(r["item_rating_count"] for r in loaded.get("item", ids)) == 60


# -- user vectors -----------------------------------------------------------------------------------


def test_the_user_vector_is_the_tower_over_the_latest_row(loaded: OnlineStore, movies: pd.DataFrame) -> None:
    rt = make_realtime(loaded, movies, user_embedding="tower")
    acks = rt.ingest(as_events(random_ratings(movies, 12, users=1, seed=9)))
    assert all(a.user_embedding == a.applied for a in acks)
    row = loaded.get("user", [1])[0]
    frame = pd.DataFrame([{c: row[c] for c in ("userId", *USER_COLS)}])
    vectors, found = loaded.get_embeddings("user", [1])
    assert found.all()
    np.testing.assert_allclose(vectors[0], FakeTowers().users(frame)[0], atol=1e-6)


def test_the_user_vector_can_be_the_mean_of_recent_positives(loaded: OnlineStore, movies: pd.DataFrame) -> None:
    rt = make_realtime(loaded, movies, user_embedding="mean", mean_items=3)
    ids = movies["movieId"].tolist()
    rt.ingest(
        [
            rating(1, ids[0], 5.0, 10),
            rating(1, ids[1], 1.0, 11),
            rating(1, ids[2], 4.0, 12),
            rating(1, ids[3], 4.5, 13),
            rating(1, ids[4], 4.0, 14),
        ]
    )
    recent = loaded.get("user", [1])[0]["user_recent_items"]
    assert recent == [ids[4], ids[3], ids[2], ids[0]]
    table = dict(zip(ids, item_vectors(movies)))
    want = np.mean([table[m] / np.linalg.norm(table[m]) for m in recent[:3]], axis=0)
    got, _ = loaded.get_embeddings("user", [1])
    np.testing.assert_allclose(got[0], want / np.linalg.norm(want), atol=1e-6)


# -- seeding exact statistics after a features load -------------------------------------------------


def test_seeding_makes_batch_rows_exact_and_keeps_earlier_events(loaded: OnlineStore, movies: pd.DataFrame) -> None:
    ratings = random_ratings(movies, 150, users=4, seed=11)
    old, new = ratings.iloc[:100], ratings.iloc[100:]
    rows = batch_users(old, movies).reset_index()
    loaded.load("user", rows[["userId", *USER_COLS]], key="userId")  # as the features pipeline loads them
    rt = make_realtime(loaded, movies)
    rt.ingest(as_events(new.iloc[:20]))  # before seeding: applied on approximate statistics
    assert not loaded.get("user", [int(new.iloc[0].userId)])[0][STATE_KEY]["exact"]
    assert seed_stats(loaded, old, movies) == 4
    rt.ingest(as_events(new.iloc[20:]))
    want = batch_users(ratings, movies)
    for u in want.index:
        row = loaded.get("user", [u])[0]
        assert row[STATE_KEY]["exact"]
        assert_same_features(row, want.loc[u])
    assert seed_stats(loaded, old, movies) == 0  # already exact: left alone


# -- new items --------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["blend", "tower", "genre_mean"])
def test_a_new_item_gets_a_fresh_id_a_row_a_vector_and_is_searchable(
    loaded: OnlineStore, movies: pd.DataFrame, how: str
) -> None:
    rt = make_realtime(loaded, movies, item_embedding=how)
    if how == "blend":
        assert RealtimeConfig().item_embedding == "blend"  # the default
    added = rt.add_item({"title": "  A   New Film ", "genres": ["Horror", "Comedy"], "year": 2024})
    assert added.movie_id == int(movies["movieId"].max()) + 1 and added.indexed and added.embedding == how
    row = loaded.get("item", [added.movie_id])[0]
    assert (
        row["title"] == "A New Film (2024)" and row["genres"] == ["Horror", "Comedy"] and row["item_rating_count"] == 0
    )
    tower = FakeTowers().items(pd.DataFrame([row]))[0]
    tower = tower / np.linalg.norm(tower)
    mean = rt.genre_mean(["Horror", "Comedy"])
    assert mean is not None
    vec = {"tower": tower, "genre_mean": mean, "blend": (tower + mean) / np.linalg.norm(tower + mean)}[how]
    np.testing.assert_allclose(loaded.get_embeddings("item", [added.movie_id])[0][0], vec, atol=1e-6)
    ids, _ = rt.index.search(vec[None, :], 1)  # type: ignore[union-attr]
    assert ids[0, 0] == added.movie_id
    # it can be rated right away, and the rating moves its statistics
    rt.ingest(rating(5, added.movie_id, 4.5, 1_600_000_000))
    assert loaded.get("item", [added.movie_id])[0]["item_rating_count"] == 1
    assert [r for _, r in loaded.read_log(ITEMS_LOG)][0]["movie_id"] == added.movie_id


def test_bad_new_items_name_the_field(loaded: OnlineStore, movies: pd.DataFrame) -> None:
    rt = make_realtime(loaded, movies)
    with pytest.raises(EventError, match="unknown genre 'Cartoon': known genres are Action, Comedy") as err:
        rt.add_item({"title": "X", "genres": ["Comedy", "Cartoon"]})
    assert err.value.errors[0]["loc"] == ["genres", 1]
    for bad, field in (
        ({"title": " "}, "title"),
        ({"title": "X", "year": 1200}, "year"),
        ({"title": "X", "rating": 3}, "rating"),
    ):
        with pytest.raises(EventError) as err:
            rt.add_item(bad)
        assert err.value.errors[0]["loc"] == [field]
    assert loaded.log_length(ITEMS_LOG) == 0


def test_replicas_adding_items_at_once_get_distinct_ids_and_sync(loaded: OnlineStore, movies: pd.DataFrame) -> None:
    a, b = make_realtime(loaded, movies), make_realtime(loaded, movies)  # two replicas: own index each
    got: list[int] = []
    lock = threading.Lock()

    def add(rt: Realtime, n: int) -> None:
        for i in range(n):
            added = rt.add_item({"title": f"Film {i}", "genres": ["Drama"]})
            with lock:
                got.append(added.movie_id)

    threads = [threading.Thread(target=add, args=(rt, 5)) for rt in (a, b, a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    top = int(movies["movieId"].max())
    assert sorted(got) == list(range(top + 1, top + 21))  # distinct, above the catalog, no gaps
    assert len(a.index) + len(b.index) == 2 * len(movies) + 20  # type: ignore[arg-type]
    synced = set(a.sync_items()) | set(b.sync_items())
    assert all(m in a.index and m in b.index for m in got)  # type: ignore[operator]
    assert synced and a.sync_items() == [] and b.sync_items() == []


def test_a_new_item_can_take_the_mean_of_items_sharing_its_genres(loaded: OnlineStore, movies: pd.DataFrame) -> None:
    rt = make_realtime(loaded, movies, item_embedding="genre_mean")
    added = rt.add_item({"title": "Scary Laughs", "genres": ["Comedy", "Horror"]})
    assert added.embedding == "genre_mean"
    both = movies[[{"Comedy", "Horror"} <= set(g) for g in movies["genres"]]]
    assert len(both)
    vecs = item_vectors(both)
    want = vecs.mean(axis=0)
    np.testing.assert_allclose(
        loaded.get_embeddings("item", [added.movie_id])[0][0], want / np.linalg.norm(want), atol=1e-5
    )


# -- replay -----------------------------------------------------------------------------------------


def test_merge_keeps_the_latest_rating_per_user_and_movie() -> None:
    source = pd.DataFrame(
        {"userId": [1, 1, 2], "movieId": [10, 11, 10], "rating": [3.0, 4.0, 2.0], "timestamp": [100, 100, 100]}
    )
    new = pd.DataFrame(
        {
            "userId": [1, 1, 2, 3],
            "movieId": [10, 11, 10, 10],
            "rating": [5.0, 1.0, 4.5, 3.5],
            "timestamp": [200, 50, 100, 1],
        }
    )
    merged, replaced = merge_ratings(source, new)
    got = {(u, m): (r, t) for u, m, r, t in merged.itertuples(index=False)}
    assert got == {(1, 10): (5.0, 200), (1, 11): (4.0, 100), (2, 10): (4.5, 100), (3, 10): (3.5, 1)}
    assert replaced == 3


def test_replay_writes_a_movielens_folder_with_the_log_merged(
    loaded: OnlineStore, movies: pd.DataFrame, tmp_path
) -> None:
    src = tmp_path / "source"
    source_ratings = random_ratings(movies, 80, users=5, seed=4).drop_duplicates(["userId", "movieId"])
    from rayrec.realtime import write_movielens

    write_movielens(src, source_ratings, movies)
    source = read_movielens(src)
    rt = make_realtime(loaded, movies)
    added = rt.add_item({"title": "Brand New, The", "genres": ["Sci-Fi"], "year": 2025})
    events = random_ratings(movies, 30, users=7, seed=8)
    rt.ingest(as_events(events))
    rt.ingest(rating(7, added.movie_id, 5.0, 1_600_000_000))
    rt.ingest({"kind": "click", "user_id": 7, "movie_id": added.movie_id})

    from pipelines.replay import main

    assert (
        main(
            [
                "--store",
                loaded.url if "redis" not in loaded.url else _unmasked(loaded),
                "--out",
                str(tmp_path / "out"),
                "--dataset",
                str(src),
            ]
        )
        == 0
    )
    out = read_movielens(tmp_path / "out")
    assert out.report.total_bad == 0
    want, _ = merge_ratings(
        source.ratings,
        pd.concat(
            [
                events,
                pd.DataFrame([{"userId": 7, "movieId": added.movie_id, "rating": 5.0, "timestamp": 1_600_000_000}]),
            ]
        ),
    )
    key = ["userId", "movieId", "rating", "timestamp"]
    pd.testing.assert_frame_equal(
        out.ratings[key].sort_values(key).reset_index(drop=True),
        want[key].sort_values(key).reset_index(drop=True),
        check_dtype=False,
    )
    new = out.movies.set_index("movieId").loc[added.movie_id]
    assert (new["title"], int(new["year"]), list(new["genres"])) == ("Brand New, The (2025)", 2025, ["Sci-Fi"])
    assert len(out.movies) == len(movies) + 1


def online_features(data: Any) -> tuple[pd.DataFrame, pd.DataFrame]:
    """What the features pipeline loads into the store for a MovieLens dataset: the latest user rows
    and every catalog item's row (its per-block functions, without the Ray partitioning)."""
    items = item_pass(data.ratings, data.movies)
    users = user_pass(items[~items["sentinel"]][["userId", "movieId", "rating", "timestamp", "item_year"]], data.movies)
    users = users[users["split"] == "latest"].drop(columns=["movieId", "rating", "timestamp"])
    users["last_timestamp"] = data.ratings.groupby("userId")["timestamp"].max().reindex(users["userId"]).to_numpy()
    stats = items[items["sentinel"]].set_index("movieId")
    rows = item_rows(data.movies).set_index("movieId")
    for c in ITEM_COLS:
        rows.loc[stats.index, c] = stats[c]
    rows["item_rating_count"] = rows["item_rating_count"].astype(np.int64)
    return users.reset_index(drop=True), rows.reset_index()


def test_replay_round_trip_gives_the_features_the_store_served(
    loaded: OnlineStore, movies: pd.DataFrame, tmp_path
) -> None:
    """features → store → events online → pipelines.replay → features again: equal, user by user and
    item by item (nothing users did online is lost, nothing counted twice)."""
    from rayrec.realtime import write_movielens

    write_movielens(
        tmp_path / "source",
        random_ratings(movies, 300, users=12, seed=21).drop_duplicates(["userId", "movieId"]),
        movies,
    )
    source = read_movielens(tmp_path / "source")
    users, items = online_features(source)
    loaded.load("user", users[["userId", *USER_COLS, "last_timestamp"]], key="userId")
    loaded.load("item", items, key="movieId")
    seed_stats(loaded, source.ratings, source.movies)
    rt = make_realtime(loaded, movies)
    added = rt.add_item({"title": "Fresh Film", "genres": ["Horror"], "year": 2024})
    # online: new ratings, re-ratings of batch ratings (later and earlier), a new user, the new movie
    events = random_ratings(movies, 150, users=14, seed=22)
    events.loc[::3, "timestamp"] -= 10_000_000
    new_movie = pd.DataFrame(
        {
            "userId": [3, 14],
            "movieId": added.movie_id,
            "rating": [4.5, 2.0],
            "timestamp": [1_600_000_000, 1_600_000_001],
        }
    )
    for e in as_events(pd.concat([events, new_movie], ignore_index=True)):
        rt.ingest(e)
    rt.ingest({"kind": "click", "user_id": 5, "movie_id": int(movies["movieId"].iloc[0]), "timestamp": 1_400_000_000})

    from pipelines.replay import main

    store_url = loaded.url if "redis" not in loaded.url else _unmasked(loaded)
    assert main(["--store", store_url, "--out", str(tmp_path / "replayed"), "--dataset", str(tmp_path / "source")]) == 0
    want_users, want_items = online_features(read_movielens(tmp_path / "replayed"))
    assert 14 in set(want_users["userId"]) and added.movie_id in set(want_items["movieId"])
    got_users = loaded.get("user", want_users["userId"].tolist())
    for got, (_, want) in zip(got_users, want_users.iterrows()):
        assert_same_features(got, want)
        assert got["last_timestamp"] == want["last_timestamp"]  # the click was older than the ratings
    got_items = loaded.get("item", want_items["movieId"].tolist())
    for got, (_, want) in zip(got_items, want_items.iterrows()):
        assert_same_features(got, want, ITEM_COLS + ("item_year",))
        assert (got["title"], got["genres"]) == (want["title"], list(want["genres"]))


def _unmasked(store: OnlineStore) -> str:
    return store.config.to_url(mask_password=False)  # type: ignore[attr-defined]


def test_replay_of_a_store_loaded_from_other_data_is_refused(
    loaded: OnlineStore, movies: pd.DataFrame, tmp_path
) -> None:
    rt = Realtime(loaded, RealtimeConfig(user_embedding="none", require_known_items=False))
    rt.ingest(rating(1, 999_999, 4.0, 1))
    src = tmp_path / "source"
    from rayrec.realtime import write_movielens

    write_movielens(src, random_ratings(movies, 10, users=2, seed=1), movies)
    with pytest.raises(ValueError, match="movie 999999"):
        replay(loaded, read_movielens(src), tmp_path / "out")


def test_item_vectors_are_kept_per_vector_space(loaded: OnlineStore, movies: pd.DataFrame) -> None:
    """An item added on one retriever's space is embedded again, not copied, by a replica on another:
    vectors of two models' spaces never mix (the store keeps one kind per space)."""
    old = make_realtime(loaded, movies, item_kind="item.v1")
    new = make_realtime(loaded, movies, item_kind="item.v2", item_embedding="genre_mean")
    added = old.add_item({"title": "Night Shift", "genres": ["Horror", "Comedy"]})
    assert new.sync_items() == [added.movie_id] and added.movie_id in new.index  # type: ignore[operator]
    v1 = loaded.get_embeddings("item.v1", [added.movie_id])[0][0]
    v2, found = loaded.get_embeddings("item.v2", [added.movie_id])
    assert found.all()
    row = loaded.get("item", [added.movie_id])[0]
    np.testing.assert_allclose(v2[0], new._item_vector(row)[0], atol=1e-6)  # made in v2's own way
    assert not np.allclose(v1, v2[0]), "v1's vector was not reused"
    _, stored = new.index.vectors([added.movie_id])  # type: ignore[union-attr]
    np.testing.assert_allclose(stored[0], v2[0], atol=1e-6)

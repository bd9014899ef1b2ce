"""The recommender app end to end: deployed on the session's local Ray, called over HTTP.

Every endpoint is called and its answer checked for sense: lists ranked by their score, k respected,
nothing the user already rated, reasons and recall paths present, cold-start answers for unknown
users, 4xx naming the field for bad input. Then a rating posted through ``/events`` changes the next
list, and a new artifact version is hot-swapped in while requests keep flowing, none failing.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from rayrec import uri
from rayrec.retrieval import read_ratings
from rayrec.retrieval.merge import PATH_NAMES

PATHS = set(PATH_NAMES) | {"cold_start"}


def call(url: str, method: str = "GET", body: bytes | None = None, timeout: float = 30) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=body, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except json.JSONDecodeError:
            return e.code, raw.decode(errors="replace")


@pytest.fixture(scope="module")
def ratings(serving_app):
    return read_ratings(serving_app.artifacts.features_path)


@pytest.fixture(scope="module")
def users(ratings) -> list[int]:
    counts = ratings.groupby("userId").size()
    return [int(u) for u in counts[counts >= 20].index[:6]]


def check_list(rec: dict[str, Any], k: int, seen: set[int]) -> None:
    items = rec["items"]
    assert len(items) == k, f"asked for {k}, got {len(items)}"
    ids = [i["movie_id"] for i in items]
    assert len(set(ids)) == len(ids), "duplicates in the list"
    assert not seen & set(ids), f"already-rated items recommended: {sorted(seen & set(ids))}"
    scores = [i["score"] for i in items]
    assert all(a >= b - 1e-9 for a, b in zip(scores, scores[1:])), f"not ranked by score: {scores}"
    for it in items:
        assert it["title"], it
        assert isinstance(it["genres"], list)
        assert it["reason"] and isinstance(it["reason"], str)
        assert it["paths"] and set(it["paths"]) <= PATHS, it["paths"]


def test_recommend_known_users(serving_app, ratings, users) -> None:
    arts = serving_app.artifacts
    assert arts.trained, "the end-to-end test runs on trained models"
    status, health = call(f"{serving_app.url}/healthz")
    assert health["model_version"] == uri.latest(uri.join(arts.artifacts, "models", "ranker"))
    paths_seen: set[str] = set()
    for u in users:
        status, rec = call(f"{serving_app.url}/recommend?user_id={u}&k=10")
        assert status == 200, rec
        seen = set(ratings.loc[ratings["userId"] == u, "movieId"].tolist())
        check_list(rec, 10, seen)
        assert rec["user_id"] == u and not rec["cold_start"] and not rec["degraded"]
        assert rec["index_version"] == uri.latest(uri.join(arts.artifacts, "index"))
        assert rec["model_version"] == uri.latest(uri.join(arts.artifacts, "models", "ranker"))
        assert all(0.0 <= i["rank_score"] <= 1.0 for i in rec["items"])
        paths_seen |= {p for i in rec["items"] for p in i["paths"]}
        assert any(i["reason"].startswith("because you liked ") for i in rec["items"]), rec["items"]
    assert {"embedding", "item2item"} & paths_seen, paths_seen


@pytest.mark.parametrize("k", [1, 3, 25, 100])
def test_k_is_respected(serving_app, ratings, users, k) -> None:
    u = users[0]
    status, rec = call(f"{serving_app.url}/recommend?user_id={u}&k={k}")
    assert status == 200, rec
    check_list(rec, k, set(ratings.loc[ratings["userId"] == u, "movieId"].tolist()))


def test_unknown_user_gets_cold_start(serving_app) -> None:
    status, rec = call(f"{serving_app.url}/recommend?user_id=987654321&k=8")
    assert status == 200, rec
    assert rec["cold_start"] is True and rec["degraded"] is False
    check_list(rec, 8, set())
    assert all("cold_start" in i["paths"] or "popular" in i["paths"] for i in rec["items"])
    # a new user may declare genres: the cold-start list follows them
    status, rec = call(f"{serving_app.url}/recommend?user_id=987654321&k=8&genres=Comedy&hour=21")
    assert status == 200 and sum("Comedy" in i["genres"] for i in rec["items"]) >= 4, rec  # max_per_genre=5 caps it
    assert any("Comedy" in i["reason"] for i in rec["items"])


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/recommend?user_id=1&k=0", "k"),
        ("/recommend?user_id=1&k=101", "k"),
        ("/recommend?user_id=abc", "user_id"),
        ("/recommend?user_id=1.5", "user_id"),
        ("/recommend?k=5", "user_id"),
        ("/recommend?user_id=1&hour=25", "hour"),
        ("/similar?movie_id=x", "movie_id"),
        ("/users/abc", "user_id"),
        ("/movies/-3", "movie_id"),
    ],
)
def test_bad_query_names_the_field(serving_app, path, field) -> None:
    status, body = call(serving_app.url + path)
    assert status == 422, body
    assert body["field"] == field and body["error"].startswith(f"{field}:"), body


def test_bad_bodies(serving_app) -> None:
    url = f"{serving_app.url}/events"
    status, body = call(url, "POST", b'{"kind": "rating", "user_id": 1,')
    assert status == 400 and "malformed JSON" in body["error"], body
    status, body = call(url, "POST", json.dumps({"kind": "rating", "user_id": 1, "movie_id": 1, "value": 7}).encode())
    assert status == 422 and body["field"] == "value", body
    status, body = call(url, "POST", json.dumps({"kind": "like", "user_id": 1, "movie_id": 1}).encode())
    assert status == 422 and body["field"] == "kind", body
    status, body = call(url, "POST", json.dumps({"kind": "click", "user_id": 1, "movie_id": 987654321}).encode())
    assert status == 404 and body["field"] == "movie_id", body
    status, body = call(url, "POST", b"[" + b'{"kind": "click", "user_id": 1, "movie_id": 1},' * 2000 + b"{}]")
    assert status == 413 and body["field"] == "body", body


def test_similar_movies_and_records(serving_app, ratings) -> None:
    movie = int(ratings["movieId"].value_counts().index[0])
    status, sim = call(f"{serving_app.url}/similar?movie_id={movie}&k=7")
    assert status == 200, sim
    ids = [i["movie_id"] for i in sim["items"]]
    assert len(ids) == 7 and movie not in ids and len(set(ids)) == 7
    scores = [i["score"] for i in sim["items"]]
    assert scores == sorted(scores, reverse=True)
    assert sim["movie"]["title"] and all(i["title"] for i in sim["items"])
    status, m = call(f"{serving_app.url}/movies/{movie}")
    assert status == 200 and m["movie_id"] == movie and m["title"] == sim["movie"]["title"] and m["rating_count"] > 0
    assert call(f"{serving_app.url}/movies/987654321")[0] == 404
    assert call(f"{serving_app.url}/similar?movie_id=987654321")[0] == 404


def test_user_and_health(serving_app, users) -> None:
    status, user = call(f"{serving_app.url}/users/{users[0]}")
    assert status == 200 and user["known"] and user["features"]["user_rating_count"] > 0 and user["recent"], user
    status, body = call(f"{serving_app.url}/users/987654321")
    assert status == 404 and body["field"] == "user_id"
    status, health = call(f"{serving_app.url}/healthz")
    assert status == 200 and health["status"] == "ok" and health["store"] == "ok", health
    status, spec = call(f"{serving_app.url}/openapi.json")
    assert status == 200
    assert {"/recommend", "/similar", "/users/{user_id}", "/movies/{movie_id}", "/healthz", "/events"} <= set(spec["paths"])


def test_a_rating_changes_the_next_list(serving_app, users) -> None:
    u = users[1]
    _, before = call(f"{serving_app.url}/recommend?user_id={u}&k=10")
    top = before["items"][0]["movie_id"]
    status, ack = call(f"{serving_app.url}/events", "POST",
                       json.dumps({"kind": "rating", "user_id": u, "movie_id": top, "value": 5.0}).encode())  # fmt: skip
    assert status == 200 and ack["applied"] and ack["movie_id"] == top, ack
    _, after = call(f"{serving_app.url}/recommend?user_id={u}&k=10")
    assert top not in [i["movie_id"] for i in after["items"]], "a rated movie must not be recommended again"
    _, user = call(f"{serving_app.url}/users/{u}")
    assert user["history"][-1]["movie_id"] == top and user["recent"][0]["movie_id"] == top
    assert "realtime" not in user["features"], "the real-time bookkeeping is not a feature"


def test_a_new_user_is_personalised_after_a_few_ratings(serving_app, ratings) -> None:
    u = 987_000_001
    liked = [int(m) for m in ratings["movieId"].value_counts().index[:3]]
    for m in liked:
        status, ack = call(f"{serving_app.url}/events", "POST",
                           json.dumps({"kind": "rating", "user_id": u, "movie_id": m, "value": 4.5}).encode())  # fmt: skip
        assert status == 200, ack
    status, rec = call(f"{serving_app.url}/recommend?user_id={u}&k=10")
    assert status == 200, rec
    check_list(rec, 10, set(liked))
    assert {"item2item", "embedding"} & {p for i in rec["items"] for p in i["paths"]}, "no personalised candidates"


def test_a_new_item_is_served_at_once(serving_app) -> None:
    status, added = call(f"{serving_app.url}/items", "POST",
                         json.dumps({"title": "Brand New Comedy", "genres": ["Comedy", "Romance"], "year": 2024}).encode())  # fmt: skip
    assert status == 200, added
    m = added["movie_id"]
    status, movie = call(f"{serving_app.url}/movies/{m}")
    assert status == 200 and movie["title"] == "Brand New Comedy (2024)" and movie["genres"] == ["Comedy", "Romance"]
    status, sim = call(f"{serving_app.url}/similar?movie_id={m}&k=5")
    assert status == 200 and len(sim["items"]) == 5 and m not in [i["movie_id"] for i in sim["items"]], sim
    status, body = call(f"{serving_app.url}/items", "POST", json.dumps({"title": "X", "genres": ["Nope"]}).encode())
    assert status == 422 and body["field"] == "genres.0", body


def _copy_version(root: str, tag: str) -> str:
    """Publish a copy of the live version under a new name (what a retrain publishes)."""
    live = uri.latest(root)
    new = f"{live}-{tag}"
    shutil.copytree(f"{root}/{live}", f"{root}/{new}")
    uri.set_latest(root, new)
    return new


def test_hot_swap_fails_no_request(serving_app) -> None:
    from pipelines.serve import reload

    arts = serving_app.artifacts
    results: list[tuple[int, str | None, str | None]] = []
    stop = threading.Event()

    def hammer() -> None:
        i = 0
        while not stop.is_set():
            status, rec = call(f"{serving_app.url}/recommend?user_id={1 + i % 50}&k=5", timeout=30)
            ok = isinstance(rec, dict)
            results.append((status, rec.get("index_version") if ok else None, rec.get("model_version") if ok else None))
            i += 1

    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        new_index = _copy_version(uri.join(arts.artifacts, "index"), "swap")
        new_model = _copy_version(uri.join(arts.artifacts, "models", "ranker"), "swap")
        reload(name=serving_app.name, artifacts=arts.artifacts, store=arts.store,
               ingress={"num_cpus": 0.1, "max_replicas": 1})  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(v == new_index for _, v, _ in results[-5:]):
            time.sleep(0.2)
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
    statuses = [s for s, _, _ in results]
    assert len(results) > 20
    assert set(statuses) == {200}, f"failed requests during the swap: {[s for s in statuses if s != 200]}"
    versions = [v for _, v, _ in results]
    assert versions[0] != new_index and set(versions[-3:]) == {new_index}, "the new index version was not picked up"
    models = [m for _, _, m in results]
    assert models[0] != new_model and set(models[-3:]) == {new_model}, "the new ranker version was not picked up"

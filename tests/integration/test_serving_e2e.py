"""The recommender app end to end: deployed on the session's local Ray, called over HTTP.

Every endpoint is called and its answer checked for sense: lists ranked by their score, k respected,
nothing the user already rated, reasons and recall paths present, cold-start answers for unknown
users, 4xx naming the field for bad input. Then a rating posted through ``/events`` changes the next
list, and a new artifact version is hot-swapped in while requests keep flowing, none failing.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import numpy as np
import pytest
from traffic import Traffic

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


def test_recommend_known_users(backend_app, ratings, users) -> None:
    serving_app = backend_app
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


def test_unknown_user_gets_cold_start(backend_app) -> None:
    serving_app = backend_app
    status, rec = call(f"{serving_app.url}/recommend?user_id=987654321&k=8")
    assert status == 200, rec
    assert rec["cold_start"] is True and rec["degraded"] is False
    check_list(rec, 8, set())
    assert all("cold_start" in i["paths"] or "popular" in i["paths"] for i in rec["items"])
    # a new user may declare genres: the cold-start list follows them
    status, rec = call(f"{serving_app.url}/recommend?user_id=987654321&k=8&genres=Comedy&hour=21")
    assert status == 200 and sum("Comedy" in i["genres"] for i in rec["items"]) >= 4, rec  # max_per_genre=7 caps it
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
        ("/similar?movie_id=1&k=0", "k"),
        ("/similar?movie_id=1&k=101", "k"),
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
    url = f"{serving_app.url}/items"
    status, body = call(url, "POST", b'{"title": "Half a body",')
    assert status == 400 and "malformed JSON" in body["error"] and body["field"] == "body", body
    status, body = call(url, "POST", json.dumps({"title": "x" * 20_000, "genres": ["Drama"]}).encode())
    assert status == 413 and body["field"] == "body", body


def test_similar_movies_and_records(backend_app, ratings) -> None:
    serving_app = backend_app
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


def test_user_and_health(backend_app, users) -> None:
    serving_app = backend_app
    status, user = call(f"{serving_app.url}/users/{users[0]}")
    assert status == 200 and user["known"] and user["features"]["user_rating_count"] > 0 and user["recent"], user
    status, body = call(f"{serving_app.url}/users/987654321")
    assert status == 404 and body["field"] == "user_id"
    status, health = call(f"{serving_app.url}/healthz")
    assert status == 200 and health["status"] == "ok" and health["store"] == "ok", health
    status, spec = call(f"{serving_app.url}/openapi.json")
    assert status == 200
    assert {"/recommend", "/similar", "/users/{user_id}", "/movies/{movie_id}", "/healthz", "/events"} <= set(spec["paths"])


def test_a_rating_changes_the_next_list(backend_app, users) -> None:
    serving_app = backend_app
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


def test_a_list_of_events_is_applied_in_one_call(backend_app, ratings) -> None:
    """``POST /events`` with a list: one acknowledgement per event, in order, and all of them in the
    user's history and the next list."""
    u = 987_000_002
    liked = [int(m) for m in ratings["movieId"].value_counts().index[3:6]]
    events = [{"kind": "rating", "user_id": u, "movie_id": m, "value": 4.5} for m in liked]
    events.append({"kind": "click", "user_id": u, "movie_id": liked[0]})
    status, acks = call(f"{backend_app.url}/events", "POST", json.dumps(events).encode())
    assert status == 200 and isinstance(acks, list), acks
    assert [a["movie_id"] for a in acks] == [e["movie_id"] for e in events] and all(a["applied"] for a in acks), acks
    status, user = call(f"{backend_app.url}/users/{u}")
    assert status == 200 and [h["movie_id"] for h in user["history"]][-4:] == [e["movie_id"] for e in events], user
    status, rec = call(f"{backend_app.url}/recommend?user_id={u}&k=10")
    assert status == 200 and not set(liked) & {i["movie_id"] for i in rec["items"]}, rec


def test_a_new_user_is_personalised_after_a_few_ratings(backend_app, ratings) -> None:
    serving_app = backend_app
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


def test_a_new_item_is_served_at_once(backend_app) -> None:
    serving_app = backend_app
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


def _answers(url: str, users: list[int]) -> dict[int, list[tuple[int, float | None]]]:
    """Each user's list as (movie_id, ranker score) pairs."""
    out = {}
    for u in users:
        status, rec = call(f"{url}/recommend?user_id={u}&k=100")  # long lists: many movies in both
        assert status == 200, rec
        out[u] = [(i["movie_id"], i["rank_score"]) for i in rec["items"]]
    return out


def _perturbed(weights: dict[str, Any], seed: int) -> dict[str, Any]:
    """The weights moved by a seeded random step of half their spread: another model of the same shape."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, w in weights.items():
        if w.is_floating_point() and w.numel() > 1:
            w = w + 0.5 * w.std() * torch.randn(w.shape, generator=gen, dtype=w.dtype)
        out[name] = w
    return out


def publish_other_versions(artifacts: str, features_path: str, seed: int = 7) -> dict[str, str]:
    """Publish what a retrain publishes, with other weights: a ranker and a retriever (with the item
    embeddings of the whole catalog) through the registry, then an index built from that retriever.
    Returns the new versions."""
    from rayrec import registry
    from rayrec.features.spec import FeatureSpec
    from rayrec.models import build_model, model_config
    from rayrec.models.inference import item_vectors
    from rayrec.retrieval import IndexConfig, run_index, write_item_embeddings
    from rayrec.training.data import read_table

    new = {}
    for name in ("ranker", "retriever"):
        live = registry.load(artifacts, name)
        weights = _perturbed(live.weights, seed)
        new[name] = registry.publish(artifacts, name, weights=weights, config=live.config, meta=live.meta,
                                     metrics=live.metrics)  # fmt: skip
    spec = FeatureSpec.load(uri.join(features_path, "spec.json"))
    stored = registry.load(artifacts, "retriever", new["retriever"])
    model = build_model("retriever", model_config("retriever", stored.config["model"]), stored.config["sizes"])
    model.load_state_dict(stored.weights)
    model.eval()
    items = read_table(uri.join(features_path, "online", "items.parquet"))
    vectors = item_vectors(model, spec, items)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    write_item_embeddings(uri.join(stored.path, "item_embeddings.parquet"), items["movieId"].to_numpy(), vectors)
    new["index"] = run_index(IndexConfig(artifacts=artifacts, recall_queries=100, latency_queries=10)).version
    return new


ROOTS = {"ranker": ("models", "ranker"), "retriever": ("models", "retriever"), "index": ("index",)}
SMALL = {"num_cpus": 0.1, "max_replicas": 1}
SWAP_WAIT_S = 60  # the reload has returned: the live replica answers from the new bundle within this


def test_hot_swap_to_other_weights_fails_no_request(serving_app, users) -> None:
    """Another ranker, retriever and index go live while two clients keep calling: the answers change to
    the new models' and no request fails in any way (HTTP status, connection, timeout)."""
    from pipelines.serve import reload

    arts = serving_app.artifacts
    url = serving_app.url
    before = _answers(url, users)
    assert _answers(url, users) == before, "the lists must be stable for the change to be the swap's"
    live = {name: uri.latest(uri.join(arts.artifacts, *root)) for name, root in ROOTS.items()}
    traffic = Traffic(url, lambda i: f"/recommend?user_id={1 + i % 50}&k=5", threads=2)
    try:
        with traffic:
            assert traffic.wait_for(lambda a: len(a) >= 10, SWAP_WAIT_S), traffic.failures
            new = publish_other_versions(arts.artifacts, arts.features_path)
            reload(name=serving_app.name, artifacts=arts.artifacts, store=arts.store, ingress=SMALL)
            swapped = lambda a: sum(x.body["index_version"] == new["index"] for x in a[-6:]) == 6  # noqa: E731
            assert traffic.wait_for(swapped, SWAP_WAIT_S), "the new index version was not picked up"
        answers = traffic.snapshot()
        assert not traffic.failures, f"failed requests during the swap: {dict(traffic.failures)} {traffic.errors}"
        assert len(answers) > 20
        first, last = answers[0].body, answers[-1].body
        assert (first["index_version"], first["model_version"]) == (live["index"], live["ranker"])
        assert (last["index_version"], last["model_version"]) == (new["index"], new["ranker"])
        # every answer came wholly from one bundle: old index with old ranker, or new with new
        pairs = {(a.body["index_version"], a.body["model_version"]) for a in answers}
        assert pairs <= {(live["index"], live["ranker"]), (new["index"], new["ranker"])}, pairs
        after = _answers(url, users)
        changed = [u for u in users if after[u] != before[u]]
        assert changed == users, f"the lists of users {sorted(set(users) - set(changed))} did not change"
        # the new ranker's own scores: a movie in a user's list before and after is scored anew
        common = [(u, m, s, dict(after[u])[m]) for u in users for m, s in before[u] if m in dict(after[u])]
        assert common and all(s != t for _, _, s, t in common), "a stale ranker served under the new label"
    finally:  # later tests run on the session's trained versions
        for name, root in ROOTS.items():
            uri.set_latest(uri.join(arts.artifacts, *root), live[name])
        reload(name=serving_app.name, artifacts=arts.artifacts, store=arts.store, ingress=SMALL)
    status, health = call(f"{url}/healthz")
    assert (health["index_version"], health["model_version"]) == (live["index"], live["ranker"]), health


def test_overload_is_refused_with_503_and_retry_after(redis_serving) -> None:
    """More concurrent requests than the replica admits (the Redis app admits 2 and queues 1): the
    rest are refused at once with 503 and ``Retry-After``, not left to time out."""
    from loadgen import load

    url = redis_serving.app.url
    result: dict[str, Any] = {}
    flood = threading.Thread(target=lambda: result.update(r=load(url, ["/recommend?user_id=1&k=100"], concurrency=24,
                                                                   seconds=4.0, warmup=0.5, timeout=10.0)))  # fmt: skip
    flood.start()
    refused = None
    try:
        end = time.monotonic() + 4.0
        while refused is None and time.monotonic() < end:
            try:
                urllib.request.urlopen(f"{url}/recommend?user_id=2&k=100", timeout=10).read()
            except urllib.error.HTTPError as e:
                refused = (e.code, {k.lower(): v for k, v in e.headers.items()})
    finally:
        flood.join(30)
    r = result["r"]
    assert r.statuses.get(503, 0) > 0 and r.ok > 0, r.summary()
    assert r.timeouts == 0 and r.errors == 0, r.summary()
    assert set(r.statuses) <= {200, 503}, r.summary()
    assert refused is not None, "no request of this client was refused"
    status, headers = refused
    assert status == 503, (status, headers)
    assert int(headers["retry-after"]) >= 1, (status, headers)


def test_replicas_lease_the_versions_they_serve(serving_app) -> None:
    """Each replica holds a lease on its bundle's versions, so the garbage collector keeps them."""
    from rayrec import gc

    arts = serving_app.artifacts.artifacts
    deadline = time.monotonic() + 30
    leases: list = []
    while not leases and time.monotonic() < deadline:
        leases = gc.read_leases(arts)
        time.sleep(0.5)
    assert leases, "no replica wrote a lease"
    ranker = uri.latest(uri.join(arts, "models", "ranker"))
    assert any(ranker in lease.versions.get("models/ranker", ()) for lease in leases), leases
    kept = {(d.kind, d.version) for d in gc.collect(arts, keep=1, min_age_s=0, dry_run=True) if d.keep}
    assert ("models/ranker", ranker) in kept

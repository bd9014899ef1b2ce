"""Degrade, don't fail: the serving backend in process (no Serve), with a store that refuses or hangs
and a ranker that raises. Answers stay 200 and say they were degraded; health checks blame only
faults local to the replica; writes that cannot be recorded get 503."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from rayrec.retrieval import read_ratings
from rayrec.serving import RecommenderService, ServingConfig, create_app, load_bundle
from rayrec.serving.testing import BrokenRanker, FaultyStore
from rayrec.store import open_store


@pytest.fixture()
def service(serving_artifacts):
    cfg = ServingConfig(store_timeout_s=0.2, store_cooldown_s=0.5)
    store = FaultyStore(open_store(serving_artifacts.store))
    svc = RecommenderService(serving_artifacts.artifacts, store, load_bundle(serving_artifacts.artifacts, cfg))  # type: ignore[arg-type]
    yield svc
    store.mode = "ok"
    svc.close()


@pytest.fixture(scope="module")
def seen(serving_artifacts) -> dict[int, set[int]]:
    r = read_ratings(serving_artifacts.features_path)
    return {int(u): set(g.tolist()) for u, g in r.groupby("userId")["movieId"]}


def get(svc: RecommenderService, *paths: str) -> list[httpx.Response]:
    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=create_app(svc))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            return [await c.get(p) for p in paths]

    return asyncio.run(run())


def test_store_down_answers_from_popularity(service, seen) -> None:
    service.store.mode = "fail"
    t = time.perf_counter()
    rec, health, movie, user = get(service, "/recommend?user_id=1&k=10", "/healthz", "/movies/1", "/users/1")
    assert time.perf_counter() - t < 2.0
    assert rec.status_code == 200
    body = rec.json()
    assert body["degraded"] and body["degraded_reason"] == "store_unavailable"
    ids = [i["movie_id"] for i in body["items"]]
    assert len(ids) == 10 and not seen[1] & set(ids)
    assert [i["score"] for i in body["items"]] == sorted((i["score"] for i in body["items"]), reverse=True)
    assert health.status_code == 200 and health.json()["store"] == "unavailable"
    service.check_local()  # a shared outage is not this replica's fault: no restart
    assert movie.status_code == 200 and movie.json()["title"]  # from the in-memory catalog
    assert user.status_code == 503


def test_hung_store_costs_one_deadline_then_nothing(service) -> None:
    service.store.mode, service.store.hang_s = "hang", 1.5
    t = time.perf_counter()
    (first,) = get(service, "/recommend?user_id=2&k=5")
    first_s = time.perf_counter() - t
    assert first.json()["degraded"] and first_s < 1.0, first_s
    calls = service.store.calls
    t = time.perf_counter()
    (second,) = get(service, "/recommend?user_id=3&k=5")
    assert second.json()["degraded"] and time.perf_counter() - t < 0.2
    assert service.store.calls == calls, "the open breaker must keep requests off the store"
    # the store comes back: after the cooldown one request probes it and serving is normal again
    service.store.mode = "ok"
    time.sleep(0.6)
    (third,) = get(service, "/recommend?user_id=3&k=5")
    assert not third.json()["degraded"], third.json()


def test_ranker_failure_serves_recall_order(service, seen) -> None:
    service.core.bundle.ranker = BrokenRanker()
    (rec,) = get(service, "/recommend?user_id=4&k=10")
    body = rec.json()
    assert rec.status_code == 200 and body["degraded"] and body["degraded_reason"] == "ranker_failed"
    ids = [i["movie_id"] for i in body["items"]]
    assert len(ids) == 10 and not seen[4] & set(ids)
    assert all(i["rank_score"] is None and i["reason"] for i in body["items"])


def test_events_need_the_store(service) -> None:
    service.store.mode = "fail"

    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(service))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            return await c.post("/events", json={"kind": "click", "user_id": 1, "movie_id": 1})

    r = asyncio.run(run())
    assert r.status_code == 503 and "not recorded" in r.json()["error"]


def test_rerank_settings_change_without_reload(service) -> None:
    async def run() -> bool:
        cfg = service.bundle.config.model_copy(update={"rerank": service.bundle.rerank.model_copy(
            update={"max_per_genre": 1, "fill": False})})  # fmt: skip
        return await service.reconfigure(cfg)

    loaded = service.bundle.loaded_s
    assert asyncio.run(run()) is False  # settings only: the artifacts stay loaded
    assert service.bundle.loaded_s == loaded
    (rec,) = get(service, "/recommend?user_id=5&k=10")
    genres = [g for i in rec.json()["items"] for g in i["genres"]]
    assert len(genres) == len(set(genres)), "max_per_genre=1 allows each genre once"

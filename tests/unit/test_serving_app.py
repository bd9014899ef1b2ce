"""The serving pieces that need neither Ray nor artifacts: the HTTP layer over a fake backend, the
Serve config files against Serve's own schema, the app args, the micro-batcher."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from pydantic import ValidationError

from rayrec.realtime import EventAck
from rayrec.serving import ServingConfig, create_app
from rayrec.serving.api import Health, Movie, Recommendation, RecommendedItem, SimilarMovies, UserProfile
from batching import MicroBatcher
from rayrec.serving.events import InvalidEvent, ServiceUnavailable

ROOT = Path(__file__).resolve().parents[2]


class FakeBackend:
    """Answers from constants; records what it was asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.down = False

    async def recommend(self, user_id: int, k: int, context: Any = None) -> Recommendation:
        self.calls.append(("recommend", (user_id, k) if context is None else (user_id, k, context)))
        items = [RecommendedItem(movie_id=i, title=f"m{i}", score=1 - i / 100, paths=["popular"], reason="r") for i in range(k)]
        return Recommendation(user_id=user_id, k=k, items=items)

    async def similar(self, movie_id: int, k: int) -> SimilarMovies | None:
        return None if movie_id > 100 else SimilarMovies(movie_id=movie_id, k=k, items=[])

    async def user(self, user_id: int) -> UserProfile | None:
        if self.down:
            raise ServiceUnavailable("store down")
        return UserProfile(user_id=user_id, known=True)

    async def movie(self, movie_id: int) -> Movie | None:
        return Movie(movie_id=movie_id, title="x") if movie_id < 100 else None

    async def event(self, payload: Any) -> EventAck:
        self.calls.append(("event", payload))
        if payload.get("movie_id") == 404:
            raise InvalidEvent([{"loc": ["movie_id"], "msg": "movie 404 is not in the catalog"}], status=404)
        return EventAck(offset="1", kind="click", user_id=1, movie_id=1, timestamp=0, applied=True,
                        user_rating_count=0, user_embedding=False)  # fmt: skip

    async def add_item(self, payload: Any) -> Any:
        raise InvalidEvent([{"loc": ["genres", 0], "msg": "unknown genre 'Foo'"}])

    async def health(self) -> Health:
        return Health(status="ok", store="ok")


def request(backend: FakeBackend, method: str, path: str, **kwargs: Any) -> httpx.Response:
    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(backend))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return await c.request(method, path, **kwargs)

    return asyncio.run(run())


def test_routes_and_errors_name_the_field() -> None:
    b = FakeBackend()
    r = request(b, "GET", "/recommend?user_id=3&k=4")
    assert r.status_code == 200 and len(r.json()["items"]) == 4 and b.calls[-1] == ("recommend", (3, 4))
    r = request(b, "GET", "/recommend?user_id=3&k=2&genres=Comedy,Drama&hour=21")
    ctx = b.calls[-1][1][2]
    assert r.status_code == 200 and ctx.genres == ["Comedy", "Drama"] and ctx.hour == 21
    for path, field in [("/recommend?user_id=3&k=0", "k"), ("/recommend?user_id=3&k=abc", "k"),
                        ("/recommend?user_id=3&hour=24", "hour"),
                        ("/recommend?user_id=9223372036854775808", "user_id"), ("/movies/abc", "movie_id")]:  # fmt: skip
        r = request(b, "GET", path)
        assert r.status_code == 422 and r.json()["field"] == field, (path, r.text)
    assert request(b, "GET", "/movies/500").json()["field"] == "movie_id"
    assert request(b, "GET", "/similar?movie_id=500").status_code == 404
    assert request(b, "GET", "/static/../../etc/passwd").status_code == 404
    assert "Guess you like" in request(b, "GET", "/").text
    b.down = True
    r = request(b, "GET", "/users/1")
    assert r.status_code == 503 and r.headers["retry-after"] == "1"


def test_bodies() -> None:
    b = FakeBackend()
    assert request(b, "POST", "/events", json={"kind": "click", "user_id": 1, "movie_id": 1}).status_code == 200
    r = request(b, "POST", "/events", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["field"] == "body"
    r = request(b, "POST", "/events", content=b"", headers={"content-type": "application/json"})
    assert r.status_code == 400
    r = request(b, "POST", "/events", json={"movie_id": 404})
    assert r.status_code == 404 and r.json()["field"] == "movie_id"
    r = request(b, "POST", "/items", json={"title": "t", "genres": ["Foo"]})
    assert r.status_code == 422 and r.json()["field"] == "genres.0"
    n = len(b.calls)
    r = request(b, "POST", "/events", content=b"x" * 20_000, headers={"content-type": "application/json"})
    assert r.status_code == 413 and len(b.calls) == n, "an oversized body must not reach the backend"

    async def chunked() -> httpx.Response:  # no Content-Length: counted while streaming
        async def body():
            for _ in range(40):
                yield b"x" * 1000

        transport = httpx.ASGITransport(app=create_app(b))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return await c.post("/events", content=body())

    assert asyncio.run(chunked()).status_code == 413


def test_openapi_documents_every_endpoint() -> None:
    spec = request(FakeBackend(), "GET", "/openapi.json").json()
    assert {"/recommend", "/similar", "/users/{user_id}", "/movies/{movie_id}", "/healthz", "/events", "/items"} <= set(spec["paths"])
    body = spec["paths"]["/events"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "anyOf" in body
    params = {p["name"]: p for p in spec["paths"]["/recommend"]["get"]["parameters"]}
    assert params["k"]["schema"]["maximum"] == 100


def test_serving_config_is_strict() -> None:
    with pytest.raises(ValidationError, match="candidate"):
        ServingConfig.model_validate({"candidate": 3})
    with pytest.raises(ValidationError):
        ServingConfig.model_validate({"rerank": {"diversity": 2}})
    assert ServingConfig().artifact_key() == ServingConfig(rerank={"diversity": 0.9}).artifact_key()
    assert ServingConfig().artifact_key() != ServingConfig(generation=1).artifact_key()


@pytest.mark.parametrize("name", ["config.yaml", "config_split.yaml"])
def test_serve_config_files(name: str) -> None:
    from ray.serve.schema import ServeDeploySchema

    from serve_apps.recommender import AppArgs, build_app

    raw = yaml.safe_load((ROOT / "serve_apps" / name).read_text())
    schema = ServeDeploySchema.model_validate(raw)
    assert schema.http_options.host == "127.0.0.1"
    for app in schema.applications:
        args = AppArgs.model_validate(app.args)
        assert Path(args.artifacts).is_absolute()
        build_app(app.args)
        expected = {"fused": {"Ingress"}, "ranker": {"Ingress", "Ranker"},
                    "chain": {"Ingress", "Recall", "Ranker", "Reranker"}}[args.composition]  # fmt: skip
        names = {d.name for d in app.deployments}
        assert names <= expected, names - expected
        cpus_min = sum(d.ray_actor_options.num_cpus * d.autoscaling_config["min_replicas"] for d in app.deployments)
        assert cpus_min <= 2.0, f"{name}: the minimum replicas need {cpus_min} CPUs"
        for d in app.deployments:
            a = d.autoscaling_config
            assert a["min_replicas"] <= a["max_replicas"] and a["target_ongoing_requests"] > 0
            assert 0 < d.ray_actor_options.num_cpus < 1 and d.max_queued_requests > 0
    if name == "config.yaml":  # the default fits 2 cores even fully scaled out
        d = schema.applications[0].deployments[0]
        assert d.ray_actor_options.num_cpus * d.autoscaling_config["max_replicas"] <= 2.0


def test_app_args() -> None:
    from serve_apps.recommender import AppArgs

    a = AppArgs.model_validate({"artifacts": "artifacts", "composition": "chain"})
    assert a.artifacts == str(ROOT / "artifacts")
    assert AppArgs.model_validate({"artifacts": "s3://b/rayrec"}).artifacts == "s3://b/rayrec"
    with pytest.raises(ValidationError, match="composition"):
        AppArgs.model_validate({"composition": "star"})
    with pytest.raises(ValidationError, match="ingres"):
        AppArgs.model_validate({"ingres": {}})
    opts = a.ingress.options()
    assert opts["autoscaling_config"]["max_replicas"] == 2 and opts["max_queued_requests"] == 16
    assert "runtime_env" not in opts["ray_actor_options"]  # the app's code on a loop of its own (Serve's default)
    shared = AppArgs.model_validate({"ranker": {"user_code_thread": False}}).ranker.options()
    assert shared["ray_actor_options"]["runtime_env"]["env_vars"] == {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"}
    small = AppArgs.model_validate({"ingress": {"num_cpus": 0.1, "max_replicas": 1}}).ingress
    assert small.num_cpus == 0.1 and small.max_replicas == 1 and small.max_queued_requests == 16  # the rest kept


def test_micro_batcher_batches_concurrent_calls() -> None:
    sizes: list[int] = []

    async def double(xs: list[int]) -> list[int]:
        sizes.append(len(xs))
        await asyncio.sleep(0.005)
        return [2 * x for x in xs]

    async def run() -> list[int]:
        b = MicroBatcher(double, max_batch_size=4, wait_s=0.002)
        return list(await asyncio.gather(*(b(i) for i in range(10))))

    assert asyncio.run(run()) == [2 * i for i in range(10)]
    assert sizes == [4, 4, 2]

    async def failing(xs: list[int]) -> list[int]:
        raise RuntimeError("boom")

    async def run_failing() -> None:
        await MicroBatcher(failing)(1)

    with pytest.raises(RuntimeError, match="boom"):
        asyncio.run(run_failing())

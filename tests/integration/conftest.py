"""Fixtures of the serving tests: one small artifacts folder and one Serve app per test session.

The artifacts are built the way the main job builds them, on ml-latest-small (the first ``N_USERS``
users; the synthetic generator when MovieLens is absent): features → online store (SQLite in tmp) →
tiny ranker and retriever → index. The app is deployed once on the session's local Ray, on a free
port on 127.0.0.1, and deleted at the end of the session.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# users of ml-latest-small kept: all of them (100k ratings; features, 2-epoch training and the index
# take about a minute). With the first 120 users most movies were out of the models' vocabulary and
# shared one vector per genre set, so an item added live could not be reached from its neighbours.
N_USERS = 610


@dataclass(frozen=True)
class ServingArtifacts:
    artifacts: str
    store: str
    features_path: str
    movielens: bool
    trained: bool


def _dataset(tmp: Path):
    from rayrec.config import shared_movielens_dir
    from rayrec.data import read_movielens
    from rayrec.data.synthetic import SyntheticConfig, generate

    found = shared_movielens_dir()
    if found is not None:
        data = read_movielens(found)
        keep = data.ratings["userId"] <= N_USERS
        data.ratings = data.ratings[keep].reset_index(drop=True)
        return data, True
    # as large as ml-latest-small: tiny models on fewer ratings learn too little for the real-time tests
    generate(tmp / "synthetic", SyntheticConfig(n_users=N_USERS, n_items=3_000, n_ratings=100_000))
    return read_movielens(tmp / "synthetic"), False


def _train(artifacts: str) -> bool:
    """Train tiny models (2 epochs, no refit) through the training job, as the main job does."""
    from pipelines import train

    for model in ("ranker", "retriever"):
        rc = train.main(["--model", model, "--artifacts", artifacts, "--epochs", "2", "--num-workers", "1", "--no-refit"])
        assert rc == 0, f"training the {model} failed (exit {rc})"
    return True


@pytest.fixture(scope="session")
def serving_artifacts(ray_session, tmp_path_factory) -> ServingArtifacts:
    from rayrec.features import FeaturesConfig, run_features
    from rayrec.retrieval import IndexConfig, run_index
    from rayrec.store.loader import load_table

    tmp = tmp_path_factory.mktemp("serving")
    data, is_movielens = _dataset(tmp)
    artifacts = str(tmp / "artifacts")
    result = run_features(data, FeaturesConfig(artifacts=artifacts, num_blocks=2))
    store = f"sqlite://{tmp}/store.db"
    for entity, table, key in (("user", "users", "userId"), ("item", "items", "movieId")):
        load_table(store, entity, result.uri("online", f"{table}.parquet"), key)
    trained = _train(artifacts)
    run_index(IndexConfig(artifacts=artifacts, recall_queries=100, latency_queries=10))  # the retriever's embeddings
    return ServingArtifacts(artifacts, store, result.path, is_movielens, trained)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def unused_port() -> int:
    """A free TCP port on 127.0.0.1."""
    return free_port()


@dataclass(frozen=True)
class ServingApp:
    url: str
    name: str
    artifacts: ServingArtifacts


APP_NAME = "rayrec-test"


@pytest.fixture(scope="session")
def serving_app(serving_artifacts: ServingArtifacts):
    from ray import serve

    from pipelines.serve import deploy

    small = {"num_cpus": 0.1, "max_replicas": 1}
    url = deploy(serving_artifacts.artifacts, serving_artifacts.store, port=free_port(), name=APP_NAME,
                 ingress=small)  # fmt: skip
    yield ServingApp(url, APP_NAME, serving_artifacts)
    # not waited for: the replicas' graceful shutdown took a minute of every session's end, and Ray
    # stops with the interpreter anyway
    serve.delete(APP_NAME, _blocking=False)


REDIS_APP_NAME = "rayrec-test-redis"
# admits 2 requests and queues 1 (Serve's least): the overload test needs few connections to see 503s
ADMIT_TWO = {"num_cpus": 0.1, "max_replicas": 1, "max_ongoing_requests": 2, "max_queued_requests": 1}


@dataclass(frozen=True)
class RedisServing:
    """The same artifacts served from the real Redis (keys under a prefix of this session's own),
    reached through a :class:`link.Link` the degrade tests can break."""

    app: ServingApp
    link: Any  # link.Link
    url: str  # the store URL the app uses (through the link)


@pytest.fixture(scope="session")
def redis_serving(serving_app: ServingApp, redis_down):
    """A second app on the session's Serve (route ``/redis``) over the real Redis at 127.0.0.1:6379:
    the online rows loaded there by the loader the features job uses, under a unique key prefix in
    the test db; the keys are removed at the end of the session."""
    from ray import serve
    from realtime_doubles import store_urls
    from link import Link

    from pipelines.serve import deploy
    from rayrec import uri
    from rayrec.store.loader import load_table
    from rayrec.store.redis_store import RedisStoreConfig

    if redis_down:
        pytest.skip(f"Redis not answering on 127.0.0.1:6379: {redis_down}")
    urls = store_urls("redis", None)
    direct = next(urls)
    arts = serving_app.artifacts
    for entity, table, key in (("user", "users", "userId"), ("item", "items", "movieId")):
        load_table(direct, entity, uri.join(arts.features_path, "online", f"{table}.parquet"), key)
    cfg = RedisStoreConfig.from_url(direct)
    link = Link(cfg.host, cfg.port)
    through = direct.replace(f"{cfg.host}:{cfg.port}", f"127.0.0.1:{link.port}", 1)
    port = int(serving_app.url.rsplit(":", 1)[1])
    try:
        url = deploy(arts.artifacts, through, port=port, name=REDIS_APP_NAME, route_prefix="/redis", ingress=ADMIT_TWO)
        yield RedisServing(ServingApp(url, REDIS_APP_NAME, ServingArtifacts(arts.artifacts, through, arts.features_path,
                                                                           arts.movielens, arts.trained)), link, through)  # fmt: skip
        serve.delete(REDIS_APP_NAME, _blocking=False)
    finally:
        link.close()
        next(urls, None)  # removes this session's keys


@pytest.fixture(params=["sqlite", "redis"])
def backend_app(request) -> ServingApp:
    """The session's app on each store backend: the embedded SQLite file, and the real Redis."""
    if request.param == "sqlite":
        return request.getfixturevalue("serving_app")
    return request.getfixturevalue("redis_serving").app

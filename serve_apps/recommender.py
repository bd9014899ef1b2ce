"""The recommender on Ray Serve: Ingress (FastAPI), Recall, Ranker, Reranker, and the app builder.

Every deployment wraps :mod:`rayrec.serving`; this file only wires them. Three compositions, chosen
by the ``composition`` arg:

- ``fused`` (default): the Ingress runs recall, rank and rerank in its own process and ranks each
  request as it comes (``batching.max_batch_size: 16`` batches ranking across concurrent callers with
  ``@serve.batch`` instead: one store read and one forward pass per batch). No DeploymentHandle hop
  on the request path.
- ``ranker``: the Ingress recalls and reranks; the Ranker deployment (``@serve.batch``, 16 by
  default, store read per batch) scores. One hop; the Ranker scales on its own (e.g. on GPU nodes).
- ``chain``: Ingress → Recall → Ranker → Reranker, three hops, each stage scaled separately.

Why this default: measured on the 2-core development machine with tests/perf/bench_serving.py (all
apps deployed at once, rounds interleaved, median of 3; absolute figures swing by 10-30% between
runs, the order did not change). At concurrency 8: a FastAPI no-op ingress answered 209 req/s, the
same no-op behind one DeploymentHandle hop 85, behind two 70; the full app fused with 2 replicas 93,
the same with ``@serve.batch`` ranking 70, fused with 1 replica 60, ranker (one hop) 45, chain (three
hops) 30. A hop costs more CPU than the whole recall → rank → rerank compute (about 6-7 ms in
process). So the request path has no hop, and a second ingress replica (autoscaling, 1 → 2) uses the
second core; the split compositions are for clusters where a stage needs its own hardware or replica
count. Batching lost because, with the candidates' item inputs kept per replica and the forward
traced, one request's ranking costs about 0.5 ms, and Serve's batch queue (tasks, futures and metrics
per batch) costs more than the forward passes it saves; it pays off where a forward pass is costly (a
GPU, bigger candidate sets, the Ranker deployment).

The front door is a separate choice (rayrec.serving.ingress, fixed when Ray starts): the figures above
are behind Serve's Python proxy, which forwards every request by an actor call and caps a no-op app
at about 200 req/s on 2 cores. Behind HAProxy (the default where a binary is found) connections go
straight to the ingress replicas: the no-op app did 540-930 req/s and the fused app 1.7-2x its
proxy figure, bound by its own compute (serve_apps/README.md, "Front door"). The app's code keeps an
event loop of its own in each replica (Serve's default, ``Scaling.user_code_thread``): on Serve's loop
it served 10% more, but an overloaded replica could then only refuse requests between other
requests' compute, and its 503s came too late.

Overload gets 503s, not timeouts. Requests must not wait in the proxy's queue: a request queued
there polls for a free replica with back-off (up to 0.5 s), leaving replicas idle. With
``max_ongoing_requests=16`` one replica fell from 52–63 req/s at concurrency 8 to 19–31 at 32; with 48
it held 48–65 (again with 2 replicas: at concurrency 32, 48 held 115 req/s, 16 gave 76 and 8 gave 60,
their 503s costing the CPU that served requests). So the ingress admits up to 48 requests per replica
(waiting there costs nothing: asyncio), the proxy queues at most 16 more and refuses the rest at once
(BackPressureError → 503); behind HAProxy each replica refuses past the same limits itself. Shedding
requests inside the replica past a deadline was tried and dropped: the work already done was wasted
and goodput fell. Health checks report only faults local
to a replica (a broken bundle or thread pool); a store outage degrades answers instead.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any, Literal

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from rayrec.config import default_artifacts, repo_root
from rayrec.realtime import ColdContext
from rayrec.reports import add_report_route
from rayrec.serving import RecommenderService, ServingConfig, create_app
from rayrec.serving.api import Recommendation
from rayrec.serving.core import Ranked, Recalled
from rayrec.serving.metrics import ServingMetrics
from rayrec.serving.threads import single_threaded

log = logging.getLogger("ray.serve")

Composition = Literal["fused", "ranker", "chain"]


class Scaling(BaseModel):
    """Resources, autoscaling and admission limits of one deployment."""

    model_config = ConfigDict(extra="forbid")

    num_cpus: float = Field(default=0.25, gt=0, le=16)
    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=1, ge=1)
    target_ongoing_requests: float = Field(default=4, gt=0)
    max_ongoing_requests: int = Field(default=8, ge=1)
    max_queued_requests: int = Field(default=16, ge=-1, description="-1: unbounded queue (no fast 503s)")
    upscale_delay_s: float = Field(default=5.0, ge=0, description="sustained load this long before adding a replica")
    downscale_delay_s: float = Field(default=60.0, ge=0)
    user_code_thread: bool = Field(
        default=True,
        description="run the deployment's code on an event loop of its own, apart from Serve's (Serve's default). "
        "False runs it on Serve's loop: no thread hand-off per request (+10% req/s measured behind HAProxy), but "
        "under overload the replica then answers its 503s only between requests' compute: they took seconds "
        "and some requests timed out, where with its own loop they took under 100 ms",
    )

    def options(self) -> dict[str, Any]:
        return {
            "ray_actor_options": actor_options(self.num_cpus, self.user_code_thread),
            "autoscaling_config": {
                "min_replicas": self.min_replicas,
                "initial_replicas": max(self.min_replicas, 1),
                "max_replicas": max(self.max_replicas, self.min_replicas),
                "target_ongoing_requests": self.target_ongoing_requests,
                "upscale_delay_s": self.upscale_delay_s,
                "downscale_delay_s": self.downscale_delay_s,
            },
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
        }


def actor_options(num_cpus: float, user_code_thread: bool = True) -> dict[str, Any]:
    """A replica's actor options: its CPUs, and, to run its code on Serve's own event loop, the
    variable the replica reads from its environment (hence the runtime env)."""
    if user_code_thread:
        return {"num_cpus": num_cpus}
    return {"num_cpus": num_cpus, "runtime_env": {"env_vars": {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"}}}


#: Per-deployment defaults: they fit 2 cores (ingress 2 × 0.5 at most in the fused composition).
SCALING_DEFAULTS: dict[str, dict[str, Any]] = {
    "ingress": {"num_cpus": 0.5, "max_replicas": 2, "target_ongoing_requests": 4, "max_ongoing_requests": 48,
                "max_queued_requests": 16},
    "recall": {"num_cpus": 0.25, "max_replicas": 2, "target_ongoing_requests": 8, "max_ongoing_requests": 16,
               "max_queued_requests": 32},
    "ranker": {"num_cpus": 0.25, "max_replicas": 2, "target_ongoing_requests": 16, "max_ongoing_requests": 32,
               "max_queued_requests": 64},
    "reranker": {"num_cpus": 0.1, "max_replicas": 1, "target_ongoing_requests": 8, "max_ongoing_requests": 16,
                 "max_queued_requests": 32},
}  # fmt: skip


class Batching(BaseModel):
    """``@serve.batch`` of the rank stage, wherever it runs (the fused ingress, or the Ranker)."""

    model_config = ConfigDict(extra="forbid")

    # 1: no batching (the rank stage is called directly, skipping the batch queue). None: 1 in the
    # fused ingress, 16 in a Ranker deployment (see the module docstring for why)
    max_batch_size: int | None = Field(default=None, ge=1, le=256)
    # 0: no waiting. A batch leaves as soon as the previous one is done, holding every request that
    # arrived meanwhile: batches grow with load and an idle server adds no delay.
    batch_wait_timeout_s: float = Field(default=0.0, ge=0, le=1)

    def size(self, where: Literal["ingress", "ranker"]) -> int:
        return self.max_batch_size or (1 if where == "ingress" else 16)


class AppArgs(BaseModel):
    """Typed args of :func:`build_app` (``serve run serve_apps.recommender:build_app artifacts=…`` or
    the ``args:`` of an application in the Serve config YAML)."""

    model_config = ConfigDict(extra="forbid")

    artifacts: str = Field(default_factory=default_artifacts, description="artifacts URI (path or s3://)")
    store: str | None = Field(default=None, description="online store URL; None: SQLite under the artifacts")
    composition: Composition = "fused"
    serving: ServingConfig = Field(default_factory=ServingConfig, description="sent as user_config (hot)")
    batching: Batching = Field(default_factory=Batching)
    ingress: Scaling = Field(default_factory=lambda: Scaling(**SCALING_DEFAULTS["ingress"]))
    recall: Scaling = Field(default_factory=lambda: Scaling(**SCALING_DEFAULTS["recall"]))
    ranker: Scaling = Field(default_factory=lambda: Scaling(**SCALING_DEFAULTS["ranker"]))
    reranker: Scaling = Field(default_factory=lambda: Scaling(**SCALING_DEFAULTS["reranker"]))

    @model_validator(mode="before")
    @classmethod
    def _partial_scaling(cls, data: Any) -> Any:
        """``ingress: {num_cpus: 0.1}`` changes that field only; the others keep their defaults."""
        if isinstance(data, dict):
            data = dict(data)
            for name, defaults in SCALING_DEFAULTS.items():
                if isinstance(data.get(name), dict):
                    data[name] = {**defaults, **data[name]}
        return data

    @field_validator("artifacts")
    @classmethod
    def _resolve(cls, v: str) -> str:
        """A relative path resolves against the repository, not the current directory."""
        if "://" in v or os.path.isabs(v):
            return v
        return str(repo_root() / v)


class _Stage:
    """Shared by every deployment: a :class:`RecommenderService` and hot reconfiguration."""

    def __init__(self, artifacts: str, store: str | None, composition: str) -> None:
        single_threaded()  # replicas and requests are the parallelism, not threads in one request
        self.service = RecommenderService.create(artifacts, store, ServingConfig(), composition=composition)
        self.service.metrics = ServingMetrics(type(self).__name__)
        self._sync: asyncio.Task[None] | None = None
        self._report: asyncio.Task[None] | None = None
        self._lease: asyncio.Task[None] | None = None

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        if self._sync is None:  # the replica's event loop runs by now: start syncing live items
            self._sync = asyncio.get_running_loop().create_task(self.service.sync_items_forever())
            self._report = asyncio.get_running_loop().create_task(self.service.report_forever())
            self._lease = asyncio.get_running_loop().create_task(self.service.lease_forever())
        if await self.service.reconfigure(ServingConfig.model_validate(user_config or {})):
            log.info("reloaded: %s", self.service.bundle.versions)

    def check_health(self) -> None:
        self.service.check_local()


@serve.deployment(ray_actor_options={"num_cpus": 0.25})
class Recall(_Stage):
    """Recall stage: the user's state from the store, multi-path candidates."""

    async def recall(self, user_id: int, k: int, context: ColdContext | None = None, arm: str | None = None) -> Recalled:
        return await self.service.recall_local(user_id, k, context, arm)


@serve.deployment(ray_actor_options={"num_cpus": 0.25})
class Ranker(_Stage):
    """Rank stage: Embedding+MLP over the candidates of a batch of requests (``@serve.batch``); each
    batch reads all candidates' features from the store in one call."""

    def __init__(self, artifacts: str, store: str | None, composition: str, batching: Batching) -> None:
        super().__init__(artifacts, store, composition)
        self.rank.set_max_batch_size(batching.size("ranker"))
        self.rank.set_batch_wait_timeout_s(batching.batch_wait_timeout_s)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.0)
    async def rank(self, batch: list[Recalled]) -> list[Ranked]:
        return await self.service.rank_batch(batch)


@serve.deployment(ray_actor_options={"num_cpus": 0.1})
class Reranker(_Stage):
    """Rerank stage: MMR, freshness, popularity, business rules, reasons."""

    async def rerank(self, recalled: Recalled, ranked: Ranked) -> Recommendation:
        return self.service.core_for(recalled.arm).rerank(recalled, ranked)


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, health_check_period_s=10, health_check_timeout_s=30)
@serve.ingress()
class Ingress(_Stage):
    """HTTP ingress: the API and the web page. Runs the stages itself (``fused``) or calls the stage
    deployments through their handles."""

    def __init__(
        self,
        artifacts: str,
        store: str | None,
        composition: str,
        batching: Batching,
        recall: DeploymentHandle | None = None,
        ranker: DeploymentHandle | None = None,
        reranker: DeploymentHandle | None = None,
    ) -> None:
        super().__init__(artifacts, store, composition)
        svc = self.service
        svc.passthrough = (BackPressureError,)
        size = batching.size("ingress")
        self.rank.set_max_batch_size(size)
        self.rank.set_batch_wait_timeout_s(batching.batch_wait_timeout_s)
        svc.rank_fn = self.rank if size > 1 else svc.rank_local
        if ranker is not None:
            svc.rank_fn = lambda r: ranker.rank.remote(r.for_ranker())  # type: ignore[assignment,return-value]
        if recall is not None:
            svc.recall_fn = lambda uid, k, ctx, arm: recall.recall.remote(uid, k, ctx, arm)  # type: ignore[assignment,return-value]
        if reranker is not None:
            svc.rerank_fn = lambda r, ranked: reranker.rerank.remote(r, ranked)  # type: ignore[assignment,return-value]

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.0)
    async def rank(self, batch: list[Recalled]) -> list[Ranked]:
        return await self.service.rank_batch(batch)

    def __serve_build_asgi_app__(self) -> FastAPI:
        app = create_app(self.service, title="rayrec")
        add_report_route(app, self.service.artifacts)
        return app

    async def __del__(self) -> None:
        try:
            await self.service.flush_impressions(timeout_s=2.0)  # the lists served last are logged too
        finally:
            await asyncio.to_thread(self.service.close)


def build_app(args: dict[str, Any] | AppArgs | None = None) -> serve.Application:
    """The recommender app from typed args (see :class:`AppArgs`): the ingress, plus the stage
    deployments the composition calls. The serving config goes to every deployment as ``user_config``."""
    a = args if isinstance(args, AppArgs) else AppArgs.model_validate(args or {})
    user_config = a.serving.model_dump(mode="json")
    common = (a.artifacts, a.store, a.composition)

    def stage(cls: Any, scaling: Scaling, *extra: Any) -> Any:
        return cls.options(user_config=user_config, **scaling.options()).bind(*common, *extra)

    recall = ranker = reranker = None
    if a.composition in ("ranker", "chain"):
        ranker = stage(Ranker, a.ranker, a.batching)
    if a.composition == "chain":
        recall = stage(Recall, a.recall)
        reranker = stage(Reranker, a.reranker)
    return Ingress.options(user_config=user_config, **a.ingress.options()).bind(
        *common, a.batching, recall, ranker, reranker
    )

"""No-op Serve apps: the platform's floor for the serving benchmark.

``build_noop_app({"hops": 0})`` is an ingress that answers ``/recommend`` with a constant body, through
the same FastAPI + Serve proxy path as the real app; ``hops: N`` forwards each request through N
no-op deployments by DeploymentHandle, which measures what one hop costs on this machine;
``burn_ms: X`` holds the CPU (and the GIL) for X ms per request, as a compute stage of that cost
would, which shows the throughput Serve allows for a given compute time. Its replicas run their code
as the recommender's do (``user_code_thread``), so the floor is like for like.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import FastAPI, Query
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_apps.recommender import actor_options

_BODY = {"user_id": 0, "k": 10, "items": [], "degraded": False}


class NoopArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hops: int = Field(default=0, ge=0, le=4, description="no-op deployments each request passes through")
    num_cpus: float = Field(default=0.25, gt=0, le=2)
    max_ongoing_requests: int = Field(default=32, ge=1)
    max_queued_requests: int = Field(default=64, ge=-1)
    burn_ms: float = Field(default=0.0, ge=0, le=1000, description="CPU held per request (busy loop)")
    replicas: int = Field(default=1, ge=1, le=8)
    user_code_thread: bool = Field(default=True, description="as serve_apps.recommender.Scaling.user_code_thread")


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=64)
class NoopHop:
    def __init__(self, next_hop: DeploymentHandle | None = None) -> None:
        self.next_hop = next_hop

    async def __call__(self, user_id: int) -> dict[str, Any]:
        if self.next_hop is not None:
            out: dict[str, Any] = await self.next_hop.remote(user_id)
            return out
        return dict(_BODY, user_id=user_id)


@serve.deployment
@serve.ingress()
class NoopIngress:
    def __init__(self, next_hop: DeploymentHandle | None = None, burn_ms: float = 0.0) -> None:
        self.next_hop, self.burn_s = next_hop, burn_ms / 1e3

    def __serve_build_asgi_app__(self) -> FastAPI:
        app = FastAPI(title="rayrec no-op floor")

        @app.get("/recommend")
        async def recommend(user_id: int = Query(..., ge=1), k: int = Query(10, ge=1, le=100)) -> dict[str, Any]:
            if self.burn_s:
                end = time.perf_counter() + self.burn_s
                while time.perf_counter() < end:
                    pass
            if self.next_hop is not None:
                out: dict[str, Any] = await self.next_hop.remote(user_id)
                return out
            return dict(_BODY, user_id=user_id, k=k)

        @app.get("/healthz")
        async def healthz() -> dict[str, str]:
            return {"status": "ok"}

        return app


def build_noop_app(args: dict[str, Any] | NoopArgs | None = None) -> serve.Application:
    a = args if isinstance(args, NoopArgs) else NoopArgs.model_validate(args or {})
    hop = None
    for _ in range(a.hops):
        hop = NoopHop.bind(hop)
    return NoopIngress.options(
        ray_actor_options=actor_options(a.num_cpus, a.user_code_thread),
        max_ongoing_requests=a.max_ongoing_requests,
        max_queued_requests=a.max_queued_requests,
        num_replicas=a.replicas,
    ).bind(hop, a.burn_ms)

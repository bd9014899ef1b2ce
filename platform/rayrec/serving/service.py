"""The async face of the serving core: what the HTTP layer and the Serve ingress call.

:class:`RecommenderService` owns one replica's state: the store connection, the :class:`StoreGuard`
(deadline + circuit breaker), the :class:`Recommender` over the live :class:`Bundle`, and the real-time
path. It implements :class:`rayrec.serving.http.Backend`.

How the stages run is injected, so one service serves every composition: ``rank_fn`` scores a
:class:`Recalled` request (in this process by default; the Serve ingress passes its ``@serve.batch``
method, or a Ranker DeploymentHandle), and ``recall_fn`` / ``finish_fn`` may be handles too.

Degrade, don't fail: a store outage answers ``/recommend`` from in-memory popularity (``degraded``,
``store_unavailable``) within the store deadline; a ranker failure answers in recall order
(``ranker_failed``); an unknown user gets cold-start results. Errors are never hidden: each one is
logged, and the response says it was degraded.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

from rayrec.config import configured_store_url
from rayrec.realtime import ColdContext
from rayrec.serving.api import Health, Movie, Recommendation, SimilarMovies, UserProfile
from rayrec.serving.bundle import Bundle, ServingConfig, load_bundle, resolve_versions
from rayrec.serving.core import Ranked, Recalled, Recommender
from rayrec.serving.events import EventSink, ServiceUnavailable, guarded_write
from rayrec.serving.guard import StoreDown, StoreGuard
from rayrec.serving.metrics import ServingMetrics
from rayrec.store import open_store
from rayrec.store.base import NotDurable, OnlineStore, StoreError, check_durability

__all__ = ["RecommenderService", "RankFn", "store_for"]

log = logging.getLogger(__name__)

RankFn = Callable[[Recalled], Awaitable[Ranked]]

#: the (service, core) a request in this context was pinned to: one bundle for all its stages
_pinned: ContextVar[tuple[Any, Recommender] | None] = ContextVar("rayrec_pinned_core", default=None)


def store_for(artifacts: str) -> str:
    """The default store of these artifacts: ``RAYREC_STORE_URL`` when set (every node of a cluster
    reads the same Redis), else ``<artifacts>/online/store.sqlite`` (what the features job loads with
    ``--online-store default``). Remote artifacts need a store URL."""
    configured = configured_store_url()
    if configured:
        return configured
    if "://" in artifacts and not artifacts.startswith("file://"):
        raise ValueError(f"artifacts {artifacts} are not local: pass a store URL (redis://host:port/db)")
    return os.path.join(artifacts.removeprefix("file://"), "online", "store.sqlite")


class RecommenderService:
    """One replica's serving state (see the module docstring). Build with :meth:`create`."""

    def __init__(self, artifacts: str, store: OnlineStore, bundle: Bundle, *, composition: str = "local") -> None:
        self.artifacts = artifacts
        self.store = store
        self._core = Recommender(bundle)
        cfg = bundle.config
        # Reads run on the guard's threads under the deadline for every backend, the embedded SQLite file
        # too: a reader of a WAL file whose locks another process holds waits inside SQLite for about
        # ten seconds, which on the event loop's thread no deadline could cut short (and the replica
        # would answer nothing meanwhile). tests/integration/test_serving_degrade.py holds those locks.
        self.guard = StoreGuard(cfg.store_timeout_s, cfg.store_cooldown_s, write_timeout_s=cfg.store_write_timeout_s)
        self.events = EventSink(store, bundle)
        self.composition = composition
        self.rank_fn: RankFn = self.rank_local
        self.recall_fn: Callable[[int, int, ColdContext | None], Awaitable[Recalled]] = self.recall_local
        self.finish_fn: Callable[[Recalled, Ranked], Awaitable[Recommendation]] | None = None
        #: exceptions passed through to the caller instead of degrading (e.g. Serve's BackPressureError,
        #: which the ingress turns into a fast 503)
        self.passthrough: tuple[type[BaseException], ...] = ()
        self._swap_lock = asyncio.Lock()
        self._resolved = resolve_versions(artifacts, cfg)
        try:
            check_durability(store, log)  # durability=require: refuse to serve (NotDurable)
        except NotDurable:
            raise
        except StoreError as e:  # the store is down at start-up: serve degraded, check again on the next start
            log.warning("could not check the online store's durability: %s", e)
        #: Prometheus metrics (set by the Serve deployments; None: nothing is recorded)
        self.metrics: ServingMetrics | None = None

    @classmethod
    def create(cls, artifacts: str, store_url: str | None, config: ServingConfig | None = None, **kwargs: Any) -> RecommenderService:
        """Open the store (None: the SQLite file under these artifacts) and load the bundle."""
        return cls(artifacts, open_store(store_url or store_for(artifacts)), load_bundle(artifacts, config or ServingConfig()), **kwargs)

    @property
    def core(self) -> Recommender:
        """The recall / rank / rerank stages over the live bundle, or, inside a request, over the
        bundle it started with (a hot swap during the request does not reach it)."""
        pinned = _pinned.get()
        return pinned[1] if pinned is not None and pinned[0] is self else self._core

    @property
    def bundle(self) -> Bundle:
        return self.core.bundle

    # -- stages -----------------------------------------------------------------------------------
    # Store reads run on the guard's threads (deadline, breaker); the compute between them runs on
    # the event loop: a thread hop per stage cost more than it saved (the GIL serialises the work).
    async def recall_local(self, user_id: int, k: int, context: ColdContext | None = None) -> Recalled:
        t = time.perf_counter()
        row, events = await self.guard.run(self.core.read_user, self.store, user_id)
        store_ms = (time.perf_counter() - t) * 1e3
        out = self.core.recall_from(user_id, k, row, events, context)
        out.timings["store_user_ms"] = store_ms
        return out

    async def rank_local(self, request: Recalled) -> Ranked:
        return (await self.rank_batch([request]))[0]

    async def rank_batch(self, batch: list[Recalled]) -> list[Ranked]:
        """Item rows and ranker scores for several requests: one store call, one forward pass."""
        t = time.perf_counter()
        fetched = await self.guard.run(self.core.fetch, self.store, batch)
        return self.core.rank_fetched(batch, fetched, store_ms=(time.perf_counter() - t) * 1e3)

    async def _rows_only(self, r: Recalled, why: str) -> Ranked:
        """Item rows without scores, when the ranker stage failed: the recall order is served."""
        fetched = await self.guard.run(self.core.fetch, self.store, [r])
        return Ranked(rows=fetched[0][0], liked_rows=fetched[0][1], scores=None, error=why)

    # -- Backend ----------------------------------------------------------------------------------
    async def recommend(self, user_id: int, k: int, context: ColdContext | None = None) -> Recommendation:
        # one bundle snapshot for the whole request: a shallow copy shares the caches, and a swap
        # (which replaces the live core's bundle) does not reach it
        token = _pinned.set((self, copy.copy(self._core)))
        try:
            return await self._recommend(user_id, k, context)
        finally:
            _pinned.reset(token)

    async def _recommend(self, user_id: int, k: int, context: ColdContext | None = None) -> Recommendation:
        t = time.perf_counter()
        try:
            recalled = await self.recall_fn(user_id, k, context)
            t_recall = time.perf_counter()
        except self.passthrough:
            raise
        except StoreDown:
            return self._timed(self.core.popular(user_id, k, "store_unavailable"), t)
        except Exception:
            log.exception("recall failed for user %d; answering from popularity", user_id)
            return self._timed(self.core.popular(user_id, k, "recall_failed"), t)
        try:
            ranked = await self.rank_fn(recalled)
            t_rank = time.perf_counter()
        except self.passthrough:
            raise
        except StoreDown:
            return self._timed(self.core.popular(user_id, k, "store_unavailable"), t)
        except Exception:
            log.exception("ranker stage failed for user %d; answering in recall order", user_id)
            try:
                ranked = await self._rows_only(recalled, "ranker_failed")
            except StoreDown:
                return self._timed(self.core.popular(user_id, k, "store_unavailable"), t)
            t_rank = time.perf_counter()
        if self.finish_fn is not None:
            out = await self.finish_fn(recalled, ranked)
        else:
            out = self.core.finish(recalled, ranked)
        out.timings.update({"recall_stage_ms": round((t_recall - t) * 1e3, 3),
                            "rank_stage_ms": round((t_rank - t_recall) * 1e3, 3),
                            "rerank_stage_ms": round((time.perf_counter() - t_rank) * 1e3, 3)})  # fmt: skip
        return self._timed(out, t, recalled.paths)

    def _timed(self, out: Recommendation, t: float, paths: list[tuple[str, ...]] | None = None) -> Recommendation:
        out.took_ms = round((time.perf_counter() - t) * 1e3, 3)
        if self.metrics is not None:
            self.metrics.recommendation(out, paths)
        return out

    async def similar(self, movie_id: int, k: int) -> SimilarMovies | None:
        try:
            return await self.guard.run(self.core.similar, self.store, movie_id, k)
        except StoreDown:
            return self.core.similar(None, movie_id, k)

    async def movie(self, movie_id: int) -> Movie | None:
        try:
            return await self.guard.run(self.core.movie, self.store, movie_id)
        except StoreDown:
            return self.core.movie(None, movie_id)

    async def user(self, user_id: int) -> UserProfile | None:
        try:
            return await self.guard.run(self.core.user, self.store, user_id)
        except StoreDown as e:
            log.warning("GET /users/%d: %s", user_id, e)  # the details (store URL, path) stay in the log
            raise ServiceUnavailable("the online store is unavailable; retry shortly") from None

    async def event(self, payload: Any) -> Any:
        t = time.perf_counter()
        ack = await guarded_write(self.guard, self.events.ingest, payload, "event")
        if self.metrics is not None:
            self.metrics.event(payload, (time.perf_counter() - t) * 1e3)
        return ack

    async def add_item(self, payload: dict[str, Any]) -> Any:
        return await guarded_write(self.guard, self.events.add_item, payload, "item")

    async def health(self) -> Health:
        ok = self.guard.healthy
        b = self.bundle
        return Health(
            status="ok" if ok else "degraded", store="ok" if ok else "unavailable",
            model_version=b.versions.get("ranker"), index_version=b.versions.get("index"),
            features_version=b.versions.get("features"), composition=self.composition,
        )  # fmt: skip

    async def sync_items_forever(self, every_s: float = 5.0, recover_grace_s: float = 30.0) -> None:
        """Every few seconds: insert into this replica's index the items other replicas added
        (``POST /items``), and apply logged events that never reached the users' state (a process
        died in between; :meth:`rayrec.realtime.Realtime.recover`), first at once on start-up.
        Store failures are logged and retried next time."""
        first = True
        while not self.guard.closed:
            try:
                await self.guard.write(self.events.rt.recover, 0.0 if first else recover_grace_s)
            except Exception as e:  # the breaker handles store outages; keep going afterwards
                log.warning("event recovery skipped: %s", e)
            first = False
            await asyncio.sleep(every_s)
            try:
                new = await self.guard.run(self.events.sync_items)
            except Exception as e:
                log.debug("item sync skipped: %s", e)
                continue
            if new:
                log.info("indexed %d item(s) added by other replicas", len(new))

    async def report_forever(self, every_s: float = 5.0) -> None:
        """Flush the metrics kept in memory (recall paths, item cache, breaker) every few seconds."""
        while not self.guard.closed and self.metrics is not None:
            await asyncio.sleep(every_s)
            try:
                self.metrics.flush(self.core.items, self.guard)
            except Exception as e:  # metrics must never take serving down
                log.debug("metrics flush failed: %s", e)

    def check_local(self) -> None:
        """Raise if this replica itself is broken (for Serve's health check). A store outage is not a
        local fault: every replica shares the store, and restarting them would not bring it back."""
        b = self.bundle
        if not b.fallback:
            raise RuntimeError("serving bundle has no fallback items: the features version is empty")
        if self.guard.closed:
            raise RuntimeError("the store thread pool was shut down")

    # -- hot swap ---------------------------------------------------------------------------------
    async def reconfigure(self, cfg: ServingConfig) -> bool:
        """Apply a new config. Artifacts are reloaded (off the event loop, beside the live bundle)
        only when a version pointer moved or artifact settings changed; then one assignment swaps the
        bundle, so in-flight requests finish on the old one and none fails. Returns True on reload."""
        async with self._swap_lock:
            self.guard.configure(cfg.store_timeout_s, cfg.store_cooldown_s, cfg.store_write_timeout_s)
            live = self.bundle
            resolved = await asyncio.to_thread(resolve_versions, self.artifacts, cfg)
            if cfg.artifact_key() == live.config.artifact_key() and resolved == self._resolved:
                self._core.bundle = live.with_config(cfg)
                return False
            bundle = await asyncio.to_thread(load_bundle, self.artifacts, cfg)
            self._core.bundle = bundle
            self.events.rebind(bundle)
            self._resolved = resolved
            log.info("hot swap: now serving %s", bundle.versions)
            return True

    def close(self) -> None:
        self.guard.close()
        self.store.close()


"""The async face of the serving core: what the HTTP layer and the Serve ingress call.

:class:`RecommenderService` owns one replica's state: the store connection, the :class:`StoreGuard`
(deadline + circuit breaker), the :class:`Recommender` over the live :class:`Bundle`, and the real-time
path. It implements :class:`rayrec.serving.http.Backend`.

How the stages run is injected, so one service serves every composition: ``rank_fn`` scores a
:class:`Recalled` request (in this process by default; the Serve ingress passes its ``@serve.batch``
method, or a Ranker DeploymentHandle), and ``recall_fn`` / ``rerank_fn`` may be handles too.

Degrade, don't fail: a store outage answers ``/recommend`` from in-memory popularity (``degraded``,
``store_unavailable``) within the store deadline; a ranker failure answers in recall order
(``ranker_failed``); an unknown user gets cold-start results. Errors are never hidden: each one is
logged, and the response says it was degraded.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

from rayrec import gc as artifacts_gc
from rayrec.config import configured_store_url
from rayrec.experiments.config import Assignment, assign
from rayrec.experiments.impressions import IMPRESSIONS_LOG, ImpressionLog, impression_record
from rayrec.experiments.interleave import NEUTRAL, draft_credits, optimized, seed_of, team_draft, team_of
from rayrec.realtime import ColdContext
from rayrec.serving.api import Health, Movie, Recommendation, SimilarMovies, UserProfile
from rayrec.serving.bundle import Bundle, ServingConfig, check_versions, load_bundle, resolve_versions
from rayrec.serving.core import Ranked, Recalled, Recommender
from rayrec.serving.events import EventSink, ServiceUnavailable, guarded_write
from rayrec.serving.guard import StoreDown, StoreGuard
from rayrec.serving.metrics import ServingMetrics
from rayrec.store import open_store
from rayrec.store.base import NotDurable, OnlineStore, StoreError, check_durability

__all__ = ["RecommenderService", "RankFn", "store_for", "current_arm"]

log = logging.getLogger(__name__)

RankFn = Callable[[Recalled], Awaitable[Ranked]]

#: the (service, core, arm) a request in this context was pinned to: one bundle for all its stages,
#: that of its experiment arm (``<experiment>/<variant>``; None outside experiments)
_pinned: ContextVar[tuple[Any, Recommender, str | None] | None] = ContextVar("rayrec_pinned_core", default=None)


def current_arm() -> str | None:
    """The experiment arm of the request running in this context (None: none, or not in a request)."""
    pinned = _pinned.get()
    return pinned[2] if pinned is not None else None


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
        #: (user, k, context, arm): the arm names the experiment variant whose settings recall uses
        self.recall_fn: Callable[[int, int, ColdContext | None, str | None], Awaitable[Recalled]] = self.recall_local
        self.rerank_fn: Callable[[Recalled, Ranked], Awaitable[Recommendation]] | None = None
        #: exceptions passed through to the caller instead of degrading (e.g. Serve's BackPressureError,
        #: which the ingress turns into a fast 503)
        self.passthrough: tuple[type[BaseException], ...] = ()
        self._swap_lock = asyncio.Lock()
        self._resolved = resolve_versions(artifacts, cfg)
        check_versions(artifacts, cfg)
        #: one core per experiment arm (``<experiment>/<variant>``), and the bundles they share
        self._arms: dict[str, Recommender] = {}
        self._arm_bundles: dict[str, Bundle] = {}
        self._arms = self._build_arms(cfg, bundle)
        self.impressions = ImpressionLog(self._append_impressions)
        try:
            check_durability(store, log)  # durability=require: refuse to serve (NotDurable)
        except NotDurable:
            raise
        except StoreError as e:  # the store is down at start-up: serve degraded, check again on the next start
            log.warning("could not check the online store's durability: %s", e)
        #: Prometheus metrics (set by the Serve deployments; None: nothing is recorded)
        self.metrics: ServingMetrics | None = None
        self.replica = artifacts_gc.replica_id()
        self._leased = False

    @classmethod
    def create(cls, artifacts: str, store_url: str | None, config: ServingConfig | None = None, **kwargs: Any) -> RecommenderService:
        """Open the store (None: the SQLite file under these artifacts) and load the bundle."""
        return cls(artifacts, open_store(store_url or store_for(artifacts)), load_bundle(artifacts, config or ServingConfig()), **kwargs)

    @property
    def core(self) -> Recommender:
        """The recall / rank / rerank stages over the live bundle, or, inside a request, over the
        bundle it started with (a hot swap during the request does not reach it) and its
        experiment arm's settings."""
        pinned = _pinned.get()
        return pinned[1] if pinned is not None and pinned[0] is self else self._core

    def core_for(self, arm: str | None) -> Recommender:
        """The core of an experiment arm (None: the default settings): the request's pinned one when
        the request is on that arm, else the live one (e.g. a batch assembled from several requests)."""
        pinned = _pinned.get()
        if pinned is not None and pinned[0] is self and pinned[2] == arm:
            return pinned[1]
        if arm is None:
            return self._core
        return self._arms.get(arm, self._core)

    # -- experiments --------------------------------------------------------------------------------
    def _build_arms(self, cfg: ServingConfig, base: Bundle) -> dict[str, Recommender]:
        """A core per experiment arm. Arms that change only request-time settings (rerank weights,
        ``rank_weight``) share the base bundle's artifacts; arms that name other model versions or
        recall settings load theirs, once per distinct set (kept across reconfigures while in use)."""
        arms: dict[str, Recommender] = {}
        keep: dict[str, Bundle] = {}
        for e in cfg.experiments:
            for v in e.variants:
                vcfg = cfg.variant(e.name, v.name)
                if vcfg.artifact_key() == cfg.artifact_key():
                    bundle = base.with_config(vcfg)
                else:
                    fields = {"features_version", "index_version", "ranker_version", "retriever_version", "recall", "generation"}
                    key = json.dumps([vcfg.model_dump(mode="json", include=fields), resolve_versions(self.artifacts, vcfg)],
                                     sort_keys=True)  # fmt: skip
                    loaded = self._arm_bundles.get(key) or keep.get(key)
                    if loaded is None:
                        loaded = load_bundle(self.artifacts, vcfg)
                    keep[key] = loaded
                    bundle = loaded.with_config(vcfg)
                core = Recommender(bundle)
                core.items, core.fields = self._core.items, self._core.fields  # one item-row cache per replica
                arms[f"{e.name}/{v.name}"] = core
        self._arm_bundles = keep
        return arms

    @property
    def bundle(self) -> Bundle:
        return self.core.bundle

    # -- stages -----------------------------------------------------------------------------------
    # Store reads run on the guard's threads (deadline, breaker); the compute between them runs on
    # the event loop: a thread hop per stage cost more than it saved (the GIL serialises the work).
    async def recall_local(self, user_id: int, k: int, context: ColdContext | None = None, arm: str | None = None) -> Recalled:
        arm = arm if arm is not None else current_arm()
        core = self.core_for(arm)
        t = time.perf_counter()
        row, events = await self.guard.run(core.read_user, self.store, user_id)
        store_ms = (time.perf_counter() - t) * 1e3
        out = core.recall_from(user_id, k, row, events, context)
        out.timings["store_user_ms"] = store_ms
        out.arm = arm
        return out

    async def rank_local(self, request: Recalled) -> Ranked:
        return (await self.rank_batch([request]))[0]

    async def rank_batch(self, batch: list[Recalled]) -> list[Ranked]:
        """Item rows and ranker scores for several requests: one store call, one forward pass (per
        experiment arm in the batch: each arm ranks with its own model)."""
        t = time.perf_counter()
        core = self.core_for(batch[0].arm if batch else None)
        # rows the item cache holds fresh need no store call, so no hop to the store's thread either
        fetched = core.fetch_kept(batch)
        if fetched is None:
            fetched = await self.guard.run(core.fetch, self.store, batch)
        store_ms = (time.perf_counter() - t) * 1e3
        arms = list(dict.fromkeys(r.arm for r in batch))
        if len(arms) == 1:
            return self.core_for(arms[0]).rank_fetched(batch, fetched, store_ms=store_ms)
        out: list[Ranked | None] = [None] * len(batch)
        for arm in arms:
            where = [i for i, r in enumerate(batch) if r.arm == arm]
            ranked = self.core_for(arm).rank_fetched([batch[i] for i in where], [fetched[i] for i in where], store_ms=store_ms)
            for i, r in zip(where, ranked):
                out[i] = r
        return [r for r in out if r is not None]

    async def _rows_only(self, r: Recalled, why: str) -> Ranked:
        """Item rows without scores, when the ranker stage failed: the recall order is served."""
        fetched = await self.guard.run(self.core.fetch, self.store, [r])
        return Ranked(rows=fetched[0][0], liked_rows=fetched[0][1], scores=None, error=why)

    # -- Backend ----------------------------------------------------------------------------------
    async def recommend(self, user_id: int, k: int, context: ColdContext | None = None) -> Recommendation:
        """The user's list: the default settings, their A/B variant's, or two variants' lists
        interleaved; logged to the impressions log under a new request id."""
        cfg = self._core.bundle.config
        assigned = assign(cfg.experiments, user_id)
        request_id = uuid.uuid4().hex
        if assigned is None or assigned.mode == "ab":
            arm = assigned.key(assigned.arms[0]) if assigned is not None else None
            out = await self._on_arm(arm, user_id, k, context)
        else:
            out = await self._interleaved(assigned, request_id, user_id, k, context)
        out.request_id = request_id
        if assigned is not None:
            out.experiment, out.variant = assigned.experiment, assigned.variant
        if cfg.impressions:
            self._log_impression(out, assigned)
        return out

    async def recommend_as(self, arm: str | None, user_id: int, k: int, context: ColdContext | None = None) -> Recommendation:
        """The list experiment arm ``arm`` (``<experiment>/<variant>``; None: the default settings)
        would serve this user, whatever the user's assignment; not logged (simulators, debugging)."""
        if arm is not None and arm not in self._arms:
            raise KeyError(f"no experiment arm {arm!r}; the arms are {sorted(self._arms)}")
        return await self._on_arm(arm, user_id, k, context)

    async def _on_arm(self, arm: str | None, user_id: int, k: int, context: ColdContext | None) -> Recommendation:
        # one bundle snapshot for the whole request: a shallow copy shares the caches, and a swap
        # (which replaces the live core's bundle) does not reach it
        token = _pinned.set((self, copy.copy(self.core_for(arm)), arm))
        try:
            return await self._recommend(user_id, k, context, arm)
        finally:
            _pinned.reset(token)

    async def _interleaved(
        self, assigned: Assignment, request_id: str, user_id: int, k: int, context: ColdContext | None
    ) -> Recommendation:
        """Both arms' lists (concurrently, each on its own bundle), merged by team draft."""
        a_name, b_name = assigned.arms
        t = time.perf_counter()
        a, b = await asyncio.gather(
            self._on_arm(assigned.key(a_name), user_id, k, context),
            self._on_arm(assigned.key(b_name), user_id, k, context),
        )
        by_id = {it.movie_id: it for it in b.items} | {it.movie_id: it for it in a.items}
        ids_a, ids_b = [it.movie_id for it in a.items], [it.movie_id for it in b.items]
        if assigned.interleaving == "optimized":
            ids, credits = await asyncio.to_thread(optimized, ids_a, ids_b, k, seed_of(request_id))  # a linear program: 3-9 ms
            teams = [team_of(c) for c in credits]
        else:
            ids, teams = team_draft(ids_a, ids_b, k, seed_of(request_id))
            credits = draft_credits(teams)
        names = (a_name, b_name)
        # the list is sorted by score, as every list is: an interleaved list's score is its position's
        items = [by_id[m].model_copy(update={"team": None if team == NEUTRAL else names[team], "credit": credit,
                                             "score": round(1.0 - i / len(ids), 6)})
                 for i, (m, team, credit) in enumerate(zip(ids, teams, credits))]  # fmt: skip
        timings = {f"{name}.{key}": v for name, r in zip(names, (a, b)) for key, v in r.timings.items()}
        return a.model_copy(update={
            "items": items, "degraded": a.degraded or b.degraded,
            "degraded_reason": a.degraded_reason or b.degraded_reason, "cold_start": a.cold_start or b.cold_start,
            "model_version": None if a.model_version != b.model_version else a.model_version,
            "took_ms": round((time.perf_counter() - t) * 1e3, 3), "timings": timings,
        })  # fmt: skip

    def _log_impression(self, out: Recommendation, assigned: Assignment | None) -> None:
        interleaved = assigned is not None and assigned.mode == "interleave"
        rec = impression_record(
            out.request_id or "", out.user_id, [it.movie_id for it in out.items],
            experiment=assigned.experiment if assigned else None, mode=assigned.mode if assigned else None,
            variant=assigned.arms[0] if assigned is not None and not interleaved else None,
            variants=list(assigned.arms) if interleaved and assigned is not None else None,
            teams=[it.team or "" for it in out.items] if interleaved else None,
            credits=[it.credit or 0.0 for it in out.items] if interleaved else None,
            interleaving=assigned.interleaving if interleaved and assigned is not None else None, degraded=out.degraded,
        )  # fmt: skip
        self.impressions.record(rec)

    async def _append_impressions(self, records: list[dict[str, Any]]) -> None:
        await self.guard.write(self._append_log, records)

    def _append_log(self, records: list[dict[str, Any]]) -> list[str]:
        return self.store.append_log(IMPRESSIONS_LOG, records, maxlen=self._core.bundle.config.impressions_maxlen)

    async def flush_impressions(self, timeout_s: float = 10.0) -> bool:
        """Write the queued impression records now; True when none is left queued."""
        return await self.impressions.flush(timeout_s)

    async def _recommend(self, user_id: int, k: int, context: ColdContext | None = None, arm: str | None = None) -> Recommendation:
        t = time.perf_counter()
        try:
            recalled = await self.recall_fn(user_id, k, context, arm)
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
        if self.rerank_fn is not None:
            out = await self.rerank_fn(recalled, ranked)
        else:
            out = self.core.rerank(recalled, ranked)
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

    def served_versions(self) -> list[dict[str, str | None]]:
        """The versions of every bundle this replica serves (the live one and the experiment arms')."""
        return [dict(self._core.bundle.versions), *(dict(c.bundle.versions) for c in self._arms.values())]

    async def lease_forever(self, every_s: float = artifacts_gc.LEASE_EVERY_S) -> None:
        """Hold a lease on the versions this replica serves, renewed every ``every_s`` seconds, so the
        artifacts' garbage collector (:mod:`rayrec.gc`) never deletes them. Failures are logged and
        retried (a lapsed lease only makes those versions collectable once they are old)."""
        while not self.guard.closed:
            try:
                await asyncio.to_thread(artifacts_gc.write_lease, self.artifacts, self.replica, self.served_versions())
                self._leased = True
            except Exception as e:
                log.warning("could not renew the artifacts lease: %s", e)
            await asyncio.sleep(every_s)

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
            await asyncio.to_thread(check_versions, self.artifacts, cfg)  # refused here: the live config stays
            if cfg.artifact_key() == live.config.artifact_key() and resolved == self._resolved:
                bundle = live.with_config(cfg)
                self._arms = await asyncio.to_thread(self._build_arms, cfg, bundle)
                self._core.bundle = bundle
                return False
            bundle = await asyncio.to_thread(load_bundle, self.artifacts, cfg)
            arms = await asyncio.to_thread(self._build_arms, cfg, bundle)
            self._core.bundle = bundle
            self._arms = arms
            self.events.rebind(bundle)
            self._resolved = resolved
            log.info("hot swap: now serving %s", bundle.versions)
            return True

    def close(self) -> None:
        self.guard.close()
        self.store.close()
        if self._leased:
            artifacts_gc.drop_lease(self.artifacts, self.replica)


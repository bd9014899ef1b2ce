"""Prometheus metrics of a serving replica, through Ray's metrics API (``ray.util.metrics``).

Ray's per-node metrics agent exports them with Ray's own on the node's metrics port (see
``ray.nodes()[i]["MetricsExportPort"]``, or ``ray start --metrics-export-port``); the Grafana
dashboard ``cluster/grafana/rayrec-serving.json`` charts them. Names (Prometheus adds ``_total`` to
counters and ``_bucket``/``_sum``/``_count`` to histograms):

| metric | tags | what |
|---|---|---|
| ``rayrec_stage_latency_ms`` | stage | per ``/recommend``: ``recall``, ``rank``, ``rerank`` (stage wall times), ``store_user``, ``store_items`` (store reads), ``total`` |
| ``rayrec_recommendations`` | outcome | answers: ``ok``, ``cold_start``, ``degraded`` |
| ``rayrec_degraded`` | reason | degraded answers by reason (``store_unavailable``, ``ranker_failed``, ``recall_failed``) |
| ``rayrec_recall_candidates`` | path | candidates each recall path found (÷ recommendations = per request) |
| ``rayrec_item_cache_lookups`` | result | item rows read from memory (``hit``) or the store (``miss``) |
| ``rayrec_item_cache_hit_ratio`` | | hits ÷ lookups since the replica started |
| ``rayrec_store_breaker_open`` | | 1 while the store's circuit breaker is open |
| ``rayrec_events`` | kind | events applied (``POST /events``); its rate is events/s |
| ``rayrec_event_apply_latency_ms`` | | validate + log + apply, per request |

Ray exports them with the prefix ``ray_`` (``ray_rayrec_stage_latency_ms_bucket``…). The request
path only records the stage timings it already measured (six histogram points) and keeps a
reference to the candidates' paths; outcome and candidate counters, the item cache and the breaker
gauge are flushed every few seconds by :meth:`ServingMetrics.flush`, off the request path.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rayrec.serving.api import Recommendation
    from rayrec.serving.guard import StoreGuard
    from rayrec.serving.items import ItemRows

__all__ = ["ServingMetrics", "METRIC_NAMES", "LATENCY_BOUNDS_MS"]

log = logging.getLogger(__name__)

MAX_PENDING = 100_000  # requests whose paths wait for the next flush (bounded memory if flushes stall)
LATENCY_BOUNDS_MS = [0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]
#: stage tag → the key of :attr:`Recommendation.timings` it is read from
STAGES = {"recall": "recall_stage_ms", "rank": "rank_stage_ms", "rerank": "rerank_stage_ms",
          "store_user": "store_user_ms", "store_items": "store_items_ms"}  # fmt: skip
METRIC_NAMES = (
    "rayrec_stage_latency_ms", "rayrec_recommendations", "rayrec_degraded", "rayrec_recall_candidates",
    "rayrec_item_cache_lookups", "rayrec_item_cache_hit_ratio", "rayrec_store_breaker_open", "rayrec_events",
    "rayrec_event_apply_latency_ms",
)  # fmt: skip


class ServingMetrics:
    """One replica's metrics (see the module docstring). Build inside a Ray worker (a Serve replica);
    ``deployment`` becomes a default tag."""

    def __init__(self, deployment: str = "Ingress") -> None:
        from ray.util.metrics import Counter as RayCounter
        from ray.util.metrics import Gauge, Histogram

        tags = {"deployment": deployment}
        self.stage = Histogram("rayrec_stage_latency_ms", "Latency of /recommend per stage (ms)",
                               boundaries=LATENCY_BOUNDS_MS, tag_keys=("stage", "deployment"))  # fmt: skip
        self.answers = RayCounter("rayrec_recommendations", "Recommendations answered, by outcome", ("outcome", "deployment"))
        self.degraded = RayCounter("rayrec_degraded", "Degraded recommendations, by reason", ("reason", "deployment"))
        self.candidates = RayCounter("rayrec_recall_candidates", "Candidates found per recall path", ("path", "deployment"))
        self.cache = RayCounter("rayrec_item_cache_lookups", "Item rows from memory (hit) or the store (miss)",
                                ("result", "deployment"))  # fmt: skip
        self.hit_ratio = Gauge("rayrec_item_cache_hit_ratio", "Item cache hits / lookups since start", ("deployment",))
        self.breaker = Gauge("rayrec_store_breaker_open", "1 while the online store's circuit breaker is open", ("deployment",))
        self.events = RayCounter("rayrec_events", "Events applied, by kind", ("kind", "deployment"))
        self.event_latency = Histogram("rayrec_event_apply_latency_ms", "POST /events: validate, log, apply (ms)",
                                       boundaries=LATENCY_BOUNDS_MS, tag_keys=("deployment",))  # fmt: skip
        for m in (self.stage, self.answers, self.degraded, self.candidates, self.cache, self.hit_ratio, self.breaker,
                  self.events, self.event_latency):  # fmt: skip
            m.set_default_tags(tags)
        self._pending: list[list[tuple[str, ...]]] = []  # candidates' paths of requests since the last flush
        self._answered: Counter[str] = Counter()
        self._cache_seen = (0, 0)
        # The request path records through the metric's recorder with its final tags made once: Ray's
        # public observe() merges and validates the tags on every call (twice the cost, measured).
        raw = getattr(self.stage, "_metric", None)
        final = {st: {"stage": st, "deployment": deployment} for st in (*STAGES, "total")}
        if raw is not None and hasattr(raw, "record"):
            self._record_stage = lambda stage, v: raw.record(v, tags=final[stage])
        else:  # Ray's internals moved: the public call
            self._record_stage = lambda stage, v: self.stage.observe(v, {"stage": stage})

    # -- the request path ---------------------------------------------------------------------------
    def recommendation(self, out: Recommendation, paths: list[tuple[str, ...]] | None) -> None:
        """One answered ``/recommend``: its stage timings and outcome; its candidates' paths are
        kept by reference and counted at the next :meth:`flush`, off the request path."""
        t = out.timings
        record = self._record_stage
        for stage, key in STAGES.items():
            v = t.get(key)
            if v is not None:
                record(stage, v)
        record("total", out.took_ms)
        if out.degraded:
            self.answers.inc(1, {"outcome": "degraded"})
            self.degraded.inc(1, {"reason": out.degraded_reason or "unknown"})
        else:
            self._answered["cold_start" if out.cold_start else "ok"] += 1
        if paths and len(self._pending) < MAX_PENDING:
            self._pending.append(paths)

    def event(self, payload: Any, took_ms: float) -> None:
        """One applied ``POST /events`` request (an event or a list)."""
        self.event_latency.observe(took_ms)
        kinds = Counter(e.get("kind", "unknown") if isinstance(e, dict) else "unknown"
                        for e in (payload if isinstance(payload, list) else [payload]))  # fmt: skip
        for kind, n in kinds.items():
            self.events.inc(n, {"kind": str(kind)})

    # -- every few seconds ----------------------------------------------------------------------------
    def flush(self, items: ItemRows, guard: StoreGuard) -> None:
        """Counters kept in memory since the last flush, the item cache and the breaker."""
        pending, self._pending = self._pending, []
        answered, self._answered = self._answered, Counter()
        for outcome, n in answered.items():
            self.answers.inc(n, {"outcome": outcome})
        combos: Counter[tuple[str, ...]] = Counter()
        for request in pending:  # by path combination first: 3.5× cheaper than path by path (measured)
            combos.update(request)
        paths: Counter[str] = Counter()
        for combo, n in combos.items():
            for path in combo:
                paths[path] += n
        for path, n in paths.items():
            self.candidates.inc(n, {"path": path})
        hits, misses = items.hits, items.misses
        dh, dm = hits - self._cache_seen[0], misses - self._cache_seen[1]
        self._cache_seen = (hits, misses)
        if dh:
            self.cache.inc(dh, {"result": "hit"})
        if dm:
            self.cache.inc(dm, {"result": "miss"})
        if hits + misses:
            self.hit_ratio.set(hits / (hits + misses))
        self.breaker.set(0.0 if guard.healthy else 1.0)

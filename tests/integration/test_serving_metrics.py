"""Prometheus metrics: after traffic to the session's app, Ray's metrics endpoint of the node serves
rayrec's serving metrics (stage latencies, recall paths, outcomes, item cache, breaker, events), as a
Prometheus server would scrape them."""

from __future__ import annotations

import json
import re
import time
import urllib.request

import pytest
from test_serving_e2e import call

from rayrec.serving.metrics import METRIC_NAMES


def _metrics_url(ray) -> str:
    node = next(n for n in ray.nodes() if n["Alive"])
    return f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def _value(text: str, name: str, **tags: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``tags``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])) if "{" in line else {}
        if all(labels.get(k) == v for k, v in tags.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.slow
def test_serving_metrics_reach_rays_prometheus_endpoint(ray_session, serving_app):
    url = serving_app.url
    for user in (1, 2, 3, 4, 5, 999_999):  # 999999: unknown, a cold start
        status, body = call(f"{url}/recommend?user_id={user}&k=5")
        assert status == 200, body
    movie = body["items"][0]["movie_id"]
    event = {"kind": "click", "user_id": 999_999, "movie_id": movie}
    status, _ = call(f"{url}/events", "POST", json.dumps(event).encode())
    assert status == 200
    scrape = _metrics_url(ray_session)
    wanted = [f"ray_rayrec_{n}" for n in ("stage_latency_ms_bucket", "recommendations_total", "recall_candidates_total",
                                      "item_cache_lookups_total", "item_cache_hit_ratio", "store_breaker_open",
                                      "events_total", "event_apply_latency_ms_count")]  # fmt: skip
    deadline = time.monotonic() + 90  # the replica flushes every 5 s, Ray's agent exports every few seconds
    while True:
        text = _scrape(scrape)
        missing = [n for n in wanted if n + "{" not in text]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert not missing, f"not exported after traffic: {missing}"
    assert all(f"ray_{n}" in text for n in METRIC_NAMES if n != "rayrec_degraded")  # degraded: only once something failed
    for stage in ("recall", "rank", "rerank", "store_user", "store_items", "total"):
        assert _value(text, "ray_rayrec_stage_latency_ms_count", stage=stage) >= 6, stage
    assert _value(text, "ray_rayrec_recommendations_total", outcome="cold_start") >= 1
    assert _value(text, "ray_rayrec_recall_candidates_total", path="embedding") > 0
    assert _value(text, "ray_rayrec_events_total", kind="click") >= 1
    for name, ok in (("ray_rayrec_store_breaker_open", lambda v: v in (0.0, 1.0)),
                     ("ray_rayrec_item_cache_hit_ratio", lambda v: 0.0 <= v <= 1.0)):  # fmt: skip
        samples = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{")]
        assert samples and all(map(ok, samples)), (name, samples)

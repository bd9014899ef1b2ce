"""One line of headline figures per pipeline step, read back from what the step published.

The main job prints these after each step (:class:`rayrec.console.Console`); reading the published
artifacts (``stats.json``, a model's ``metrics.json``, the index's ``meta.json``) rather than a
job's return value means the line shows what the next step will really use.
"""

from __future__ import annotations

from typing import Any

from rayrec import uri

__all__ = ["features_line", "model_line", "index_line", "latest_json"]


def latest_json(artifacts: str, kind: str, name: str) -> dict[str, Any]:
    """``<artifacts>/<kind>/LATEST`` → that version's ``name`` JSON file."""
    return dict(uri.read_json(uri.join(uri.resolve_version(uri.join(artifacts, kind)), name)))


def features_line(artifacts: str) -> str:
    s = latest_json(artifacts, "features", "stats.json")
    splits = s.get("splits", {})
    rows = " / ".join(f"{v['rows']:,} {k}" for k, v in sorted(splits.items(), key=lambda kv: kv[0] != "train"))
    return (f"{s['ratings']:,} ratings, {s['users']:,} users, {s['items_rated']:,} items → {rows} samples, "
            f"{s['label_balance']:.0%} positive")  # fmt: skip


def model_line(artifacts: str, name: str) -> str:
    m = latest_json(artifacts, f"models/{name}", "metrics.json")
    test = m.get("test", {})
    keys = [k for k in ("auc", "logloss", "recall@50", "ndcg@10") if k in test]
    figures = "  ".join(f"{k} {test[k]:.3f}" for k in keys)
    base = m.get("popularity") or {}
    if "recall@50" in base:
        figures += f" (popularity recall@50 {base['recall@50']:.3f})"
    epochs = m.get("epochs")
    return f"test {figures}; {epochs} epoch(s)" if epochs is not None else f"test {figures}"


def index_line(artifacts: str) -> str:
    meta = latest_json(artifacts, "index", "meta.json")
    lat = meta.get("latency_ms") or {}
    return (f"{meta.get('factory')} over {meta.get('n', 0):,} items × {meta.get('dim')}, "
            f"recall@{meta.get('recall_k', 100)} {meta.get('recall_at_100', float('nan')):.3f} vs exact, "
            f"p50 {lat.get('p50', float('nan')):.2f} ms")  # fmt: skip

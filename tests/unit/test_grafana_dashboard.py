"""The Grafana dashboard charts only metrics the serving replicas export, and each of them."""

from __future__ import annotations

import json
import re
from pathlib import Path

from rayrec.serving.metrics import METRIC_NAMES

DASHBOARD = Path(__file__).resolve().parents[2] / "cluster" / "grafana" / "rayrec-serving.json"
SUFFIXES = ("_bucket", "_sum", "_count", "_total", "")


def test_every_query_names_an_exported_metric_and_every_metric_is_charted():
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = set(re.findall(r"\b(ray_rayrec_\w+)", " ".join(exprs)))
    exported = {f"ray_{n}{s}" for n in METRIC_NAMES for s in SUFFIXES}
    assert used and used <= exported, used - exported
    charted = {n for n in METRIC_NAMES if any(u.startswith(f"ray_{n}") for u in used)}
    assert charted == set(METRIC_NAMES)
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])

"""The report page: PNG plots of the features statistics, each model's training curves and its
evaluation, from the published artifacts, in one self-contained HTML file; served at ``/report``."""

from __future__ import annotations

import base64
import re

from fastapi import FastAPI
from fastapi.testclient import TestClient

from rayrec import uri
from rayrec.reports import REPORT_PATH, add_report_route, build_report, write_report


def _publish(artifacts: str, kind: str, version: str, name: str, obj: dict) -> None:
    base = uri.join(artifacts, kind)
    uri.makedirs(uri.join(base, version))
    uri.write_json(uri.join(base, version, name), obj)
    uri.set_latest(base, version)


def _artifacts(tmp_path, *, models: bool = True) -> str:
    art = str(tmp_path / "art")
    _publish(art, "features", "f1", "stats.json", {
        "source": "synthetic", "ratings": 1000, "users": 10, "items_rated": 50, "sparsity": 0.8, "label_balance": 0.5,
        "rating_histogram": {"1.0": 100, "3.0": 500, "5.0": 400}, "top_genres": [["Drama", 600], ["Comedy", 300]],
        "splits": {"train": {"rows": 800, "users": 10, "positive_rate": 0.5}, "test": {"rows": 200, "users": 10, "positive_rate": 0.4}},
    })  # fmt: skip
    if models:
        history = [{"epoch": e, "loss": 0.7 - 0.05 * e, "valid_auc": 0.6 + 0.02 * e} for e in range(3)]
        _publish(art, "models/ranker", "r1", "metrics.json",
                 {"epochs": 3, "test": {"auc": 0.66, "logloss": 0.6, "rows": 200}, "valid": {"history": history}})  # fmt: skip
        hist = [{"epoch": e, "loss": 8 - e, "valid_recall@50": 0.4 + 0.01 * e} for e in range(2)]
        _publish(art, "models/retriever", "m1", "metrics.json",
                 {"epochs": 2, "test": {"recall@50": 0.5, "ndcg@10": 0.2}, "popularity": {"recall@50": 0.45, "ndcg@10": 0.15},
                  "valid": {"history": hist}})  # fmt: skip
    return art


def _pngs(page: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)]


def test_the_report_plots_features_curves_and_evaluation(tmp_path):
    page = build_report(_artifacts(tmp_path))
    pngs = _pngs(page)
    # ratings + genres; ranker loss + validation; retriever loss + validation + vs popularity
    assert len(pngs) == 7
    assert all(p.startswith(b"\x89PNG\r\n\x1a\n") and len(p) > 1000 for p in pngs)
    for alt in ("rating histogram", "top genres", "ranker loss", "ranker validation", "retriever evaluation"):
        assert f'alt="{alt}"' in page
    assert "<script" not in page and "http://" not in page and "https://" not in page  # self-contained
    assert "index</h2><p class=missing>not built yet" in page  # no index published: said, not hidden


def test_missing_models_are_named_and_the_rest_is_drawn(tmp_path):
    page = build_report(_artifacts(tmp_path, models=False))
    assert len(_pngs(page)) == 2
    assert page.count("not built yet") == 3


def test_the_route_serves_the_written_report_or_builds_it(tmp_path):
    art = _artifacts(tmp_path)
    app = FastAPI()
    add_report_route(app, art)
    client = TestClient(app)
    r = client.get("/report")  # nothing written yet: built on request, and written for next time
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert len(_pngs(r.text)) == 7
    path = uri.join(art, *REPORT_PATH)
    assert uri.exists(path)
    uri.write_bytes(path, b"<html>written by the main job</html>")
    assert client.get("/report").text == "<html>written by the main job</html>"
    assert write_report(art) == path and len(_pngs(uri.read_bytes(path).decode())) == 7

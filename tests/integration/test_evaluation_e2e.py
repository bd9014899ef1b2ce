"""The end-to-end evaluation on a small synthetic dataset: the main job's offline steps run on the
known part, every test user is served by the real serving code, and the served list must beat
most-popular (the synthetic users have latent tastes a personalised list can find)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def evaluated(ray_session, tmp_path_factory):
    from pipelines.evaluate import main
    from rayrec.data.synthetic import SyntheticConfig, generate

    tmp = tmp_path_factory.mktemp("e2e-eval")
    generate(tmp / "data", SyntheticConfig(n_users=300, n_items=800, n_ratings=30_000, seed=3))
    rc = main(["--protocol", "temporal", "--dataset", str(tmp / "data"), "--out", str(tmp / "out"), "--epochs", "3"])
    assert rc == 0
    return tmp / "out"


def test_served_list_beats_most_popular_on_synthetic_data(evaluated):
    result = json.loads((evaluated / "evaluation.json").read_text())["results"][0]
    rows = result["rows"]
    assert set(rows) >= {"retriever", "recall", "ranker", "fused", "served", "most_popular", "item_knn", "ease"}
    served, popular = rows["served"], rows["most_popular"]
    assert served["users"] == popular["users"] > 100
    assert served["ndcg@10"] > popular["ndcg@10"], (served["ndcg@10"], popular["ndcg@10"])
    assert served["recall@50"] > popular["recall@50"]
    for name, m in rows.items():  # every list scored on the same users, metrics in range
        assert m["users"] == served["users"], name
        assert 0.0 <= m["ndcg@10"] <= 1.0 and 0.0 <= m["coverage@10"] <= 1.0


def test_evaluation_reports_and_sweeps(evaluated):
    result = json.loads((evaluated / "evaluation.json").read_text())["results"][0]
    sweep = result["sweeps"]["diversity"]
    assert [p["diversity"] for p in sweep] == [0.0, 0.1, 0.2, 0.3, 0.5]
    # more MMR weight never makes the lists less diverse by much: the curve the report plots
    div = np.array([p["diversity@10"] for p in sweep])
    assert div[-1] >= div[0]
    md = (evaluated / "evaluation.md").read_text()
    assert "| served |" in md and "| ease |" in md
    html = (evaluated / "evaluation.html").read_text()
    assert "<table>" in html
    assert result["info"]["ease"]["chosen"]["lambda"] > 0

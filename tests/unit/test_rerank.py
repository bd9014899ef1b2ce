"""Rerank: filters, business rules and MMR, checked against a plain-Python reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import ValidationError

from rayrec.rerank import Candidates, RerankConfig, rerank

GENRES = ["Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi"]


def make(n: int = 60, seed: int = 0, dim: int = 8, embeddings: bool = True) -> Candidates:
    rng = np.random.default_rng(seed)
    genres = [list(rng.choice(GENRES, size=rng.integers(1, 4), replace=False)) for _ in range(n)]
    emb = None
    if embeddings:
        emb = rng.normal(size=(n, dim)).astype(np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return Candidates(
        ids=np.arange(100, 100 + n, dtype=np.int64),
        scores=rng.random(n),
        genres=genres,
        years=rng.integers(1950, 2020, size=n).astype(float),
        popularity=rng.integers(0, 300, size=n).astype(float),
        embeddings=emb,
    )


def reference(c: Candidates, k: int, cfg: RerankConfig, seen: set[int], now_year: float) -> list[int]:
    """MMR written out item by item, the way a textbook states it."""
    ok = [
        i
        for i in range(len(c))
        if not (cfg.filter_seen and int(c.ids[i]) in seen) and not set(cfg.exclude_genres) & set(c.genres[i])
    ]
    s = [float(c.scores[i]) for i in ok]
    lo, hi = min(s), max(s)
    pops = [math.log1p(c.popularity[i]) for i in ok]
    rel = {}
    for i in ok:
        r = (c.scores[i] - lo) / (hi - lo)
        r += cfg.freshness_weight * 2 ** (-max(0.0, now_year - c.years[i]) / cfg.freshness_half_life)
        r += cfg.popularity_weight * math.log1p(c.popularity[i]) / max(pops)
        rel[i] = r

    def sim(a: int, b: int) -> float:
        ga, gb = set(c.genres[a]), set(c.genres[b])
        jac = len(ga & gb) / len(ga | gb)
        if cfg.similarity == "genres" or c.embeddings is None:
            return jac
        cos = min(1.0, max(0.0, float(np.dot(c.embeddings[a], c.embeddings[b]))))
        return cos if cfg.similarity == "embedding" else (cos + jac) / 2

    def value(i: int) -> float:
        m = max((sim(i, p) for p in picked), default=0.0)
        return (1 - cfg.diversity) * rel[i] - cfg.diversity * m

    picked: list[int] = []
    counts: dict[str, int] = {}
    left = list(ok)
    while left and len(picked) < k:
        best = max(left, key=lambda i: (value(i), -i))
        picked.append(best)
        for g in c.genres[best]:
            counts[g] = counts.get(g, 0) + 1
        left = [
            i
            for i in left
            if i != best and not (cfg.max_per_genre and any(counts.get(g, 0) >= cfg.max_per_genre for g in c.genres[i]))
        ]
    rest = [i for i in ok if i not in picked]  # filling: the rule is relaxed for what it held back
    while cfg.fill and rest and len(picked) < k:
        best = max(rest, key=lambda i: (value(i), -i))
        picked.append(best)
        rest.remove(best)
    return [int(c.ids[i]) for i in picked]


@pytest.mark.parametrize("similarity", ["genres", "embedding", "mixed"])
@pytest.mark.parametrize("diversity", [0.0, 0.3, 0.8])
@pytest.mark.parametrize("max_per_genre", [None, 3, 1])
@pytest.mark.parametrize("fill", [True, False])
def test_matches_reference(similarity: str, diversity: float, max_per_genre: int | None, fill: bool) -> None:
    c = make(seed=int(diversity * 10) + (max_per_genre or 0))
    cfg = RerankConfig(diversity=diversity, similarity=similarity, max_per_genre=max_per_genre, fill=fill)
    seen = {int(i) for i in c.ids[::7]}
    got = rerank(c, 12, cfg, seen=seen, now_year=2024)
    assert [int(c.ids[i]) for i in got.index] == reference(c, 12, cfg, seen, 2024)
    if fill:
        assert len(got.index) == 12


def test_relevance_only_is_score_order() -> None:
    c = make()
    cfg = RerankConfig(diversity=0, freshness_weight=0, popularity_weight=0, max_per_genre=None)
    got = rerank(c, 10, cfg)
    assert list(got.index) == list(np.argsort(-c.scores)[:10])


def test_scores_never_increase_and_k_respected() -> None:
    for seed in range(5):
        c = make(seed=seed)
        got = rerank(c, 15, RerankConfig(diversity=0.5, max_per_genre=4))
        assert 0 < len(got.index) <= 15
        assert np.all(np.diff(got.scores) <= 1e-12)
        assert len(set(got.index.tolist())) == len(got.index)


def test_filters_and_rules() -> None:
    c = make(n=80)
    seen = set(c.ids[:40].tolist())
    cfg = RerankConfig(max_per_genre=2, exclude_genres="Horror", fill=False)
    got = rerank(c, 20, cfg, seen=seen)
    picked = [int(c.ids[i]) for i in got.index]
    assert not seen & set(picked)
    genres = [c.genres[i] for i in got.index]
    assert all("Horror" not in g for g in genres)
    for name in GENRES:
        assert sum(name in g for g in genres) <= 2
    assert got.dropped["seen"] == 40
    # with fill on, the rule gives way rather than leave the list short
    filled = rerank(c, 20, cfg.model_copy(update={"fill": True}), seen=seen)
    assert len(filled.index) == 20 and filled.index.tolist()[: len(got.index)] == got.index.tolist()
    assert np.all(np.diff(filled.scores) <= 1e-12)
    # seen items come back when the filter is off
    got = rerank(c, 80, RerankConfig(filter_seen=False, max_per_genre=None))
    assert len(got.index) == 80


def test_diversity_spreads_genres() -> None:
    # Ten near-identical dramas score highest; one comedy scores a little lower.
    n = 11
    c = Candidates(
        ids=np.arange(n),
        scores=np.r_[np.linspace(0.99, 0.9, 10), 0.8],
        genres=[["Drama"]] * 10 + [["Comedy"]],
        years=np.full(n, 2000.0),
        popularity=np.full(n, 10.0),
    )
    plain = rerank(c, 3, RerankConfig(diversity=0, max_per_genre=None))
    assert 10 not in plain.index.tolist()
    diverse = rerank(c, 3, RerankConfig(diversity=0.5, max_per_genre=None))
    assert 10 in diverse.index.tolist()[:2]


def test_freshness_and_popularity_break_ties() -> None:
    c = Candidates(
        ids=np.arange(3),
        scores=np.full(3, 0.5),
        genres=[["Drama"], ["Comedy"], ["Action"]],
        years=np.array([1960.0, 2020.0, np.nan]),
        popularity=np.array([5.0, 5.0, 5.0]),
    )
    got = rerank(c, 3, RerankConfig(diversity=0, freshness_weight=0.5, popularity_weight=0), now_year=2024)
    assert got.index.tolist() == [1, 0, 2]  # unknown year counts as not fresh
    c.popularity = np.array([1.0, 1.0, 900.0])
    got = rerank(c, 1, RerankConfig(diversity=0, freshness_weight=0, popularity_weight=1.0))
    assert got.index.tolist() == [2]


def test_duplicates_and_empty() -> None:
    c = Candidates(ids=np.array([5, 5, 6]), scores=np.array([0.9, 0.8, 0.1]), genres=[["A"], ["A"], ["B"]],
                   years=np.full(3, np.nan), popularity=np.zeros(3))
    got = rerank(c, 5, RerankConfig(max_per_genre=None))
    assert sorted(c.ids[got.index].tolist()) == [5, 6]
    empty = Candidates(ids=np.zeros(0, np.int64), scores=np.zeros(0), genres=[], years=np.zeros(0),
                       popularity=np.zeros(0))
    assert len(rerank(empty, 10).index) == 0


def test_config_is_strict() -> None:
    with pytest.raises(ValidationError, match="diverse"):
        RerankConfig.model_validate({"diverse": 0.2})
    with pytest.raises(ValidationError, match="diversity"):
        RerankConfig(diversity=1.5)
    with pytest.raises(ValueError, match="scores"):
        Candidates(ids=np.arange(2), scores=np.zeros(3), genres=[[], []], years=np.zeros(2), popularity=np.zeros(2))


def test_precomputed_genre_matrix_gives_the_same_list() -> None:
    c = make(seed=3)
    names = sorted({g for gs in c.genres for g in gs})
    gm = np.array([[g in gs for g in names] for gs in c.genres], dtype=np.uint8)
    cfg = RerankConfig(diversity=0.4, similarity="genres", max_per_genre=3)
    plain = rerank(c, 10, cfg)
    c.genre_matrix = gm
    given = rerank(c, 10, cfg)
    assert given.index.tolist() == plain.index.tolist()
    np.testing.assert_allclose(given.scores, plain.scores)

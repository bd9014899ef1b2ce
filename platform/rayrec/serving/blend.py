"""A learned blend of what serving knows about each candidate: the order rerank starts from, as the
probability that the user takes the item.

The fused order of :func:`rayrec.serving.ranking.fuse` mixes two percentiles (the recall order and the
ranker's) with one weight. The blend is a logistic model over more of what the request already holds:
the candidate's recall position, which paths found it, the ranker's percentile, its EASE score from
everything the user rated, and its popularity. Its coefficients are a serving setting (``blend``), fit on
the lists of a validation split by :func:`fit_blend` (``pipelines.evaluate --tune`` does this on shadow
models, then serves the test users with the coefficients it chose).

On ml-latest-small's random split (any held-out interaction relevant; ``pipelines.evaluate --tune``) the
merged recall order scored NDCG@10 0.3942 on the test users and the blend 0.4026, both before rerank,
served 0.3995, against EASE's 0.3954: reordering the paths cannot beat the ease path by much, but its
score beside the ranker's and the other paths' votes can. On the temporal split the blends fit there
scored below the grid of votes and ``rank_weight`` out of fold, and were not chosen.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from rayrec.retrieval.ease import ItemWeights, rated_history
from rayrec.retrieval.merge import PATH_NAMES

if TYPE_CHECKING:
    from rayrec.serving.bundle import Bundle
    from rayrec.serving.recall import Recalled

__all__ = ["FEATURES", "check_blend", "candidate_features", "blend_scores", "fit_blend", "ease_weights"]

FEATURES: tuple[str, ...] = (
    "bias",
    "position",  # 1 for the first candidate in recall order, 0 for the last
    *(f"path:{name}" for name in PATH_NAMES),  # 1 when that path found the candidate
    "ranker",  # the ranker's score as a percentile among the candidates
    "ease",  # the candidate's summed EASE weights from everything the user rated
    "ease_max",  # that, over the best of the candidates (0 when none is positive)
    "popularity",  # log(1 + rating count), over the most rated candidate's
)


def check_blend(coefficients: Mapping[str, float]) -> dict[str, float]:
    """``coefficients`` when every name is a feature and every value finite; ValueError otherwise."""
    unknown = sorted(set(coefficients) - set(FEATURES))
    if unknown:
        raise ValueError(f"unknown blend feature(s) {unknown}; known: {list(FEATURES)}")
    bad = {k: v for k, v in coefficients.items() if not np.isfinite(v)}
    if bad:
        raise ValueError(f"blend coefficients must be finite, got {bad}")
    return dict(coefficients)


def ease_weights(bundle: Bundle) -> ItemWeights | None:
    """The ease recall path's weights in ``bundle`` (None when the path is off)."""
    from rayrec.retrieval.ease import EaseRecall

    return next((p.weights for p in bundle.merger.paths if isinstance(p, EaseRecall)), None)


def candidate_features(
    bundle: Bundle, r: Recalled, rank_scores: np.ndarray, popularity: np.ndarray, names: Sequence[str] = FEATURES
) -> np.ndarray:
    """(N, len(names)) float64: the blend's features of ``r``'s candidates, columns in ``names``' order
    (a feature not named is not computed: the EASE sum costs about half a millisecond)."""
    from rayrec.serving.ranking import percentile

    n = len(r.ids)
    out = np.zeros((n, len(names)), dtype=np.float64)
    ease: np.ndarray | None = None
    for j, name in enumerate(names):
        if name == "bias":
            out[:, j] = 1.0
        elif name == "position":
            out[:, j] = np.linspace(1.0, 0.0, n)  # (one candidate: 1)
        elif name.startswith("path:"):
            path = name[5:]
            out[:, j] = [path in found for found in r.paths[:n]] if r.paths else 0.0
        elif name == "ranker":
            out[:, j] = percentile(rank_scores)
        elif name in ("ease", "ease_max"):
            if ease is None:
                weights = ease_weights(bundle)
                ease = np.zeros(n) if weights is None else weights.score_of(rated_history(r.seen, r.liked), r.ids).astype(np.float64)
            top = float(ease.max()) if n else 0.0
            out[:, j] = ease if name == "ease" else (ease / top if top > 0 else 0.0)
        elif name == "popularity":
            logs = np.log1p(np.maximum(np.asarray(popularity, dtype=np.float64), 0.0))
            top = float(logs.max()) if n else 0.0
            out[:, j] = logs / top if top > 0 else 0.0
        else:
            raise ValueError(f"unknown blend feature {name!r}")
    return out


def blend_scores(
    bundle: Bundle, r: Recalled, rank_scores: np.ndarray, popularity: np.ndarray, coefficients: Mapping[str, float]
) -> np.ndarray:
    """(N,) the blend's probability of each candidate."""
    names = [k for k, v in coefficients.items() if v != 0.0]
    x = candidate_features(bundle, r, rank_scores, popularity, names)
    z = x @ np.asarray([coefficients[k] for k in names], dtype=np.float64) if names else np.zeros(len(r.ids))
    return 1.0 / (1.0 + np.exp(-np.clip(z, -50.0, 50.0)))


def fit_blend(x: np.ndarray, y: np.ndarray, names: Sequence[str] = FEATURES, l2: float = 1.0, iters: int = 50) -> dict[str, float]:
    """Logistic regression of ``y`` (0/1) on the features ``x`` (columns ``names``) by Newton's method,
    with an L2 penalty ``l2 / 2 · |w|²`` on every coefficient but ``bias``; the coefficients by name."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != len(names) or len(y) != len(x):
        raise ValueError(f"x must be (rows, {len(names)}) with one label a row, got {x.shape} and {y.shape}")
    if not len(y) or y.min() == y.max():
        raise ValueError("the blend needs both taken and untaken candidates to fit")
    penalty = np.full(len(names), l2)
    penalty[[i for i, n in enumerate(names) if n == "bias"]] = 0.0
    w = np.zeros(len(names))
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -50.0, 50.0)))
        grad = x.T @ (p - y) + penalty * w
        hess = (x * (p * (1.0 - p))[:, None]).T @ x + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return {n: float(v) for n, v in zip(names, w)}

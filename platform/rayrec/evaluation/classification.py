"""Ranking quality of a click/like classifier: ROC AUC, PR AUC, log loss and accuracy.

Plain numpy so that the training loop, the job and the tests share one definition (tests compare it
with scikit-learn). Ties in the scores are handled exactly: tied items share their average rank for
ROC AUC and form one threshold for PR AUC.
"""

from __future__ import annotations

import numpy as np

__all__ = ["roc_auc", "pr_auc", "logloss", "accuracy", "classification_metrics"]


def _check(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=np.float64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.shape[0]} vs {s.shape[0]}")
    return y, s


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Probability that a random positive scores above a random negative (ties count one half).

    NaN when only one class is present."""
    y, s = _check(labels, scores)
    pos = y > 0.5
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    s_sorted = s[order]
    ranks = np.empty(len(s), dtype=np.float64)
    # average 1-based rank over runs of equal scores (Mann-Whitney U with ties)
    starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])
    ends = np.r_[starts[1:], len(s)]
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    u = ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def pr_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average precision: sum over score thresholds of precision × the recall gained there."""
    y, s = _check(labels, scores)
    n_pos = float((y > 0.5).sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], (y[order] > 0.5).astype(np.float64)
    tp = np.cumsum(y_sorted)
    # one threshold per distinct score: the last index of each run of ties
    last = np.flatnonzero(np.r_[s_sorted[1:] != s_sorted[:-1], True])
    tp_t = tp[last]
    precision = tp_t / (last + 1)
    recall = tp_t / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def logloss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy of probabilities (clipped away from 0 and 1)."""
    y, p = _check(labels, probs)
    p = np.clip(p, eps, 1.0 - eps)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log(1.0 - p)))


def accuracy(labels: np.ndarray, probs: np.ndarray, threshold: float = 0.5) -> float:
    y, p = _check(labels, probs)
    return float(np.mean((p >= threshold) == (y > 0.5)))


def classification_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """The ranker's test report: ``auc``, ``pr_auc``, ``logloss``, ``accuracy``, ``positive_rate``."""
    y, p = _check(labels, probs)
    return {
        "auc": roc_auc(y, p),
        "pr_auc": pr_auc(y, p),
        "logloss": logloss(y, p),
        "accuracy": accuracy(y, p),
        "positive_rate": float(np.mean(y > 0.5)) if len(y) else float("nan"),
        "rows": int(len(y)),
    }

"""Array helpers shared by the offline jobs and serving."""

from __future__ import annotations

from typing import Literal

import numpy as np

__all__ = ["SORTED_QUERIES_MIN", "searchsorted", "unique"]

#: queries from which :func:`searchsorted` looks them up in ascending order
SORTED_QUERIES_MIN = 256


def searchsorted(a: np.ndarray, v: np.ndarray, side: Literal["left", "right"] = "left") -> np.ndarray:
    """``np.searchsorted(a, v, side)``, the same positions, found with ``v`` in ascending order when it
    holds many numbers (at least :data:`SORTED_QUERIES_MIN`; other values are searched as they come).

    numpy starts each binary search of ascending queries from the previous one's answer, so the
    searches walk ``a`` in order instead of jumping across it: measured on one core, 1.25M random
    queries into 25M sorted keys take 0.16 s instead of 2.0 s (argsort included), into 5M keys 0.06
    instead of 0.84 s, and into a 62,000-row vocabulary 50 instead of 124 ms."""
    v = np.asarray(v)
    if v.ndim != 1 or len(v) < SORTED_QUERIES_MIN or v.dtype.kind not in "iuf":
        return np.searchsorted(a, v, side=side)
    order = np.argsort(v)
    out = np.empty(len(v), dtype=np.intp)
    out[order] = np.searchsorted(a, v[order], side=side)
    return out


def unique(a: np.ndarray) -> np.ndarray:
    """``np.unique(a)`` of a 1-D integer array, the same sorted values, found by a sort.

    numpy 2's ``np.unique`` hashes the values first: measured on one core for 25M int64, 5.7 s
    against 0.57 s with 160,000 distinct values, and 34 s against 0.75 s when most are distinct (the
    (user, movie) keys of every rating). Other dtypes (NaN handling, objects) go to ``np.unique``."""
    a = np.asarray(a)
    if a.ndim != 1 or a.dtype.kind not in "iub":
        return np.unique(a)
    out = np.sort(a)
    return out[np.r_[True, out[1:] != out[:-1]]] if len(out) else out

"""rayrec.arrays: searchsorted gives np.searchsorted's positions, found with the queries in order; unique
gives np.unique's values, found by a sort."""

from __future__ import annotations

import numpy as np
import pytest

from rayrec.arrays import SORTED_QUERIES_MIN, searchsorted, unique


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("n_queries", [0, 5, SORTED_QUERIES_MIN, 20_000])
def test_the_positions_are_numpys_whatever_the_queries_order(side, n_queries):
    rng = np.random.default_rng(n_queries)
    keys = np.sort(rng.integers(0, 5_000, 10_000))  # duplicates: left and right differ
    queries = rng.integers(-10, 5_010, n_queries)  # below, inside and beyond the keys, repeated
    got = searchsorted(keys, queries, side=side)
    assert got.dtype == np.intp and np.array_equal(got, np.searchsorted(keys, queries, side=side))
    floats = np.sort(rng.random(1_000))
    q = np.r_[rng.random(n_queries), np.nan, np.inf, -np.inf]
    assert np.array_equal(searchsorted(floats, q, side=side), np.searchsorted(floats, q, side=side))


def test_strings_and_arrays_of_more_dimensions_are_searched_as_they_come():
    keys = np.array(["a", "c", "e"])
    q = np.array(["d", "a", "z"] * SORTED_QUERIES_MIN)
    assert np.array_equal(searchsorted(keys, q), np.searchsorted(keys, q))
    grid = np.arange(600).reshape(20, 30) % 7
    assert np.array_equal(searchsorted(np.arange(7), grid), np.searchsorted(np.arange(7), grid))


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint16, bool])
def test_unique_equals_numpys(dtype):
    rng = np.random.default_rng(0)
    for values in (rng.integers(0, 50, 1_000), rng.integers(0, 2**15, 300), np.zeros(0, np.int64), np.array([7])):
        a = values.astype(dtype)
        got = unique(a)
        assert got.dtype == np.unique(a).dtype and np.array_equal(got, np.unique(a))


def test_unique_leaves_other_dtypes_to_numpy():
    """Floats go to np.unique, which keeps one NaN; a sort would keep each."""
    a = np.array([2.0, np.nan, 1.0, np.nan, 2.0])
    assert np.array_equal(unique(a), np.array([1.0, 2.0, np.nan]), equal_nan=True)
    assert unique(np.array(["b", "a", "b"])).tolist() == ["a", "b"]

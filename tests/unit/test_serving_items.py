"""Item rows for ranking, kept in memory for a short while: fewer store reads, bounded staleness, and
the ranker's per-item encodings follow the rows they were made from."""

from __future__ import annotations

import time

import numpy as np
import pytest

from rayrec.features.spec import FeatureSpec
from rayrec.serving.items import ItemRows
from rayrec.models.inference import _ItemInputs
from rayrec.models.inputs import item_columns
from rayrec.serving.testing import FaultyStore
from rayrec.store import open_store


@pytest.fixture()
def store(tmp_path):
    s = open_store(f"sqlite:///{tmp_path / 'store.sqlite'}")
    s.put("item", [(m, {"movieId": m, "item_rating_count": m, "genres": ["Drama"]}) for m in range(1, 11)])
    counted = FaultyStore(s)  # mode "ok": a pass-through that counts calls
    yield counted
    s.close()


def test_rows_are_kept_for_ttl_then_read_again(store) -> None:
    rows = ItemRows(ttl_s=60)  # far longer than any pause of a loaded machine: the kept part cannot race
    first = rows.get(store, [1, 2, 3])
    assert [r["item_rating_count"] for r in first] == [1, 2, 3] and store.calls == 1
    again = rows.get(store, [3, 2, 1, 1])
    assert store.calls == 1 and again[0] is first[2] and again[3] is again[2]  # the same dicts, no read
    store.inner.put("item", [(2, {"movieId": 2, "item_rating_count": 20, "genres": ["Drama"]})])
    assert rows.get(store, [2])[0]["item_rating_count"] == 2  # stale, within the ttl
    # a short ttl, waited out (waiting longer never breaks it): the next read fetches again
    rows = ItemRows(ttl_s=0.2)
    first = rows.get(store, [2, 3])
    assert store.calls == 2
    time.sleep(0.25)
    store.inner.put("item", [(2, {"movieId": 2, "item_rating_count": 21, "genres": ["Drama"]})])
    fresh = rows.get(store, [2, 4, 3])
    assert fresh[0]["item_rating_count"] == 21 and store.calls == 3  # one read for all
    assert fresh[2] is first[1]  # re-read unchanged: still the same dict


def test_kept_answers_only_when_every_row_is_kept_and_fresh(store) -> None:
    rows = ItemRows(ttl_s=60)
    assert rows.kept([1, 2]) is None  # nothing read yet
    first = rows.get(store, [1, 2, 3])
    got = rows.kept([3, 1, 1])
    assert got is not None and got[0] is first[2] and got[1] is got[2] is first[0] and store.calls == 1
    assert rows.kept([1, 4]) is None, "one row not kept: the caller goes to the store"
    rows.get(store, [10, 77])  # 77 is not in the store, so it is never kept
    assert rows.kept([10, 77]) is None and rows.kept([10]) is not None
    short = ItemRows(ttl_s=0.2)
    short.get(store, [5])
    time.sleep(0.25)
    assert short.kept([5]) is None, "a row older than the ttl is read again"
    assert ItemRows(ttl_s=0).kept([]) is None, "no cache: always the store"
    assert store.calls == 3


def test_missing_rows_are_not_kept_and_zero_ttl_reads_through(store) -> None:
    rows = ItemRows(ttl_s=30)
    assert rows.get(store, [10, 77])[1] is None
    store.inner.put("item", [(77, {"movieId": 77, "genres": ["Comedy"]})])
    assert rows.get(store, [77])[0]["genres"] == ["Comedy"]  # an item added meanwhile is found
    plain = ItemRows(ttl_s=0)
    calls = store.calls
    plain.get(store, [1]), plain.get(store, [1])
    assert store.calls == calls + 2 and len(plain) == 0
    with pytest.raises(ValueError):
        ItemRows(ttl_s=-1)


def test_at_most_max_items_are_kept(store) -> None:
    rows = ItemRows(ttl_s=30, max_items=4)
    rows.get(store, list(range(1, 11)))
    assert len(rows) == 4
    calls = store.calls
    rows.get(store, [7, 8, 9, 10])  # the latest reads are the ones kept
    assert store.calls == calls


def test_store_errors_propagate(store) -> None:
    from rayrec.store.base import StoreUnavailable

    store.mode = "fail"
    with pytest.raises(StoreUnavailable):
        ItemRows(ttl_s=1).get(store, [1])


def spec() -> FeatureSpec:
    return FeatureSpec.from_dict({
        "format": 1, "vocabs": {"item": [1, 2, 3], "genre": ["Comedy", "Drama"], "user": [1]},
        "numerics": {c: {"transform": t, "mean": 1.0, "std": 2.0} for c, t in (
            ("item_rating_count", "log1p"), ("item_rating_mean", "identity"), ("item_rating_std", "identity"),
            ("item_year", "identity"))},
        "buckets": {"item_year": [1990.0, 2000.0], "item_rating_count": [1.0, 10.0], "user_rating_count": [5.0]},
        "label_threshold": 3.5, "train_rows": 1, "train_range": [0, 1],
    })  # fmt: skip


def test_item_inputs_equal_the_spec_encoding_and_follow_row_changes() -> None:
    s = spec()
    inputs = _ItemInputs(s)
    rows = [{"item_genres": ["Drama"], "item_year": 1995, "item_rating_count": 4}, None,
            {"item_genres": ["Comedy", "Drama"], "item_year": 2010, "item_rating_count": 30, "item_rating_mean": 4.0}]
    ids = [1, 2, 3]

    def check(ids, rows):
        got = inputs.encode(ids, rows)
        want = s.encode_item(item_columns(ids, rows))
        assert got.keys() == want.keys()
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])

    check(ids, rows)
    check([3, 3, 1], [rows[2], rows[2], rows[0]])  # from what was kept
    changed = {**rows[0], "item_rating_count": 50}  # a re-read row: a new dict, new statistics
    check([1, 3], [changed, rows[2]])
    check(list(range(3, 200)), [None] * 197)  # growing past the first capacity


def test_rerank_fields_follow_the_rows_they_were_derived_from(store) -> None:
    from types import SimpleNamespace

    from rayrec.serving.finalize import RowFields

    catalog = SimpleNamespace(genres_of=lambda m: ("Comedy",) if m == 99 else ())
    bundle = SimpleNamespace(catalog=catalog)
    rows = ItemRows(ttl_s=0.2)
    fields = RowFields(max_items=3)
    first = rows.get(store, [1, 2, 3])
    first[0]["item_year"] = 1999.0  # (the rows are the store's dicts: a year on one)
    genres, years, counts = fields.of([1, 2, 3, 99], [*first, None], bundle)  # type: ignore[arg-type]
    assert genres == [("Drama",)] * 3 + [("Comedy",)]  # the store lacks 99: its catalog genres
    assert years[0] == 1999.0 and np.isnan(years[1:]).all() and counts.tolist() == [1.0, 2.0, 3.0, 0.0]
    kept = fields._kept[2]
    fields.of([2], [first[1]], bundle)  # type: ignore[arg-type]
    assert fields._kept[2] is kept, "the same row object: derived once"
    time.sleep(0.25)
    store.inner.put("item", [(2, {"movieId": 2, "item_rating_count": 20, "genres": ["War", "Drama"]})])
    changed = rows.get(store, [2])
    genres, _, counts = fields.of([2], changed, bundle)  # type: ignore[arg-type]
    assert genres == [("War", "Drama")] and counts.tolist() == [20.0], "a changed row is derived again"
    fields.of([4, 5], rows.get(store, [4, 5]), bundle)  # type: ignore[arg-type]
    assert len(fields._kept) == 3 and 1 not in fields._kept, "at most max_items, the oldest out first"

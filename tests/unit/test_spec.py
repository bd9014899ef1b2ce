"""FeatureSpec: vocabularies with padding/OOV, normalisation, buckets, encodings, persistence."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import reference as ref
from rayrec.features.pointintime import item_pass, user_pass
from rayrec.features.spec import OOV, PAD, Buckets, FeatureSpec, Numeric, SpecPartial, Vocab, arrow_lists
from rayrec.features.stats import StatsPartial


@pytest.fixture(scope="module")
def samples():
    ratings, movies = ref.random_dataset(n_users=20, n_items=40, n=300, seed=9)
    a = item_pass(ratings, movies)
    b = user_pass(a[~a["sentinel"]].drop(columns=["sentinel"]), movies)
    return b[~b["sentinel"]].drop(columns=["sentinel"]).reset_index(drop=True)


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint32])
def test_an_integer_vocabulary_reads_its_codes_from_a_table_with_the_codes_of_a_search(dtype):
    """Ids below the table's bound are looked up in a table of codes; the codes are those of the
    binary search every other vocabulary uses, for ids inside, between, below and beyond the values."""
    from rayrec.features import spec as spec_module

    rng = np.random.default_rng(0)
    values = np.unique(rng.integers(0, 300_000, 5_000))
    vocab = Vocab(tuple(values.tolist()))
    wide = Vocab(tuple(values.tolist()) + (spec_module._TABLE_MAX + 5,))  # beyond the bound: no table
    assert vocab._table is not None and wide._table is None
    ids = np.r_[values, rng.integers(0, 400_000, 20_000), 0, 299_999, 300_000, spec_module._TABLE_MAX + 5].astype(dtype)
    if np.dtype(dtype).kind == "i":
        ids = np.r_[ids, -1, -300_000].astype(dtype)
    got = vocab.lookup(ids)
    by_search = np.where(np.isin(ids, values), np.searchsorted(values, ids) + 2, OOV)
    assert got.dtype == np.int64 and np.array_equal(got, by_search)
    wide_values = np.r_[values, spec_module._TABLE_MAX + 5]
    wide_codes = np.where(np.isin(ids, wide_values), np.searchsorted(wide_values, ids) + 2, OOV)
    assert np.array_equal(wide.lookup(ids), wide_codes) and wide_codes.max() == len(values) + 2
    # one request's few ids, and ids that come as floats, give the same codes
    assert vocab.lookup(ids[:3].tolist()).tolist() == got[:3].tolist()
    assert np.array_equal(vocab.lookup(values.astype(np.float64)), np.arange(2, len(values) + 2))


def test_vocab_padding_oov_and_lists():
    v = Vocab((10, 20, 30))
    assert v.size == 5
    assert v.lookup([10, 30, 25, 99]).tolist() == [2, 4, OOV, OOV]
    got = v.lookup_lists([[20, 10, 30], [], [99], None], width=2)
    assert got.tolist() == [[3, 2], [PAD, PAD], [OOV, PAD], [PAD, PAD]]
    assert Vocab(()).lookup([1, 2]).tolist() == [OOV, OOV]


@pytest.mark.parametrize("copies", [1, 100], ids=["few rows", "many rows (Arrow)"])
def test_lookup_lists_of_every_shape_agree_with_value_by_value_lookup(copies):
    """Many rows of arrays from Parquet (ids or strings) go through Arrow in one piece; a request's
    few rows, and anything Arrow cannot take as one list array (a stray string among lists), value
    by value: the same codes either way."""
    genres = Vocab(("Comedy", "Drama", "War"))
    object_rows = np.empty(4 * copies, dtype=object)
    object_rows[:] = [np.array(["War", "Nope", "Drama"]), np.array([], dtype=str), None, np.array(["Comedy"])] * copies
    want = [[4, OOV], [PAD, PAD], [PAD, PAD], [2, PAD]] * copies
    assert genres.lookup_lists(object_rows, width=2).tolist() == want
    assert genres.lookup_lists([["War", "Nope", "Drama"], "Drama", None, ("Comedy",)] * copies, width=2).tolist() == want
    ids = Vocab((10, 20, 30))
    rng = np.random.default_rng(0)
    rows = [rng.choice([10, 20, 30, 99], size=int(rng.integers(0, 6))) for _ in range(3 * copies)]
    got = ids.lookup_lists(rows, width=3)
    for row, values in zip(got.tolist(), rows):
        codes = ids.lookup(values[:3]).tolist() if len(values) else []
        assert row == codes + [PAD] * (3 - len(codes))


def test_list_columns_kept_in_arrow_encode_as_the_object_columns_do(samples):
    """Samples read with their list features kept in Arrow (``arrow_lists``, what the training data
    does) encode to the same arrays as the same samples with a numpy array per row, after the
    operations the training data applies: a sort, slices, a take, and a concat with object rows."""
    train = samples[samples["split"] == "train"]
    spec = FeatureSpec.fit(SpecPartial.of(train), label_threshold=3.5)
    table = pa.Table.from_pandas(samples, preserve_index=False)
    table = table.cast(pa.schema([pa.field(f.name, pa.large_list(f.type.value_type)) if pa.types.is_list(f.type) else f
                                  for f in table.schema]))  # fmt: skip
    as_objects = table.to_pandas(ignore_metadata=True)
    in_arrow = table.to_pandas(ignore_metadata=True, types_mapper=arrow_lists)
    assert isinstance(in_arrow["user_genres"].dtype, pd.ArrowDtype)
    assert in_arrow["user_genres"].memory_usage(deep=True) < as_objects["user_genres"].memory_usage(deep=True) / 2

    def same(a: pd.DataFrame, b: pd.DataFrame) -> None:
        ea, eb = spec.encode(a), spec.encode(b)
        assert ea.keys() == eb.keys()
        for key in ea:
            np.testing.assert_array_equal(ea[key], eb[key], err_msg=key)

    assert (spec.encode(in_arrow)["user_genres"] > 0).any() and (spec.encode(in_arrow)["user_recent_items"] > 0).any()
    same(as_objects, in_arrow)
    order = np.argsort(-as_objects["timestamp"].to_numpy(), kind="stable")
    same(as_objects.iloc[order].reset_index(drop=True), in_arrow.iloc[order].reset_index(drop=True))
    same(as_objects.iloc[7:150], in_arrow.iloc[7:150])
    take = np.random.default_rng(1).integers(0, len(samples), size=500)
    same(as_objects.iloc[take], in_arrow.iloc[take])
    mixed = pd.concat([in_arrow.iloc[:40], as_objects.iloc[40:90]], ignore_index=True)
    same(as_objects.iloc[:90].reset_index(drop=True), mixed)


def test_numeric_and_buckets():
    n = Numeric("log1p", mean=1.0, std=2.0)
    assert n.normalise(np.array([np.e - 1, np.nan])).tolist() == pytest.approx([0.0, 0.0])
    b = Buckets((10.0, 20.0))
    assert b.size == 4
    assert b.bucketize(np.array([np.nan, 5, 10, 15, 20, 99])).tolist() == [0, 1, 2, 2, 3, 3]


def test_fit_encode_and_roundtrip(samples, tmp_path):
    train = samples[samples["split"] == "train"]
    spec = FeatureSpec.fit(SpecPartial.of(train), label_threshold=3.5)
    assert spec.vocabs["user"].values == tuple(sorted(train["userId"].unique()))
    enc = spec.encode(samples)
    n = len(samples)
    assert enc["user_genres"].shape == (n, 5) and enc["user_recent_items"].shape == (n, 5)
    assert enc["item_genres"].shape == (n, 3) and enc["user_dense"].shape == (n, 5) and enc["item_dense"].shape == (n, 4)
    assert enc["label"].tolist() == samples["label"].astype(float).tolist()
    # dense features of train are z-scored: log1p(user count) (never missing) has mean 0, std 1 on train
    z = spec.encode(train)["user_dense"][:, 0].astype(np.float64)
    assert z.mean() == pytest.approx(0.0, abs=1e-5) and z.std() == pytest.approx(1.0, abs=1e-5)
    # unknown user and movie → OOV, missing numerics → 0, missing bucket → 0
    row = {
        "userId": [999_999], "movieId": [999_999], "user_genres": [["Nope"]], "user_recent_items": [[]],
        "user_rating_count": [0], "user_rating_mean": [np.nan], "user_rating_std": [np.nan],
        "user_year_mean": [np.nan], "user_year_std": [np.nan], "item_genres": [[]],
        "item_year": [np.nan], "item_rating_count": [0], "item_rating_mean": [np.nan], "item_rating_std": [np.nan],
    }  # fmt: skip
    e = spec.encode(pd.DataFrame(row))
    assert e["user_id"].tolist() == [OOV] and e["item_id"].tolist() == [OOV]
    assert e["user_genres"].tolist() == [[OOV, PAD, PAD, PAD, PAD]]
    assert e["item_year_bucket"].tolist() == [0]
    assert e["user_dense"][0, 1:].tolist() == [0.0, 0.0, 0.0, 0.0]
    # persisted spec is identical and encodes identically
    spec.save(str(tmp_path / "spec.json"))
    again = FeatureSpec.load(str(tmp_path / "spec.json"))
    assert again.hash == spec.hash and again == spec
    for k, v in again.encode(samples).items():
        np.testing.assert_array_equal(v, enc[k])


def test_one_hot_and_multi_hot(samples):
    spec = FeatureSpec.fit(SpecPartial.of(samples), label_threshold=3.5)
    genres = spec.vocabs["genre"].values
    oh = spec.one_hot("genre", [genres[0], "Unknown"])
    assert oh.shape == (2, spec.vocabs["genre"].size)
    assert oh[0, 2] == 1 and oh[1, OOV] == 1 and oh.sum() == 2
    mh = spec.multi_hot("genre", [[genres[0], genres[1]], []])
    assert mh[0, 2] == 1 and mh[0, 3] == 1 and mh[0].sum() == 2 and mh[1].sum() == 0


def test_partials_from_arrow_equal_partials_from_pandas(samples):
    table = pa.Table.from_pandas(samples, preserve_index=False)
    a, b = SpecPartial.of(samples), SpecPartial.of(table)
    assert a.users == b.users and a.items == b.items and a.genres == b.genres and a.counts == b.counts
    for k in a.moments:
        assert a.moments[k] == pytest.approx(b.moments[k])
    sa, sb = StatsPartial.of(samples), StatsPartial.of(table)
    assert sa.rows == sb.rows and sa.positives == sb.positives and sa.users == sb.users
    assert sa.ratings == sb.ratings and sa.genres == sb.genres


def test_merged_partials_equal_one_partial(samples):
    whole = FeatureSpec.fit(SpecPartial.of(samples), label_threshold=3.5)
    halves = SpecPartial.of(samples.iloc[::2]).merge(SpecPartial.of(samples.iloc[1::2]))
    assert FeatureSpec.fit(halves, label_threshold=3.5).hash == whole.hash


def test_lookup_lists_of_dictionary_encoded_lists_agree_with_the_plain_strings():
    """A list column whose strings are dictionary-encoded (the training data's compact samples) gives
    the codes of the same lists as plain strings: unknown and missing values OOV, empty lists padded."""

    genres = Vocab(("Comedy", "Drama", "War"))
    plain = pa.array([["War", "Nope", "Drama"], [], None, ["Comedy", None]] * 30, pa.large_list(pa.string()))
    encoded = plain.cast(pa.list_(pa.dictionary(pa.int16(), pa.string())))
    want = genres.lookup_lists(plain, width=3)
    assert want[:4].tolist() == [[4, OOV, 3], [PAD] * 3, [PAD] * 3, [2, OOV, PAD]]
    np.testing.assert_array_equal(genres.lookup_lists(encoded, width=3), want)
    np.testing.assert_array_equal(genres.lookup_lists(pa.chunked_array([encoded[:50], encoded[50:]]), width=3), want)
    # a dictionary that fills its index type, with a missing value: still OOV, no overflow
    full = [f"g{i}" for i in range(128)]
    rows = pa.array([full[:3] + [None], full[-2:]], pa.list_(pa.dictionary(pa.int8(), pa.string())))
    rows = pa.ListArray.from_arrays(rows.offsets, pa.DictionaryArray.from_arrays(rows.values.indices, pa.array(full)))
    many = Vocab(tuple(full[:2]))
    assert many.lookup_lists(rows, width=4).tolist() == [[2, 3, OOV, OOV], [OOV, OOV, PAD, PAD]]


def test_one_row_encodes_as_its_row_in_a_batch_and_dense_columns_as_each_numerics_normalise(samples):
    """A request encodes one row at a time (its own paths: a list looked up as it is, the numeric
    columns z-scored together): the same codes and values as the row within many rows."""
    train = samples[samples["split"] == "train"]
    spec = FeatureSpec.fit(SpecPartial.of(train), label_threshold=3.5)
    rows = samples.head(30).copy()
    rows.loc[0, "user_rating_mean"] = np.nan  # a missing numeric
    rows.at[1, "user_genres"] = ["Nope", *list(rows.at[1, "user_genres"])]  # an unknown value first
    rows.at[2, "user_recent_items"] = [10**9, *range(1, 9)]  # longer than the width, an unknown id
    rows.at[3, "user_genres"] = []
    cols = {c: rows[c].tolist() for c in rows.columns}
    batch = {**spec.encode_user(cols), **spec.encode_item(cols)}
    for i in range(len(rows)):
        one = {c: [v[i]] for c, v in cols.items()}
        got = {**spec.encode_user(one), **spec.encode_item(one)}
        for key, want in batch.items():
            assert got[key].dtype == want.dtype, key
            np.testing.assert_array_equal(got[key], want[i : i + 1], err_msg=key)
    assert batch["user_recent_items"][2, 0] == OOV and batch["user_genres"][1, 0] == OOV and (batch["user_genres"][3] == PAD).all()
    assert batch["user_dense"][0, 1] == 0.0  # missing: the mean
    for j, name in enumerate(("user_rating_count", "user_rating_mean", "user_rating_std", "user_year_mean", "user_year_std")):
        want = spec.numerics[name].normalise(np.asarray(cols[name], dtype=np.float64))
        np.testing.assert_array_equal(batch["user_dense"][:, j], want, err_msg=name)

"""Training data preparation against the pandas reference: point-in-time history, the validation
hold-out, the user and item state at a boundary (no look past it); and checkpoint round trips."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import reference as ref
from rayrec.training.checkpoint import load_checkpoint, save_checkpoint, set_rng_state
from rayrec.training.data import data_range, history_index, items_at, positive_history, temporal_holdout, users_at
from rayrec.training.jobs import retriever_rows
from train_data import small


@pytest.fixture(scope="module")
def data():
    return small(n_users=20, n_items=25, n=300, seed=5)


def test_positive_history_is_point_in_time_and_most_recent_first(data):
    df = data.train.sample(frac=1.0, random_state=0)  # any row order
    got = positive_history(df, 8)
    for (_, row), hist in zip(df.iterrows(), got):
        mine = df[(df["userId"] == row["userId"]) & (df["timestamp"] < row["timestamp"]) & (df["label"] == 1)]
        mine = mine.sort_values(["timestamp", "movieId"])
        assert hist == mine["movieId"].tolist()[::-1][:8]


def test_positive_history_extends_the_features_recent_items(data):
    got = positive_history(data.train, 50)
    assert all(h[:5] == list(r) for h, r in zip(got, data.train["user_recent_items"]))


def test_temporal_holdout_takes_each_users_last_rows():
    df = pd.DataFrame({"userId": [1] * 10 + [2] * 3, "movieId": range(13), "timestamp": list(range(10)) + [5, 1, 3],
                       "label": 1})  # fmt: skip
    fit, valid = temporal_holdout(df, 0.2, min_rows=5)
    assert valid["userId"].tolist() == [1, 1] and valid["timestamp"].tolist() == [8, 9]
    assert len(fit) == 11  # user 2 has fewer than 5 rows: all fit
    assert fit.groupby("userId")["timestamp"].max().loc[1] < valid["timestamp"].min()


def test_temporal_holdout_of_sorted_samples_equals_that_of_any_order(data):
    """A features version's samples come sorted and are split without a sorted copy; any other order
    gives the same split."""
    from rayrec.training.data import _is_sorted, _sorted

    ordered = _sorted(data.train)
    shuffled = data.train.sample(frac=1.0, random_state=1)
    assert _is_sorted(ordered) and not _is_sorted(shuffled)
    assert not _is_sorted(ordered.iloc[::-1]) and not _is_sorted(ordered.set_axis(ordered.index + 1))
    row = int(np.flatnonzero(ordered["userId"].to_numpy()[1:] == ordered["userId"].to_numpy()[:-1])[0])
    perm = np.arange(len(ordered))
    perm[[row, row + 1]] = [row + 1, row]  # two rows of one user out of time order
    assert not _is_sorted(ordered.iloc[perm].reset_index(drop=True))
    for got, exp in zip(temporal_holdout(ordered, 0.2), temporal_holdout(shuffled, 0.2)):
        pd.testing.assert_frame_equal(got, exp)


def test_samples_are_read_in_the_sorted_order(data, tmp_path):
    """A split's samples, written in any order over several files, are read sorted in Arrow: the
    same frame as pandas' stable sort of the read (ties keep the files' order), lists in Arrow."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rayrec.training.data import _samples, _sorted, read_table

    df = data.train.sample(frac=1.0, random_state=3).reset_index(drop=True)
    tie = df.iloc[[0]].assign(rating=df["rating"].iloc[0] + 0.5)  # same (user, time, movie) as row 0, later in the files
    df = pd.concat([df, tie], ignore_index=True).assign(split="train")
    folder = tmp_path / "samples"
    folder.mkdir()
    half = len(df) // 2
    for i, part in enumerate((df.iloc[:half], df.iloc[half:])):
        pq.write_table(pa.Table.from_pandas(part, preserve_index=False), folder / f"part-{i}.parquet")
    got = _samples(str(folder))
    want = _sorted(read_table(str(folder), [c for c in df.columns if c != "split"], lists_in_arrow=True))
    lists = [c for c in want.columns if isinstance(want[c].dtype, pd.ArrowDtype)]
    assert sorted(lists) == ["item_genres", "user_genres", "user_recent_items"]
    for c in lists:  # the same lists, held narrower (compact_list)
        assert pa.array(got[c].array).to_pylist() == pa.array(want[c].array).to_pylist(), c
    assert got["user_genres"].dtype.pyarrow_dtype == pa.list_(pa.dictionary(pa.int16(), pa.string()))
    assert got["user_recent_items"].dtype.pyarrow_dtype == pa.list_(pa.int32())
    pd.testing.assert_frame_equal(got.drop(columns=lists), want.drop(columns=lists), check_exact=True)
    assert "split" not in got.columns
    same = got[(got["userId"] == tie["userId"].iloc[0]) & (got["timestamp"] == tie["timestamp"].iloc[0])
               & (got["movieId"] == tie["movieId"].iloc[0])]  # fmt: skip
    assert same["rating"].tolist() == [df["rating"].iloc[0], df["rating"].iloc[0] + 0.5]


@pytest.mark.parametrize("order", ["sorted", "shuffled"])
def test_holdout_positions_take_the_holdout_splits(data, order):
    """The training job keeps the fit split as positions into the samples (no copy of them): those
    positions take the rows temporal_holdout returns, in its order; the two splits cover every row once."""
    from rayrec.training.data import _sorted, holdout_positions

    df = _sorted(data.train) if order == "sorted" else data.train.sample(frac=1.0, random_state=2)
    fit_at, valid_at = holdout_positions(df, 0.2)
    fit, valid = temporal_holdout(df, 0.2)
    assert len(valid) > 0 and np.array_equal(np.sort(np.r_[fit_at, valid_at]), np.arange(len(df)))
    if order == "sorted":
        assert np.all(np.diff(fit_at) > 0) and np.all(np.diff(valid_at) > 0)
    pd.testing.assert_frame_equal(df.take(fit_at).reset_index(drop=True), fit)
    pd.testing.assert_frame_equal(df.take(valid_at).reset_index(drop=True), valid)


def test_user_state_at_boundary_equals_reference(data):
    history = data.train
    got = users_at(history, data.movies, 50, 3.5)
    exp = ref.latest_users(history[["userId", "movieId", "rating", "timestamp"]], data.movies)
    ref.assert_same_features(got[exp.columns], exp, ["userId"])
    liked = history[history["rating"] >= 3.5].sort_values(["timestamp", "movieId"])
    for _, row in got.iterrows():
        want = liked.loc[liked["userId"] == row["userId"], "movieId"].tolist()[::-1]
        assert row["history_items"] == want


def _root(v: np.ndarray) -> np.ndarray:
    while isinstance(v.base, np.ndarray):
        v = v.base
    return v


def test_the_user_states_lists_hold_only_the_kept_users_values(data):
    """users_at keeps one row per user of each block of users: the arrays its list features view hold
    those users' values and nothing more (not every rated row's, which a per-row pass made and a kept
    view would have held on to)."""
    got = users_at(data.train, data.movies, 50, 3.5, block_rows=500)
    for col in ("user_genres", "user_recent_items"):
        lists = [v for v in got[col] if isinstance(v, np.ndarray)]
        assert len(lists) == len(got) > 0
        roots = {id(r): r for r in map(_root, lists)}
        assert sum(r.size for r in roots.values()) == sum(v.size for v in lists)


def test_item_state_at_boundary_equals_reference_for_the_whole_catalog(data):
    history = data.train
    got = items_at(history, data.movies)
    exp = ref.latest_items(history[["userId", "movieId", "rating", "timestamp"]], data.movies)
    assert got["movieId"].tolist() == data.movies["movieId"].tolist()
    ref.assert_same_features(got, exp, ["movieId"])
    # the state ignores everything after the boundary: test ratings never count
    assert got["item_rating_count"].sum() == len(history)


def test_item_totals_are_the_statistics_of_the_item_pass_sentinel_rows_exactly(data):
    """The snapshot's statistics come from running sums over the ratings alone: the very numbers of
    the features pipeline's sentinel rows, to the bit, every movie with ratings and no other."""
    from rayrec.features.pointintime import item_pass, item_totals

    for ratings in (pd.concat([data.train, data.test]), data.train, data.train.iloc[:0]):
        ratings = ratings[["userId", "movieId", "rating", "timestamp"]]
        got = item_totals(ratings)
        full = item_pass(ratings.copy(), data.movies, sentinels=True)
        exp = full[full["sentinel"].to_numpy()].sort_values("movieId")
        assert got["movieId"].tolist() == exp["movieId"].tolist() == sorted(ratings["movieId"].unique().tolist())
        for col in ("item_rating_count", "item_rating_mean", "item_rating_std"):
            a, b = got[col].to_numpy(), exp[col].to_numpy()
            assert a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True), col


def test_history_references_gather_the_same_histories(data):
    """The retriever's rows carry their history as (end, length) into one array of likes; gathered
    per batch by the task it is exactly the list history, encoded and padded."""
    from rayrec.models.inputs import HISTORY
    from rayrec.models.two_tower import TwoTowerConfig
    from rayrec.training.tasks import HISTORY_END, HISTORY_LEN, RetrieveTask

    df = data.train.sample(frac=1.0, random_state=1)
    width = 6
    lists = positive_history(df, width)
    index = history_index(df, width)
    assert index.lists() == lists and int(index.length.max()) == width, "some histories are cut at the width"
    vocab = {m: i + 2 for i, m in enumerate(sorted(df["movieId"].unique()))}
    expect = np.zeros((len(df), width), dtype=np.int64)
    for r, hist in enumerate(lists):
        expect[r, : len(hist)] = [vocab[m] for m in hist]
    likes = np.asarray([vocab[m] for m in index.likes.tolist()], dtype=np.int64)
    task = RetrieveTask(TwoTowerConfig(history_len=width), {}, rows=len(df), item_counts=np.zeros(1), history_likes=likes)
    batch = {HISTORY_END: torch.as_tensor(index.end), HISTORY_LEN: torch.as_tensor(index.length), "item_id": torch.zeros(len(df))}
    assert (task.with_history(batch)[HISTORY].numpy() == expect).all()
    # rows without any like before them, over no likes at all
    none = RetrieveTask(TwoTowerConfig(history_len=width), {}, rows=3, item_counts=np.zeros(1), history_likes=np.zeros(0, dtype=np.int64))
    zeros = torch.zeros(3, dtype=torch.int64)
    empty = none.with_history({HISTORY_END: zeros, HISTORY_LEN: zeros, "item_id": zeros})[HISTORY]
    assert tuple(empty.shape) == (3, width) and not empty.any()


@pytest.mark.parametrize("block_rows", [1, 17, 60])
def test_user_state_in_blocks_of_users_equals_that_of_all_rows_at_once(data, block_rows):
    """users_at takes the users' totals on blocks of whole users: any block size gives the same rows,
    in the same order, whatever the rows' order."""
    whole = users_at(data.train, data.movies, 50, 3.5, block_rows=10**9)
    shuffled = data.train.sample(frac=1.0, random_state=2)
    for got in (users_at(data.train, data.movies, 50, 3.5, block_rows=block_rows), users_at(shuffled, data.movies, 50, 3.5, block_rows=block_rows)):
        assert list(got.columns) == list(whole.columns) and len(got) == len(whole) == data.train["userId"].nunique()
        for col in got.columns:
            a, b = got[col].tolist(), whole[col].tolist()
            if col in ("user_genres", "user_recent_items", "history_items"):
                a, b = [list(x) for x in a], [list(x) for x in b]
            assert a == b or np.allclose(np.asarray(a, float), np.asarray(b, float), equal_nan=True, rtol=0, atol=0), col


def test_retriever_rows_are_liked_samples_with_static_item_statistics(data):
    rows, likes = retriever_rows(data.train, data.movies, 10)
    assert (rows["history_end"] <= len(likes)).all() and (rows["history_len"] <= 10).all()
    assert (rows["label"] == 1).all() and len(rows) == int(data.train["label"].sum())
    snap = items_at(data.train, data.movies).set_index("movieId")
    per_movie = rows.groupby("movieId")["item_rating_count"].nunique()
    assert (per_movie == 1).all()  # one snapshot per movie, whatever the sample's time
    assert (rows.set_index("movieId")["item_rating_count"] == snap["item_rating_count"].reindex(rows["movieId"]).to_numpy()).all()


@pytest.mark.parametrize("positives", ["liked", "all"])
def test_retriever_rows_of_frames_one_after_another_equal_those_of_their_concatenation(data, positives):
    """The refit's train and test samples, passed as two frames, give the rows and histories of the
    two concatenated (which the refit no longer builds)."""
    parts = [data.train, data.test]
    got, got_likes = retriever_rows(parts, data.movies, 10, positives)
    exp, exp_likes = retriever_rows(pd.concat(parts, ignore_index=True), data.movies, 10, positives)
    assert len(data.test) and np.array_equal(got_likes, exp_likes)
    assert list(got.columns) == list(exp.columns) and len(got) == len(exp) > len(data.train[data.train["label"] == 1])
    for col in got.columns:
        a, b = got[col], exp[col]
        if isinstance(a.dtype, pd.ArrowDtype) or a.dtype == object:
            assert [list(x) if not isinstance(x, str) else x for x in a] == [list(x) if not isinstance(x, str) else x for x in b], col
        else:
            assert a.dtype == b.dtype and np.array_equal(a.to_numpy(), b.to_numpy(), equal_nan=a.dtype.kind == "f"), col


@pytest.mark.parametrize("positives", ["liked", "all"])
def test_the_retrievers_rows_in_chunks_are_random_shares_of_its_rows_each_in_order(data, positives):
    """The training job builds the retriever's rows a chunk at a time: more rows than a chunk holds
    come as random shares, each the rows of :func:`retriever_rows` at its positions (in order), every
    row in exactly one share, each share holding rows of both parts; rows that fit one chunk come
    whole, in order."""
    from rayrec.training.jobs import RetrieverRows

    parts = [data.train, data.test]
    exp, exp_likes = retriever_rows(parts, data.movies, 10, positives)
    built = RetrieverRows.of(parts, data.movies, 10, positives)
    assert len(built) == len(exp) and np.array_equal(built.likes, exp_likes)
    assert np.array_equal(built.movie_ids(), exp["movieId"].to_numpy())
    (whole,) = list(built.chunks(len(exp), seed=3))
    _same_frames(whole, exp)
    size = len(exp) // 4 + 1
    chunks = list(built.chunks(size, seed=3))
    assert len(chunks) == 4 and all(0 < len(c) <= size for c in chunks)
    n_train = len(retriever_rows(data.train, data.movies, 10, positives)[0])
    seen = []
    for c in chunks:
        # each row of a chunk is one row of ``exp``: find its position by (user, movie, time)
        key = lambda f: f["userId"].astype(str) + ":" + f["movieId"].astype(str) + ":" + f["timestamp"].astype(str)  # noqa: E731
        at = pd.Index(key(exp)).get_indexer(key(c))
        assert (at >= 0).all() and (np.diff(at) > 0).all()  # in order
        _same_frames(c, exp.iloc[at].reset_index(drop=True))
        assert (at < n_train).any() and (at >= n_train).any()  # both parts in every share
        seen.append(at)
    assert np.array_equal(np.sort(np.concatenate(seen)), np.arange(len(exp)))
    again = list(built.chunks(size, seed=3))
    assert all(a["movieId"].tolist() == b["movieId"].tolist() for a, b in zip(chunks, again))  # seeded


def _same_frames(got: pd.DataFrame, exp: pd.DataFrame) -> None:
    assert list(got.columns) == list(exp.columns) and got.index.equals(exp.index)
    for col in got.columns:
        a, b = got[col], exp[col]
        assert a.dtype == b.dtype, col
        if isinstance(a.dtype, pd.ArrowDtype) or a.dtype == object:
            assert [list(x) if not isinstance(x, str) else x for x in a] == [list(x) if not isinstance(x, str) else x for x in b], col
        else:
            assert np.array_equal(a.to_numpy(), b.to_numpy(), equal_nan=a.dtype.kind == "f"), col


@pytest.mark.parametrize("positives", ["liked", "all"])
def test_a_split_taken_by_positions_gives_the_rows_of_its_copy(data, positives):
    """The validation hold-out's fit split is passed by reference (:class:`Taken`): its training
    rows and chunks are those of the copied split, index labels included."""
    from rayrec.training.data import holdout_positions
    from rayrec.training.jobs import Taken, row_chunks

    fit_at, _ = holdout_positions(data.train, 0.2)
    taken, copy = Taken(data.train, fit_at), data.train.take(fit_at).reset_index(drop=True)
    assert len(taken) == len(copy) < len(data.train)
    got, got_likes = retriever_rows(taken, data.movies, 10, positives)
    exp, exp_likes = retriever_rows(copy, data.movies, 10, positives)
    assert np.array_equal(got_likes, exp_likes)
    _same_frames(got, exp)
    for size in (7, 64, len(copy), 10_000):
        chunks, want = list(row_chunks(taken, size)), list(row_chunks(copy, size))
        assert len(chunks) == len(want)
        for a, b in zip(chunks, want):
            _same_frames(a, b)
    # a split followed by a frame: the chunks of their concatenation
    mixed = list(row_chunks([taken, data.test], 50))
    whole = pd.concat([copy, data.test], ignore_index=True)
    assert len(mixed) == -(-len(whole) // 50)
    for i, c in enumerate(mixed):
        assert c["userId"].tolist() == whole["userId"].iloc[i * 50 : (i + 1) * 50].tolist()
        assert c["movieId"].tolist() == whole["movieId"].iloc[i * 50 : (i + 1) * 50].tolist()
    assert len(list(row_chunks(Taken(data.train, fit_at[:0]), 5))[0]) == 0


def test_data_range_records_span_and_size(data):
    r = data_range(data.train)
    assert r == {"rows": len(data.train), "start": int(data.train["timestamp"].min()), "end": int(data.train["timestamp"].max())}


def test_checkpoint_round_trip_restores_weights_optimizer_and_rng(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=20)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    sched.step()
    np.random.seed(3)
    best = {k: v.clone() for k, v in model.state_dict().items()}
    progress = {"best_metric": 0.7, "best_epoch": 1, "bad_epochs": 0, "stopped": False, "history": [{"epoch": 1, "loss": 0.5}], "starts": [0]}
    save_checkpoint(tmp_path, model=model, optimizer=opt, scheduler=sched, scaler=None, epoch=1, progress=progress, best=best)
    expected_torch, expected_np = torch.rand(3), np.random.rand(3)

    torch.manual_seed(99)
    np.random.seed(99)
    state = load_checkpoint(tmp_path)  # weights_only: nothing is unpickled
    set_rng_state(state["rng"])
    assert torch.equal(torch.rand(3), expected_torch) and np.array_equal(np.random.rand(3), expected_np)
    fresh = torch.nn.Linear(4, 2)
    fresh.load_state_dict(state["weights"])
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
    opt2 = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    sched2 = torch.optim.lr_scheduler.OneCycleLR(opt2, max_lr=0.1, total_steps=20)  # the loop's order
    opt2.load_state_dict(state["optimizer"])
    sched2.load_state_dict(state["scheduler"])
    assert sched2.last_epoch == sched.last_epoch and opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    assert state["epoch"] == 1 and state["progress"] == progress and state["best"] is not None


def test_stored_training_columns_are_narrowed_to_int32_and_overflow_is_refused():
    """The object store keeps integer columns as int32 (floats untouched); a value int32 cannot hold
    is an error naming the column, never a wrapped code."""
    from rayrec.training.data import narrowed

    out = narrowed({"codes": np.array([[0, 7], [2**31 - 1, 3]], dtype=np.int64), "dense": np.array([0.5, 1.5], np.float32)})
    assert out["codes"].dtype == np.int32 and out["codes"].tolist() == [[0, 7], [2**31 - 1, 3]]
    assert out["dense"].dtype == np.float32
    with pytest.raises(ValueError, match="'history_end'.*int32"):
        narrowed({"history_end": np.array([1, 2**31], dtype=np.int64)})
    with pytest.raises(ValueError, match="'user_id'"):
        narrowed({"user_id": np.array([-(2**31) - 1], dtype=np.int64)})


def test_rows_encoded_a_chunk_at_a_time_are_the_rows_encoded_at_once(data):
    """The validation rows are encoded and narrowed a chunk at a time: the arrays are those of one
    pass over every row, row for row, whatever the chunk size."""
    from rayrec.models.inputs import encode_pairs
    from rayrec.training.data import encoded_narrow, narrowed, storage_types

    want = narrowed(encode_pairs(data.spec, data.train), storage_types(data.spec))
    for chunk in (7, 100, len(data.train)):
        got = encoded_narrow(data.spec, data.train, chunk=chunk)
        assert list(got) == list(want)
        for k, v in want.items():
            assert got[k].dtype == v.dtype and np.array_equal(got[k], v), k


def test_genre_codes_and_buckets_are_stored_as_int8_while_their_tables_fit():
    """Columns whose codes index a small table of the spec (genres, buckets: at most 128 rows) are
    stored as int8, the rest as int32; a table too large for int8 keeps its column at int32, and a
    code beyond the type is refused."""
    from types import SimpleNamespace

    from rayrec.training.data import narrowed, storage_types

    sizes = {"genre_vocab": 21, "item_vocab": 60_778, "user_vocab": 10_002, "item_rating_count_buckets": 11,
             "item_year_buckets": 11, "user_rating_count_buckets": 11}  # fmt: skip
    types = storage_types(SimpleNamespace(sizes=sizes))  # type: ignore[arg-type]
    assert types == {k: np.int8 for k in ("user_genres", "item_genres", "user_count_bucket", "item_year_bucket", "item_count_bucket")}
    out = narrowed({"user_genres": np.array([[0, 20], [127, 1]]), "item_id": np.array([60_777, 2])}, types)
    assert out["user_genres"].dtype == np.int8 and out["user_genres"].tolist() == [[0, 20], [127, 1]]
    assert out["item_id"].dtype == np.int32
    assert "user_genres" not in storage_types(SimpleNamespace(sizes={**sizes, "genre_vocab": 129}))  # type: ignore[arg-type]
    assert storage_types(SimpleNamespace(sizes={**sizes, "genre_vocab": 128}))["item_genres"] == np.int8  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'item_genres'.*int8"):
        narrowed({"item_genres": np.array([128])}, types)


def test_row_chunks_of_several_frames_are_the_slices_of_their_concatenation():
    """The refit's train and test samples are chunked one after the other without concatenating
    them: the chunks are those of their concatenation, a chunk spanning both frames included."""
    from rayrec.training.jobs import row_chunks

    a, b = pd.DataFrame({"x": np.arange(0, 10)}), pd.DataFrame({"x": np.arange(10, 17)})
    empty = a.iloc[:0]
    for parts, size in [([a, b], 3), ([a, b], 5), ([a, b], 17), ([a, b], 100), ([a, empty, b], 4), ([empty, empty], 4), ([a], 4), (a, 6)]:
        whole = pd.concat(parts, ignore_index=True) if isinstance(parts, list) else parts
        got = [c["x"].tolist() for c in row_chunks(parts, size)]
        want = [whole["x"].iloc[s : s + size].tolist() for s in range(0, max(len(whole), 1), size)]
        assert got == want, (len(whole), size)


@pytest.mark.parametrize("positives", ["liked", "all"])
def test_a_continued_retrievers_rows_are_the_new_rows_with_histories_of_every_row(data, positives):
    """A refit that continues the selection's model learns from the rows it did not see; their
    histories and the items' snapshot still read the rows it saw (``seen``): the rows are exactly
    those the new rows give among every row's."""
    from rayrec.training.jobs import RetrieverRows

    exp, exp_likes = retriever_rows([data.train, data.test], data.movies, 10, positives)
    n_before = len(retriever_rows(data.train, data.movies, 10, positives)[0])
    built = RetrieverRows.of(data.test, data.movies, 10, positives, seen=data.train)
    assert np.array_equal(built.likes, exp_likes)
    assert 0 < len(built) == len(exp) - n_before
    _same_frames(built.rows(np.arange(len(built))), exp.iloc[n_before:].reset_index(drop=True))
    assert np.array_equal(built.movie_ids(), exp["movieId"].to_numpy()[n_before:])
    # without them, the new rows' histories would start empty
    alone, _ = retriever_rows(data.test, data.movies, 10, positives)
    assert alone["history_len"].sum() < built.rows(np.arange(len(built)))["history_len"].sum()


@pytest.mark.parametrize("max_users", [None, 7])
def test_the_samples_features_let_go_and_read_again_are_the_same_samples(tmp_path, max_users):
    """A job keeps a split's rating columns only while no stage builds rows from its features, and
    reads them again when one does: the same rows in the same order as the job opened them (a
    ``max_users`` job's users only); a split of the train samples keeps its positions."""
    from rayrec.training.data import RATING_COLUMNS, open_features
    from rayrec.training.jobs import Taken, _features, _subset
    from train_data import write_version

    write_version(small(n_users=20, n_items=30, n=400, seed=4), str(tmp_path))
    fv = _subset(open_features(str(tmp_path)), max_users)
    assert fv.train["userId"].nunique() == (max_users or 20) and "user_genres" in fv.train and "user_genres" in fv.test
    lean = _subset(open_features(str(tmp_path), ratings_only=["test"]), max_users)  # as a job opens them
    assert list(lean.test.columns) == RATING_COLUMNS and "user_genres" in lean.train
    pd.testing.assert_frame_equal(lean.test, fv.test[RATING_COLUMNS])
    split = Taken(fv.train, np.arange(0, len(fv.train), 3))
    narrow, narrow_split = _features(fv, (), split)
    assert list(narrow.train.columns) == list(narrow.test.columns) == RATING_COLUMNS
    pd.testing.assert_frame_equal(narrow.train, fv.train[RATING_COLUMNS])
    assert isinstance(narrow_split, Taken) and narrow_split.frame is narrow.train
    pd.testing.assert_frame_equal(narrow_split.rows(), split.rows(columns=RATING_COLUMNS))
    assert _features(narrow)[0] is narrow  # nothing left to let go
    train_only = _features(narrow, ["train"])[0]
    pd.testing.assert_frame_equal(train_only.train, fv.train)
    assert train_only.test is narrow.test
    again = _features(narrow, ["train", "test"])[0]
    pd.testing.assert_frame_equal(again.train, fv.train)
    pd.testing.assert_frame_equal(again.test, fv.test)
    assert _features(fv, ["train", "test"])[0] is fv  # nothing to read again


def test_compact_lists_hold_the_same_values_narrower():
    """The samples' list columns are read narrower (32-bit offsets, strings by dictionary, int32
    ids): the same values, nulls and empty lists included; ids beyond int32 stay int64."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from rayrec.training.data import compact_list

    genres = pa.chunked_array([pa.array([["Drama", "War"], [], None], pa.large_list(pa.string())),
                               pa.array([["Comedy", None, "Drama"]], pa.large_list(pa.string()))])  # fmt: skip
    got = compact_list(genres)
    assert got.type == pa.list_(pa.dictionary(pa.int16(), pa.string()))
    assert got.to_pylist() == genres.to_pylist()
    assert got.nbytes < genres.nbytes
    ids = pa.array([[3, 1], [], [2**31 - 1]], pa.large_list(pa.int64()))
    assert compact_list(ids).type == pa.list_(pa.int32()) and compact_list(ids).to_pylist() == ids.to_pylist()
    big = pa.array([[2**31], [-1]], pa.large_list(pa.int64()))
    assert compact_list(big).type == pa.list_(pa.int64()) and compact_list(big).to_pylist() == big.to_pylist()
    numbers = pa.chunked_array([pa.array([1.5, 2.0])])
    assert compact_list(numbers) is numbers  # not a list: as it is
    # chunks read a batch at a time: one array, one dictionary, and int64 where any chunk needs it
    mixed = compact_list(pa.chunked_array([ids, big]))
    assert mixed.type == pa.list_(pa.int64()) and mixed.to_pylist() == ids.to_pylist() + big.to_pylist()
    other = pa.array([["War", "Western"]], pa.large_list(pa.string()))
    joined = compact_list(pa.chunked_array([*genres.chunks, other]))
    assert isinstance(joined, pa.Array) and joined.to_pylist() == genres.to_pylist() + other.to_pylist()
    assert len(pc.list_flatten(joined).dictionary) == 4  # Drama, War, Comedy, Western
    empty = compact_list(pa.chunked_array([], pa.large_list(pa.string())))
    assert len(empty) == 0 and empty.type == pa.list_(pa.dictionary(pa.int16(), pa.string()))


def test_samples_of_many_files_are_read_a_batch_at_a_time_with_the_same_values(data, tmp_path):
    """A split over many files, its lists read a batch at a time: the sorted samples of reading
    every file at once, with one dictionary a list column."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from rayrec.training.data import _samples, _sorted, read_table

    df = data.train.sample(frac=1.0, random_state=5).reset_index(drop=True).assign(split="train")
    folder = tmp_path / "samples"
    folder.mkdir()
    for i, part in enumerate(np.array_split(np.arange(len(df)), 9)):
        pq.write_table(pa.Table.from_pandas(df.iloc[part], preserve_index=False), folder / f"part-{i}.parquet", row_group_size=7)
    got = _samples(str(folder))
    want = _sorted(read_table(str(folder), [c for c in df.columns if c != "split"], lists_in_arrow=True))
    assert len(got) == len(want) == len(df)
    for c in want.columns:
        if isinstance(want[c].dtype, pd.ArrowDtype):
            column = pa.array(got[c].array)
            assert column.to_pylist() == pa.array(want[c].array).to_pylist(), c
            if pa.types.is_dictionary(got[c].dtype.pyarrow_dtype.value_type):
                assert len(column.chunks if isinstance(column, pa.ChunkedArray) else [column]) == 1
                assert len(pc.list_flatten(column).dictionary) == len(set(pc.list_flatten(column).cast(pa.string()).to_pylist()) - {None})
        else:
            np.testing.assert_array_equal(got[c].to_numpy(), want[c].to_numpy(), err_msg=c)


def test_ranker_rows_of_compact_samples_encode_as_those_of_the_samples_as_written(tmp_path):
    """A training job's samples (compact lists) give the ranker's rows, sampled negatives and all, the
    very arrays that the samples with their lists as written give."""
    import pyarrow as pa

    import rayrec.training.data as training_data
    from rayrec.models.inputs import encode_pairs
    from rayrec.models.ranker import RankerConfig
    from rayrec.training.jobs import RankerSources, ranker_rows
    from train_data import write_version

    write_version(small(n_users=25, n_items=40, n=900, seed=6), str(tmp_path))
    fv = training_data.open_features(str(tmp_path))
    train = f"{fv.path}/samples/train"  # the lists as they are written: strings and int64 ids
    written = training_data._sorted(training_data.read_table(train, list(fv.train.columns), lists_in_arrow=True))
    assert all(written[c].dtype.pyarrow_dtype.value_type == pa.string() for c in ("user_genres", "item_genres"))
    assert written["user_recent_items"].dtype.pyarrow_dtype.value_type == pa.int64()
    assert pa_type_name(fv.train["user_genres"]) == "list<item: dictionary<values=string, indices=int16, ordered=0>>"
    mc = RankerConfig(objective="topn", negatives=3)
    sources = RankerSources.of(fv, mc)
    got = encode_pairs(fv.spec, ranker_rows(fv.train, fv, mc, 5, sources))
    want = encode_pairs(fv.spec, ranker_rows(written, fv, mc, 5, sources))
    assert sorted(got) == sorted(want) and len(got["label"]) > len(fv.train)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def pa_type_name(column: pd.Series) -> str:
    return str(column.dtype.pyarrow_dtype)


def test_samples_whose_files_need_int64_ids_in_some_batches_only_read_as_int64(tmp_path):
    """Each batch of a list column is narrowed as it is read: a batch whose ids need int64 beside
    batches that fit int32 gives one int64 column, the values as written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rayrec.training.data import _samples

    folder = tmp_path / "samples"
    folder.mkdir()
    lists = pa.large_list(pa.int64())
    for i, recent in enumerate(([[1], [2, 3]], [[2**40, 5]])):
        n = len(recent)
        pq.write_table(pa.table({"userId": pa.array(range(i * 10, i * 10 + n), pa.int64()), "timestamp": pa.array([0] * n, pa.int64()),
                                 "movieId": pa.array([1] * n, pa.int64()), "user_recent_items": pa.array(recent, lists)}),
                       folder / f"part-{i}.parquet")  # fmt: skip
    got = _samples(str(folder))
    assert got["user_recent_items"].dtype.pyarrow_dtype == pa.list_(pa.int64())
    assert pa.array(got["user_recent_items"].array).to_pylist() == [[1], [2, 3], [2**40, 5]]


def test_splits_compacted_apart_agree_on_one_type_a_list_column():
    """Train and test samples made compact by their own values may pick different types; agreed,
    each list column has the widest, the values unchanged, and rows of both concatenate in Arrow."""
    import pyarrow as pa

    from rayrec.training.data import agree_lists

    def frame(genres: pa.DataType, ids: pa.DataType) -> pd.DataFrame:
        g = pa.array([["Drama"], [], None], pa.large_list(pa.string())).cast(genres)
        r = pa.array([[1], [2, 3], []], pa.large_list(pa.int64())).cast(ids)
        return pd.DataFrame({"userId": [1, 2, 3], "user_genres": pd.arrays.ArrowExtensionArray(g),
                             "user_recent_items": pd.arrays.ArrowExtensionArray(r)})  # fmt: skip

    narrow = frame(pa.list_(pa.dictionary(pa.int16(), pa.string())), pa.list_(pa.int32()))
    wide = frame(pa.list_(pa.dictionary(pa.int32(), pa.string())), pa.large_list(pa.int64()))
    a, b = agree_lists(narrow, wide)
    assert a["user_genres"].dtype.pyarrow_dtype == b["user_genres"].dtype.pyarrow_dtype == pa.list_(pa.dictionary(pa.int32(), pa.string()))
    assert a["user_recent_items"].dtype.pyarrow_dtype == b["user_recent_items"].dtype.pyarrow_dtype == pa.large_list(pa.int64())
    assert b is wide and a is not narrow  # only what differs is cast
    for got, was in ((a, narrow), (b, wide)):
        for c in ("user_genres", "user_recent_items"):
            assert pa.array(got[c].array).to_pylist() == pa.array(was[c].array).to_pylist()
    both = pd.concat([a, b], ignore_index=True)
    assert isinstance(both["user_genres"].dtype, pd.ArrowDtype) and isinstance(both["user_recent_items"].dtype, pd.ArrowDtype)
    same = agree_lists(narrow, narrow.copy())
    assert same[0] is narrow

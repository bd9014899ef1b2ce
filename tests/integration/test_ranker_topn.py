"""The top-N ranker's training job: it learns from rated rows and sampled unrated movies, refits on
every sample the features know, and reports test metrics of a model that never saw a test row. (Its
quality is the end-to-end evaluation's question: tests/integration/test_evaluation_e2e.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rayrec import registry
from rayrec.models import build_model
from rayrec.models.inputs import encode_pairs
from rayrec.training import JobConfig, TrainConfig, run_job
from rayrec.training.data import open_features
from rayrec.training.jobs import ranker_rows
from rayrec.training.tasks import predict_ranker
from train_data import small, write_version

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> str:
    art = str(tmp_path_factory.mktemp("topn-artifacts"))
    write_version(small(n_users=80, n_items=100, n=4000, seed=5), art)
    return art


def test_topn_ranker_refits_on_all_samples_and_tests_the_selection_model(ray_session, artifacts):
    train = TrainConfig(epochs=3, batch_size=256, lr=3e-3, patience=3, valid_fraction=0.2, refit_from="scratch")
    result = run_job(JobConfig(name="ranker", artifacts=artifacts, train=train, run_name="topn-refit"))
    fv = open_features(artifacts)
    m = result.metrics
    assert m["tested_model"] == "select" and m["refit_from"] == "scratch"
    assert result.final.epochs_run == m["valid"]["best_epoch"]
    assert {"auc", "logloss"} <= set(m["test"]) and {"auc"} <= set(m["test_topn"])
    # the published weights are the refit's, trained on train + test rows (with their negatives)
    stored = registry.load(artifacts, "ranker")
    assert stored.config["model"]["objective"] == "topn"
    assert result.final is not result.select
    assert any(not np.array_equal(result.final.weights[k].numpy(), result.select.weights[k].numpy()) for k in result.final.weights)
    # the test AUC is the selection model's: recomputing it from those weights gives the same figure
    model = build_model("ranker", stored.config["model"], fv.spec)
    model.load_state_dict(result.select.weights)
    rows = ranker_rows(fv.test, fv, model.config, train.seed + 2)
    from rayrec.evaluation.classification import classification_metrics

    again = classification_metrics(rows["label"].to_numpy(), predict_ranker(model, encode_pairs(fv.spec, rows)))
    assert again["auc"] == pytest.approx(m["test_topn"]["auc"])
    # the refit learnt from every rated sample (train + test) and about 4 sampled negatives for each
    rated = len(fv.train) + len(fv.test)
    assert 4.5 * rated <= m["train_rows"]["refit"] <= 5 * rated
    assert m["train_rows"]["select"] < m["train_rows"]["refit"]


def test_a_refit_from_the_selection_continues_its_model_on_the_samples_it_did_not_see(ray_session, artifacts):
    """``refit_from="selection"``: the refit starts from the selected weights and makes one pass over
    the validation split and the test samples (with their negatives), not over every sample again."""
    train = TrainConfig(epochs=2, batch_size=256, lr=3e-3, patience=3, valid_fraction=0.2, refit_from="selection")
    result = run_job(JobConfig(name="ranker", artifacts=artifacts, train=train, run_name="topn-continue", publish=False))
    fv = open_features(artifacts)
    m = result.metrics
    assert m["refit_from"] == "selection" and m["tested_model"] == "select"
    assert result.final.epochs_run == 1 and result.final.returned["starts"] == [0]
    # the rows the selection did not see: the validation split (each user's last fifth of train rows,
    # users with 5 rows or more) and the test samples, each with about 4 sampled negatives
    new = len(fv.train) + len(fv.test) - m["train_rows"]["select"] / 5
    assert 0.8 * 5 * new <= m["train_rows"]["refit"] <= 1.2 * 5 * new
    assert m["train_rows"]["refit"] < 0.5 * 4.5 * (len(fv.train) + len(fv.test))  # a scratch refit's rows: every sample's
    assert any(not np.array_equal(result.final.weights[k].numpy(), result.select.weights[k].numpy()) for k in result.final.weights)
    # from the selected weights: a continuation that cannot move (learning rate 0) returns them unchanged
    still = run_job(JobConfig(name="ranker", artifacts=artifacts, run_name="topn-continue-still", publish=False,
                              train=train.with_(lr=0.0, schedule="constant", epochs=1)))  # fmt: skip
    assert still.metrics["refit_from"] == "selection"
    for k, v in still.select.weights.items():
        assert torch.equal(still.final.weights[k], v), k


def test_auto_refits_from_scratch_after_several_selected_epochs_and_continues_after_one():
    tc = TrainConfig()
    assert tc.refit_from == "auto" and tc.refit_continues(1) and not tc.refit_continues(2)
    assert not tc.with_(refit_from="scratch").refit_continues(1)
    assert tc.with_(refit_from="selection").refit_continues(5)
    with pytest.raises(ValueError, match="refit_from"):
        TrainConfig(refit_from="warm")  # type: ignore[arg-type]


def test_ranker_rows_are_built_chunk_by_chunk(ray_session, artifacts, monkeypatch):
    """The training rows are built and stored a chunk at a time (bounded memory at scale): one chunk
    gives exactly the one-shot rows; several give every rated row once, each with its own sampled
    negatives (never a movie the user rated), and the dataset holds them all."""
    import pandas as pd

    from rayrec.models.ranker import RankerConfig
    from rayrec.training import jobs
    from rayrec.training.data import to_dataset_chunks

    fv = open_features(artifacts)
    mc = RankerConfig()
    one = list(jobs._ranker_chunks(fv.train, fv, mc, 0))
    assert len(one) == 1 and one[0].equals(ranker_rows(fv.train, fv, mc, 0))
    monkeypatch.setattr(jobs, "RANKER_CHUNK_ROWS", 700)
    chunks = list(jobs._ranker_chunks(fv.train, fv, mc, 0))
    assert len(chunks) == -(-len(fv.train) // 700) > 2
    keys = ["userId", "movieId", "timestamp"]
    rated = pd.concat([c[c["interact"] == 1] for c in chunks])[keys].reset_index(drop=True)
    assert rated.equals(fv.train[keys].reset_index(drop=True))
    negs = pd.concat([c[c["interact"] == 0] for c in chunks])
    # the list features stay in Arrow through the sampling and the concat (no Python object per row)
    assert all(isinstance(c[col].dtype, pd.ArrowDtype) for c in chunks for col in ("user_genres", "user_recent_items", "item_genres"))
    assert 3.5 * len(fv.train) <= len(negs) <= 4 * len(fv.train)
    every = pd.concat([fv.train, fv.test])
    known = set(zip(every["userId"].tolist(), every["movieId"].tolist()))
    assert not any((u, m) in known for u, m in zip(negs["userId"].tolist(), negs["movieId"].tolist()))
    ds, n = to_dataset_chunks(iter(chunks), fv.spec)
    assert n == ds.count() == sum(len(c) for c in chunks)
    # integer columns are stored as int32, genre codes and buckets as int8 (the loop widens them), with
    # the values the encoder gives
    stored = ds.take_batch(ds.count(), batch_format="numpy")
    encoded = encode_pairs(fv.spec, pd.concat(chunks, ignore_index=True))
    assert stored.keys() == encoded.keys()
    small = {"user_genres", "item_genres", "user_count_bucket", "item_year_bucket", "item_count_bucket"}
    for k, v in encoded.items():
        assert stored[k].dtype == ((np.int8 if k in small else np.int32) if v.dtype.kind == "i" else v.dtype), k
        # the rows are stored in another order: the same values, column by column
        got, want = np.sort(stored[k].reshape(len(v), -1), axis=0), np.sort(v.reshape(len(v), -1), axis=0)
        assert np.array_equal(got, want, equal_nan=v.dtype.kind == "f"), k
    assert ds.num_blocks() == 8 * len(chunks)
    assert float(ds.sum("interact")) == len(fv.train)
    # rows in a random order within each chunk: every block mixes rated rows and negatives (about 1 in
    # 5 rated), so no training batch is all of one kind
    shares = [float(b["interact"].mean()) for b in ds.iter_batches(batch_size=None, batch_format="numpy")]
    assert len(shares) == ds.num_blocks() and all(0.1 < s < 0.35 for s in shares), shares


def test_the_topn_test_rows_are_built_and_scored_chunk_by_chunk(artifacts, monkeypatch):
    """The job's top-N test metric: one chunk scores exactly the one-shot rows; in chunks, the rows
    are those the training chunks would draw (same seeds), scored the same."""
    from rayrec.models.ranker import RankerConfig
    from rayrec.training import jobs

    fv = open_features(artifacts)
    mc = RankerConfig()
    sources = jobs.RankerSources.of(fv, mc)
    model = build_model("ranker", mc, fv.spec)
    model.eval()
    labels, scores = jobs._topn_test(model, fv, mc, 5, sources)
    whole = ranker_rows(fv.test, fv, mc, 5, sources)
    assert np.array_equal(labels, whole["label"].to_numpy())
    assert np.allclose(scores, predict_ranker(model, encode_pairs(fv.spec, whole)))
    monkeypatch.setattr(jobs, "RANKER_CHUNK_ROWS", 300)
    assert len(fv.test) > 2 * 300
    labels, scores = jobs._topn_test(model, fv, mc, 5, sources)
    chunks = list(jobs._ranker_chunks(fv.test, fv, mc, 5, sources))
    assert len(chunks) == -(-len(fv.test) // 300)
    assert np.array_equal(labels, np.concatenate([c["label"].to_numpy() for c in chunks]))
    assert np.allclose(scores, np.concatenate([predict_ranker(model, encode_pairs(fv.spec, c)) for c in chunks]))
    assert 4.5 * len(fv.test) <= len(labels) <= 5 * len(fv.test)  # each rated row with its ~4 negatives


def test_the_validation_arrays_are_built_and_encoded_chunk_by_chunk(artifacts, monkeypatch):
    """The selection's validation arrays: one chunk gives exactly the narrow encoding of the one-shot
    rows; in chunks, that of the rows the training chunks would draw (same seeds), one after another."""
    from rayrec.models.ranker import RankerConfig
    from rayrec.training import jobs
    from rayrec.training.data import encoded_narrow

    fv = open_features(artifacts)
    mc = RankerConfig()
    sources = jobs.RankerSources.of(fv, mc)

    def same(got: dict, want: dict) -> None:
        assert got.keys() == want.keys()
        for k in want:
            assert got[k].dtype == want[k].dtype and np.array_equal(got[k], want[k], equal_nan=want[k].dtype.kind == "f"), k

    same(jobs._encoded_rows(fv.test, fv, mc, 7, sources), encoded_narrow(fv.spec, ranker_rows(fv.test, fv, mc, 7, sources)))
    monkeypatch.setattr(jobs, "RANKER_CHUNK_ROWS", 300)
    chunks = list(jobs._ranker_chunks(fv.test, fv, mc, 7, sources))
    assert len(chunks) == -(-len(fv.test) // 300) > 2
    parts = [encoded_narrow(fv.spec, c) for c in chunks]
    got = jobs._encoded_rows(fv.test, fv, mc, 7, sources)
    same(got, {k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
    assert 4.5 * len(fv.test) <= len(got["label"]) <= 5 * len(fv.test)


def test_a_ranker_with_the_ease_input_and_candidate_rows_trains_publishes_and_serves(ray_session, artifacts, monkeypatch):
    """``ease_feature`` and ``candidates`` through the real job: the candidate rows join the chunk of
    their user's first rows, anonymous, once each; the version stores the serving EASE weights, and
    serving loads them and scores a request from the user's rated movies (none: not loaded, with a note)."""
    import os

    from rayrec import uri
    from rayrec.models.inputs import user_columns
    from rayrec.models.ranker import EASE_FILE, RankerConfig
    from rayrec.serving.scoring import load_models
    from rayrec.training import jobs

    fv = open_features(artifacts)
    mc = RankerConfig(ease_feature=True, ease_lambda=5.0, candidates=20)
    sources = jobs.RankerSources.of(fv, mc)
    want = jobs.candidate_rows(fv.train, sources, 20, mc.candidate_future)
    assert len(want) > 20 and want["interact"].sum() > 0
    monkeypatch.setattr(jobs, "RANKER_CHUNK_ROWS", 700)
    chunks = list(jobs._ranker_chunks(fv.train, fv, mc, 0, sources))
    anonymous = [c[c["userId"] == jobs.ANONYMOUS_USER] for c in chunks]
    assert sum(map(len, anonymous)) == len(want)  # each user's candidates once
    assert all(c["ease_score"].notna().all() for c in chunks)
    monkeypatch.undo()

    train = TrainConfig(epochs=2, batch_size=256, lr=3e-3, patience=3, valid_fraction=0.2, refit_from="scratch")
    result = run_job(JobConfig(name="ranker", artifacts=artifacts, train=train, model=mc, run_name="topn-ease"))
    rated = len(fv.train) + len(fv.test)
    assert result.metrics["train_rows"]["refit"] > 4.5 * rated + len(want) / 2  # the refit's own candidates too
    assert {"auc"} <= set(result.metrics["test"]) and {"auc"} <= set(result.metrics["test_topn"])
    assert uri.exists(uri.join(result.path, EASE_FILE))
    ranker, _, notes = load_models(artifacts, result.version, None)
    assert ranker is not None and ranker.ease is not None and not notes
    user = fv.test.iloc[0]
    history = np.asarray(fv.train[fv.train["userId"] == user["userId"]]["movieId"])
    ids = fv.movies["movieId"].to_numpy()[:15].tolist()
    encoded = ranker.encode_user(user_columns(int(user["userId"]), user.to_dict()))
    got = ranker.score_many([encoded], [(ids, [None] * len(ids))], [history])[0]
    assert got.shape == (15,) and np.isfinite(got).all()
    assert not np.allclose(got, ranker.score_many([encoded], [(ids, [None] * len(ids))], [np.zeros(0, np.int64)])[0])
    os.remove(uri.join(result.path, EASE_FILE).removeprefix("file://"))
    ranker, _, notes = load_models(artifacts, result.version, None)
    assert ranker is None and "ranker not loaded" in notes[0]


def test_a_job_of_many_training_rows_grows_its_batch_for_every_fit(ray_session, artifacts, capsys):
    """From ``grow_batch_at`` training rows the job trains with 4× the batch and 2× the learning rate,
    the selection and the refit alike; where the selection has fewer rows neither fit grows, though
    a refit from scratch has more (the epochs it takes were chosen at the selection's batch)."""
    train = TrainConfig(epochs=1, batch_size=64, lr=3e-3, valid_fraction=0.2, refit_from="scratch", grow_batch_at=1_000)
    result = run_job(JobConfig(name="ranker", artifacts=artifacts, train=train, run_name="topn-grow"))
    rows = result.metrics["train_rows"]
    assert rows["select"] >= 1_000
    used = registry.load(artifacts, "ranker", result.version).meta["train_config"]
    assert used["batch_size"] == 256 and used["lr"] == pytest.approx(6e-3) and used["grow_batch_at"] == 0
    assert f"[ranker] {rows['select']:,} training rows: batch 64 → 256, learning rate 0.003 → 0.006" in capsys.readouterr().out

    assert rows["refit"] > rows["select"] + 1
    kept = run_job(JobConfig(name="ranker", artifacts=artifacts, train=train.with_(grow_batch_at=rows["select"] + 1), run_name="topn-no-grow"))
    used = registry.load(artifacts, "ranker", kept.version).meta["train_config"]
    assert used["batch_size"] == 64 and used["lr"] == pytest.approx(3e-3) and used["grow_batch_at"] == rows["select"] + 1
    assert "training rows: batch" not in capsys.readouterr().out

"""TrainConfig's growth of the batch at scale (``grow_batch_at``, :meth:`TrainConfig.for_rows`)."""

from __future__ import annotations

import math

import pytest

from rayrec.training import TrainConfig, default_train_config
from rayrec.training.config import GROWTH


def test_the_batch_and_learning_rate_grow_from_the_threshold_on():
    tc = TrainConfig(batch_size=1024, lr=2e-3, grow_batch_at=4_000_000)
    assert tc.for_rows(3_999_999) is tc
    grown = tc.for_rows(4_000_000)
    assert grown.batch_size == 1024 * GROWTH == 4096
    assert grown.lr == pytest.approx(2e-3 * math.sqrt(GROWTH)) and grown.lr == pytest.approx(4e-3)
    # spent: a later fit of the same job (more rows still) keeps the grown batch, not 4 × 4
    assert grown.grow_batch_at == 0
    assert grown.for_rows(100_000_000) is grown
    # the rest of the config is kept
    assert {k: v for k, v in grown.to_dict().items() if k not in ("batch_size", "lr", "grow_batch_at")} == {
        k: v for k, v in tc.to_dict().items() if k not in ("batch_size", "lr", "grow_batch_at")
    }


def test_without_a_threshold_the_batch_never_grows():
    tc = TrainConfig(batch_size=512, lr=1e-3)
    assert tc.grow_batch_at == 0
    assert tc.for_rows(10**12) is tc


def test_the_ranker_grows_at_scale_unless_its_batch_or_learning_rate_is_given():
    assert default_train_config("ranker").grow_batch_at == 4_000_000
    assert default_train_config("ranker", epochs=1).grow_batch_at == 4_000_000
    assert default_train_config("ranker", batch_size=2048).grow_batch_at == 0
    assert default_train_config("ranker", lr=1e-3).grow_batch_at == 0
    # asked for explicitly, alongside an explicit batch
    assert default_train_config("ranker", batch_size=2048, grow_batch_at=10).grow_batch_at == 10
    # the retriever's in-batch negatives are its batch: its size is part of the objective
    assert default_train_config("retriever").grow_batch_at == 0


def test_a_negative_threshold_is_refused():
    with pytest.raises(ValueError, match="grow_batch_at"):
        TrainConfig(grow_batch_at=-1)

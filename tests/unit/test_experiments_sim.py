"""The impression log's batching and failure handling, the simulator's power estimates, and the
synthetic generator's hidden preferences."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pandas as pd
import pytest

from rayrec.data.synthetic import SyntheticConfig, generate, truth
from rayrec.experiments.impressions import ImpressionLog
from rayrec.experiments.stats import interleaving_preference, mean_credit
from rayrec.experiments.simulate import Method, ServedLists, interleavings, power_ab, power_interleaving, true_quality, users_needed


def test_impressions_are_batched_kept_through_an_outage_and_capped() -> None:
    written: list[list[dict]] = []
    down = {"on": True}

    async def write(records: list[dict]) -> None:
        await asyncio.sleep(0.001)
        if down["on"]:
            raise RuntimeError("store down")
        written.append(records)

    async def run() -> ImpressionLog:
        log = ImpressionLog(write, capacity=50, batch=20)
        for i in range(30):
            log.record({"request_id": str(i)})
        await asyncio.sleep(0.05)
        assert log.pending == 30 and not written, "nothing is lost while the store is down"
        for i in range(30, 60):
            log.record({"request_id": str(i)})
        assert log.dropped == 10 and log.pending == 50, "past capacity the oldest are dropped, and counted"
        down["on"] = False
        assert await log.flush()
        return log

    log = asyncio.run(run())
    ids = [int(r["request_id"]) for batch in written for r in batch]
    assert ids == list(range(10, 60)), "written once each, in order"
    assert max(len(b) for b in written) <= 20 and log.written == 50 and log.failures >= 1


def test_impressions_queued_within_the_linger_go_in_one_write_and_flush_does_not_wait() -> None:
    written: list[list[dict]] = []

    async def write(records: list[dict]) -> None:
        written.append(records)

    async def run() -> tuple[float, int]:
        log = ImpressionLog(write, linger_s=2.0)  # far longer than any pause of a loaded machine
        for i in range(5):
            log.record({"request_id": str(i)})
            await asyncio.sleep(0.01)  # requests arriving one after another
        assert not written, "nothing is written before the linger is over"
        await asyncio.sleep(2.5)
        assert [len(b) for b in written] == [5], "the records of one linger go in one write"
        full = ImpressionLog(write, linger_s=30.0, batch=3)
        for i in range(3):
            full.record({"request_id": f"full{i}"})
        await asyncio.sleep(0.05)
        assert full.pending == 0 and len(written[-1]) == 3, "a full batch is written without waiting for the linger"
        slow = ImpressionLog(write, linger_s=30.0)
        slow.record({"request_id": "late"})
        await asyncio.sleep(0.05)  # its writer is lingering now
        t = time.monotonic()
        assert await slow.flush(timeout_s=10.0)
        return time.monotonic() - t, slow.pending

    took, pending = asyncio.run(run())
    assert written[-1] == [{"request_id": "late"}] and pending == 0
    assert took < 5.0, f"flush writes at once, without the 30 s linger (took {took:.1f}s)"
    with pytest.raises(ValueError, match="linger_s"):
        ImpressionLog(write, linger_s=-1.0)


def _lists(p_a: float, p_b: float, users: int = 500, k: int = 10, overlap: int = 6, method: Method = "team_draft") -> ServedLists:
    """Toy lists: the first ``overlap`` items shared, the rest each arm's own, with flat click
    probabilities per arm (shared items take arm a's), interleaved by ``method``."""
    rng = np.random.default_rng(0)
    ids_a = np.tile(np.arange(1, k + 1), (users, 1))
    ids_b = ids_a.copy()
    ids_b[:, overlap:] += 100
    prob = {m: p_a for m in range(1, k + 1)} | {m + 100: p_b for m in range(overlap + 1, k + 1)}
    inter, credits = interleavings(ids_a, ids_b, 4, method=method)
    to_p = np.vectorize(lambda m: prob.get(int(m), 0.0))
    exam = (1.0 + np.arange(k)) ** -1.0
    level = rng.uniform(0.5, 1.5, (users, 1))  # some users click more than others
    pa, pb = to_p(ids_a) * exam * level, to_p(ids_b) * exam * level
    return ServedLists(np.arange(1, users + 1), pa, pb, to_p(inter) * exam * level[:, None], credits)


def test_power_grows_with_users_and_finds_the_better_arm() -> None:
    lists = _lists(0.10, 0.20)
    assert true_quality(lists.p_b) > true_quality(lists.p_a)
    small, large = power_ab(lists, 200, 100), power_ab(lists, 20_000, 100)
    assert small < 0.5 < 0.95 <= large, (small, large)
    assert power_interleaving(lists, 50, 100) < power_interleaving(lists, 4000, 100)
    n, tried = users_needed(lambda n: power_interleaving(lists, n, 100))
    assert n is not None and tried[n] >= 0.8 and all(p < 0.8 for m, p in tried.items() if m < n / 1.1)


def test_equal_arms_are_rarely_called_different() -> None:
    lists = _lists(0.15, 0.15, overlap=10)  # identical lists
    assert power_ab(lists, 2000, 200) <= 0.06
    assert power_interleaving(lists, 2000, 200) <= 0.06


def test_optimized_interleaving_finds_the_better_arm_and_keeps_its_level() -> None:
    """Optimized interleaving read by its mean credit finds the better arm with fewer users than the
    sign test of team draft on the same lists; with clicks that depend on the position alone (the
    lists differ, the users do not care) it calls a difference at about the test's level."""
    opt, draft = _lists(0.10, 0.20, method="optimized"), _lists(0.10, 0.20)
    assert power_interleaving(opt, 300, 200, test="mean") > power_interleaving(draft, 300, 200) > 0.2
    k, users = 10, 400
    ids_a = np.tile(np.arange(1, k + 1), (users, 1))
    ids_b = np.tile(np.r_[np.arange(k, 6, -1), np.arange(20, 26)], (users, 1))  # b: a's last 4 reversed, then its own
    inter, credits = interleavings(ids_a, ids_b, 8, method="optimized")
    assert (credits != 0).any()
    exam = (1.0 + np.arange(k)) ** -1.0 * 0.3  # clicks by position alone
    rng = np.random.default_rng(5)
    called = {"mean": 0, "sign": 0}
    trials = 1000
    for _ in range(trials):
        u, d = rng.integers(0, users, 1000), rng.integers(0, 8, 1000)
        credit = ((rng.random((1000, k)) < exam) * credits[u, d]).sum(axis=1)
        called["mean"] += mean_credit(credit).p_value < 0.05
        called["sign"] += interleaving_preference(np.maximum(credit, 0), np.maximum(-credit, 0)).p_value < 0.05
    assert 0.03 <= called["mean"] / trials <= 0.07, called
    assert called["sign"] / trials > 0.075, f"the sign test misreads graded credits (their signs are not symmetric): {called}"


def test_users_needed_says_none_past_its_limit() -> None:
    n, tried = users_needed(lambda n: 0.1, limit=1000)
    assert n is None and max(tried) <= 1000


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    cfg = SyntheticConfig(n_users=300, n_items=400, n_ratings=15_000, seed=3)
    return cfg, generate(tmp_path_factory.mktemp("syn") / "data", cfg)


def test_truth_is_what_the_ratings_were_drawn_from(small_dataset) -> None:
    cfg, path = small_dataset
    t = truth(cfg)
    r = pd.read_csv(path / "ratings.csv")
    x = t.expected_rating(r["userId"].to_numpy(), r["movieId"].to_numpy())
    assert np.isfinite(x).all()
    assert np.corrcoef(x, r["rating"].to_numpy())[0, 1] > 0.5, "the ratings are the hidden preference plus noise"
    assert np.isnan(t.expected_rating(np.array([1, 10_000]), np.array([10**9, int(r["movieId"].iloc[0])]))).all()
    counts = r.groupby("userId").size().reindex(range(1, cfg.n_users + 1), fill_value=0).to_numpy()
    assert np.corrcoef(counts, t.user_activity)[0, 1] > 0.95

"""Experiment configs, user assignment and team-draft interleaving: no artifacts needed."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from rayrec.experiments.config import Experiment, assign, unit_hash
from rayrec.experiments import interleave
from rayrec.experiments.interleave import NEUTRAL, optimized, optimized_distribution, seed_of, team_draft
from rayrec.serving import ServingConfig


def ab(name: str = "e", users: tuple[float, float] = (0.0, 1.0), **kw) -> dict:
    return {"name": name, "users": users, "variants": [{"name": "control"}, {"name": "treat", "overrides": kw}]}


def test_assignment_is_stable_and_follows_the_weights() -> None:
    e = Experiment.model_validate({"name": "w", "variants": [{"name": "a", "weight": 0.2}, {"name": "b", "weight": 0.8}]})
    users = range(1, 20_001)
    picks = [e.variant_of(u).name for u in users]
    share_a = picks.count("a") / len(picks)
    assert abs(share_a - 0.2) < 0.015, share_a  # 20,000 users: sd of the share ≈ 0.003
    assert picks == [e.variant_of(u).name for u in users], "the same user lands in the same variant every time"
    resalted = e.model_copy(update={"salt": "other"})
    moved = sum(p != resalted.variant_of(u).name for p, u in zip(picks, users)) / len(picks)
    assert 0.2 < moved < 0.45, "a new salt reshuffles users (expected 2 × 0.2 × 0.8 = 0.32 moved)"


def test_unit_hash_is_uniform_and_process_independent() -> None:
    x = np.array([unit_hash("s", u) for u in range(10_000)])
    assert ((0 <= x) & (x < 1)).all()
    counts, _ = np.histogram(x, bins=10, range=(0, 1))
    assert counts.min() > 850 and counts.max() < 1150, counts
    assert unit_hash("s", 42) == unit_hash("s", 42) and unit_hash("s", 42) != unit_hash("t", 42)


def test_experiments_split_the_user_space() -> None:
    cfg = ServingConfig.model_validate({"experiments": [ab("x", (0.0, 0.3)), ab("y", (0.3, 0.6))]})
    got = [assign(cfg.experiments, u) for u in range(1, 5001)]
    names = [g.experiment if g else None for g in got]
    for name, share in (("x", 0.3), ("y", 0.3), (None, 0.4)):
        assert abs(names.count(name) / len(names) - share) < 0.03, (name, names.count(name))
    off = ServingConfig.model_validate({"experiments": [{**ab("x", (0.0, 0.3)), "enabled": False}]})
    assert all(assign(off.experiments, u) is None for u in range(1, 500))


@pytest.mark.parametrize(
    "experiments, field",
    [
        ([ab("x", (0.0, 0.6)), ab("y", (0.5, 1.0))], "experiments[1].users"),
        ([ab("x", (0.0, 0.5)), ab("x", (0.5, 1.0))], "experiments[1].name"),
        ([{"name": "w", "variants": [{"name": "a", "weight": 0.5}, {"name": "b", "weight": 0.6}]}], "sum to 1"),
        ([{"name": "w", "variants": [{"name": "a", "weight": 0.5}, {"name": "b"}]}], "every variant a weight"),
        ([{"name": "w", "variants": [{"name": "a"}, {"name": "a"}]}], "unique"),
        ([{"name": "w", "mode": "interleave", "variants": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}], "exactly 2"),
        ([ab("x", rank_weight=3.0)], "experiments[0].variants[1].overrides.rank_weight"),
        ([ab("x", no_such_setting=1)], "experiments[0].variants[1].overrides.no_such_setting"),
        ([ab("x", rerank={"diversity": -1})], "experiments[0].variants[1].overrides.rerank.diversity"),
        ([ab("x", (0.5, 0.2))], "users"),
        ([{"name": "w", "variants": [{"name": "interleaved"}, {"name": "b"}]}], "reserved"),
        ([{"name": "w", "interleaving": "optimized", "variants": [{"name": "a"}, {"name": "b"}]}], "interleaving: 'optimized' needs mode 'interleave'"),
        ([{"name": "w", "mode": "interleave", "interleaving": "balanced", "variants": [{"name": "a"}, {"name": "b"}]}], "experiments.0.interleaving"),
    ],
)
def test_bad_experiment_configs_are_refused_naming_the_field(experiments, field) -> None:
    with pytest.raises(ValidationError) as e:
        ServingConfig.model_validate({"experiments": experiments})
    assert field in str(e.value), str(e.value)


def test_a_variant_config_merges_nested_settings() -> None:
    cfg = ServingConfig.model_validate({"experiments": [ab("x", rerank={"diversity": 0.4}, rank_weight=1.0)]})
    treat = cfg.variant("x", "treat")
    assert treat.rerank.diversity == 0.4 and treat.rank_weight == 1.0
    assert treat.rerank.model_dump(exclude={"diversity"}) == cfg.rerank.model_dump(exclude={"diversity"})
    assert treat.experiments == [] and cfg.variant("x", "control").model_dump() == cfg.model_copy(update={"experiments": []}).model_dump()
    assert treat.artifact_key() == cfg.artifact_key(), "rerank settings share the loaded artifacts"


def reference_team_draft(a: list[int], b: list[int], k: int, coins: list[int], neutral: bool = False) -> tuple[list[int], list[int]]:
    """Radlinski et al. 2008, Algorithm 2, with the coin flips given; ``neutral``: a round that opens
    with both lists' next items the same places that item for neither team (-1), without a flip."""
    out: list[int] = []
    teams: list[int] = []
    n = [0, 0]
    lists = (a, b)
    flips = iter(coins)
    while len(out) < k and (set(a) | set(b)) - set(out):
        heads = [[m for m in src if m not in out][:1] for src in lists]
        if neutral and n[0] == n[1] and heads[0] and heads[0] == heads[1]:
            out.append(heads[0][0])
            teams.append(-1)
            continue
        first = next(flips) if n[0] == n[1] else int(n[1] < n[0])
        for team in (first, 1 - first):
            rest = [m for m in lists[team] if m not in out]
            if rest:
                out.append(rest[0])
                teams.append(team)
                n[team] += 1
                break
    return out, teams


@pytest.mark.parametrize("neutral", [False, True], ids=["classic", "neutral"])
def test_team_draft_matches_the_reference_and_keeps_each_lists_order(neutral: bool) -> None:
    rng = np.random.default_rng(0)
    shared_rounds = 0
    for trial in range(300):
        pool = rng.permutation(40)[:25].tolist()
        a = rng.permutation(pool)[: rng.integers(0, 15)].tolist()
        # every third pair starts alike, so rounds that open on a shared item are common
        b = (a[: rng.integers(0, 5)] if trial % 3 == 0 else []) + rng.permutation(pool)[: rng.integers(0, 15)].tolist()
        b = list(dict.fromkeys(b))
        k = int(rng.integers(1, 20))
        seed = int(rng.integers(2**32))
        items, teams = team_draft(a, b, k, seed, neutral=neutral)
        assert len(items) == len(set(items)) == min(k, len(set(a) | set(b)))
        for team, src in ((0, a), (1, b)):
            mine = [m for m, t in zip(items, teams) if t == team]
            assert mine == [m for m in src if m in mine], "a team's picks keep its list's order"
        assert abs(teams.count(0) - teams.count(1)) <= 1 or not (set(a) - set(items) and set(b) - set(items))
        coins = np.random.default_rng(seed).integers(2, size=64).tolist()
        assert (items, teams) == reference_team_draft(a, b, k, coins, neutral), trial
        shared_rounds += teams.count(NEUTRAL)
    assert (shared_rounds > 50) == neutral, shared_rounds


def test_classic_team_draft_is_fair_for_identical_lists() -> None:
    """Same list on both sides, classic team draft: which team gets the top item is a coin flip, so
    clicks on the top item split evenly between the teams."""
    firsts = [team_draft(list(range(10)), list(range(10)), 10, seed_of(f"r{i}"), neutral=False)[1][0] for i in range(4000)]
    assert abs(np.mean(firsts) - 0.5) < 0.03


def test_items_both_lists_offer_in_a_round_credit_neither_team() -> None:
    """Identical lists: every item is neutral (no preference to find, so no credit to give). Lists
    that agree on their top two and then differ: those two are neutral and the rest is drafted, the
    coin deciding who picks first."""
    items, teams = team_draft(list(range(10)), list(range(10)), 10, seed_of("same"))
    assert items == list(range(10)) and teams == [NEUTRAL] * 10
    a, b = [1, 2, 3, 4, 5, 6], [1, 2, 7, 8, 9, 10]
    firsts = []
    for i in range(2000):
        items, teams = team_draft(a, b, 6, seed_of(f"r{i}"))
        assert items[:2] == [1, 2] and teams[:2] == [NEUTRAL, NEUTRAL]
        assert sorted(teams[2:]) == [0, 0, 1, 1]
        firsts.append(teams[2])
    assert abs(np.mean(firsts) - 0.5) < 0.04, "the first contested slot goes to either team alike"


def reference_prefix_lists(a: list[int], b: list[int], k: int) -> set[tuple[int, ...]]:
    """Every list of up to ``k`` distinct items whose every prefix is a prefix of ``a`` joined with a
    prefix of ``b``, by brute force over the sets."""
    prefixes = {frozenset(a[:i]) | frozenset(b[:j]) for i in range(len(a) + 1) for j in range(len(b) + 1)}
    union = list(dict.fromkeys(a + b))
    out: set[tuple[int, ...]] = set()

    def grow(cur: tuple[int, ...]) -> None:
        nxt = [m for m in union if m not in cur and frozenset(cur + (m,)) in prefixes]
        if len(cur) == k or not nxt:
            out.add(cur)
        for m in nxt if len(cur) < k else []:
            grow(cur + (m,))

    grow(())
    return out


def _pairs(n: int, seed: int = 0, *, same_length: bool) -> list[tuple[list[int], list[int], int]]:
    """Random list pairs: overlapping, reordered, disjoint, sharing a prefix; of one length (as
    served lists are, ``k`` at most that) or of any lengths."""
    rng = np.random.default_rng(seed)
    out = []
    for trial in range(n):
        pool = rng.permutation(30)[:16].tolist()
        length = int(rng.integers(1, 9))
        a = rng.permutation(pool)[:length].tolist()
        b = (a[: rng.integers(0, 4)] if trial % 3 == 0 else []) + rng.permutation(pool).tolist()
        b = list(dict.fromkeys(b))[: length if same_length else int(rng.integers(1, 9))]
        out.append((a, b, int(rng.integers(1, length + 1)) if same_length else int(rng.integers(1, 9))))
    return out


@pytest.mark.parametrize("same_length", [True, False], ids=["same-length", "any-length"])
def test_optimized_interleaving_lists_are_prefix_constrained_and_unbiased(same_length: bool) -> None:
    """The candidate lists are exactly the prefix-constrained ones (against brute force); every list
    with weight keeps the constraint; at every position the expected credit is 0, so clicks that
    ignore the items (at any position bias) favour neither list; credits are rank in b − rank in a.
    Lists of one length always have such a distribution; where one list runs out early there may be
    none (what follows holds only the other's items), and the interleaving is team draft's."""
    solved = 0
    for a, b, k in _pairs(200, same_length=same_length):
        lists = interleave._prefix_lists(a, b, k, limit=10_000)
        got = {tuple(int(m) for m in row if m > -1) for row in lists}
        assert got == reference_prefix_lists(a, b, k) and len(got) == len(lists), (a, b, k)
        dist = optimized_distribution(a, b, k)
        if dist is None:
            items, credits = optimized(a, b, k, 3)
            assert (items, credits) == (team_draft(a, b, k, 3)[0], interleave.draft_credits(team_draft(a, b, k, 3)[1]))
            continue
        solved += 1
        assert dist.probabilities.sum() == pytest.approx(1.0) and (dist.probabilities > 0).all()
        np.testing.assert_allclose(dist.probabilities @ dist.credits, 0.0, atol=1e-7)
        for row, credits in zip(dist.lists, dist.credits):
            items = [int(m) for m in row if m > -1]
            assert tuple(items) in got
            want = [(b.index(m) + 1 if m in b else len(b) + 1) - (a.index(m) + 1 if m in a else len(a) + 1) for m in items]
            assert credits[: len(items)].tolist() == want
    assert solved == 200 if same_length else 50 < solved < 200, solved


def test_optimized_interleaving_draws_by_seed_and_is_neutral_for_identical_lists() -> None:
    a, b = [5, 1, 2, 3, 4, 9], [1, 5, 7, 2, 8, 3]
    draws = [optimized(a, b, 6, seed_of(f"r{i}")) for i in range(300)]
    assert draws[0] == optimized(a, b, 6, seed_of("r0")), "the same seed gives the same list"
    assert len({tuple(items) for items, _ in draws}) > 1, "the list is drawn, not fixed"
    for items, credits in draws:
        assert len(items) == len(set(items)) == 6 and len(credits) == 6
    assert np.mean([c for _, credits in draws for c in credits[:1]]) == pytest.approx(0.0, abs=0.6)
    items, credits = optimized(list(range(10)), list(range(10)), 10, 7)
    assert items == list(range(10)) and credits == [0.0] * 10, "lists that agree give no credit"
    assert optimized([], [], 10, 7) == ([], [])


def test_optimized_interleaving_caps_its_candidates_and_falls_back_to_team_draft(monkeypatch) -> None:
    a, b = list(range(1, 15)), list(range(20, 34))  # disjoint: 2 ** 14 lists
    lists = interleave._prefix_lists(a, b, 14, limit=300)
    assert len(lists) == 300 and len({tuple(r) for r in lists.tolist()}) == 300
    dist = optimized_distribution(a, b, 14, limit=300)
    assert dist is not None
    np.testing.assert_allclose(dist.probabilities @ dist.credits, 0.0, atol=1e-7)
    monkeypatch.setattr(interleave, "optimized_distribution", lambda *args, **kw: None)
    items, credits = optimized([1, 2, 3], [4, 5, 6], 4, 11)
    ids, teams = team_draft([1, 2, 3], [4, 5, 6], 4, 11)
    assert items == ids and credits == [1.0 if t == 0 else -1.0 for t in teams]

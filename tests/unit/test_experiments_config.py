"""Experiment configs, user assignment and team-draft interleaving: no artifacts needed."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from rayrec.experiments.config import Experiment, assign, unit_hash
from rayrec.experiments.interleave import NEUTRAL, seed_of, team_draft
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

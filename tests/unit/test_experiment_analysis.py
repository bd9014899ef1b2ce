"""The analysis of online experiments from logs written into a SQLite store: A/B tests with a known
winner and a broken split, every attribution rule, an interleaving experiment, and the job."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps_t

from pipelines import experiment
from rayrec.experiments.analysis import IMPRESSIONS_LOG, analyze, summary, write_report
from rayrec.realtime import EVENTS_LOG
from rayrec.store import open_store

T0 = 1_700_000_000.0


@pytest.fixture
def store(tmp_path):
    s = open_store(str(tmp_path / "s.sqlite"))
    yield s
    s.close()


def _impression(rid: str, user: int, ts: float, items: list[int], *, experiment: str | None = "exp", variant: str | None = "control",
                mode: str | None = "ab", teams: list[str] | None = None, variants: list[str] | None = None,
                credits: list[float] | None = None, interleaving: str | None = None) -> dict:  # fmt: skip
    return {"request_id": rid, "user_id": user, "ts": ts, "experiment": experiment, "mode": mode, "variant": variant,
            "variants": variants, "items": items, "teams": teams, "degraded": False,
            **({"credits": credits, "interleaving": interleaving} if credits is not None else {})}  # fmt: skip


def _event(eid: str, user: int, movie: int, ts: float, rid: str | None, kind: str = "click", value: float | None = None) -> dict:
    return {"kind": kind, "user_id": user, "movie_id": movie, "value": value, "timestamp": int(ts), "event_id": eid, "request_id": rid}


def _simulate_ab(store, n_users: int, rates: dict[str, float], *, split: float = 0.5, seed: int = 0) -> None:
    """Users split between the variants of ``rates`` (the first gets ``split``), 1–4 lists of 5 items
    each, a click on one item of a list with the variant's rate, and a rating after some clicks."""
    rng = np.random.default_rng(seed)
    names = list(rates)
    imps, events = [], []
    for u in range(1, n_users + 1):
        v = names[0] if rng.random() < split else names[1]
        for k in range(int(rng.integers(1, 5))):
            rid, ts = f"r{u}-{k}", T0 + 3600 * k
            items = [int(m) for m in rng.choice(500, size=5, replace=False) + 1]
            imps.append(_impression(rid, u, ts, items, variant=v))
            if rng.random() < rates[v]:
                events.append(_event(f"c{u}-{k}", u, items[int(rng.integers(5))], ts + 30, rid))
                if rng.random() < 0.3:
                    events.append(_event(f"v{u}-{k}", u, events[-1]["movie_id"], ts + 60, rid, "rating", 4.0))
    store.append_log(IMPRESSIONS_LOG, imps)
    store.append_log(EVENTS_LOG, events)


def test_ab_finds_the_better_variant(store):
    _simulate_ab(store, 2000, {"control": 0.10, "b": 0.16})
    r = analyze(store, "exp")
    ab = r["ab"]
    assert (ab["control"], ab["control_from"]) == ("control", "name")
    assert set(ab["variants"]) == {"control", "b"}
    assert sum(v["users"] for v in ab["variants"].values()) == r["totals"]["users"] == 2000
    assert ab["variants"]["b"]["ctr"]["value"] > ab["variants"]["control"]["ctr"]["value"]
    c = ab["comparisons"]["b"]["ctr"]
    assert c["difference"] > 0 and c["p_value"] < 0.05 and c["ci_low"] > 0
    assert 0 < c["mde"] < c["difference"]
    assert not ab["srm"]["mismatch"] and ab["srm"]["weights_from"] == "equal"
    assert ab["variants"]["b"]["likes"] == ab["variants"]["b"]["ratings"] > 0  # every simulated rating is 4.0
    events = r["totals"]["events"]
    assert events["attributed"]["user_item"] == 0 and sum(events["unattributed"].values()) == 0
    assert events["attributed"]["request"] == sum(v["clicks"] + v["ratings"] for v in ab["variants"].values())
    assert json.loads(json.dumps(r, allow_nan=False)) == r  # plain JSON: no NaN
    assert "SRM p" in summary(r)
    assert analyze(store, "exp", control="b")["ab"]["comparisons"]["control"]["ctr"]["difference"] == pytest.approx(-c["difference"])


def test_srm_flags_a_60_40_split_of_a_50_50_experiment(store):
    _simulate_ab(store, 2000, {"a": 0.1, "b": 0.1}, split=0.6, seed=1)
    r = analyze(store, "exp", weights={"a": 0.5, "b": 0.5})
    srm = r["ab"]["srm"]
    assert srm["mismatch"] and srm["p_value"] < 1e-3 and srm["weights_from"] == "argument"
    assert r["ab"]["control"] == "a" and r["ab"]["control_from"] == "first_sorted"
    assert not analyze(store, "exp", weights={"a": 0.6, "b": 0.4})["ab"]["srm"]["mismatch"]
    with pytest.raises(ValueError, match="no weight for variant"):
        analyze(store, "exp", weights={"a": 1.0})
    with pytest.raises(ValueError, match="control 'zz' is not a variant"):
        analyze(store, "exp", control="zz")


def test_attribution_rules(store):
    store.append_log(IMPRESSIONS_LOG, [
        _impression("r1", 1, T0, [10, 11, 12]),
        _impression("r2", 1, T0 + 1000, [11, 13]),
        _impression("r3", 2, T0, [20, 21], variant="b"),
        _impression("x1", 1, T0, [10, 30], experiment="other", variant="b"),
        _impression("n1", 7, T0, [10], experiment=None, variant=None, mode=None),
    ])  # fmt: skip
    old = _event("e9", 2, 21, T0 + 5, None)
    del old["request_id"]  # a record from before request ids were logged
    store.append_log(EVENTS_LOG, [
        _event("e1", 1, 10, T0 + 5, "r1"),  # by request
        _event("e1", 1, 10, T0 + 5, "r1"),  # the same event logged twice: counted once
        _event("e2", 1, 99, T0 + 5, "r1"),  # not in r1's list
        _event("e3", 1, 10, T0 + 5, "nope"),  # no such request
        _event("e4", 1, 11, T0 + 1010, None, "rating", 4.5),  # fallback: r2, the latest list showing 11
        _event("e5", 1, 12, T0 - 4, None),  # fallback within the clock skew before r1
        _event("e6", 1, 13, T0 + 500, None),  # 13 shown only later (r2): no impression
        _event("e7", 1, 12, T0 + 86400 + 100, None),  # r1 showed 12, but outside the window
        _event("e8", 1, 30, T0 + 5, "x1"),  # an impression of another experiment
        old,  # fallback for an old record without the field
        _event("e10", 3, 10, T0, None),  # a user outside the experiment
        {"kind": "rating", "user_id": 1, "movie_id": 10, "value": 2.0, "timestamp": int(T0) + 7, "event_id": "e11", "request_id": "r1"},
    ])  # fmt: skip
    r = analyze(store, "exp")
    ev = r["totals"]["events"]
    assert ev["attributed"] == {"request": 2, "user_item": 3}
    assert ev["unattributed"] == {"unknown_request": 1, "not_shown": 1, "no_impression": 2}
    assert (ev["other_impression_events"], ev["other_users_events"], ev["duplicate_events"]) == (1, 1, 1)
    control, b = r["ab"]["variants"]["control"], r["ab"]["variants"]["b"]
    assert (control["impressions"], control["clicks"], control["ratings"], control["likes"]) == (2, 2, 2, 1)
    assert (b["impressions"], b["clicks"]) == (1, 1)
    assert r["ab"]["variants"]["b"]["ctr"]["se"] is None  # one user: no standard error, null in JSON
    assert analyze(store, "exp", attribution_window_s=86400 + 200)["totals"]["events"]["attributed"]["user_item"] == 4
    assert analyze(store, "exp", after=store.read_log(IMPRESSIONS_LOG)[0][0])["totals"]["impressions"] == 2


def test_fallback_takes_the_latest_list_that_showed_the_movie(store):
    pair = {"mode": "interleave", "variant": None, "variants": ["a", "b"]}
    store.append_log(IMPRESSIONS_LOG, [
        _impression("r1", 1, T0, [5, 6], teams=["a", "b"], **pair),
        _impression("r2", 1, T0 + 100, [6, 5], teams=["a", "b"], **pair),
    ])  # fmt: skip
    store.append_log(EVENTS_LOG, [_event("e1", 1, 5, T0 + 200, None)])  # r2 showed 5 for team b
    il = analyze(store, "exp")["interleave"]
    assert il["credit"] == {"a": 0, "b": 1}
    assert il["per_impression"]["no_credit"] == 1


def test_clicks_on_items_both_variants_offered_credit_neither(store):
    """A neutral item (team "" in the log: both lists offered it in the same round) is counted, and
    its click decides no impression."""
    pair = {"mode": "interleave", "variant": None, "variants": ["a", "b"]}
    store.append_log(IMPRESSIONS_LOG, [
        _impression("r1", 1, T0, [5, 6, 7], teams=["", "a", "b"], **pair),
        _impression("r2", 2, T0, [5, 8, 9], teams=["", "b", "a"], **pair),
    ])  # fmt: skip
    store.append_log(EVENTS_LOG, [_event("e1", 1, 5, T0 + 10, "r1"), _event("e2", 2, 5, T0 + 10, "r2"), _event("e3", 2, 8, T0 + 10, "r2")])
    il = analyze(store, "exp")["interleave"]
    assert il["neutral"] == 2 and il["credit"] == {"a": 0, "b": 1}
    p = il["per_impression"]
    assert (p["wins_a"], p["wins_b"], p["no_credit"]) == (0, 1, 1)


def test_optimized_interleaving_is_read_by_the_mean_credit(store):
    """Logged credits (optimized interleaving) are summed per user over the clicked items and tested
    by their mean; a record without credits (team draft) counts ±1 by team."""
    pair = {"mode": "interleave", "variant": None, "variants": ["a", "b"]}
    store.append_log(IMPRESSIONS_LOG, [
        _impression("r1", 1, T0, [5, 6, 7], teams=["a", "b", ""], credits=[3.0, -1.0, 0.0], interleaving="optimized", **pair),
        _impression("r2", 1, T0 + 1, [6, 5, 8], teams=["b", "a", "a"], credits=[-4.0, 2.0, 1.0], interleaving="optimized", **pair),
        _impression("r3", 2, T0, [8, 9, 5], teams=["b", "a", "b"], credits=[-2.0, 5.0, -1.0], interleaving="optimized", **pair),
        _impression("r4", 3, T0, [9, 8, 7], teams=["a", "b", ""], **pair),
    ])  # fmt: skip
    store.append_log(EVENTS_LOG, [
        _event("e1", 1, 5, T0 + 10, "r1"), _event("e2", 1, 7, T0 + 10, "r1"), _event("e3", 1, 6, T0 + 10, "r2"),
        _event("e4", 1, 8, T0 + 10, "r2"), _event("e5", 2, 8, T0 + 10, "r3"), _event("e6", 2, 9, T0 + 10, "r3"),
        _event("e7", 3, 8, T0 + 10, "r4"),
    ])  # fmt: skip
    r = analyze(store, "exp")
    il = r["interleave"]
    assert il["interleaving"] == ["optimized", "team_draft"] and il["test"] == "mean_credit_per_user"
    per_user = np.array([3.0 + 0.0 - 4.0 + 1.0, -2.0 + 5.0, -1.0])  # users 1, 2, 3 (team draft: b's item, -1)
    m = il["mean_credit_per_user"]
    assert m["units"] == 3 and m["mean"] == pytest.approx(per_user.mean())
    assert m["p_value"] == pytest.approx(float(sps_t.ttest_1samp(per_user, 0.0).pvalue))
    assert "the test to read: mean credit per user" in summary(r)


def test_interleaving_finds_the_preferred_team(store):
    rng = np.random.default_rng(2)
    imps, events = [], []
    for i in range(1500):
        u, rid = int(rng.integers(1, 400)), f"q{i}"
        first = rng.random() < 0.5  # team draft: a coin flip for who picks first
        teams = [("a" if first else "b") if k % 2 == 0 else ("b" if first else "a") for k in range(6)]
        items = [int(m) for m in rng.choice(1000, size=6, replace=False) + 1]
        imps.append(_impression(rid, u, T0 + i, items, mode="interleave", variant=None, variants=["a", "b"], teams=teams))
        for m, t in zip(items, teams):
            if rng.random() < (0.04 if t == "a" else 0.08):
                events.append(_event(f"c{i}-{m}", u, m, T0 + i + 10, rid))
    store.append_log(IMPRESSIONS_LOG, imps)
    store.append_log(EVENTS_LOG, events)
    r = analyze(store, "exp")
    il = r["interleave"]
    assert il["variants"] == ["a", "b"] and il["impressions"] == 1500
    p = il["per_impression"]
    assert p["share_a"] < 0.4 and p["p_value"] < 1e-3 and p["delta"] < 0
    assert p["wins_a"] + p["wins_b"] + p["ties"] == il["impressions_with_clicks"] > 0
    assert il["per_user"]["wins_b"] > il["per_user"]["wins_a"]
    assert sum(il["credit"].values()) == len(events) == r["totals"]["clicks"]
    assert il["ratings"]["per_impression"]["no_credit"] == 1500  # nobody rated
    assert il["test"] == "per_user" and il["interleaving"] == ["team_draft"]
    m = il["mean_credit_per_user"]
    assert m["mean"] < 0 and m["p_value"] < 1e-3, "team draft's credits (±1) read by their mean agree"
    assert "wins" in summary(r)


def test_report_files(store, tmp_path):
    _simulate_ab(store, 200, {"control": 0.2, "b": 0.3})
    paths = write_report(analyze(store, "exp"), str(tmp_path / "out"))
    assert json.loads(Path(paths["json"]).read_text())["experiment"] == "exp"
    page = Path(paths["html"]).read_text()
    assert page.count("data:image/png;base64,") == 2 and "Against control" in page


def test_missing_experiment_names_the_ones_found(store):
    store.append_log(IMPRESSIONS_LOG, [_impression("r1", 1, T0, [1], experiment="other")])
    with pytest.raises(ValueError, match="no impressions of experiment 'exp'.*found: other"):
        analyze(store, "exp")


def test_job_writes_the_report_and_explains_errors(store, tmp_path, capsys):
    _simulate_ab(store, 300, {"control": 0.2, "b": 0.3})
    url, out = str(tmp_path / "s.sqlite"), str(tmp_path / "reports")
    base = ["--store", url, "--artifacts", str(tmp_path / "art"), "--out", out]
    assert experiment.main(["--name", "exp", *base, "--weights", "control=0.5,b=0.5"]) == 0
    printed = capsys.readouterr().out
    assert "control" in printed and "CTR" in printed and f"{out}/exp.html" in printed
    assert json.loads(Path(out, "exp.json").read_text())["ab"]["srm"]["weights_from"] == "argument"
    for args, message in (
        (["--name", "nope", *base], "no impressions of experiment 'nope'"),
        (["--name", "exp", *base, "--weights", "control:1"], "bad --weights"),
        (["--name", "exp", "--store", str(tmp_path / "missing.sqlite"), "--out", out], "no online store at"),
        (["--name", "exp", "--store", "redis://127.0.0.1:1/0", "--out", out], "could not ping"),  # nothing listens there
    ):
        assert experiment.main(args) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and "\n" not in err


def test_lists_served_without_a_request_id_each_count(store):
    store.append_log(IMPRESSIONS_LOG, [_impression("", 1, T0, [5]), _impression("", 1, T0 + 60, [5, 6])])
    store.append_log(EVENTS_LOG, [_event("e1", 1, 6, T0 + 90, None)])
    r = analyze(store, "exp")
    assert (r["totals"]["impressions"], r["totals"]["duplicate_impressions"]) == (2, 0)
    assert r["totals"]["events"]["attributed"] == {"request": 0, "user_item": 1}

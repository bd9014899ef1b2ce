"""Experiments in serving, end to end in one process: two model versions side by side, A/B
assignment and team-draft interleaving through ``/recommend``, impressions logged, clicks posted with
the request id through ``/events``, and the analysis job's numbers read back from the store."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from pipelines import experiment as experiment_job
from rayrec import uri
from rayrec.experiments.analysis import analyze
from rayrec.experiments.config import Experiment
from rayrec.experiments.impressions import IMPRESSIONS_LOG
from rayrec.realtime.updater import EVENTS_LOG
from rayrec.serving import ServingConfig, create_app
from rayrec.serving.bundle import load_bundle
from rayrec.serving.service import RecommenderService
from rayrec.store import open_store
from rayrec.store.sqlite import copy_file

N_USERS = 80


@pytest.fixture(scope="module")
def scratch(serving_artifacts, tmp_path_factory) -> tuple[str, str, str]:
    """A copy of the session's artifacts with a second ranker version, and a copy of its store (the
    clicks posted here change users' state: other tests must not see them) without the impressions and
    events other tests logged before: the counts checked here are this module's own, in any test order."""
    tmp = tmp_path_factory.mktemp("experiments")
    arts = tmp / "artifacts"
    shutil.copytree(serving_artifacts.artifacts, arts, ignore=shutil.ignore_patterns("logs"))
    root = arts / "models" / "ranker"
    live = uri.latest(str(root))
    assert live is not None
    second = f"{live}-b"
    shutil.copytree(root / live, root / second)
    src = serving_artifacts.store.removeprefix("sqlite://")
    copy_file(src, tmp / "store.db")
    store = open_store(f"sqlite://{tmp}/store.db")
    try:
        for name in (IMPRESSIONS_LOG, EVENTS_LOG):
            if store.log_length(name):
                store.trim_log(name, store.log_end(name))
        assert store.log_length(IMPRESSIONS_LOG) == store.log_length(EVENTS_LOG) == 0
    finally:
        store.close()
    return str(arts), f"sqlite://{tmp}/store.db", second


def config(second: str) -> ServingConfig:
    return ServingConfig.model_validate({"experiments": [
        {"name": "ab1", "users": [0.0, 0.5], "variants": [
            {"name": "control"}, {"name": "treat", "overrides": {"ranker_version": second, "rank_weight": 1.0}}]},
        {"name": "il1", "mode": "interleave", "users": [0.5, 1.0], "variants": [
            {"name": "a"}, {"name": "b", "overrides": {"rank_weight": 1.0, "rerank": {"diversity": 0.0}}}]},
    ]})  # fmt: skip


def test_experiment_config_naming_a_missing_version_is_refused(scratch) -> None:
    arts, store, _ = scratch
    cfg = config("no-such-version")
    with pytest.raises(ValueError, match=r"experiments\[0\]\.variants\[1\]\.overrides\.ranker_version: no models/ranker version 'no-such-version'"):
        RecommenderService(arts, open_store(store), load_bundle(arts, cfg))


def test_two_variants_are_served_logged_clicked_and_analysed(scratch, tmp_path) -> None:
    arts, store_url, second = scratch
    cfg = config(second)
    svc = RecommenderService(arts, open_store(store_url), load_bundle(arts, cfg))
    ab, il = cfg.experiments
    try:
        # both ranker versions are loaded side by side, once, and the arms that change only
        # request-time settings share the live bundle's artifacts
        assert svc._arms["ab1/treat"].bundle.versions["ranker"] == second
        assert svc._arms["ab1/control"].bundle.ranker is svc.bundle.ranker
        assert svc._arms["il1/b"].bundle.index is svc.bundle.index
        answers, posted, own_lists = asyncio.run(_traffic(svc, ab))
    finally:
        svc.close()

    by_exp: dict[str | None, list[dict[str, Any]]] = {}
    for rec in answers:
        assert rec["request_id"] and len(rec["items"]) == 10
        by_exp.setdefault(rec["experiment"], []).append(rec)
    assert set(by_exp) == {"ab1", "il1"}, "every user is in one of the two experiments (they cover all users)"
    assert len(by_exp["ab1"]) > 20 and len(by_exp["il1"]) > 20
    for rec in by_exp["ab1"]:
        assert rec["variant"] == ab.variant_of(rec["user_id"]).name, "the variant follows the stable hash"
        assert all(it["team"] is None for it in rec["items"])
    for rec in by_exp["il1"]:
        assert rec["variant"] == "interleaved"
        a_list, b_list = own_lists[rec["user_id"]]
        for team, own in (("a", a_list), ("b", b_list)):
            picked = [it["movie_id"] for it in rec["items"] if it["team"] == team]
            assert picked == [m for m in own if m in picked], "a team's items come from its arm's list, in its order"
        counts = [sum(it["team"] == t for it in rec["items"]) for t in ("a", "b")]
        assert abs(counts[0] - counts[1]) <= 1, counts
        scores = [it["score"] for it in rec["items"]]
        assert scores == sorted(scores, reverse=True)
    assert len({r["variant"] for r in by_exp["ab1"]}) == 2

    store = open_store(store_url)
    try:
        logged = store.read_log(IMPRESSIONS_LOG)
        assert len(logged) == len(answers) + 1, "every served list is logged (and the one asked twice)"
        got_ab = analyze(store, "ab1")
        got_il = analyze(store, "il1")
    finally:
        store.close()
    # A/B: each variant's impressions and clicks are exactly what was served and posted
    for variant in ("control", "treat"):
        row = got_ab["ab"]["variants"][variant]
        assert row["impressions"] == sum(r["variant"] == variant for r in by_exp["ab1"]) + (variant == posted["repeat_variant"])
        assert row["clicks"] == posted["ab"][variant], (variant, row)
        assert row["ctr"]["value"] == pytest.approx(row["clicks"] / row["impressions"])
    assert set(got_ab["ab"]["comparisons"]) == {"treat"} and 0 <= got_ab["ab"]["comparisons"]["treat"]["ctr"]["p_value"] <= 1
    assert got_ab["ab"]["srm"]["mismatch"] is False
    events = got_ab["totals"]["events"]
    assert events["attributed"]["request"] == sum(posted["ab"].values())
    assert events["unattributed"]["unknown_request"] == 1, "an event naming an unknown request id is stored and counted"
    # interleaving: every credited click went to team b, so b wins every impression with a click on
    # its items; clicks on items both arms offered are counted and credit neither
    pref = got_il["interleave"]["per_impression"]
    assert pref["wins_b"] == posted["il_clicked"] and pref["wins_a"] == 0, pref
    assert posted["il_neutral"] > 0, "the arms share their top items for some users"
    assert got_il["interleave"]["neutral"] == posted["il_neutral"]
    assert pref["p_value"] < 0.05

    # the analysis job writes its report where the app serves it
    rc = experiment_job.main(["--name", "il1", "--store", store_url, "--artifacts", arts])
    assert rc == 0
    assert (Path(arts) / "reports" / "experiments" / "il1.html").exists()
    svc2 = RecommenderService(arts, open_store(store_url), load_bundle(arts, ServingConfig()))
    try:
        page, missing = asyncio.run(_get_reports(svc2))
    finally:
        svc2.close()
    assert page.status_code == 200 and "il1" in page.text
    assert missing.status_code == 404 and "pipelines.experiment" in missing.json()["error"]


async def _traffic(svc: RecommenderService, ab: Experiment) -> tuple[list[dict[str, Any]], dict[str, Any], dict[int, tuple[list[int], list[int]]]]:
    """Ask every user's list through the HTTP app, click the top item of treat's lists (and of every
    other control list), click team b's first item in interleaved lists, and the first item both
    arms offered (team null), if any."""
    answers: list[dict[str, Any]] = []
    posted: dict[str, Any] = {"ab": {"control": 0, "treat": 0}, "il_clicked": 0, "il_neutral": 0}
    own: dict[int, tuple[list[int], list[int]]] = {}
    transport = httpx.ASGITransport(app=create_app(svc))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        for u in range(1, N_USERS + 1):
            rec = (await c.get(f"/recommend?user_id={u}&k=10")).json()
            answers.append(rec)
            clicks = []
            if rec["experiment"] == "ab1":
                if rec["variant"] == "treat" or u % 2 == 0:
                    clicks.append(rec["items"][0]["movie_id"])
                    posted["ab"][rec["variant"]] += 1
            else:
                a = await svc.recommend_as("il1/a", u, 10)
                b = await svc.recommend_as("il1/b", u, 10)
                own[u] = ([it.movie_id for it in a.items], [it.movie_id for it in b.items])
                first_b = [it["movie_id"] for it in rec["items"] if it["team"] == "b"]
                if first_b:
                    clicks.append(first_b[0])
                    posted["il_clicked"] += 1
                shared = [it["movie_id"] for it in rec["items"] if it["team"] is None]
                if shared:
                    clicks.append(shared[0])
                    posted["il_neutral"] += 1
            for movie in clicks:
                r = await c.post("/events", json={"kind": "click", "user_id": u, "movie_id": movie, "request_id": rec["request_id"]})
                assert r.status_code == 200, r.text
        # an event naming a request id no list had: stored, counted as unattributed
        user = next(r["user_id"] for r in answers if r["experiment"] == "ab1")
        r = await c.post("/events", json={"kind": "click", "user_id": user, "movie_id": answers[0]["items"][0]["movie_id"],
                                          "request_id": "no-such-request"})  # fmt: skip
        assert r.status_code == 200, r.text
        r = await c.post("/events", json={"kind": "click", "user_id": 1, "movie_id": 1, "request_id": "bad id!"})
        assert r.status_code == 422 and r.json()["field"] == "request_id"
        # one more list for an A/B user, not clicked
        again = (await c.get(f"/recommend?user_id={user}&k=10")).json()
        posted["repeat_variant"] = again["variant"]
    assert await svc.flush_impressions()
    return answers, posted, own


async def _get_reports(svc: RecommenderService) -> tuple[httpx.Response, httpx.Response]:
    from rayrec.reports import add_report_route

    app = create_app(svc)
    add_report_route(app, svc.artifacts)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
        return await c.get("/report/experiments/il1"), await c.get("/report/experiments/nope")


def test_optimized_interleaving_is_served_logged_and_read_by_its_mean_credit(scratch) -> None:
    """An optimized interleaving experiment through the HTTP app: every list keeps the prefix
    constraint against both arms' own lists, each item carries its credit (rank in b − rank in a)
    and the team it favours, and the analysis reads the clicks posted with the request ids by the
    users' mean credit."""
    arts, store_url, _ = scratch
    cfg = ServingConfig.model_validate({"experiments": [
        {"name": "oi1", "mode": "interleave", "interleaving": "optimized", "variants": [
            {"name": "a"}, {"name": "b", "overrides": {"rank_weight": 1.0, "rerank": {"diversity": 0.0}}}]},
    ]})  # fmt: skip
    svc = RecommenderService(arts, open_store(store_url), load_bundle(arts, cfg))
    try:
        answers, own, clicked = asyncio.run(_optimized_traffic(svc))
    finally:
        svc.close()
    contested = 0
    for rec in answers:
        assert rec["experiment"] == "oi1" and rec["variant"] == "interleaved" and len(rec["items"]) == 10
        a_list, b_list = own[rec["user_id"]]
        ids = [it["movie_id"] for it in rec["items"]]
        for n in range(1, len(ids) + 1):
            assert any(set(ids[:n]) == set(a_list[:i]) | set(b_list[:j]) for i in range(11) for j in range(11)), (ids, a_list, b_list)
        for it in rec["items"]:
            m = it["movie_id"]
            want = (b_list.index(m) + 1 if m in b_list else len(b_list) + 1) - (a_list.index(m) + 1 if m in a_list else len(a_list) + 1)
            assert it["credit"] == want
            assert it["team"] == ("a" if want > 0 else "b" if want < 0 else None)
        contested += any(it["credit"] for it in rec["items"])
    assert contested > len(answers) // 2, "the arms disagree for most users"
    store = open_store(store_url)
    try:
        got = analyze(store, "oi1")
    finally:
        store.close()
    il = got["interleave"]
    assert il["interleaving"] == ["optimized"] and il["test"] == "mean_credit_per_user"
    assert il["impressions"] == len(answers)
    per_user = [sum(clicked.get(rec["user_id"], [])) for rec in answers]
    m = il["mean_credit_per_user"]
    assert m["units"] == len(answers) and m["mean"] == pytest.approx(sum(per_user) / len(per_user))


async def _optimized_traffic(svc: RecommenderService) -> tuple[list[dict[str, Any]], dict[int, tuple[list[int], list[int]]], dict[int, list[float]]]:
    """Every user's interleaved list through the HTTP app, and a click on its first contested item
    (and on its top item), posted with the request id."""
    answers: list[dict[str, Any]] = []
    own: dict[int, tuple[list[int], list[int]]] = {}
    clicked: dict[int, list[float]] = {}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(svc)), base_url="http://test") as c:
        for u in range(1, 41):
            rec = (await c.get(f"/recommend?user_id={u}&k=10")).json()
            answers.append(rec)
            a = await svc.recommend_as("oi1/a", u, 10)
            b = await svc.recommend_as("oi1/b", u, 10)
            own[u] = ([it.movie_id for it in a.items], [it.movie_id for it in b.items])
            picks = {0: rec["items"][0]} | {i: it for i, it in enumerate(rec["items"]) if it["credit"]}
            for it in list(picks.values())[:2]:
                r = await c.post("/events", json={"kind": "click", "user_id": u, "movie_id": it["movie_id"], "request_id": rec["request_id"]})
                assert r.status_code == 200, r.text
                clicked.setdefault(u, []).append(it["credit"])
    assert await svc.flush_impressions()
    return answers, own, clicked


def test_bad_experiment_config_is_refused_by_a_live_service(scratch) -> None:
    """A reconfigure with a bad experiment is refused and the live config keeps serving."""
    arts, store_url, second = scratch
    svc = RecommenderService(arts, open_store(store_url), load_bundle(arts, ServingConfig()))
    try:
        bad = config("gone")
        with pytest.raises(ValueError, match="ranker_version"):
            asyncio.run(svc.reconfigure(bad))
        assert svc.bundle.config.experiments == []
        with pytest.raises(ValidationError, match="sum to 1"):
            ServingConfig.model_validate({"experiments": [{"name": "x", "variants": [
                {"name": "a", "weight": 0.7}, {"name": "b", "weight": 0.7}]}]})  # fmt: skip
        asyncio.run(svc.reconfigure(config(second)))
        assert sorted(svc._arms) == ["ab1/control", "ab1/treat", "il1/a", "il1/b"]
    finally:
        svc.close()


def test_page_shows_the_variant_and_counts_a_click_for_its_list(scratch, tmp_path) -> None:
    """The "guess you like" page under an interleaving experiment: it says so, marks each item's team,
    and a click on an item is posted with the list's request id."""
    from test_web_page import CHROMIUM, Page

    if CHROMIUM is None:
        pytest.skip("headless Chromium not installed (apt-get install chromium)")
    import threading

    import uvicorn

    from rayrec.realtime import EVENTS_LOG

    arts, store_url, _ = scratch
    cfg = ServingConfig.model_validate({"experiments": [{"name": "page-il", "mode": "interleave", "variants": [
        {"name": "a"}, {"name": "b", "overrides": {"rank_weight": 1.0}}]}]})  # fmt: skip
    svc = RecommenderService(arts, open_store(store_url), load_bundle(arts, cfg))
    server = uvicorn.Server(uvicorn.Config(create_app(svc), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    page = None
    try:
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        page = Page(tmp_path / "chromium")
        page.send("Page.navigate", url=f"http://127.0.0.1:{port}/?user_id=7")
        page.wait("document.querySelectorAll('#recs li.item').length >= 10")
        assert page.js("document.getElementById('variant').textContent").startswith("experiment page-il: interleaved (")
        teams = page.js("[...document.querySelectorAll('#recs li.item .team')].map(e => [e.textContent, e.className])")
        assert len(teams) == 10, "every item of an interleaved list is tagged"
        assert all(name in ("a", "b") and cls == "team" or (name, cls) == ("both", "team neutral") for name, cls in teams), teams
        movie = int(page.js("document.querySelector('#recs li.item').dataset.movieId"))
        page.js("document.querySelector('#recs li.item').click()")
        page.wait("document.querySelectorAll('#similar li.item').length > 0")
        store = open_store(store_url)
        try:
            deadline = time.monotonic() + 10
            clicks: list[dict[str, Any]] = []
            while not clicks and time.monotonic() < deadline:
                clicks = [r for _, r in store.read_log(EVENTS_LOG) if r.get("user_id") == 7 and r.get("movie_id") == movie
                          and r.get("kind") == "click" and r.get("request_id")]  # fmt: skip
                time.sleep(0.1)
        finally:
            store.close()
        assert clicks, "the click on the list was posted with its request id"
        shown: list[dict[str, Any]] = []
        deadline = time.monotonic() + 10
        while not shown and time.monotonic() < deadline:  # impressions are written in batches, a moment later
            shown = [r for _, r in store_read(store_url, IMPRESSIONS_LOG) if r["request_id"] == clicks[-1]["request_id"]]
            time.sleep(0.05)
        assert shown and movie in shown[0]["items"] and shown[0]["experiment"] == "page-il"
    finally:
        if page is not None:
            page.close()
        server.should_exit = True
        thread.join(10)
        svc.close()


def store_read(url: str, log: str) -> list[tuple[str, dict[str, Any]]]:
    store = open_store(url)
    try:
        return store.read_log(log)
    finally:
        store.close()


def test_arms_cross_stage_boundaries_in_the_split_compositions(scratch) -> None:
    """In the ranker and chain compositions the stages run in other replicas: the request's arm
    travels with it (``Recalled.arm``), so every stage uses that arm's models and settings. Here the
    'replicas' are a second service with the same config, called as the Serve handles would be."""
    arts, store_url, second = scratch
    cfg = config(second)
    ingress = RecommenderService(arts, open_store(store_url), load_bundle(arts, cfg))
    stages = RecommenderService(arts, open_store(store_url), load_bundle(arts, cfg))
    fused = RecommenderService(arts, open_store(store_url), load_bundle(arts, cfg))

    async def rank(r: Any) -> Any:
        return (await stages.rank_batch([r.for_ranker()]))[0]

    async def rerank(r: Any, ranked: Any) -> Any:
        return stages.core_for(r.arm).rerank(r, ranked)

    ingress.recall_fn = stages.recall_local  # type: ignore[assignment]
    ingress.rank_fn = rank
    ingress.rerank_fn = rerank

    async def run() -> list[tuple[list[int], list[int]]]:
        out = []
        for u in range(1, 41):
            for arm in ("ab1/control", "ab1/treat", "il1/b"):
                a = await ingress.recommend_as(arm, u, 10)
                b = await fused.recommend_as(arm, u, 10)
                out.append(([it.movie_id for it in a.items], [it.movie_id for it in b.items]))
        return out

    try:
        pairs = asyncio.run(run())
    finally:
        for s in (ingress, stages, fused):
            s.close()
    assert all(split == whole for split, whole in pairs), "the split stages serve each arm's own list"
    differs = sum(a != b for a, b in zip(pairs[0::3], pairs[1::3]))
    assert differs > 10, "control and treat (another ranker version, rank_weight 1) serve different lists"

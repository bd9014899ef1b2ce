"""Users needed by an A/B test and by interleaving, on simulated users with known preferences.

    python -m pipelines.simulate [--data DIR] [--artifacts DIR] [--users 2000] [--trials 200]
                                 [--pair NAME=JSON ...] [--online-users 2000] [--out DIR]

``--data`` is a synthetic dataset folder (``SYNTHETIC.json`` says its config; generated when missing,
with ``--n-users/--n-items/--n-ratings``); the models under ``--artifacts`` must be trained on it (the
offline steps of the main job run first when the artifacts hold no features). Each ``--pair`` is a
variant ``b`` (serving overrides as JSON) served against the defaults ``a``; both lists of every
simulated user come from the serving code (:mod:`rayrec.experiments.simulate`). Interleaving is
measured three ways in the same run: team draft (sign test), optimized interleaving (the t-test of
the users' mean credit) and classic team draft (shared items to the coin's winner). Then, with
``--online-users``, the first pair runs as live experiments through ``/recommend``'s code path (an A/B
test on half the users, team-draft and optimized interleaving on a quarter each): impressions logged, clicks posted with their
request ids, the analysis job's numbers read back. Writes ``simulation.json`` and ``simulation.html``
(served by the app at ``/report/experiments/simulation``) under ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from pipelines._common import HelpFormatter, artifacts_arg, setup_logging
from rayrec.store.sqlite import copy_file

DEFAULT_PAIRS: dict[str, dict[str, Any]] = {
    "rank-only": {"rank_weight": 1.0},
    "no-ranker": {"ranker_version": None},
}


def _pairs(values: list[str] | None) -> dict[str, dict[str, Any]]:
    if not values:
        return dict(DEFAULT_PAIRS)
    out: dict[str, dict[str, Any]] = {}
    for v in values:
        name, sep, text = v.partition("=")
        try:
            overrides = json.loads(text) if sep else None
        except json.JSONDecodeError as e:
            raise ValueError(f"--pair {v!r}: the overrides are not JSON ({e})") from None
        if not name or not isinstance(overrides, dict):
            raise ValueError(f"--pair {v!r}: expected NAME='{{\"rank_weight\": 1.0}}'")
        out[name] = overrides
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(formatter_class=HelpFormatter, description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="data/simulation", help="synthetic dataset folder (generated when missing)")
    p.add_argument("--artifacts", default=None, help="artifacts trained on --data (default: <data>/artifacts)")
    p.add_argument("--n-users", type=int, default=3000, help="synthetic users, when --data is generated")
    p.add_argument("--n-items", type=int, default=2000, help="synthetic items, when --data is generated")
    p.add_argument("--n-ratings", type=int, default=150_000, help="synthetic ratings, when --data is generated")
    p.add_argument("--users", type=int, default=2000, help="simulated users whose lists are served per pair")
    p.add_argument("--trials", type=int, default=200, help="seeded trials per number of users")
    p.add_argument("--draws", type=int, default=4, help="interleavings drawn per user (team draft; optimized: lists drawn from its distribution)")
    p.add_argument("--k", type=int, default=10, help="list length")
    p.add_argument("--pair", action="append", help="NAME=JSON: variant b's serving overrides (repeatable)")
    p.add_argument("--online-users", type=int, default=2000, help="users served live for the first pair (0: skip)")
    p.add_argument("--out", default=None, help="output folder (default: <artifacts>/reports/experiments)")
    p.add_argument("--engagement", type=float, action="append",
                   help="click models to run: 0 = every user alike, e > 0 = users click in proportion to "
                        "(activity / median) ** e (repeatable; default: 0 and 0.5)")  # fmt: skip
    p.add_argument("--sessions", type=int, action="append",
                   help="lists each user sees during the experiment (repeatable; default: 1 and 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    try:
        pairs = _pairs(args.pair)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from rayrec.data.synthetic import SyntheticConfig, generate, truth

    data = Path(args.data)
    if not (data / "SYNTHETIC.json").exists():
        if data.exists() and any(data.iterdir()):
            print(f"error: {data} is not a synthetic dataset (no SYNTHETIC.json): the simulator needs the generator's "
                  "hidden preferences", file=sys.stderr)  # fmt: skip
            return 2
        generate(data, SyntheticConfig(n_users=args.n_users, n_items=args.n_items, n_ratings=args.n_ratings), progress=True)
    cfg = SyntheticConfig(**json.loads((data / "SYNTHETIC.json").read_text())["config"])
    artifacts = artifacts_arg(args.artifacts or str(data / "artifacts"))
    if not (Path(artifacts) / "features" / "LATEST").exists():
        from pipelines import main as main_job

        rc = main_job.main(["--dataset", str(data), "--artifacts", artifacts, "--no-serve"])
        if rc != 0:
            return rc
    out = Path(args.out or Path(artifacts) / "reports" / "experiments")
    result = asyncio.run(_simulate(args, pairs, truth(cfg), artifacts, out))
    from rayrec.experiments.simreport import write_simulation

    paths = write_simulation(result, str(out))
    print(_table(result))
    print("\n".join(f"wrote {p}" for p in paths.values()))
    return 0


async def _simulate(args: argparse.Namespace, pairs: dict[str, dict[str, Any]], truth: Any, artifacts: str, out: Path) -> dict[str, Any]:
    from rayrec.experiments.simulate import (
        ClickModel, collect_lists, interleavings, power_ab, power_interleaving, served_lists, true_quality, users_needed,
    )  # fmt: skip
    from rayrec.serving import ServingConfig
    from rayrec.serving.service import RecommenderService

    models = [ClickModel(engagement=e) for e in (args.engagement or [0.0, 0.5])]
    rng = np.random.default_rng(args.seed)
    n_pool = len(truth.user_bias)
    pool = np.sort(rng.choice(np.arange(1, n_pool + 1), size=min(args.users, n_pool), replace=False))
    scratch = tempfile.TemporaryDirectory(prefix="rayrec-simulation-")
    store = Path(scratch.name) / "store.sqlite"
    copy_file(Path(artifacts) / "online" / "store.sqlite", store)  # simulated clicks change users' state
    experiments = [{"name": f"sim-{name}", "mode": "interleave", "users": [i / len(pairs), (i + 1) / len(pairs)],
                    "variants": [{"name": "a"}, {"name": "b", "overrides": o}]} for i, (name, o) in enumerate(pairs.items())]  # fmt: skip
    svc = RecommenderService.create(artifacts, str(store), ServingConfig.model_validate({"experiments": experiments, "impressions": False}))
    rows = []
    try:
        for name in pairs:
            t = time.perf_counter()
            ids_a, ids_b = await collect_lists(svc, (f"sim-{name}/a", f"sim-{name}/b"), pool, k=args.k)
            served_s = time.perf_counter() - t
            # the interleavings of every form, drawn once for every click model and number of sessions
            drawn = {form: interleavings(ids_a, ids_b, args.draws, neutral=form != "classic", method="optimized" if form == "optimized" else "team_draft")
                     for form in ("team_draft", "classic", "optimized")}  # fmt: skip
            for click, sessions in ((c, s) for c in models for s in (args.sessions or [1, 5])):
                lists = served_lists(pool, ids_a, ids_b, truth, click, inter=drawn["team_draft"])
                classic = served_lists(pool, ids_a, ids_b, truth, click, inter=drawn["classic"])
                opt = served_lists(pool, ids_a, ids_b, truth, click, inter=drawn["optimized"])
                qa, qb = true_quality(lists.p_a), true_quality(lists.p_b)
                n_ab, tried_ab = users_needed(partial(_power, power_ab, lists, args.trials, args.seed, sessions))
                n_il, tried_il = users_needed(partial(_power, power_interleaving, lists, args.trials, args.seed, sessions))
                n_cl, tried_cl = users_needed(partial(_power, power_interleaving, classic, args.trials, args.seed, sessions))
                n_oi, tried_oi = users_needed(partial(_power, partial(power_interleaving, test="mean"), opt, args.trials, args.seed, sessions))
                rows.append({
                    "pair": name, "engagement": click.engagement, "sessions": sessions, "overrides_b": pairs[name], "quality_a": qa,
                    "quality_b": qb, "gap_relative": (qb - qa) / qa if qa else None,
                    "overlap_at_k": lists.meta["overlap_at_k"], "neutral_share": lists.meta["neutral_share"],
                    "users_ab": n_ab, "users_interleaving": n_il, "ratio": (n_ab / n_il) if n_ab and n_il else None,
                    "users_interleaving_classic": n_cl, "ratio_classic": (n_ab / n_cl) if n_ab and n_cl else None,
                    "users_optimized": n_oi, "ratio_optimized": (n_ab / n_oi) if n_ab and n_oi else None,
                    "power_ab": {str(k): v for k, v in sorted(tried_ab.items())},
                    "power_interleaving": {str(k): v for k, v in sorted(tried_il.items())},
                    "power_interleaving_classic": {str(k): v for k, v in sorted(tried_cl.items())},
                    "power_optimized": {str(k): v for k, v in sorted(tried_oi.items())},
                    "lists_served_s": round(served_s, 1),
                })  # fmt: skip
                print(f"{name} (engagement {click.engagement:g}, {sessions} session(s)): true clicks/list a {qa:.4f} b {qb:.4f}; "
                      f"users needed A/B {n_ab}, interleaving {n_il} (classic team draft {n_cl}, optimized {n_oi})", flush=True)  # fmt: skip
    finally:
        svc.close()
    online = None
    try:
        if args.online_users > 0:
            online = await _online(args, next(iter(pairs.items())), truth, artifacts, store, models[-1])
    finally:
        scratch.cleanup()
    return {"click_model": {k: v for k, v in vars(models[0]).items() if k != "engagement"}, "trials": args.trials, "users_simulated": len(pool), "k": args.k,
            "alpha": 0.05, "power": 0.8, "pairs": rows, "online": online}  # fmt: skip


async def _online(args: argparse.Namespace, pair: tuple[str, dict[str, Any]], truth: Any, artifacts: str, store: Path, click: Any) -> dict[str, Any]:
    """The first pair as live experiments: A/B on half the users, team-draft interleaving on a
    quarter, optimized interleaving on the last quarter."""
    from rayrec.experiments.analysis import analyze
    from rayrec.experiments.simulate import run_online
    from rayrec.serving import ServingConfig
    from rayrec.serving.service import RecommenderService

    name, overrides = pair
    variants = [{"name": "a"}, {"name": "b", "overrides": overrides}]
    cfg = ServingConfig.model_validate({"experiments": [
        {"name": f"online-ab-{name}", "mode": "ab", "users": [0.0, 0.5], "variants": variants},
        {"name": f"online-il-{name}", "mode": "interleave", "users": [0.5, 0.75], "variants": variants},
        {"name": f"online-oi-{name}", "mode": "interleave", "interleaving": "optimized", "users": [0.75, 1.0], "variants": variants},
    ]})  # fmt: skip
    svc = RecommenderService.create(artifacts, str(store), cfg)
    rng = np.random.default_rng([args.seed, 9])
    users = rng.choice(np.arange(1, len(truth.user_bias) + 1), size=min(args.online_users, len(truth.user_bias)), replace=False)
    try:
        t = time.perf_counter()
        counts = await run_online(svc, users, truth, click, k=args.k, seed=args.seed)
        took = time.perf_counter() - t
        return {"served": counts, "took_s": round(took, 1), "ab": analyze(svc.store, f"online-ab-{name}"),
                "interleave": analyze(svc.store, f"online-il-{name}"), "optimized": analyze(svc.store, f"online-oi-{name}")}  # fmt: skip
    finally:
        svc.close()


def _power(fn: Any, lists: Any, trials: int, seed: int, sessions: int, n: int) -> float:
    return float(fn(lists, n, trials, seed=seed, sessions=sessions))


def _table(result: dict[str, Any]) -> str:
    lines = ["| pair (b vs defaults) | engagement | sessions | true clicks/list a | b | gap | users A/B | team draft "
             "| ratio | optimized | ratio | classic team draft | ratio |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in result["pairs"]:
        gap = f"{r['gap_relative']:+.1%}" if r["gap_relative"] is not None else "-"
        ratio, ratio_oi, ratio_cl = (f"{r[key]:.1f}×" if r.get(key) else "-" for key in ("ratio", "ratio_optimized", "ratio_classic"))
        lines.append(f"| {r['pair']} | {r['engagement']:g} | {r['sessions']} | {r['quality_a']:.4f} | {r['quality_b']:.4f} | {gap} | {r['users_ab'] or '> 2M'} | "
                     f"{r['users_interleaving'] or '> 2M'} | {ratio} | {r.get('users_optimized') or '> 2M'} | {ratio_oi} | "
                     f"{r.get('users_interleaving_classic') or '> 2M'} | {ratio_cl} |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())

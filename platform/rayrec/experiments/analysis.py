"""The analysis of an online experiment from the store's logs: which lists were served to whom
(the impressions log) joined with what users did (the event log).

:func:`analyze` reads both logs page by page, keeps the impressions of one experiment and attributes
each click or rating of its users to the impression it answers:

- an event that carries a ``request_id`` belongs to that request's impression when the movie was in
  the list; otherwise it is unattributed (``unknown_request``: no impression of this experiment has
  that id; ``not_shown``: the movie was not in that list). An id of another experiment's (or a
  non-experiment) impression counts as ``other_impression`` events, outside this experiment;
- an event without one (older clients) goes to the user's latest impression that showed the movie,
  from ``attribution_window_s`` before the event up to :data:`CLOCK_SKEW_S` after it
  (``user_item``), else it is unattributed (``no_impression``).

Events of users who never saw this experiment are only counted (``other_users_events``); an event id
logged twice counts once.

Then, for an A/B test: per variant users, impressions, clicks, ratings and likes, the click-through
rate and rating conversion per impression with per-user clustered standard errors, each variant
against the control, and the sample ratio mismatch check. For interleaving: per impression (and per
user) which team's items got more clicks, and ratings, with the sign test; and each user's summed
credit (a click's credit is logged with the list: ±1 by team draft, the rank difference by optimized
interleaving) with the t-test of its mean, the test for optimized interleaving.

:func:`write_report` writes the result as ``<name>.json`` and a self-contained ``<name>.html`` with
plots; :func:`summary` is the short text table the job prints (``pipelines.experiment``).
"""

from __future__ import annotations

import html
import json
import math
import re
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import asdict
from typing import Any

import numpy as np
import pandas as pd

from rayrec.features.pointintime import LABEL_THRESHOLD
from rayrec import uri
from rayrec.experiments.impressions import IMPRESSIONS_LOG  # one record per served list, written by serving
from rayrec.experiments.stats import RatioEstimate, compare, interleaving_preference, mean_credit, ratio_metric, srm_test
from rayrec.realtime.updater import EVENTS_LOG
from rayrec.reports import _CSS, _figure, _png, _table
from rayrec.store.base import EventLog

__all__ = ["IMPRESSIONS_LOG", "CLOCK_SKEW_S", "LIKE_THRESHOLD", "analyze", "write_report", "summary"]

#: an event's timestamp (whole seconds, from the client's clock) may be this much before the impression
CLOCK_SKEW_S = 5.0
#: a rating at or above this is a like: the features job's default label threshold (pass the
#: FeatureSpec's ``label_threshold`` when the features were built with another)
LIKE_THRESHOLD = LABEL_THRESHOLD
_PAGE = 10_000
_COUNTS = ("impressions", "clicks", "ratings", "likes", "degraded")  # per variant and user
_EVENT_COLUMNS = ["kind", "user_id", "movie_id", "value", "timestamp", "event_id", "request_id"]


def _pages(store: EventLog, name: str, after: str | None) -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """A log after ``after`` in pages of :data:`_PAGE` records, oldest first."""
    while True:
        page = store.read_log(name, after=after, limit=_PAGE)
        if page:
            yield page
        if len(page) < _PAGE:
            return
        after = page[-1][0]


# -- reading the logs ------------------------------------------------------------------------------


def _read_impressions(store: EventLog, name: str, after: str | None) -> dict[str, Any]:
    """The experiment's impressions (one row each, ``imp`` = row number), the lists they showed (one
    row per item: imp, movie_id, team), the request ids of other impressions with their users, the
    experiments found and the last offset read."""
    imps: list[pd.DataFrame] = []
    shown: list[pd.DataFrame] = []
    others: list[pd.DataFrame] = []
    found: Counter[str] = Counter()
    last, n = None, 0
    for page in _pages(store, IMPRESSIONS_LOG, after):
        last = page[-1][0]
        mine = [r for _, r in page if r.get("experiment") == name]
        found.update(str(r["experiment"]) for _, r in page if r.get("experiment") not in (None, name))
        rest = [(r.get("request_id") or None, r.get("user_id")) for _, r in page if r.get("experiment") != name]
        if rest:
            others.append(pd.DataFrame(rest, columns=["request_id", "user_id"]))
        if not mine:
            continue
        items = [list(r.get("items") or []) for r in mine]
        teams: list[Any] = [r.get("teams") for r in mine]
        tracked = [t is not None and len(t) == len(i) for t, i in zip(teams, items)]
        credits = [_credits(r, t, i) if ok else [math.nan] * len(i) for r, t, i, ok in zip(mine, teams, items, tracked)]
        lengths = np.fromiter((len(i) for i in items), dtype=np.int64, count=len(items))
        idx = np.arange(n, n + len(mine), dtype=np.int64)
        imps.append(pd.DataFrame({
            "imp": idx,
            "request_id": [r.get("request_id") or None for r in mine],  # "": a list served without an id
            "user_id": np.asarray([int(r["user_id"]) for r in mine], dtype=np.int64),
            "ts": np.asarray([float(r.get("ts") or 0.0) for r in mine], dtype=np.float64),
            "mode": [r.get("mode") for r in mine],
            "interleaving": [r.get("interleaving") or ("team_draft" if r.get("mode") == "interleave" else None) for r in mine],
            "variant": [r.get("variant") for r in mine],
            "variants": [tuple(r.get("variants") or ()) for r in mine],
            "degraded": np.asarray([bool(r.get("degraded")) for r in mine]),
            "tracked": np.asarray(tracked),
        }))  # fmt: skip
        shown.append(pd.DataFrame({
            "imp": np.repeat(idx, lengths),
            "movie_id": np.fromiter((int(m) for i in items for m in i), dtype=np.int64, count=int(lengths.sum())),
            "team": [t[k] if ok else None for t, i, ok in zip(teams, items, tracked) for k in range(len(i))],
            "credit": np.fromiter((c for cs in credits for c in cs), dtype=np.float64, count=int(lengths.sum())),
        }))  # fmt: skip
        n += len(mine)
    if not imps:
        where = f" after offset {after}" if after is not None else ""
        listed = ", ".join(sorted(found)) or "none"
        raise ValueError(f"no impressions of experiment {name!r} in the {IMPRESSIONS_LOG!r} log{where}; experiments found: {listed}")
    imp = pd.concat(imps, ignore_index=True)
    dup = imp["request_id"].notna() & imp.duplicated("request_id")  # a list logged twice counts once
    imp = imp[~dup].set_index("imp")
    items = pd.concat(shown, ignore_index=True)
    items = items[items["imp"].isin(imp.index)].drop_duplicates(["imp", "movie_id"])
    items = items.join(imp[["user_id", "ts"]], on="imp")
    other = pd.concat(others, ignore_index=True) if others else pd.DataFrame({"request_id": [], "user_id": []})
    mask = other["request_id"].notna() & pd.to_numeric(other["user_id"], errors="coerce").isin(imp["user_id"].unique())
    return {"imps": imp, "items": items, "other_requests": set(other.loc[mask, "request_id"]),
            "duplicates": int(dup.sum()), "last": last}  # fmt: skip


def _credits(rec: Mapping[str, Any], teams: list[Any], items: list[Any]) -> list[float]:
    """What a click on each item of an interleaved list credits (> 0 the first variant): as logged,
    or from the teams (±1, 0 for neutral) where the record holds no credits."""
    logged = rec.get("credits")
    if isinstance(logged, list) and len(logged) == len(items):
        return [float(c) if c is not None else 0.0 for c in logged]
    pair = list(rec.get("variants") or [])
    return [1.0 if pair and t == pair[0] else -1.0 if len(pair) > 1 and t == pair[1] else 0.0 for t in teams]


def _read_events(store: EventLog, after: str | None, users: np.ndarray) -> dict[str, Any]:
    """The clicks and ratings of ``users`` (sorted), one per event id, and how many others were seen."""
    kept: list[pd.DataFrame] = []
    other_users, last = 0, None
    for page in _pages(store, EVENTS_LOG, after):
        last = page[-1][0]
        frame = pd.DataFrame([r for _, r in page], columns=_EVENT_COLUMNS)
        frame["offset"] = [o for o, _ in page]
        frame = frame[frame["kind"].isin(("click", "rating"))]
        user = pd.to_numeric(frame["user_id"], errors="coerce")
        mine = user.isin(users)
        other_users += int((~mine).sum())
        kept.append(frame[mine])
    events = pd.concat(kept, ignore_index=True) if kept else pd.DataFrame(columns=[*_EVENT_COLUMNS, "offset"])
    events["event_id"] = events["event_id"].where(events["event_id"].notna(), "@" + events["offset"].astype(str))
    dup = events.duplicated("event_id")
    events = events[~dup]
    out = pd.DataFrame({
        "kind": events["kind"].astype(str).to_numpy(),
        "user_id": events["user_id"].to_numpy(dtype=np.int64),
        "movie_id": pd.to_numeric(events["movie_id"], errors="coerce").fillna(-1).to_numpy(dtype=np.int64),
        "value": pd.to_numeric(events["value"], errors="coerce").to_numpy(dtype=np.float64),
        "timestamp": pd.to_numeric(events["timestamp"], errors="coerce").to_numpy(dtype=np.float64),
        "request_id": events["request_id"].where(events["request_id"].notna() & (events["request_id"] != ""), None).to_numpy(dtype=object),
    })  # fmt: skip
    return {"events": out, "other_users": other_users, "duplicates": int(dup.sum()), "last": last}


# -- attribution -----------------------------------------------------------------------------------


def _attribute(events: pd.DataFrame, read: dict[str, Any], window: float) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Attributed events (imp, kind, value, team, by) and the counts of every outcome."""
    imps, items = read["imps"], read["items"]
    has_req = events["request_id"].notna()
    by_req = events[has_req]
    known = imps[imps["request_id"].notna()]
    imp = by_req["request_id"].map(pd.Series(known.index.to_numpy(), index=known["request_id"].to_numpy()))
    other = imp.isna() & by_req["request_id"].isin(read["other_requests"])
    matched = by_req[imp.notna()].assign(imp=imp[imp.notna()].astype(np.int64))
    joined = matched.merge(items[["imp", "movie_id", "team", "credit"]], on=["imp", "movie_id"], how="left", indicator=True)
    in_list = joined["_merge"] == "both"
    att_req = joined[in_list].assign(by="request")

    fallback = events[~has_req]
    timed = fallback[fallback["timestamp"].notna()].assign(t=lambda f: f["timestamp"] + CLOCK_SKEW_S).sort_values("t")
    right = items[["ts", "user_id", "movie_id", "imp", "team", "credit"]].sort_values("ts")
    near = pd.merge_asof(timed, right, left_on="t", right_on="ts", by=["user_id", "movie_id"], direction="backward")
    ok = near["imp"].notna() & (near["timestamp"] - near["ts"] <= window)
    att_user = near[ok].assign(imp=near.loc[ok, "imp"].astype(np.int64), by="user_item")

    cols = ["imp", "kind", "value", "team", "credit", "by"]
    parts = [f[cols] for f in (att_req, att_user) if len(f)]
    attributed = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame({c: pd.Series(dtype=object) for c in cols})
    attributed["imp"] = attributed["imp"].astype(np.int64)
    attributed["value"] = attributed["value"].astype(np.float64)
    attributed["credit"] = attributed["credit"].astype(np.float64)
    counts = {
        "attributed": {"request": int(in_list.sum()), "user_item": int(ok.sum())},
        "unattributed": {
            "unknown_request": int((imp.isna() & ~other).sum()),
            "not_shown": int((~in_list).sum()),
            "no_impression": int(len(fallback) - ok.sum()),
        },
        "other_impression_events": int(other.sum()),
    }
    return attributed, counts


def _per_impression(attributed: pd.DataFrame, imps: pd.DataFrame, like_threshold: float) -> pd.DataFrame:
    """Clicks, ratings and likes attributed to each impression (zeros where none)."""
    click = attributed["kind"] == "click"
    rating = attributed["kind"] == "rating"
    flags = pd.DataFrame({
        "imp": attributed["imp"], "clicks": click, "ratings": rating, "likes": rating & (attributed["value"] >= like_threshold),
    })  # fmt: skip
    sums = flags.groupby("imp")[["clicks", "ratings", "likes"]].sum()
    return sums.reindex(imps.index, fill_value=0).astype(np.int64)


# -- A/B tests and interleaving --------------------------------------------------------------------


def _choose_control(variants: list[str], control: str | None) -> tuple[str, str]:
    if control is not None:
        if control not in variants:
            raise ValueError(f"control {control!r} is not a variant of this experiment: found {', '.join(variants)}")
        return control, "argument"
    if "control" in variants:
        return "control", "name"
    return variants[0], "first_sorted"


def _ab(imps: pd.DataFrame, counts: pd.DataFrame, control: str | None, weights: Mapping[str, float] | None) -> dict[str, Any]:
    assigned = imps["variant"].notna()
    frame = imps.loc[assigned, ["variant", "user_id", "degraded"]].join(counts).assign(impressions=1)
    frame["variant"] = frame["variant"].astype(str)
    per_user = frame.groupby(["variant", "user_id"])[list(_COUNTS)].sum()
    variants = sorted(per_user.index.get_level_values(0).unique())
    if not variants:
        raise ValueError("the A/B impressions of this experiment name no variant (field 'variant')")
    chosen, chosen_by = _choose_control(variants, control)
    variants = [chosen, *(v for v in variants if v != chosen)]  # control first in tables and plots
    metrics = {"ctr": "clicks", "rating_conversion": "ratings"}  # per impression, clustered by user
    est: dict[str, dict[str, RatioEstimate]] = {}
    out: dict[str, dict[str, Any]] = {}
    for v in variants:
        g = per_user.loc[v]
        est[v] = {m: ratio_metric(g[k].to_numpy(), g["impressions"].to_numpy()) for m, k in metrics.items()}
        out[v] = {"users": len(g), **{k: int(g[k].sum()) for k in _COUNTS}, **{m: asdict(e) for m, e in est[v].items()}}
    comparisons = {v: {m: asdict(compare(est[v][m], est[chosen][m])) for m in metrics} for v in variants if v != chosen}
    if weights is None:
        used, weights_from = {v: 1.0 for v in variants}, "equal"
    else:
        missing = [v for v in variants if v not in weights]
        if missing:
            raise ValueError(f"no weight for variant(s) {', '.join(missing)}: weights given for {', '.join(sorted(weights))}")
        used, weights_from = {str(k): float(w) for k, w in weights.items()}, "argument"
    names = sorted(used)
    srm = srm_test([out[v]["users"] if v in out else 0 for v in names], [used[v] for v in names])
    users_in_several = int((per_user.groupby(level=1).size() > 1).sum())
    return {
        "control": chosen, "control_from": chosen_by, "variants": out, "comparisons": comparisons,
        "srm": {**asdict(srm), "variants": names, "weights": used, "weights_from": weights_from},
        "unassigned_impressions": int((~assigned).sum()), "users_in_several_variants": users_in_several,
    }  # fmt: skip


def _interleave(imps: pd.DataFrame, attributed: pd.DataFrame) -> dict[str, Any]:
    """Credits per team from clicks (the preference, at the top level) and from ratings (``"ratings"``)."""
    pairs = [p for p in imps["variants"] if len(p) == 2]
    if not pairs:
        raise ValueError("interleaving impressions name no pair of variants (field 'variants')")
    a, b = Counter(pairs).most_common(1)[0][0]
    tracked = imps[imps["tracked"]]
    pos = tracked.index.get_indexer(attributed["imp"])  # -1: not a tracked impression
    team = attributed["team"].to_numpy()
    credit = np.nan_to_num(attributed["credit"].to_numpy(dtype=np.float64))
    methods = sorted({str(m) for m in tracked["interleaving"].dropna()}) or ["team_draft"]
    blocks: dict[str, dict[str, Any]] = {}
    for kind in ("click", "rating"):
        of_kind = (attributed["kind"] == kind).to_numpy() & (pos >= 0)
        ca = np.bincount(pos[of_kind & (team == a)], minlength=len(tracked)).astype(np.float64)
        cb = np.bincount(pos[of_kind & (team == b)], minlength=len(tracked)).astype(np.float64)
        graded = np.bincount(pos[of_kind], weights=credit[of_kind], minlength=len(tracked))
        per_user = pd.DataFrame({"user_id": tracked["user_id"].to_numpy(), "a": ca, "b": cb, "credit": graded}).groupby("user_id").sum()
        blocks[kind] = {
            "credit": {a: int(ca.sum()), b: int(cb.sum())},
            "impressions_with_credit": int(np.count_nonzero(ca + cb)),
            "neutral": int(np.count_nonzero(of_kind & (team == ""))),  # on items both variants offered
            "per_impression": asdict(interleaving_preference(ca, cb)),
            "per_user": asdict(interleaving_preference(per_user["a"].to_numpy(), per_user["b"].to_numpy())),
            "mean_credit_per_user": asdict(mean_credit(per_user["credit"].to_numpy())),
        }
    clicks = blocks["click"]
    return {"variants": [a, b], "interleaving": methods, "test": "mean_credit_per_user" if "optimized" in methods else "per_user",
            "impressions": len(tracked), "untracked_impressions": int(len(imps) - len(tracked)),
            "impressions_with_clicks": clicks.pop("impressions_with_credit"), **clicks, "ratings": blocks["rating"]}  # fmt: skip


def _jsonable(x: Any) -> Any:
    """Plain JSON: numpy scalars as Python numbers, undefined (nan, ±inf) as null."""
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    return x


def analyze(
    store: EventLog,
    name: str,
    *,
    control: str | None = None,
    after: str | None = None,
    attribution_window_s: float = 86400,
    weights: Mapping[str, float] | None = None,
    like_threshold: float = LIKE_THRESHOLD,
) -> dict[str, Any]:
    """The analysis of experiment ``name`` as a JSON-able dict (see the module docstring).

    ``after`` skips both logs up to that offset (offsets of the two logs are comparable: SQLite's
    shared sequence, Redis's time-based stream ids). ``control``: the variant the others are compared
    with; default the variant named ``"control"``, else the first name in sorted order (the result
    says which). ``weights``: the configured traffic split per variant for the SRM check (None:
    equal). ValueError names the problem: an experiment without impressions, an unknown control, a
    variant without a weight, mixed modes."""
    started = time.perf_counter()
    read = _read_impressions(store, name, after)
    imps = read["imps"]
    modes = sorted({str(m) for m in imps["mode"].dropna()})
    if len(modes) != 1 or modes[0] not in ("ab", "interleave"):
        raise ValueError(f"experiment {name!r} logged impressions with mode(s) {', '.join(modes)}: expected one of ab, interleave")
    ev = _read_events(store, after, np.sort(imps["user_id"].unique()))
    attributed, counts = _attribute(ev["events"], read, float(attribution_window_s))
    per_imp = _per_impression(attributed, imps, like_threshold)
    result: dict[str, Any] = {
        "experiment": name,
        "mode": modes[0],
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "after": after,
        "read_through": {IMPRESSIONS_LOG: read["last"], EVENTS_LOG: ev["last"]},
        "attribution_window_s": float(attribution_window_s),
        "like_threshold": float(like_threshold),
        "totals": {
            "impressions": len(imps),
            "users": int(imps["user_id"].nunique()),
            "degraded_impressions": int(imps["degraded"].sum()),
            "duplicate_impressions": read["duplicates"],
            "clicks": int(per_imp["clicks"].sum()),
            "ratings": int(per_imp["ratings"].sum()),
            "events": {**counts, "other_users_events": ev["other_users"], "duplicate_events": ev["duplicates"]},
        },
    }
    if modes[0] == "ab":
        result["ab"] = _ab(imps, per_imp, control, weights)
    else:
        result["interleave"] = _interleave(imps, attributed)
    result["seconds"] = round(time.perf_counter() - started, 3)
    out: dict[str, Any] = _jsonable(result)
    return out


# -- reports ---------------------------------------------------------------------------------------


def _num(v: Any, fmt: str = ".4f") -> str:
    return "–" if v is None else format(v, fmt)


def _ci(est: Mapping[str, Any], fmt: str = ".4f") -> str:
    if est["ci_low"] is None:
        return _num(est["value"], fmt)
    return f"{_num(est['value'], fmt)} [{_num(est['ci_low'], fmt)}, {_num(est['ci_high'], fmt)}]"


def summary(result: Mapping[str, Any]) -> str:
    """A few lines of text: per variant users, impressions, CTR with its 95% CI, rating conversion,
    p-value and MDE against control (A/B), or the wins, share and sign test (interleaving)."""
    t = result["totals"]
    ev = t["events"]
    lines = [f"experiment {result['experiment']} ({result['mode']}): {t['impressions']:,} impressions, {t['users']:,} users, "
             f"{sum(ev['attributed'].values()):,} events attributed ({ev['attributed']['user_item']:,} by user and movie), "
             f"{sum(ev['unattributed'].values()):,} not ({', '.join(f'{k} {v:,}' for k, v in ev['unattributed'].items())})"]  # fmt: skip
    if "ab" in result:
        ab = result["ab"]
        lines.append(
            f"{'variant':<14} {'users':>8} {'impr.':>9} {'CTR [95% CI]':>28} {'rating conv.':>12} {'p (CTR)':>8} {'MDE (CTR)':>10}"
        )
        for v, s in ab["variants"].items():
            c = ab["comparisons"].get(v, {}).get("ctr")
            p, mde = ("control", "") if c is None else (_num(c["p_value"], ".4g"), _num(c["mde"]))
            lines.append(f"{v:<14} {s['users']:>8,} {s['impressions']:>9,} {_ci(s['ctr']):>28} "
                         f"{_num(s['rating_conversion']['value']):>12} {p:>8} {mde:>10}")  # fmt: skip
        srm = ab["srm"]
        lines.append(f"SRM p = {srm['p_value']:.4g} ({'MISMATCH: check assignment and logging' if srm['mismatch'] else 'ok'}; "
                     f"weights {srm['weights_from']})")  # fmt: skip
    else:
        il = result["interleave"]
        a, b = il["variants"]
        for key, block in (("clicks", il), ("ratings", il["ratings"])):
            for unit in ("per_impression", "per_user"):
                p = block[unit]
                lines.append(f"{key} {unit.replace('_', ' ')}: {a} wins {p['wins_a']:,}, {b} wins {p['wins_b']:,}, ties {p['ties']:,}; "
                             f"share {a} {_num(p['share_a'], '.3f')} [{_num(p['share_a_ci_low'], '.3f')}, "
                             f"{_num(p['share_a_ci_high'], '.3f')}], Δ {_num(p['delta'], '+.4f')}, p = {_num(p['p_value'], '.4g')}")  # fmt: skip
            m = block["mean_credit_per_user"]
            lines.append(f"{key} mean credit per user ({a} > 0): {_num(m['mean'], '+.4f')} [{_num(m['ci_low'], '+.4f')}, "
                         f"{_num(m['ci_high'], '+.4f')}], p = {_num(m['p_value'], '.4g')} (t-test, {m['units']:,} users)")  # fmt: skip
        lines.append(f"interleaving: {', '.join(il['interleaving'])}; the test to read: {il['test'].replace('_', ' ')}")
    return "\n".join(lines)


def _ab_html(ab: Mapping[str, Any]) -> str:
    names = list(ab["variants"])
    plots = []
    for metric, title in (("ctr", "CTR (clicks per impression)"), ("rating_conversion", "rating conversion (ratings per impression)")):
        fig, ax = _figure(metric)
        est = [ab["variants"][v][metric] for v in names]
        values = [e["value"] if e["value"] is not None else 0.0 for e in est]
        err = [[(e["value"] - e["ci_low"]) if e["ci_low"] is not None else 0.0 for e in est],
               [(e["ci_high"] - e["value"]) if e["ci_high"] is not None else 0.0 for e in est]]  # fmt: skip
        colours = ["#bab0ac" if v == ab["control"] else "#4c78a8" for v in names]
        ax.bar(names, values, yerr=err, capsize=6, color=colours)
        ax.set(title=f"{title}, 95% CI", ylabel=metric)
        plots.append(_png(fig))
    rows = [[v, s["users"], s["impressions"], s["clicks"], s["ratings"], s["likes"], _ci(s["ctr"]), _ci(s["rating_conversion"])]
            for v, s in ab["variants"].items()]  # fmt: skip
    comp = [[v, m, _num(c["difference"], "+.4f"), _num(c["relative"], "+.2%"), f"[{_num(c['ci_low'], '+.4f')}, {_num(c['ci_high'], '+.4f')}]",
             _num(c["p_value"], ".4g"), _num(c["mde"]), _num(c["mde_relative"], ".2%")]
            for v, cs in ab["comparisons"].items() for m, c in cs.items()]  # fmt: skip
    srm = ab["srm"]
    srm_rows = [[v, o, _num(e, ".1f"), _num(srm["weights"][v], "g")] for v, o, e in zip(srm["variants"], srm["observed"], srm["expected"])]
    verdict = (
        "<p class=missing>sample ratio mismatch: check assignment and logging before reading the metrics</p>" if srm["mismatch"] else ""
    )
    return (f"<section><h2>Variants</h2><div class=plots>{''.join(plots)}</div>"
            f"{_table(rows, ['variant', 'users', 'impressions', 'clicks', 'ratings', 'likes', 'CTR [95% CI]', 'rating conv. [95% CI]'])}</section>"
            f"<section><h2>Against control ({html.escape(ab['control'])}, chosen by {ab['control_from']})</h2>"
            f"{_table(comp, ['variant', 'metric', 'difference', 'relative', 'CI', 'p', 'MDE', 'MDE relative'])}</section>"
            f"<section><h2>Sample ratio (p = {_num(srm['p_value'], '.4g')}, weights {srm['weights_from']})</h2>{verdict}"
            f"{_table(srm_rows, ['variant', 'users', 'expected', 'weight'])}</section>")  # fmt: skip


def _interleave_html(il: Mapping[str, Any]) -> str:
    a, b = il["variants"]
    p = il["per_impression"]
    fig, ax = _figure("interleaving wins")
    ax.bar([f"{a} wins", f"{b} wins", "ties"], [p["wins_a"], p["wins_b"], p["ties"]], color=["#4c78a8", "#f58518", "#bab0ac"])
    ax.set(title="Impressions won (clicks)", ylabel="impressions")
    rows = [[f"{key} {unit.replace('_', ' ')}", q["wins_a"], q["wins_b"], q["ties"], q["no_credit"], _num(q["share_a"], ".3f"),
             f"[{_num(q['share_a_ci_low'], '.3f')}, {_num(q['share_a_ci_high'], '.3f')}]", _num(q["delta"], "+.4f"), _num(q["p_value"], ".4g")]
            for key, block in (("clicks", il), ("ratings", il["ratings"])) for unit in ("per_impression", "per_user") for q in [block[unit]]]  # fmt: skip
    means = [[key, q["units"], _num(q["mean"], "+.4f"), f"[{_num(q['ci_low'], '+.4f')}, {_num(q['ci_high'], '+.4f')}]", _num(q["p_value"], ".4g")]
             for key, block in (("clicks", il), ("ratings", il["ratings"])) for q in [block["mean_credit_per_user"]]]  # fmt: skip
    return (f"<section><h2>{html.escape(a)} against {html.escape(b)}</h2><div class=plots>{_png(fig)}</div>"
            f"<p>interleaving: {html.escape(', '.join(il['interleaving']))}; the test to read: {html.escape(il['test'].replace('_', ' '))}.</p>"
            f"<p>{il['impressions']:,} impressions ({il['impressions_with_clicks']:,} with clicks credited to a team, {il['untracked_impressions']:,} "
            f"without teams); {il['neutral']:,} clicks on items both variants offered in the same round, credited to neither.</p>"
            f"{_table(rows, ['credit', f'{a} wins', f'{b} wins', 'ties', 'no credit', f'share {a}', '95% CI', 'Δ', 'p (sign test)'])}"
            f"<h3>Mean credit per user (&gt; 0: {html.escape(a)})</h3>{_table(means, ['credit', 'users', 'mean', '95% CI', 'p (t-test)'])}</section>")  # fmt: skip


def write_report(result: Mapping[str, Any], out_dir: str) -> dict[str, str]:
    """Write ``<out_dir>/<name>.json`` and a self-contained ``<out_dir>/<name>.html`` (tables and
    embedded PNG plots); returns their paths under ``"json"`` and ``"html"``."""
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", str(result["experiment"]))
    paths = {"json": uri.join(out_dir, f"{stem}.json"), "html": uri.join(out_dir, f"{stem}.html")}
    uri.makedirs(out_dir)
    uri.write_bytes(paths["json"], json.dumps(result, indent=2, sort_keys=True, allow_nan=False).encode())
    t = result["totals"]
    ev = t["events"]
    totals = [["impressions", t["impressions"]], ["users", t["users"]], ["degraded impressions", t["degraded_impressions"]],
              ["events attributed by request", ev["attributed"]["request"]], ["events attributed by user and movie", ev["attributed"]["user_item"]],
              *[[f"unattributed: {k}", v] for k, v in ev["unattributed"].items()],
              ["events of other impressions", ev["other_impression_events"]], ["events of other users", ev["other_users_events"]],
              ["duplicate events", ev["duplicate_events"]]]  # fmt: skip
    body = _ab_html(result["ab"]) if "ab" in result else _interleave_html(result["interleave"])
    name = html.escape(str(result["experiment"]))
    page = (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>experiment {name}</title><style>{_CSS}</style></head>"
            f"<body><h1>Experiment {name}</h1><p class=sub>{html.escape(result['mode'])} · written {html.escape(result['generated_at'])} · "
            f"attribution window {result['attribution_window_s']:g} s · logs read {'after ' + html.escape(str(result['after'])) if result['after'] else 'from the start'}</p>"
            f"<section><h2>Totals</h2>{_table(totals, ['', 'count'])}</section>{body}</body></html>")  # fmt: skip
    uri.write_bytes(paths["html"], page.encode())
    return paths

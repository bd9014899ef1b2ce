"""The simulator's output: ``simulation.json`` and a self-contained ``simulation.html`` (the users each
method needs per pair, and power against users as a plot)."""

from __future__ import annotations

import html
import json
import os
from typing import Any

from rayrec.reports import _CSS, _figure, _png, _table

__all__ = ["write_simulation"]


def _power_plot(row: dict[str, Any]) -> str:
    fig, ax = _figure(f"power: {row['pair']}, engagement {row['engagement']:g}, {row['sessions']} session(s)")
    for key, label in (("power_ab", "A/B test"), ("power_interleaving", "team-draft interleaving"),
                       ("power_optimized", "optimized interleaving"),
                       ("power_interleaving_classic", "interleaving, classic team draft")):  # fmt: skip
        pts = sorted((int(n), p) for n, p in row.get(key, {}).items())
        if pts:
            ax.plot([n for n, _ in pts], [p for _, p in pts], marker="o", label=label)
    ax.axhline(0.8, color="#999", linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("users")
    ax.set_ylabel("share of trials that found the better variant")
    gap = f"true gap {row['gap_relative']:+.1%}" if row["gap_relative"] is not None else ""
    ax.set_title(f"{row['pair']} (engagement {row['engagement']:g}, {row['sessions']} session(s)) {gap}", fontsize=9)
    ax.legend()
    return _png(fig)


def _online_section(online: dict[str, Any] | None) -> str:
    if not online:
        return ""
    parts = [f"<h2>Live run</h2><p>{online['served']['lists']:,} lists served through the recommend path, "
             f"{online['served']['clicks']:,} clicks posted with their request ids, in {online['took_s']} s; "
             "the analysis job's numbers:</p>"]  # fmt: skip
    for key in ("ab", "interleave", "optimized"):
        if online.get(key) is not None:
            parts.append(f"<h3>{html.escape(key)}</h3><pre>{html.escape(json.dumps(online[key], indent=1, default=str)[:6000])}</pre>")
    return "".join(parts)


def write_simulation(result: dict[str, Any], out_dir: str) -> dict[str, str]:
    """Write ``simulation.json`` and ``simulation.html`` into ``out_dir``; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": os.path.join(out_dir, "simulation.json"), "html": os.path.join(out_dir, "simulation.html")}
    with open(paths["json"], "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2, default=str)
    rows = [[r["pair"], r["engagement"], r["sessions"], r["quality_a"], r["quality_b"], f"{r['gap_relative']:+.2%}" if r["gap_relative"] is not None else "-",
             r["users_ab"] or "> 2M", r["users_interleaving"] or "> 2M", f"{r['ratio']:.1f}×" if r["ratio"] else "-",
             r.get("users_optimized") or "> 2M", f"{r['ratio_optimized']:.1f}×" if r.get("ratio_optimized") else "-",
             r.get("users_interleaving_classic") or "> 2M", f"{r['ratio_classic']:.1f}×" if r.get("ratio_classic") else "-"]
            for r in result["pairs"]]  # fmt: skip
    table = _table(rows, ["pair (b vs defaults)", "engagement", "sessions", "true clicks/list a", "b", "gap", "users A/B", "team draft",
                          "ratio", "optimized", "ratio", "classic team draft", "ratio"])  # fmt: skip
    cm = result["click_model"]
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>rayrec: A/B vs interleaving</title><style>{_CSS}</style>"
        "</head><body><h1>A/B testing vs interleaving</h1>"
        f"<p class='sub'>{result['users_simulated']:,} synthetic users with known preferences; position-based clicks "
        f"(examination (1+p)^-{cm['eta']}, attraction {cm['max_attraction']}·sigmoid((r̂−{cm['threshold']})/{cm['scale']}), "
        "times (activity / median)^engagement); "
        f"{result['trials']} seeded trials per size; users needed = fewest with ≥ {result['power']:.0%} of trials "
        f"significant at α = {result['alpha']} in the right direction.</p>"
        f"<section>{table}</section><section class='plots'>{''.join(_power_plot(r) for r in result['pairs'])}</section>"
        f"<section>{_online_section(result.get('online'))}</section></body></html>"
    )
    with open(paths["html"], "w", encoding="utf-8") as f:
        f.write(page)
    return paths

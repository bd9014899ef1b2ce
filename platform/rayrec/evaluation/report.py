"""Reports of the end-to-end evaluation: a Markdown table per protocol and one self-contained HTML page
with the tables and plots (NDCG@10 per stage and baseline; NDCG@10 against diversity for the MMR
setting), PNG images embedded as base64 (matplotlib; the HTML is written without plots when it is
not installed)."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["markdown", "write_reports"]

COLUMNS = ("ndcg@10", "precision@10", "recall@10", "recall@50", "map@10", "hitrate@10", "coverage@10", "diversity@10", "novelty@10")
STAGE_ORDER = ("retriever", "recall", "ranker", "fused", "served", "most_popular", "item_knn", "ease")


def _names(rows: dict[str, Any]) -> list[str]:
    """The rows in table order: the stages, each recall path alone, then the baselines."""
    paths = sorted(n for n in rows if n.startswith("path:"))
    order = [*STAGE_ORDER[:5], *paths, *STAGE_ORDER[5:]]
    return [n for n in order if n in rows]


def _verdict(rows: dict[str, dict[str, float]]) -> list[str]:
    served = rows["served"]["ndcg@10"]
    out = []
    for other in ("ease", "retriever", "most_popular"):
        if other in rows:
            v = rows[other]["ndcg@10"]
            out.append(f"served NDCG@10 {served:.4f} {'≥' if served >= v else '<'} {other} {v:.4f}: "
                       f"{'met' if served >= v else 'NOT met'}")  # fmt: skip
    paths = {n: r["ndcg@10"] for n, r in rows.items() if n.startswith("path:")}
    if paths and "recall" in rows:
        best = max(paths, key=lambda n: paths[n])
        merged = rows["recall"]["ndcg@10"]
        out.append(f"merged recall NDCG@10 {merged:.4f} {'≥' if merged >= paths[best] else '<'} its best path "
                   f"({best[5:]}) {paths[best]:.4f}: {'met' if merged >= paths[best] else 'NOT met'}")  # fmt: skip
    return out


def markdown(result: Any) -> str:
    rows = result.rows
    lines = [f"### protocol `{result.protocol}` ({int(rows['served']['users'])} users)", "",
             "| list | " + " | ".join(COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]  # fmt: skip
    for name in _names(rows):
        lines.append(f"| {name} | " + " | ".join(f"{rows[name].get(c, float('nan')):.4f}" for c in COLUMNS) + " |")
    lines += ["", *(f"- {v}" for v in _verdict(rows)), ""]
    for key, points in result.sweeps.items():
        lines.append(f"{key} sweep (served list): " + ", ".join(
            f"{p[key]:g} → NDCG@10 {p['ndcg@10']:.4f} / diversity {p.get('diversity@10', 0):.3f}" for p in points))  # fmt: skip
    tuned = result.info.get("serving_tuning")
    if tuned:
        c = tuned["chosen"]
        lines.append(f"\nserved with the ease vote {c['ease_vote']:g} and rank_weight {c['rank_weight']:g}, chosen on a "
                     f"`{tuned['protocol']}` validation split of the known part ({tuned['users']} users, shadow models)")  # fmt: skip
        blend = tuned.get("blend")
        if blend:
            k = next(key for key in blend if key.startswith("grid_best_ndcg@")).rsplit("@", 1)[1]
            fits = [b for b in blend["by_vote"] if b.get("coefficients")]
            scores = ", ".join(f"vote {b['ease_vote']:g} {b[f'valid_ndcg@{k}_out_of_fold']:.4f}" for b in fits) or "none fit"
            lines.append(f"\nblend {'**chosen**' if blend['chosen'] else 'not chosen'}: validation NDCG@{k} out of fold {scores}, "
                         f"against the grid's best {blend[f'grid_best_ndcg@{k}']:.4f}")  # fmt: skip
            if blend["chosen"]:
                used = next(b for b in fits if b["ease_vote"] == c["ease_vote"])["coefficients"]
                lines.append("\nblend coefficients: " + ", ".join(f"{key} {v:.3g}" for key, v in used.items() if v))
    ease = result.info.get("ease", {}).get("chosen")
    if ease:
        lines.append(f"\nEASE input `{ease['input']}`, λ {ease['lambda']:g} (tuned on a validation split of the known part)")
    return "\n".join(lines) + "\n"


def _plot(result: Any) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = result.rows
    names = _names(rows)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    colours = ["#4c72b0" if n in STAGE_ORDER[:5] else "#8fb0d9" if n.startswith("path:") else "#999999" for n in names]
    axes[0].bar(names, [rows[n]["ndcg@10"] for n in names], color=colours)
    axes[0].set_title(f"NDCG@10 per stage and baseline ({result.protocol})")
    axes[0].tick_params(axis="x", rotation=35)
    pts = result.sweeps.get("diversity", [])
    if pts:
        axes[1].plot([p.get("diversity@10", 0) for p in pts], [p["ndcg@10"] for p in pts], marker="o")
        for p in pts:
            axes[1].annotate(f"λ={p['diversity']:g}", (p.get("diversity@10", 0), p["ndcg@10"]), fontsize=8)
        axes[1].set_xlabel("intra-list diversity@10")
        axes[1].set_ylabel("NDCG@10")
        axes[1].set_title("MMR: quality against diversity")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def write_reports(results: Sequence[Any], out: Path) -> list[Path]:
    """``evaluation.md`` and ``evaluation.html`` under ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    md = "# End-to-end evaluation\n\n" + "\n".join(markdown(r) for r in results)
    (out / "evaluation.md").write_text(md)
    parts = ["<!doctype html><meta charset='utf-8'><title>rayrec evaluation</title>",
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}</style><h1>End-to-end evaluation</h1>"]  # fmt: skip
    for r in results:
        parts.append(f"<h2>{html.escape(r.protocol)}</h2><table><tr><th>list</th>"
                     + "".join(f"<th>{c}</th>" for c in COLUMNS) + "</tr>")  # fmt: skip
        for name in _names(r.rows):
            parts.append(f"<tr><th>{name}</th>" + "".join(f"<td>{r.rows[name].get(c, float('nan')):.4f}</td>" for c in COLUMNS) + "</tr>")
        parts.append("</table><ul>" + "".join(f"<li>{html.escape(v)}</li>" for v in _verdict(r.rows)) + "</ul>")
        png = _plot(r)
        if png:
            parts.append(f"<img alt='NDCG@10 per stage' src='data:image/png;base64,{png}'>")
    (out / "evaluation.html").write_text("\n".join(parts))
    return [out / "evaluation.md", out / "evaluation.html"]

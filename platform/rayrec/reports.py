"""The pipeline's report as pictures: one self-contained HTML page with PNG plots (matplotlib,
embedded as base64), written next to the artifacts as ``<artifacts>/reports/report.html`` and served
by the app at ``/report``.

It reads what the jobs published (the live versions): the features statistics (``stats.json``:
rating histogram, top genres, splits), each model's training curves (``metrics.json``: loss and the
validation metric per epoch) and its evaluation on the test split against the popularity baseline,
and the index's build figures. Sections whose artifacts are missing say so.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import time
from typing import Any

from rayrec import uri
from rayrec.headlines import latest_json

log = logging.getLogger(__name__)

__all__ = ["build_report", "write_report", "REPORT_PATH", "EXPERIMENTS_DIR", "EXPERIMENT_NAME"]

REPORT_PATH = ("reports", "report.html")
EXPERIMENTS_DIR = ("reports", "experiments")  # the experiment analyses: <name>.html and <name>.json
EXPERIMENT_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}$"
_CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{margin-bottom:0}.sub{color:#666;margin-top:.2em}section{margin:2em 0}
.plots{display:flex;flex-wrap:wrap;gap:1em}.plots img{max-width:100%;border:1px solid #ddd}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th:first-child,td:first-child{text-align:left}.missing{color:#a33}"""


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="{html.escape(fig.get_label() or "plot")}" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _figure(label: str, size: tuple[float, float] = (5.2, 3.2)) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    fig.set_label(label)
    return fig, ax


def _table(rows: list[list[Any]], head: list[str]) -> str:
    def cell(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, float) else html.escape(f"{v:,}" if isinstance(v, int) else str(v))

    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{''.join(f'<th>{html.escape(h)}</th>' for h in head)}</tr>{body}</table>"


def features_section(stats: dict[str, Any]) -> str:
    hist = stats.get("rating_histogram", {})
    fig, ax = _figure("rating histogram")
    ax.bar(list(hist), list(hist.values()), color="#4c78a8")
    ax.set(title="Ratings", xlabel="rating", ylabel="count")
    plots = [_png(fig)]
    genres = stats.get("top_genres", [])
    if genres:
        fig, ax = _figure("top genres")
        ax.barh([g for g, _ in genres][::-1], [c for _, c in genres][::-1], color="#72b7b2")
        ax.set(title="Top genres (ratings)", xlabel="ratings")
        plots.append(_png(fig))
    splits = [[s, v["rows"], v["users"], v["positive_rate"]] for s, v in stats.get("splits", {}).items()]
    return (f"<h2>Features</h2><p>{html.escape(str(stats.get('source')))}: {stats.get('ratings', 0):,} ratings from "
            f"{stats.get('users', 0):,} users on {stats.get('items_rated', 0):,} items; sparsity "
            f"{stats.get('sparsity', 0):.2%}, {stats.get('label_balance', 0):.1%} positive.</p>"
            f"<div class=plots>{''.join(plots)}</div>{_table(splits, ['split', 'rows', 'users', 'positive rate'])}")  # fmt: skip


def training_section(name: str, metrics: dict[str, Any]) -> str:
    from matplotlib.ticker import MaxNLocator

    history = (metrics.get("valid") or {}).get("history") or []
    plots = []
    if history:
        epochs = [h["epoch"] + 1 for h in history]
        fig, ax = _figure(f"{name} loss")
        ax.plot(epochs, [h["loss"] for h in history], marker="o", color="#e45756")
        ax.set(title=f"{name}: training loss", xlabel="epoch", ylabel="loss")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        plots.append(_png(fig))
        valid = sorted({k for h in history for k in h if k.startswith("valid_")})
        if valid:
            fig, ax = _figure(f"{name} validation")
            for k in valid:
                ax.plot(epochs, [h.get(k, float("nan")) for h in history], marker="o", label=k[6:])
            ax.set(title=f"{name}: validation", xlabel="epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.legend()
            plots.append(_png(fig))
    test, base = metrics.get("test") or {}, metrics.get("popularity") or {}
    keys = [k for k in test if k not in ("users", "rows")]
    rows = [[k, test[k], base.get(k, "")] if base else [k, test[k]] for k in keys]
    if base:
        fig, ax = _figure(f"{name} evaluation", (6.4, 3.2))
        shown = [k for k in keys if k in base]
        x = range(len(shown))
        ax.bar([i - 0.2 for i in x], [test[k] for k in shown], width=0.4, label=name, color="#4c78a8")
        ax.bar([i + 0.2 for i in x], [base[k] for k in shown], width=0.4, label="popularity", color="#bab0ac")
        ax.set_xticks(list(x), shown, rotation=30)
        ax.set(title=f"{name} vs popularity (test)")
        ax.legend()
        plots.append(_png(fig))
    note = "" if history else "<p class=missing>no per-epoch history (trained without validation)</p>"
    return (f"<h2>{html.escape(name)}</h2><p>{metrics.get('epochs', '?')} epoch(s) selected.</p>{note}"
            f"<div class=plots>{''.join(plots)}</div>"
            f"{_table(rows, ['test metric', name, 'popularity'] if base else ['test metric', name])}")  # fmt: skip


def index_section(meta: dict[str, Any]) -> str:
    lat = meta.get("latency_ms") or {}
    rows = [["factory", meta.get("factory")], ["items", meta.get("n")], ["dim", meta.get("dim")],
            [f"recall@{meta.get('recall_k', 100)} vs exact", meta.get("recall_at_100")],
            ["latency p50 ms", lat.get("p50")], ["latency p99 ms", lat.get("p99")], ["batched QPS", meta.get("batch_qps")]]  # fmt: skip
    return "<h2>Index</h2>" + _table([r for r in rows if r[1] is not None], ["", "value"])


def build_report(artifacts: str) -> str:
    """The report page of the live versions under ``artifacts``."""
    parts = []
    versions = []
    for title, load, render in (
        ("features", lambda: latest_json(artifacts, "features", "stats.json"), features_section),
        ("ranker", lambda: latest_json(artifacts, "models/ranker", "metrics.json"), lambda m: training_section("ranker", m)),
        ("retriever", lambda: latest_json(artifacts, "models/retriever", "metrics.json"), lambda m: training_section("retriever", m)),
        ("index", lambda: latest_json(artifacts, "index", "meta.json"), index_section),
    ):  # fmt: skip
        try:
            data = load()
        except FileNotFoundError as e:
            parts.append(f"<section><h2>{title}</h2><p class=missing>not built yet: {html.escape(str(e))}</p></section>")
            continue
        versions.append(f"{title} {uri.latest(uri.join(artifacts, 'models', title) if title in ('ranker', 'retriever') else uri.join(artifacts, title))}")
        parts.append(f"<section>{render(data)}</section>")
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>rayrec report</title><style>{_CSS}</style>"
            f"</head><body><h1>rayrec report</h1><p class=sub>{html.escape(artifacts)} · {html.escape(', '.join(versions))}"
            f" · written {stamp} · <a href='./'>back to the recommendations</a></p>{''.join(parts)}</body></html>")  # fmt: skip


def write_report(artifacts: str) -> str:
    """Write ``<artifacts>/reports/report.html``; returns its URI."""
    out = uri.join(artifacts, *REPORT_PATH)
    uri.makedirs(uri.join(artifacts, REPORT_PATH[0]))
    uri.write_bytes(out, build_report(artifacts).encode())
    return out


def add_report_route(app: Any, artifacts: str) -> None:
    """``GET /report`` on a FastAPI ``app``: the report page of ``artifacts``, built (and written)
    on first request when the main job has not written it."""
    import asyncio

    from fastapi.responses import HTMLResponse, JSONResponse

    path = uri.join(artifacts, *REPORT_PATH)

    def read_or_build() -> bytes:
        try:
            return uri.read_bytes(path)
        except FileNotFoundError:
            write_report(artifacts)
            return uri.read_bytes(path)

    @app.get("/report", include_in_schema=False)
    async def report() -> Any:
        try:
            return HTMLResponse(await asyncio.to_thread(read_or_build))
        except (OSError, ValueError) as e:
            log.warning("GET /report: no report for %s: %s", artifacts, e)  # the path stays in the log
            return JSONResponse({"error": "no report yet: run the main job first", "field": None}, status_code=503)

    from fastapi import Path

    @app.get("/report/experiments/{name}", include_in_schema=False)
    async def experiment_report(name: str = Path(pattern=EXPERIMENT_NAME)) -> Any:
        """The analysis page ``python -m pipelines.experiment --name <name>`` wrote."""
        try:
            page = await asyncio.to_thread(uri.read_bytes, uri.join(artifacts, *EXPERIMENTS_DIR, f"{name}.html"))
        except FileNotFoundError:
            return JSONResponse({"error": f"name: no analysis of experiment {name!r} yet: run "
                                          f"python -m pipelines.experiment --name {name}", "field": "name"},
                                status_code=404)  # fmt: skip
        return HTMLResponse(page)

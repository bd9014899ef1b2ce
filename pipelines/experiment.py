"""The analysis of an online experiment (A/B test or interleaving) from the store's logs.

    python -m pipelines.experiment --name NAME [--store URL|default] [--artifacts DIR] [--control NAME]
                                   [--weights a=0.5,b=0.5] [--out DIR] [--after OFFSET] [--window SECONDS]

Joins the impressions serving logged for experiment ``NAME`` with the event log's clicks and ratings
(:func:`rayrec.experiments.analysis.analyze`), prints a short table (per variant users, impressions,
CTR with its 95% CI, rating conversion, p-value and minimum detectable effect against control; or the
interleaving wins, share and sign test) and writes ``NAME.json`` and ``NAME.html`` under ``--out``.
``--weights`` is the configured traffic split, for the sample ratio mismatch check. No Ray needed.
"""

from __future__ import annotations

import argparse
import os
import sys

from pipelines._common import HelpFormatter, artifacts_arg
from rayrec import uri
from rayrec.experiments.analysis import LIKE_THRESHOLD, analyze, summary, write_report
from rayrec.headlines import latest_json
from rayrec.store import StoreError, default_store_url, open_store, parse_store_url


def parse_weights(text: str) -> dict[str, float]:
    """``a=0.5,b=0.5`` → ``{"a": 0.5, "b": 0.5}``; ValueError saying what is wrong."""
    out: dict[str, float] = {}
    for part in text.split(","):
        name, sep, value = part.strip().partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = float("nan")
        if not sep or not name.strip() or not weight >= 0 or weight == float("inf"):
            raise ValueError(f"bad --weights {text!r}: expected variant=weight pairs with non-negative numbers, e.g. control=0.5,b=0.5")
        out[name.strip()] = weight
    if not any(out.values()):
        raise ValueError(f"bad --weights {text!r}: at least one weight must be positive")
    return out


def like_threshold(artifacts: str) -> float:
    """The live FeatureSpec's label threshold (a rating at or above it is a like), else the default."""
    try:
        return float(latest_json(artifacts, "features", "spec.json")["label_threshold"])
    except (OSError, KeyError, ValueError):
        return LIKE_THRESHOLD


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        formatter_class=HelpFormatter, description="Analyse an online experiment (A/B test or interleaving) from the store's logs."
    )
    parser.add_argument("--name", required=True, help="the experiment's name, as serving logs it")
    parser.add_argument("--store", default="default", help="online store URL (sqlite:///path, redis://host:port/db) or 'default'")
    parser.add_argument(
        "--artifacts", default=None, help="artifacts URI: a local path or s3://… (default: RAYREC_ARTIFACTS or ./artifacts)"
    )
    parser.add_argument("--control", default=None, help="the control variant (default: the one named 'control', else the first by name)")
    parser.add_argument(
        "--weights", default=None, help="configured traffic split for the SRM check, e.g. control=0.5,b=0.5 (default: equal)"
    )
    parser.add_argument("--out", default=None, help="folder for NAME.json and NAME.html (default: <artifacts>/reports/experiments)")
    parser.add_argument("--after", default=None, help="read both logs after this offset")
    parser.add_argument(
        "--window", type=float, default=86400.0, help="seconds after an impression that an event without a request id is attributed to it"
    )
    args = parser.parse_args(argv)
    artifacts = artifacts_arg(args.artifacts)
    try:
        weights = parse_weights(args.weights) if args.weights else None
        url = default_store_url(artifacts) if args.store == "default" else args.store
        config = parse_store_url(url)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    path = getattr(config, "path", None)
    if path is not None and not os.path.exists(path):
        print(f"error: no online store at {path}: serve with an experiment first, or pass --store URL", file=sys.stderr)
        return 2
    store = open_store(config)
    try:
        store.ping()
        result = analyze(
            store, args.name, control=args.control, after=args.after, attribution_window_s=args.window,
            weights=weights, like_threshold=like_threshold(artifacts),
        )  # fmt: skip
    except (StoreError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        store.close()
    paths = write_report(result, args.out or uri.join(artifacts, "reports", "experiments"))
    print(summary(result))
    print(f"wrote {paths['json']} and {paths['html']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

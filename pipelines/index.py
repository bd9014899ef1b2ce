"""The index job: item embeddings → faiss index (+ build-time recall vs exact and latency) → index/LATEST.

    python -m pipelines.index [--artifacts URI] [--model-version latest] [--factory auto|Flat|HNSW32|IVF|LSH]
                              [--search-params efSearch=128] [--embeddings model|svd] [--no-publish]
                              [--evaluate] [--config recall.yaml] [--quota embedding=100 ...]
                              [--ease-validation features|temporal|random]
    python -m pipelines.index --evaluate-only [--index-version latest]

``--evaluate`` then prints Recall@200 of each recall path and of the merged candidates on the test
split, as of each user's split time. ``--embeddings svd`` builds from a PureSVD factorisation of the
train samples instead of the retriever (a baseline, and a way to run before any model is trained).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pipelines._common import HelpFormatter, add_common_args, artifacts_arg, setup_logging
from rayrec import tracking
from rayrec.evaluation.protocols import PROTOCOLS
from rayrec.retrieval import IndexConfig, RecallConfig, load_index, run_index
from rayrec.retrieval.build import summary
from rayrec.retrieval.offline import format_report, run_offline

log = logging.getLogger("pipelines.index")


def recall_config(path: Path | None, quotas: list[str]) -> RecallConfig:
    """RecallConfig from a YAML file (its keys), with ``name=count`` quota flags replacing the quotas."""
    data: dict = {}
    if path is not None:
        import yaml

        data = yaml.safe_load(path.read_text()) or {}
    if quotas:
        parsed = {}
        for q in quotas:
            name, _, count = q.partition("=")
            if not count.strip().isdigit():
                raise ValueError(f"--quota wants name=count (e.g. embedding=100), got {q!r}")
            parsed[name.strip()] = int(count)
        data["quotas"] = parsed
    return RecallConfig(**data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter, description="Build, measure and publish the item index; evaluate recall.")
    add_common_args(parser)
    parser.add_argument("--embeddings", choices=["model", "svd"], default="model",
                        help="the retriever's item embeddings (default) or a PureSVD baseline of the train samples")
    parser.add_argument("--model-version", default="latest", help="retriever version to read embeddings from")
    parser.add_argument("--features-version", default="latest", help="features version (svd, evaluation)")
    parser.add_argument("--factory", default="auto",
                        help="auto (chosen by measured recall and latency: exact unless HNSW is much faster at recall@100 ≥ 0.95), "
                             "or a faiss factory: Flat (exact), HNSW32, IVF (auto lists), IVF1024,Flat, LSH")
    parser.add_argument("--search-params", default=None, help="faiss search parameters, e.g. efSearch=128 or nprobe=16")
    parser.add_argument("--ef-construction", type=int, default=None, help="HNSW build effort (faiss default 40)")
    parser.add_argument("--ease-validation", default="features", choices=["features", *PROTOCOLS],
                        help="the split the ease path's λ is tuned on: the features' test split, or a protocol's")
    parser.add_argument("--no-publish", action="store_true", help="write the version but leave index/LATEST alone")
    parser.add_argument("--evaluate", action="store_true", help="after building, print per-path and merged Recall@K")
    parser.add_argument("--evaluate-only", action="store_true", help="evaluate a published index, build nothing")
    parser.add_argument("--index-version", default="latest", help="index version for --evaluate-only")
    parser.add_argument("--config", type=Path, default=None, help="recall config YAML (RecallConfig keys)")
    parser.add_argument("--quota", action="append", default=[], metavar="PATH=N",
                        help="per-path quota, repeatable, in path order (replaces the configured quotas)")
    parser.add_argument("-k", type=int, default=None, help="K of Recall@K (default: the sum of the quotas)")
    parser.add_argument("--no-tower", action="store_true", help="evaluate without the user tower")
    args = parser.parse_args(argv)  # fmt: skip
    setup_logging(args.verbose)
    artifacts = artifacts_arg(args.artifacts)
    try:
        rcfg = recall_config(args.config, args.quota)
        cfg = IndexConfig(
            artifacts=artifacts, factory=args.factory, search_params=args.search_params,
            ef_construction=args.ef_construction, embeddings=args.embeddings, model_version=args.model_version,
            features_version=args.features_version, publish=not args.no_publish,
            ease_validation=args.ease_validation,
        )  # fmt: skip
    except ValueError as e:
        parser.error(str(e))
    try:
        if args.evaluate_only:
            index = load_index(artifacts, args.index_version)
        else:
            build = run_index(cfg)
            print(summary(build), flush=True)
            index = build.index
            meta = build.meta
            tracking.log_run("index", f"index-{build.version}",
                             params={"factory": meta.get("factory"), "search_params": meta.get("search_params") or "",
                                     "embeddings": meta.get("embeddings") or {}, "version": build.version},
                             metrics=meta, files=build.path)  # fmt: skip
        if args.evaluate or args.evaluate_only:
            emb_source = index.meta.get("embeddings") or {}
            version = emb_source.get("features_version") or args.features_version
            from rayrec.features.spec import features_path

            features = features_path(artifacts, version)
            report = run_offline(artifacts, index, rcfg, features_path=features, k=args.k, use_tower=not args.no_tower)
            print(format_report(report), flush=True)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

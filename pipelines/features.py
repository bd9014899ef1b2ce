"""The feature job: ratings → samples, online features, FeatureSpec, statistics.

    python -m pipelines.features [--dataset auto|movielens|synthetic|ml-latest-small|PATH]
                                 [--artifacts URI] [--online-store URL] [--num-blocks N]

Runs unchanged on a laptop (a local Ray is started) and on a cluster:

    ray job submit --working-dir . -- python -m pipelines.features --artifacts s3://bucket/rayrec

With ``--online-store`` (``sqlite:///path``, ``redis://host:port/db``, or ``default`` for the embedded
SQLite file under the artifacts dir) the latest user and item features are loaded into the store as a
new version, made live by one swap.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from rayrec.features.pointintime import LABEL_THRESHOLD
from pipelines._common import HelpFormatter, add_common_args, artifacts_arg, init_ray, load_data, setup_logging
from rayrec.config import configured_store_url
from rayrec.data.source import DATASET_CHOICES
from rayrec.features import FeaturesConfig, run_features
from rayrec.features.pipeline import summary
from rayrec.shared import ArtifactsNotShared, check_shared
from rayrec.store import default_store_url
from rayrec.store.loader import load_online, seed_realtime

log = logging.getLogger("pipelines.features")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter, description="Compute samples, online features, the FeatureSpec and statistics.")
    parser.add_argument("--dataset", default="auto", help=f"one of {', '.join(DATASET_CHOICES)}, or a MovieLens folder")
    add_common_args(parser)
    parser.add_argument("--online-store", default=None,
                        help="load the latest features into this store URL ('default': RAYREC_STORE_URL, else the embedded "
                        "SQLite; when the flag is absent and RAYREC_STORE_URL is set, the features load there)")
    parser.add_argument("--threshold", type=float, default=LABEL_THRESHOLD, help="label = rating >= threshold")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="each user's last fraction of ratings is test")
    parser.add_argument("--min-ratings", type=int, default=5, help="users with fewer ratings stay in train")
    parser.add_argument("--num-blocks", type=int, default=None, help="hash partitions (default: by data size)")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        cfg = FeaturesConfig(
            artifacts=artifacts_arg(args.artifacts),
            threshold=args.threshold,
            test_fraction=args.test_fraction,
            min_ratings=args.min_ratings,
            num_blocks=args.num_blocks,
        )
    except ValueError as e:
        parser.error(str(e))
    data = load_data(args.dataset)
    if data is None:
        return 2
    print(f"dataset: {data.source} ({len(data.ratings):,} ratings, {len(data.movies):,} movies)", flush=True)
    if data.report.total_bad:
        print(data.report.summary(), flush=True)
    init_ray(args.address)
    try:
        check_shared(cfg.artifacts)
    except ArtifactsNotShared as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result = run_features(data, cfg)
    print(summary(result), flush=True)
    if args.online_store and "@" in args.online_store:
        log.warning("the --online-store URL carries credentials, which show in process lists and job logs: "
                    "set RAYREC_STORE_URL instead (it is read when the flag is absent)")
    if args.online_store is None and configured_store_url():
        args.online_store = "default"  # the cluster's store, named by RAYREC_STORE_URL (never on a command line)
    if args.online_store:
        t = time.perf_counter()
        url = default_store_url(cfg.artifacts) if args.online_store == "default" else args.online_store
        loaded = load_online(url, result.path)
        rows = sum(r for _, r, _ in loaded.values())
        seeded = seed_realtime(url, data.ratings, data.movies, result.spec.label_threshold)
        log.info("online store: real-time statistics seeded for %d users", seeded)
        print(f"online store   {rows:,} rows loaded in {time.perf_counter() - t:.1f}s "
              f"(users v{loaded['user'][0]}, items v{loaded['item'][0]})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

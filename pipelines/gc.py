"""Delete old artifact versions, never one in use.

    python -m pipelines.gc [--artifacts URI] [--keep 3] [--min-age-hours 1] [--dry-run]
                           [--unrated-users-idle-days D [--store URL]]

Keeps, per kind (features, models/ranker, models/retriever, index): the LATEST version, the newest
``--keep``, those younger than ``--min-age-hours``, those a serving replica holds a lease on, and
what any kept version needs to load (rayrec.gc). Prints every version's fate and the bytes freed.
With ``--unrated-users-idle-days``, also deletes the online store's users who never rated and were
idle that long, with their histories (the store of ``--store``, else RAYREC_STORE_URL, else the
embedded SQLite under the artifacts).
"""

from __future__ import annotations

import argparse
import sys

from pipelines._common import HelpFormatter, artifacts_arg, setup_logging


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(formatter_class=HelpFormatter, description=__doc__.split("\n\n")[0])
    p.add_argument("--artifacts", default=None, help="artifacts URI (default: RAYREC_ARTIFACTS or ./artifacts)")
    p.add_argument("--keep", type=int, default=3, help="newest versions kept per kind")
    p.add_argument("--min-age-hours", type=float, default=1.0, help="versions younger than this are kept")
    p.add_argument("--dry-run", action="store_true", help="list what would be deleted, delete nothing")
    p.add_argument("--unrated-users-idle-days", type=float, default=None,
                   help="also prune the online store's never-rated users idle this long (days)")
    p.add_argument("--store", default=None, help="online store URL for the pruning (default: RAYREC_STORE_URL, else embedded)")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.unrated_users_idle_days is not None and args.unrated_users_idle_days <= 0:
        p.error("--unrated-users-idle-days must be > 0")
    setup_logging(args.verbose)
    from rayrec.gc import collect

    try:
        decisions = collect(artifacts_arg(args.artifacts), keep=args.keep, min_age_s=args.min_age_hours * 3600, dry_run=args.dry_run)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    freed = 0
    for d in decisions:
        what = "keep  " if d.keep else ("would delete" if args.dry_run else "deleted")
        print(f"{what:<12} {d.kind:<17} {d.version:<24} {d.bytes / 1e6:9.1f} MB  {'; '.join(d.reasons)}")
        freed += 0 if d.keep else d.bytes
    verb = "would free" if args.dry_run else "freed"
    print(f"{sum(not d.keep for d in decisions)} of {len(decisions)} versions, {verb} {freed / 1e6:.1f} MB")
    if args.unrated_users_idle_days is not None and not args.dry_run:
        from rayrec.gc import prune_unrated_users
        from rayrec.store import default_store_url, open_store
        from rayrec.store.base import StoreError

        try:
            with open_store(args.store or default_store_url(artifacts_arg(args.artifacts))) as store:
                pruned = prune_unrated_users(store, args.unrated_users_idle_days * 86400)
        except (StoreError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"{len(pruned)} never-rated users idle for more than {args.unrated_users_idle_days:g} days pruned")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The event log back into training data: online ratings and new movies merged into a MovieLens folder.

    python -m pipelines.replay --store URL --out DIR [--dataset auto|movielens|PATH] [--after OFFSET] [--trim]

Reads the store's event log (ratings) and items log (movies added with ``POST /items``), merges them
with the source dataset (a movie rated twice by a user keeps the latest rating) and writes ``DIR`` in
the MovieLens layout, so the next features run includes everything users did online:

    python -m pipelines.replay --store default --out data/replayed
    python -m pipelines.features --dataset data/replayed --online-store default

``--store default`` is the embedded SQLite file under the artifacts dir. ``--trim`` deletes the
replayed events from the log afterwards (only once the folder is safely stored: the log is then the
only other copy). No Ray needed.
"""

from __future__ import annotations

import argparse
import sys

from pipelines._common import HelpFormatter
from rayrec.data import DataError
from rayrec.data.source import DATASET_CHOICES, load_dataset
from rayrec.realtime import EVENTS_LOG, replay
from rayrec.store import StoreError, open_store


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        formatter_class=HelpFormatter, description="Merge the online event log into a MovieLens folder for the next training run."
    )
    parser.add_argument(
        "--store", required=True, help="online store URL (sqlite:///path, redis://host:port/db) or 'default'"
    )
    parser.add_argument("--out", required=True, help="folder to write (ratings.csv, movies.csv, …, replay.json)")
    parser.add_argument(
        "--dataset", default="auto", help=f"source ratings: one of {', '.join(DATASET_CHOICES)}, or a MovieLens folder"
    )
    parser.add_argument("--after", default=None, help="replay only events after this log offset")
    parser.add_argument("--trim", action="store_true", help="delete the replayed events from the log afterwards")
    args = parser.parse_args(argv)
    try:
        source = load_dataset(args.dataset)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    store = open_store(None if args.store == "default" else args.store)
    try:
        store.ping()
        result = replay(store, source, args.out, after=args.after)
        if args.trim and result.last_offset is not None:
            trimmed = store.trim_log(EVENTS_LOG, result.last_offset)
            print(f"trimmed {trimmed:,} events from the log (up to offset {result.last_offset})")
    except (StoreError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        store.close()
    print(
        f"replay: {result.log_ratings:,} ratings from the event log ({result.replaced:,} replaced earlier ones), "
        f"{result.new_items:,} new movies; {result.ratings:,} ratings and {result.movies:,} movies written to "
        f"{result.out} in {result.seconds:.1f}s (last offset {result.last_offset})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

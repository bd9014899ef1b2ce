"""Generate a synthetic MovieLens-like dataset.

    python -m pipelines.synthetic --out DIR --users N --items N --ratings N --seed S

Without ``--out`` the data go to ``<data dir>/synthetic-<users>u-<items>i-<ratings>r-s<seed>``. A folder that
already holds the same dataset is reused.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from pipelines._common import HelpFormatter
from rayrec.config import default_data_dir
from rayrec.data.synthetic import SyntheticConfig, generate


def main(argv: list[str] | None = None) -> None:
    defaults = SyntheticConfig()
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter, description="Generate a synthetic MovieLens-like dataset (CSV files).")
    parser.add_argument("--out", type=Path, help="output folder (default: under the data dir)")
    parser.add_argument("--users", type=int, help="users", default=defaults.n_users)
    parser.add_argument("--items", type=int, help="movies", default=defaults.n_items)
    parser.add_argument("--ratings", type=int, help="ratings", default=defaults.n_ratings)
    parser.add_argument("--seed", type=int, help="random seed", default=defaults.seed)
    args = parser.parse_args(argv)
    try:
        config = SyntheticConfig(n_users=args.users, n_items=args.items, n_ratings=args.ratings, seed=args.seed)
    except ValueError as e:
        parser.error(str(e))
    out = args.out or default_data_dir() / f"synthetic-{args.users}u-{args.items}i-{args.ratings}r-s{args.seed}"
    started = time.perf_counter()
    path = generate(out, config, progress=True)
    print(f"synthetic dataset at {path} ({time.perf_counter() - started:.1f}s)")


if __name__ == "__main__":
    main()

"""The statistics report: counts, sparsity, rating histogram, top genres, label balance.

Computed as per-block partials merged on the driver, so it scales with the data like the rest of
the pipeline; rendered as JSON for monitoring and as a short readable summary.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from rayrec.arrays import unique
from rayrec.features.spec import column_numpy, list_values

__all__ = ["StatsPartial", "build_report", "format_report"]


@dataclass
class StatsPartial:
    rows: Counter[str] = field(default_factory=Counter)  # per split
    positives: Counter[str] = field(default_factory=Counter)  # per split
    users: Counter[str] = field(default_factory=Counter)  # distinct users per split (blocks hold whole users)
    ratings: Counter[float] = field(default_factory=Counter)
    genres: Counter[str] = field(default_factory=Counter)  # ratings per (first three) genre
    ts_min: int | None = None
    ts_max: int | None = None

    @classmethod
    def of(cls, batch: pd.DataFrame | pa.Table) -> StatsPartial:
        p = cls()
        split = column_numpy(batch, "split").astype(str)
        label = column_numpy(batch, "label")
        users = column_numpy(batch, "userId")
        for s in np.unique(split):
            m = split == s
            p.rows[str(s)] = int(m.sum())
            p.positives[str(s)] = int(label[m].sum())
            p.users[str(s)] = int(len(unique(users[m])))
        vals, cnt = np.unique(column_numpy(batch, "rating", np.float64), return_counts=True)
        p.ratings.update(dict(zip(vals.tolist(), cnt.tolist())))
        if isinstance(batch, pa.Table):
            vc = pc.value_counts(pc.list_flatten(batch.column("item_genres")))
            p.genres.update(dict(zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist())))
        else:
            p.genres.update(list_values(batch, "item_genres"))
        if len(batch):
            ts = column_numpy(batch, "timestamp")
            p.ts_min, p.ts_max = int(ts.min()), int(ts.max())
        return p

    def merge(self, o: StatsPartial) -> StatsPartial:
        self.rows.update(o.rows)
        self.positives.update(o.positives)
        self.users.update(o.users)
        self.ratings.update(o.ratings)
        self.genres.update(o.genres)
        if o.ts_min is not None:
            self.ts_min = o.ts_min if self.ts_min is None else min(self.ts_min, o.ts_min)
            self.ts_max = o.ts_max if self.ts_max is None else max(self.ts_max, o.ts_max)  # type: ignore[type-var]
        return self


def build_report(
    p: StatsPartial, *, n_users: int, n_rated_items: int, n_catalog: int, source: str, malformed: dict[str, Any]
) -> dict[str, Any]:
    total = sum(p.rows.values())
    return {
        "source": source,
        "ratings": total,
        "users": n_users,
        "items_rated": n_rated_items,
        "items_in_catalog": n_catalog,
        "sparsity": 1.0 - total / max(1, n_users * n_rated_items),
        "time_range": [p.ts_min, p.ts_max],
        "rating_histogram": {f"{k:.1f}": v for k, v in sorted(p.ratings.items())},
        "top_genres": [[g, c] for g, c in sorted(p.genres.items(), key=lambda kv: (-kv[1], kv[0]))[:10]],
        "splits": {
            s: {"rows": p.rows[s], "users": p.users[s], "positive_rate": p.positives[s] / max(1, p.rows[s])}
            for s in sorted(p.rows)
        },
        "label_balance": sum(p.positives.values()) / max(1, total),
        "malformed": malformed,
    }


def format_report(r: dict[str, Any]) -> str:
    hist = r["rating_histogram"]
    peak = max(hist.values()) if hist else 1
    bars = [f"    {k:>4} {'#' * max(1, round(30 * v / peak))} {v}" for k, v in hist.items()]
    splits = ", ".join(
        f"{s}: {v['rows']:,} rows / {v['users']:,} users / {v['positive_rate']:.1%} positive"
        for s, v in r["splits"].items()
    )
    bad = sum(r["malformed"].get("bad_counts", {}).values())
    return "\n".join(
        [
            f"dataset        {r['source']}",
            f"ratings        {r['ratings']:,} from {r['users']:,} users on {r['items_rated']:,} items"
            f" ({r['items_in_catalog']:,} in catalog)",
            f"sparsity       {r['sparsity']:.4%}",
            f"label balance  {r['label_balance']:.1%} positive",
            f"splits         {splits}",
            "top genres     " + ", ".join(f"{g} ({c:,})" for g, c in r["top_genres"][:5]),
            f"malformed rows {bad}",
            "rating histogram",
            *bars,
        ]
    )

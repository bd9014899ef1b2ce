"""Item rows for the rank stage, read through a short-lived in-memory cache.

Every ``/recommend`` needs the store rows of its ~100 candidates (features for the ranker, titles and
genres for the answer). The candidates of different requests overlap heavily (popular and
genre-popular items, neighbours of popular likes), and an item row changes only when the item is
rated (its count, mean and std) or a features load replaces the table. So rows are kept for
``ttl_s`` seconds: a request reads from the store only the rows missing or older than that, in one
call. The price is that an item's statistics in the ranker's input and in the answer can lag the
store by up to ``ttl_s``, on each replica; ``ttl_s = 0`` reads every row every time.

A row is handed out as the same dict object until it is re-read and found changed, so what is derived
from it (the ranker's encoded item inputs, :class:`rayrec.models.inference.RankerScorer`) can be kept
until then too.
Rows the store lacks are not kept: an item added meanwhile is found on the next request.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from rayrec.store.base import FeatureStore, Row

__all__ = ["ItemRows"]


class ItemRows:
    """``get(store, ids)``: item rows, from memory when read less than ``ttl_s`` ago. At most
    ``max_items`` rows are kept (the oldest reads are dropped first)."""

    def __init__(self, ttl_s: float = 5.0, max_items: int = 200_000) -> None:
        if ttl_s < 0:
            raise ValueError(f"ttl_s must be ≥ 0, got {ttl_s}")
        self.ttl_s, self.max_items = ttl_s, max_items
        self._rows: dict[int, tuple[float, Row]] = {}  # movie id -> (read at, row), oldest read first
        self._lock = threading.Lock()
        self.hits = 0  # rows answered from memory, and read from the store (for the hit-rate metric)
        self.misses = 0

    def get(self, store: FeatureStore, ids: Sequence[int]) -> list[Row | None]:
        """Rows of ``ids`` (None where the store has none); one store call for the rows not kept.
        Store errors propagate."""
        ids = [int(m) for m in ids]
        if self.ttl_s <= 0:
            return store.get("item", ids)
        now = time.monotonic()
        oldest = now - self.ttl_s
        out: list[Row | None] = [None] * len(ids)
        missing: list[int] = []
        kept = self._rows
        for i, m in enumerate(ids):
            hit = kept.get(m)
            if hit is not None and hit[0] >= oldest:
                out[i] = hit[1]
            else:
                missing.append(i)
        self.hits += len(ids) - len(missing)
        self.misses += len(missing)
        if not missing:
            return out
        wanted = list(dict.fromkeys(ids[i] for i in missing))
        got = dict(zip(wanted, store.get("item", wanted)))
        with self._lock:
            for m, row in got.items():
                if row is not None:
                    old = kept.pop(m, None)  # re-inserted last: the dict stays in order of reads
                    if old is not None and old[1] == row:
                        got[m] = row = old[1]  # unchanged: the same object, so what was derived from it holds
                    kept[m] = (now, row)
            while len(kept) > self.max_items:
                kept.pop(next(iter(kept)))
        for i in missing:
            out[i] = got[ids[i]]
        return out

    def kept(self, ids: Sequence[int]) -> list[Row] | None:
        """Rows of ``ids`` when every one is kept and younger than ``ttl_s``: no store call, so the
        caller need not go to the store's thread; None when any is missing or old (then :meth:`get`)."""
        if self.ttl_s <= 0:
            return None
        oldest = time.monotonic() - self.ttl_s
        kept = self._rows
        out: list[Row] = []
        for m in ids:
            hit = kept.get(int(m))
            if hit is None or hit[0] < oldest:
                return None
            out.append(hit[1])
        self.hits += len(out)
        return out

    def __len__(self) -> int:
        return len(self._rows)

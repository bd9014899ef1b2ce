"""Named splits of raw ratings into a known part (what the platform may learn from) and a held-out
part (what it must predict), with the protocol's notion of a relevant held-out item.

- ``temporal``: each user's last 20% of ratings by time are held out (users with fewer than 5 ratings
  stay wholly known); relevant = a held-out rating ≥ 3.5. What a deployed recommender faces: predict
  what comes next, and what is liked.
- ``random``: each user's ratings are split at random, 75% known / 25% held out, with a fixed seed;
  every held-out item is relevant, whatever its rating (the MovieLens benchmark protocol of Microsoft
  Recommenders: predict what the user interacts with).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rayrec.features.pointintime import LABEL_THRESHOLD
import numpy as np
import pandas as pd

__all__ = ["Protocol", "PROTOCOLS", "Split", "split_ratings"]

ProtocolName = Literal["temporal", "random"]


@dataclass(frozen=True)
class Protocol:
    name: ProtocolName
    heldout_fraction: float
    relevant_min_rating: float | None  # None: every held-out item is relevant
    min_ratings: int = 5  # temporal: users with fewer ratings stay wholly known
    seed: int = 42


PROTOCOLS: dict[str, Protocol] = {
    "temporal": Protocol("temporal", 0.2, LABEL_THRESHOLD),
    "random": Protocol("random", 0.25, None),
}


@dataclass(frozen=True)
class Split:
    """The known ratings, the held-out ratings, and the relevant (userId, movieId) pairs."""

    protocol: Protocol
    known: pd.DataFrame
    heldout: pd.DataFrame

    @property
    def relevant(self) -> pd.DataFrame:
        """Held-out pairs that count as relevant (never an item the user already has in the known part)."""
        h = self.heldout
        if self.protocol.relevant_min_rating is not None:
            h = h[h["rating"].to_numpy(np.float64) >= self.protocol.relevant_min_rating]
        h = h[["userId", "movieId"]].drop_duplicates()
        seen = pd.MultiIndex.from_frame(self.known[["userId", "movieId"]])
        return h[~pd.MultiIndex.from_frame(h).isin(seen)].reset_index(drop=True)


def _per_user_rank(users: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For rows sorted by ``order`` (user first), each row's rank within its user and its user's size."""
    u = users[order]
    start = np.r_[0, np.flatnonzero(u[1:] != u[:-1]) + 1]
    sizes = np.diff(np.r_[start, len(u)])
    rank_sorted = np.arange(len(u)) - np.repeat(start, sizes)
    rank = np.empty(len(u), dtype=np.int64)
    size = np.empty(len(u), dtype=np.int64)
    rank[order] = rank_sorted
    size[order] = np.repeat(sizes, sizes)
    return rank, size


def split_ratings(ratings: pd.DataFrame, protocol: str | Protocol) -> Split:
    """Split ``ratings`` (userId, movieId, rating, timestamp) by ``protocol`` (a name or a Protocol)."""
    if isinstance(protocol, str) and protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {sorted(PROTOCOLS)}")
    p = PROTOCOLS[protocol] if isinstance(protocol, str) else protocol
    r = ratings.reset_index(drop=True)
    users = r["userId"].to_numpy(np.int64)
    if p.name == "temporal":
        order = np.lexsort((r["movieId"].to_numpy(), r["timestamp"].to_numpy(), users))
        rank, size = _per_user_rank(users, order)
        n_out = np.where(size >= p.min_ratings, np.floor(size * p.heldout_fraction + 1e-9), 0).astype(np.int64)
        held = rank >= size - n_out
    else:
        noise = np.random.default_rng(p.seed).random(len(r))
        order = np.lexsort((noise, users))
        rank, size = _per_user_rank(users, order)
        held = rank < np.round(size * p.heldout_fraction).astype(np.int64)
    return Split(p, r[~held].reset_index(drop=True), r[held].reset_index(drop=True))

"""The synthetic generator's hidden preferences (:func:`truth`): what a simulated user truly thinks
of any item, from the same factors and biases :func:`rayrec.data.synthetic.generate` drew the ratings from."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rayrec.data import synthetic as gen

__all__ = ["Truth", "truth"]


@dataclass(frozen=True)
class Truth:
    """The generator's hidden preferences for a config: what a simulated user truly thinks of an item
    (the same factors and biases the ratings were drawn from)."""

    item_ids: np.ndarray  # (I,) movieId
    user_factors: np.ndarray  # (U, F); user u is row u - 1
    user_bias: np.ndarray  # (U,)
    item_factors: np.ndarray  # (I, F)
    item_bias: np.ndarray  # (I,)
    user_activity: np.ndarray  # (U,) ratings each user was given: how engaged they are

    def expected_rating(self, user_ids: np.ndarray, movie_ids: np.ndarray) -> np.ndarray:
        """The rating before noise and rounding (not clipped) for pairs ``(user_ids[n], movie_ids[n])``
        (broadcast); NaN for a movie the generator never made or a user outside the config."""
        users = np.asarray(user_ids, dtype=np.int64)
        movies = np.asarray(movie_ids, dtype=np.int64)
        users, movies = np.broadcast_arrays(users, movies)
        pos = np.clip(np.searchsorted(self.item_ids, movies), 0, len(self.item_ids) - 1)
        ok = (self.item_ids[pos] == movies) & (users >= 1) & (users <= len(self.user_bias))
        u = np.where(ok, users - 1, 0)
        i = np.where(ok, pos, 0)
        affinity = np.einsum("...f,...f->...", self.user_factors[u], self.item_factors[i])
        x = gen._GLOBAL_MEAN + self.user_bias[u] + self.item_bias[i] + gen._INTERACTION_SCALE * affinity
        return np.where(ok, x, np.nan)


def truth(config: gen.SyntheticConfig | None = None) -> Truth:
    """The hidden preferences behind :func:`generate`'s data for ``config`` (no files needed)."""
    config = config or gen.SyntheticConfig()
    items = gen._make_items(config)
    users = gen._make_users(config, gen._Sampler(items).sizes)
    return Truth(items.ids, users.factors, users.bias, items.factors, items.bias, users.counts)

"""Words of the synthetic catalogue: titles and tags (a vocabulary per genre plus generic tags)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from rayrec.data.synthetic import _Items

__all__: list[str] = []

_GENERIC_TAG_SHARE = 0.35
# Tags by genre (same order as GENRES), then tags that fit any movie.
_GENRE_TAGS: tuple[tuple[str, ...], ...] = (
    ("action packed", "explosions", "car chase"), ("epic", "quest", "journey"), ("pixar", "cute", "hand drawn"),
    ("family", "kids", "coming of age"), ("funny", "hilarious", "witty", "dark comedy"), ("heist", "mafia", "gritty"),
    ("true story", "informative"), ("emotional", "character study", "slow paced"), ("magic", "fairy tale"),
    ("noir", "femme fatale"), ("scary", "gore", "creepy"), ("imax", "spectacle"), ("music", "singing"),
    ("twist ending", "whodunit"), ("love story", "romantic", "bittersweet"), ("space", "dystopia", "time travel"),
    ("suspense", "tense", "plot twist"), ("world war ii", "anti-war"), ("cowboys", "frontier"),
)
_GENERIC_TAGS = (
    "classic", "atmospheric", "great acting", "visually appealing", "based on a book", "overrated",
    "thought-provoking", "good soundtrack", "predictable", "funny, but sad",
)
_TITLE_ADJECTIVES = (
    "Silent", "Broken", "Golden", "Last", "Dark", "Hidden", "Lost", "Wild", "Crimson", "Quiet", "Burning", "Frozen",
    "Secret", "Endless", "Little", "Midnight", "Savage", "Electric", "Distant", "Hollow", "Bright", "Final",
    "Forgotten", "Iron", "Velvet", "Stolen", "Restless", "Empty", "Perfect", "Sweet",
)
_TITLE_NOUNS = (
    "River", "City", "Night", "Summer", "Stranger", "Garden", "Horizon", "Kingdom", "Promise", "Road", "Storm", "Heart",
    "Mirror", "Island", "Shadow", "Dream", "Winter", "Harbor", "Empire", "Secret", "Voyage", "Echo", "Frontier",
    "Machine", "Letter", "Affair", "Escape", "Witness", "Journey", "Game", "Ghost", "Season", "Legend", "Station",
)


class _TagVocab:
    """Tags by genre laid end to end (the generic ones last), so one draw picks one per rating."""

    def __init__(self, rate: float) -> None:
        groups = [*_GENRE_TAGS, _GENERIC_TAGS]
        self.words = np.array([w for grp in groups for w in grp], dtype=object)
        self.offset = np.cumsum([0] + [len(grp) for grp in groups])[:-1]
        self.size = np.array([len(grp) for grp in groups])
        self.rate = rate

    def draw(
        self, rng: np.random.Generator, u: np.ndarray, i: np.ndarray, ts: np.ndarray, items: _Items
    ) -> list[tuple[int, int, str, int]]:
        """Tag about ``rate`` per 1,000 of the ratings (u, i) at times ``ts``."""
        chosen = np.flatnonzero(rng.random(len(u)) < self.rate / 1000)
        genres = items.genres[i[chosen]]  # (T, G)
        # One of the item's genres at random, or the generic tags.
        keys = np.where(genres, rng.random(genres.shape), -1.0)
        group = np.where(genres.any(axis=1), keys.argmax(axis=1), len(self.size) - 1)
        group[rng.random(len(chosen)) < _GENERIC_TAG_SHARE] = len(self.size) - 1
        word = self.words[self.offset[group] + np.floor(rng.random(len(chosen)) * self.size[group]).astype(np.int64)]
        return list(zip((u[chosen] + 1).tolist(), items.ids[i[chosen]].tolist(), word.tolist(), ts[chosen].tolist()))


# ------------------------------------------------------------------------------------------- writing


# The rating column is a dictionary over "0.5" … "5.0", so it is written as MovieLens writes it.


def _titles(rng: np.random.Generator, n: int) -> list[str]:
    """Made-up titles in MovieLens's style, including the trailing article ("Harbor, The") that puts a
    comma, and so CSV quoting, into many titles."""
    pattern = rng.choice(6, size=n, p=[0.35, 0.15, 0.2, 0.1, 0.08, 0.12]).tolist()
    adj = rng.integers(0, len(_TITLE_ADJECTIVES), n).tolist()
    noun = rng.integers(0, len(_TITLE_NOUNS), n).tolist()
    other = rng.integers(0, len(_TITLE_NOUNS), n).tolist()
    sequel = rng.integers(2, 5, n).tolist()
    forms = ("{a} {b}", "{b} of the {c}", "{a} {b}, The", "{b}", "{a} {b} {k}", "{b} and {c}")
    return [
        forms[p].format(a=_TITLE_ADJECTIVES[a], b=_TITLE_NOUNS[b], c=_TITLE_NOUNS[c], k=k)
        for p, a, b, c, k in zip(pattern, adj, noun, other, sequel)
    ]

"""The HTTP API's request and response models: what the OpenAPI schema documents.

Limits that a caller can hit (``K_MAX``, ``MAX_BODY_BYTES``) live here too, so the handlers, the
schema and the tests agree on them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

__all__ = [
    "K_DEFAULT",
    "K_MAX",
    "ID_MAX",
    "MAX_BODY_BYTES",
    "MAX_EVENTS",
    "MAX_JSON_DEPTH",
    "MAX_INT_DIGITS",
    "Movie",
    "RecommendedItem",
    "Recommendation",
    "SimilarItem",
    "SimilarMovies",
    "UserProfile",
    "Health",
    "ErrorBody",
]

K_DEFAULT = 10
K_MAX = 100
ID_MAX = 2**63 - 1
MAX_BODY_BYTES = 16 * 1024  # an event is a few hundred bytes; anything larger is refused with 413
MAX_EVENTS = 50  # events in one POST /events: each costs a few store transactions (413 beyond)
MAX_JSON_DEPTH = 8  # an event list is 2 levels deep; deeper bodies are refused before parsing (400)
MAX_INT_DIGITS = 24  # ids fit in 19 digits; longer integers are refused before conversion (400)


class Movie(BaseModel):
    """A catalog item as the online store holds it."""

    movie_id: int
    title: str | None = None
    genres: list[str] = Field(default_factory=list)
    year: int | None = None
    rating_count: int | None = Field(default=None, description="ratings seen by the features pipeline")
    rating_mean: float | None = None


class RecommendedItem(Movie):
    score: float = Field(
        description="final score after rerank; the list is sorted by it, best first (an interleaved list: 1 − position / length)"
    )
    rank_score: float | None = Field(
        default=None, description="the ranker's click/like probability (None when the ranker was skipped)"
    )
    paths: list[str] = Field(description="recall paths that proposed the item: embedding, item2item, genre, popular")
    reason: str = Field(description='a short explanation, e.g. "because you liked Heat (1995)"')
    team: str | None = Field(
        default=None,
        description="in an interleaved list: the variant that contributed the item (null for an item both variants offered in the "
        "same round: its clicks credit neither); optimized interleaving: the variant that ranks it higher (null: both alike)",
    )
    credit: float | None = Field(
        default=None,
        description="in an interleaved list: what a click on the item credits (> 0 the first variant, < 0 the second; team draft "
        "±1 or 0, optimized interleaving the difference of the item's ranks in the two lists)",
    )


class Recommendation(BaseModel):
    user_id: int
    k: int
    items: list[RecommendedItem]
    cold_start: bool = Field(
        default=False, description="the cold-start path was used: a new user, or one with fewer than 5 ratings"
    )
    degraded: bool = Field(default=False, description="a dependency failed and a simpler answer was given")
    degraded_reason: str | None = Field(default=None, description="store_unavailable | ranker_failed | recall_failed")
    model_version: str | None = None
    index_version: str | None = None
    took_ms: float = 0.0
    timings: dict[str, float] = Field(default_factory=dict, description="milliseconds per stage, for operators")
    request_id: str | None = Field(
        default=None, description="this list's id: send it with POST /events so clicks and ratings count for it"
    )
    experiment: str | None = Field(default=None, description="the experiment the user is in, if any")
    variant: str | None = Field(default=None, description="the user's variant, or 'interleaved' (see items[].team)")


class SimilarItem(Movie):
    score: float = Field(description="similarity to the query movie (cosine of item embeddings, or genre overlap)")


class SimilarMovies(BaseModel):
    movie_id: int
    movie: Movie | None = None
    k: int
    items: list[SimilarItem]
    degraded: bool = False
    degraded_reason: str | None = None


class UserProfile(BaseModel):
    user_id: int
    known: bool = Field(description="the online store holds features for this user")
    features: dict[str, Any] = Field(default_factory=dict, description="the user's online features")
    recent: list[Movie] = Field(default_factory=list, description="recently liked items, most recent first")
    history: list[dict[str, Any]] = Field(default_factory=list, description="events received online, newest last")


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    store: Literal["ok", "unavailable"]
    model_version: str | None = None
    index_version: str | None = None
    features_version: str | None = None
    composition: str | None = None


class ErrorBody(BaseModel):
    error: str = Field(description="what was wrong, naming the field")
    field: str | None = None

"""What the real-time path accepts: user events (a rating or a click) and new catalog items.

Pydantic models with ``extra="forbid"``, so the HTTP layer can use them as request bodies and a bad
field comes back as one clear error naming it. :class:`EventError` carries the same shape of errors
for checks that need the store or the catalog (an unknown movie, an unknown genre).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)

__all__ = [
    "Event",
    "EventAck",
    "NewItem",
    "AddedItem",
    "EventError",
    "UnknownMovie",
    "parse_events",
    "RATING_MIN",
    "RATING_MAX",
    "RATING_STEP",
]

RATING_MIN, RATING_MAX, RATING_STEP = 0.5, 5.0, 0.5
_INT64_MAX = 2**63 - 1
_MAX_FUTURE_S = 24 * 3600  # clocks drift; a timestamp a day ahead is a unit mistake (milliseconds?)


class EventError(ValueError):
    """An event or item that cannot be accepted. ``errors`` lists ``{"loc": [...], "msg": ...}`` in
    the shape pydantic (and FastAPI's 422 responses) use, so the HTTP layer can return them as is."""

    def __init__(self, errors: Sequence[Mapping[str, Any]]) -> None:
        self.errors = [{"loc": list(e.get("loc", ())), "msg": str(e["msg"])} for e in errors]
        super().__init__("; ".join(f"{'.'.join(map(str, e['loc'])) or 'event'}: {e['msg']}" for e in self.errors))

    @classmethod
    def of(cls, e: ValidationError, prefix: Sequence[Any] = ()) -> EventError:
        return cls(
            [{"loc": [*prefix, *e_["loc"]], "msg": e_["msg"].removeprefix("Value error, ")} for e_ in e.errors()]
        )


class UnknownMovie(EventError):
    """An event names a movie the online store does not hold (HTTP 404 or 422)."""


class Event(BaseModel):
    """One thing a user did: ``rating`` (``value`` in 0.5..5 in steps of 0.5) or ``click`` (``value``
    optional, e.g. a dwell time, never negative). ``timestamp`` is Unix seconds, now by default.

    ``event_id`` makes a retry safe: an event whose id was logged before is applied once. Without
    one the id is derived from the event's fields, so a resend of the same rating or click with the
    same ``timestamp`` is a duplicate too (send an ``event_id``, or a ``timestamp``, to retry safely:
    an omitted timestamp is the time of arrival, which a retry changes)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["rating", "click"]
    user_id: StrictInt = Field(gt=0, le=_INT64_MAX, description="the user, a positive integer id")
    movie_id: StrictInt = Field(gt=0, le=_INT64_MAX, description="the movie, a positive integer id")
    # strict: a JSON number only ("4.5" and true are refused, not converted)
    value: StrictFloat | None = Field(
        default=None, validate_default=True, description="the rating, or a click's weight (a JSON number)"
    )
    timestamp: StrictInt | None = Field(
        default=None, validate_default=True, ge=0, description="Unix seconds; now when omitted or null"
    )
    event_id: StrictStr | None = Field(
        default=None, pattern=r"^[A-Za-z0-9_.:\-]{1,128}$",
        description="the client's id of this event (letters, digits, '_.:-'): a repeated id is applied once; "
        "derived from the fields when omitted",
    )  # fmt: skip
    request_id: StrictStr | None = Field(
        default=None, pattern=r"^[A-Za-z0-9_.:\-]{1,128}$",
        description="the request_id of the /recommend answer that showed the movie: the click or rating counts "
        "for that list (experiments); an id no list had is stored and counted as unattributed",
    )  # fmt: skip

    @field_validator("value")
    @classmethod
    def _value(cls, v: float | None, info: ValidationInfo) -> float | None:
        kind = info.data.get("kind")
        if v is not None:
            try:
                v = float(v)
            except OverflowError:
                raise ValueError("must be a finite number") from None
            if not math.isfinite(v):
                raise ValueError("must be a finite number")
        if kind == "rating":
            if v is None:
                raise ValueError(f"a rating needs a value from {RATING_MIN} to {RATING_MAX}")
            if not RATING_MIN <= v <= RATING_MAX or abs(v / RATING_STEP - round(v / RATING_STEP)) > 1e-9:
                raise ValueError(f"a rating is {RATING_MIN} to {RATING_MAX} in steps of {RATING_STEP}, got {v:g}")
            return round(v / RATING_STEP) * RATING_STEP
        if kind == "click" and v is not None and v < 0:
            raise ValueError(f"a click's value cannot be negative, got {v:g}")
        return v

    @field_validator("timestamp")
    @classmethod
    def _timestamp(cls, v: int | None) -> int:
        if v is None:
            return int(time.time())
        if v > time.time() + _MAX_FUTURE_S:
            raise ValueError(f"{v} is in the future: pass Unix time in seconds (not milliseconds)")
        return v

    @property
    def ts(self) -> int:
        """The timestamp, always set after validation."""
        assert self.timestamp is not None
        return self.timestamp

    @property
    def key(self) -> str:
        """The event's id: the client's, else ``d-`` and a hash of its fields (stable across processes)."""
        if self.event_id is not None:
            return self.event_id
        text = f"{self.kind}|{self.user_id}|{self.movie_id}|{self.value!r}|{self.ts}"
        return "d-" + hashlib.sha256(text.encode()).hexdigest()[:32]

    def record(self) -> dict[str, Any]:
        """The event as stored in the event log (with its id)."""
        return {**self.model_dump(), "event_id": self.key}


class EventAck(BaseModel):
    """What ``POST /events`` answers per accepted event: where it sits in the event log and what the
    user's online state is now."""

    offset: str = Field(description="the event's offset in the durable event log")
    kind: str
    user_id: int
    movie_id: int
    timestamp: int
    event_id: str = Field(default="", description="the event's id (the client's, or derived from its fields)")
    applied: bool = Field(description="False when a newer rating of the same movie already stood, or for a duplicate")
    duplicate: bool = Field(default=False, description="an event with this id was applied before: nothing changed")
    user_rating_count: int
    user_embedding: bool = Field(description="whether the user's embedding was recomputed")


class NewItem(BaseModel):
    """A movie to add to the catalog (``POST /items``): genres must be known to the catalog."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    title: str = Field(min_length=1, max_length=300)
    genres: list[str] = Field(default_factory=list, max_length=20)
    year: StrictInt | None = Field(default=None, ge=1870, le=2100)

    @field_validator("title")
    @classmethod
    def _title(cls, v: str) -> str:
        v = " ".join(v.split())
        if not v:
            raise ValueError("a title cannot be blank")
        return v

    @field_validator("genres")
    @classmethod
    def _genres(cls, v: list[str]) -> list[str]:
        out: list[str] = []
        for g in v:
            g = g.strip()
            if not g:
                raise ValueError("a genre cannot be blank")
            if g not in out:
                out.append(g)
        return out


class AddedItem(BaseModel):
    """What ``POST /items`` answers: the movie's new id and its store row."""

    movie_id: int
    title: str
    genres: list[str]
    year: int | None
    embedding: str = Field(description="how its vector was made: 'tower' (OOV id) or 'genre_mean'")
    indexed: bool = Field(description="whether it went into this process's live index")
    offset: str = Field(description="its offset in the items log")


def parse_events(payload: Event | Mapping[str, Any] | Sequence[Event | Mapping[str, Any]]) -> list[Event]:
    """One event or a list of them, validated; :class:`EventError` lists every bad field, located by
    the event's position in a list."""
    if isinstance(payload, (Event, Mapping)):
        items, listed = [payload], False
    elif isinstance(payload, Sequence) and not isinstance(payload, (str, bytes)):
        items, listed = list(payload), True
    else:
        raise EventError(
            [{"loc": [], "msg": f"expected an event object or a list of them, got {type(payload).__name__}"}]
        )
    out: list[Event] = []
    errors: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        if isinstance(item, Event):
            out.append(item)
            continue
        try:
            out.append(Event.model_validate(item))
        except ValidationError as e:
            errors += EventError.of(e, [i] if listed else []).errors
    if errors:
        raise EventError(errors)
    return out

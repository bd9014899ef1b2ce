"""Events into the online store: validate, log durably, then update the user at once.

:class:`Realtime` is what ``POST /events`` and ``POST /items`` call. For each accepted event it

1. appends the event to the durable event log under its id (``store.append_log_once``): from here on
   the next training run will see it (``pipelines.replay``), whatever happens next; an id the log
   already holds (a retry, a concurrent duplicate) is not logged again;
2. updates the user row in one atomic read-modify-write (``store.update``): count/mean/std of ratings
   and release years, top genres, last positives, the rated set (see :mod:`rayrec.realtime.stats`),
   and the event's log offset among the user's latest applied ones. This write is the commit point:
   an event whose offset the row holds is never applied again (a duplicate is acknowledged as such);
3. adds the rating to the item's count/mean/std, appends the event to the user's history;
4. recomputes the user's embedding (the user tower over the new features, or the mean of the recent
   positives' item vectors) and stores it as kind ``"user"``.

A crash between 1 and 2 leaves an event logged and not applied: :meth:`Realtime.recover` (at start-up
and every few seconds in a replica) reads the log past its mark and applies what the users' rows do
not hold yet; a client retrying with the same id gets it applied too. A crash between 2 and 3-4
(never for an acknowledged event: the answer is sent after 4) leaves that event's history entry, item
statistics or vector behind until the next event or features load.

The next ``/recommend`` reads the new row and vector: no retraining. Nothing here knows about Ray
Serve or HTTP; a replica builds one :class:`Realtime` and calls it from its handlers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rayrec.features.pointintime import LABEL_THRESHOLD, USER_FEATURES
from rayrec.realtime.events import AddedItem, Event, EventAck, EventError, NewItem, UnknownMovie, parse_events
from rayrec.realtime.stats import STATE_KEY, UserStats, as_list, item_with_rating, iter_stats, user_features
from rayrec.store.base import OnlineStore, Row, offset_order

__all__ = [
    "EVENTS_LOG",
    "ITEMS_LOG",
    "RealtimeConfig",
    "Realtime",
    "UserEncoder",
    "ItemEncoder",
    "VectorIndex",
    "seed_stats",
]

log = logging.getLogger(__name__)

EVENTS_LOG = "events"  # user events, replayed into the next training run
ITEMS_LOG = "items"  # catalog additions, replayed into movies.csv and synced between replicas


class UserEncoder(Protocol):
    """The user tower (``rayrec.models.inference.TowerEncoder``): rows → (B, D) unit vectors."""

    def users(self, user_rows: pd.DataFrame) -> np.ndarray: ...


class ItemEncoder(Protocol):
    """The item tower: item rows → (N, D) unit vectors; unknown movie ids use the OOV id."""

    def items(self, item_rows: pd.DataFrame) -> np.ndarray: ...


class VectorIndex(Protocol):
    """The live item index (``rayrec.retrieval.ItemIndex``): item vectors by movie id, live insert."""

    def vectors(self, movie_ids: np.ndarray | list[int]) -> tuple[np.ndarray, np.ndarray]: ...

    def add(self, movie_ids: np.ndarray | list[int], vectors: np.ndarray) -> None: ...

    def __contains__(self, movie_id: object) -> bool: ...


class RealtimeConfig(BaseModel):
    """Knobs of the real-time path; the defaults run on one laptop."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    threshold: float | None = Field(
        default=None, description="a rating at or above it is a positive; None: the FeatureSpec's label threshold"
    )
    user_embedding: Literal["tower", "mean", "none"] = Field(
        default="none",
        description="store a user vector after each event for readers outside serving (serving computes it per "
        "request): tower: the user tower over the updated features; mean: mean of the recent positives' item "
        "vectors; none: store none",
    )
    mean_items: int = Field(default=5, ge=1, le=50, description="recent positives averaged by user_embedding=mean")
    item_embedding: Literal["tower", "genre_mean", "blend"] = Field(
        default="blend",
        description="a new item's vector: the item tower with the OOV id, the mean of items sharing its genres, "
        "or the normalised sum of both",
    )
    user_kind: str = Field(default="user", description="embedding kind of user vectors in the store")
    item_kind: str = Field(
        default="item",
        description="embedding kind of new items' vectors in the store: name the vector space (e.g. item.<retriever "
        "version>) so a vector is never read into another model's index",
    )
    history_len: int = Field(default=200, ge=1, description="events kept per user in the store history")
    update_items: bool = Field(default=True, description="move the rated item's count/mean/std too")
    require_known_items: bool = Field(default=True, description="refuse events for movies the store does not hold")
    log_maxlen: int | None = Field(default=None, ge=1, description="trim the event log to about this many records")


class _Skip(Exception):
    """Raised inside an update function to leave the row as it is."""


class _Applied(Exception):
    """Raised inside the user update when the row already holds the event: nothing to do."""


#: the consumer name of :meth:`Realtime.recover`'s mark on the event log
RECOVER_MARK = "state"


class _Taken(Exception):
    """A candidate movie id is already used."""


def _threshold(config: RealtimeConfig, spec: Any) -> float:
    if config.threshold is not None:
        return float(config.threshold)
    if spec is not None:
        return float(spec.label_threshold)
    return LABEL_THRESHOLD


class Realtime:
    """The real-time path over one online store (see the module docstring).

    ``spec``: the FeatureSpec (for the positive threshold). ``encoder``: the two-tower's
    ``TowerEncoder`` (``users``/``items``), needed for ``user_embedding="tower"`` and new items'
    tower vectors. ``index``: the live ``ItemIndex`` (item vectors for the mean embedding and the genre
    mean; new items are inserted into it). ``catalog``: the ``ItemCatalog`` (known genres, the largest
    movie id, genre lists for the genre mean). All are optional: what is missing is skipped, and the
    acknowledgement says so. Thread-safe; one per process.
    """

    def __init__(
        self,
        store: OnlineStore,
        config: RealtimeConfig | None = None,
        *,
        spec: Any = None,
        encoder: Any = None,
        index: VectorIndex | None = None,
        catalog: Any = None,
    ) -> None:
        self.store = store
        self.config = config or RealtimeConfig()
        self.threshold = _threshold(self.config, spec)
        self.encoder = encoder
        self.index = index
        self.catalog = catalog
        self._lock = threading.Lock()
        self._items_offset: str | None = None
        self._next_id = int(np.max(catalog.movie_ids)) + 1 if catalog is not None and len(catalog.movie_ids) else 1
        if self.config.user_embedding == "tower" and encoder is None:
            log.warning("realtime: user_embedding='tower' without an encoder: user vectors will not be updated")

    # -- events -----------------------------------------------------------------------------------

    def ingest(self, payload: Event | Mapping[str, Any] | Sequence[Event | Mapping[str, Any]]) -> list[EventAck]:
        """Validate events, append them to the event log, apply them; one acknowledgement each.

        Raises :class:`EventError` (every bad field, nothing logged) or :class:`UnknownMovie` (a movie
        the store does not hold, nothing logged); store failures raise ``StoreError`` — events already
        logged then reach the next training run even if their online update did not happen."""
        events = parse_events(payload)
        if not events:
            return []
        movie_ids = sorted({e.movie_id for e in events})
        rows = dict(zip(movie_ids, self.store.get("item", movie_ids)))
        if self.config.require_known_items:
            missing = [i for i, e in enumerate(events) if rows[e.movie_id] is None]
            if missing:
                listed = not isinstance(payload, (Event, Mapping))
                raise UnknownMovie(
                    [
                        {
                            "loc": [i, "movie_id"] if listed else ["movie_id"],
                            "msg": f"movie {events[i].movie_id} is not in the catalog",
                        }
                        for i in missing
                    ]
                )
        now = time.time()
        records = [{**e.record(), "logged_at": now} for e in events]
        logged = self.store.append_log_once(EVENTS_LOG, records, [e.key for e in events], maxlen=self.config.log_maxlen)
        # a duplicate id goes through apply too: applied once by whoever gets there first
        return [self.apply(e, rows[e.movie_id], offset) for e, (offset, _) in zip(events, logged)]

    def apply(self, event: Event, item: Mapping[str, Any] | None, offset: str = "") -> EventAck:
        """Apply one validated event to the online store (no logging): the user row, the item's
        statistics, the history and the user's embedding. ``item`` is the movie's store row. With an
        ``offset``, an event the user row already holds is not applied again (``duplicate``)."""
        genres = as_list((item or {}).get("genres"))
        year = (item or {}).get("item_year")
        changes: list[Any] = []

        def update(row: Row | None) -> dict[str, Any]:
            stats = UserStats.of_row(row)
            if offset and stats.applied(offset):
                raise _Applied
            if event.kind == "rating":
                assert event.value is not None
                changes.append(stats.rate(event.movie_id, event.value, event.ts, genres, year, self.threshold))
            else:
                stats.click(event.ts)
            stats.mark(offset)
            return user_features(event.user_id, stats, row)

        try:
            row = self.store.update("user", event.user_id, update)
        except _Applied:
            current = self.store.get("user", [event.user_id])[0] or {}
            return EventAck(offset=offset, kind=event.kind, user_id=event.user_id, movie_id=event.movie_id,
                            timestamp=event.ts, event_id=event.key, applied=False, duplicate=True,
                            user_rating_count=int(current.get("user_rating_count") or 0), user_embedding=False)  # fmt: skip
        change = changes[-1] if changes else None  # the run of ``update`` that was stored is the last
        applied = change.applied if change is not None else True
        self.store.append_history(
            event.user_id, [{**event.record(), "offset": offset}], max_len=self.config.history_len
        )
        if change is not None and change.applied and item is not None and self.config.update_items:
            self._rate_item(event.movie_id, float(event.value or 0.0), change.previous)
        embedded = self._refresh_user_vector(event.user_id, row) if event.kind == "rating" and applied else False
        return EventAck(
            offset=offset,
            kind=event.kind,
            user_id=event.user_id,
            movie_id=event.movie_id,
            timestamp=event.ts,
            event_id=event.key,
            applied=applied,
            user_rating_count=int(row.get("user_rating_count") or 0),
            user_embedding=embedded,
        )

    def recover(self, grace_s: float = 30.0, limit: int = 10_000) -> int:
        """Apply the events of the log past this store's recovery mark that their users' rows do not
        hold (a process died between logging and applying them), then move the mark past them.
        Events logged less than ``grace_s`` ago are left to the process handling them. The first
        call on a store sets the mark at the log's end (events logged before exactly-once
        bookkeeping cannot be told apart). Safe to run in several processes at once: the user
        update applies an event once. Returns how many events it applied."""
        mark = self.store.log_mark(EVENTS_LOG, RECOVER_MARK)
        if mark is None:
            self.store.set_log_mark(EVENTS_LOG, RECOVER_MARK, self.store.log_end(EVENTS_LOG))
            return 0
        cutoff = time.time() - grace_s
        records = []
        for offset, record in self.store.read_log(EVENTS_LOG, after=mark, limit=limit):
            if float(record.get("logged_at") or 0) > cutoff:
                break
            records.append((offset, record))
        if not records:
            return 0
        fields = set(Event.model_fields)
        users = sorted({int(r["user_id"]) for _, r in records})
        rows = dict(zip(users, self.store.get("user", users)))
        done = 0
        for offset, record in records:
            if UserStats.of_row(rows[int(record["user_id"])]).applied(offset):
                continue
            try:
                event = Event.model_validate({k: v for k, v in record.items() if k in fields})
            except ValidationError as e:  # logged by an older version with other rules: leave it to the replay
                log.warning("recover: event at offset %s no longer validates (%s); skipped", offset, e)
                continue
            item = self.store.get("item", [event.movie_id])[0]
            if not self.apply(event, item, offset).duplicate:
                done += 1
        self.store.set_log_mark(EVENTS_LOG, RECOVER_MARK, max((o for o, _ in records), key=offset_order))
        if done:
            log.warning("recover: applied %d logged event(s) that had not reached the users' state", done)
        return done

    def _rate_item(self, movie_id: int, rating: float, previous: float | None) -> None:
        def update(row: Row | None) -> dict[str, Any]:
            out = item_with_rating(row, rating, previous)
            if out is None:  # the item left the live table meanwhile (a features reload)
                raise _Skip
            return out

        try:
            self.store.update("item", movie_id, update)
        except _Skip:
            pass

    # -- user vectors -----------------------------------------------------------------------------

    def user_vector(self, row: Mapping[str, Any]) -> np.ndarray | None:
        """The user's (D,) unit vector from a user row by the configured method, or None when it
        cannot be made (no encoder / index, or no recent positive with a vector)."""
        mode = self.config.user_embedding
        if mode == "tower" and self.encoder is not None:
            frame = pd.DataFrame([{"userId": row["userId"], **{c: row.get(c) for c in USER_FEATURES}}])
            for c in ("user_genres", "user_recent_items"):
                frame[c] = [as_list(row.get(c))]
            vec = np.asarray(self.encoder.users(frame), dtype=np.float32).reshape(-1)
            return _unit(vec)
        if mode == "mean" and self.index is not None:
            recent = as_list(row.get("user_recent_items"))[: self.config.mean_items]
            if not recent:
                return None
            found, vectors = self.index.vectors(recent)
            if not found.any():
                return None
            return _unit(vectors[found].mean(axis=0))
        return None

    def _refresh_user_vector(self, user_id: int, row: Row) -> bool:
        """Store the vector of ``row``; if another event updated the user meanwhile, redo it from the
        newer row, so the stored vector always follows the latest row (the last writer re-checks)."""
        wrote = False
        for _ in range(5):
            vec = self.user_vector(row)
            if vec is None:
                return wrote
            self.store.put_embeddings(self.config.user_kind, [user_id], vec[None, :])
            wrote = True
            latest = self.store.get("user", [user_id])[0]
            if latest is None or _seq(latest) == _seq(row):
                return wrote
            row = latest
        return wrote

    # -- items ------------------------------------------------------------------------------------

    def add_item(self, payload: NewItem | Mapping[str, Any]) -> AddedItem:
        """Add a movie to the catalog without a rebuild: a new id above every known one, its item row
        in the store, its vector (the item tower with the OOV id, or the mean of items sharing its
        genres) stored and inserted into the live index, and a record in the items log (for the
        replay and for other replicas' :meth:`sync_items`). Raises :class:`EventError` naming the
        bad field (an unknown genre lists the known ones)."""
        try:
            item = payload if isinstance(payload, NewItem) else NewItem.model_validate(payload)
        except ValidationError as e:
            raise EventError.of(e) from None
        if self.catalog is None:
            raise RuntimeError(
                "adding items needs the catalog (an ItemCatalog): it names the known genres and the largest movie id"
            )
        known = set(self.catalog.genre_names)
        bad = [{"loc": ["genres", i], "msg": f"unknown genre {g!r}: known genres are {', '.join(sorted(known))}"}
               for i, g in enumerate(item.genres) if g not in known]  # fmt: skip
        if bad:
            raise EventError(bad)
        title = (
            item.title if item.year is None or item.title.endswith(f"({item.year})") else f"{item.title} ({item.year})"
        )
        base = {
            "title": title,
            "genres": list(item.genres),
            "item_rating_count": 0,
            "item_rating_mean": None,
            "item_rating_std": None,
            "item_year": None if item.year is None else float(item.year),
            "item_genres": list(item.genres[:3]),
        }
        movie_id, row = self._claim_id(base)
        vector, how = self._item_vector(row)
        indexed = False
        if vector is not None:
            self.store.put_embeddings(self.config.item_kind, [movie_id], vector[None, :])
        record = {"kind": "item", "movie_id": movie_id, "title": title, "genres": list(item.genres), "year": item.year}
        (offset,) = self.store.append_log(ITEMS_LOG, [record])
        if vector is not None and self.index is not None:
            self.index.add([movie_id], vector[None, :])
            indexed = True
        return AddedItem(movie_id=movie_id, title=title, genres=list(item.genres), year=item.year,
                         embedding=how, indexed=indexed, offset=offset)  # fmt: skip

    def _claim_id(self, base: Mapping[str, Any]) -> tuple[int, Row]:
        """The first free movie id from the hint up, claimed atomically: two replicas adding items
        at once get different ids (the store's update sees the other's row and moves on)."""
        with self._lock:
            candidate = self._next_id
        for _ in range(10_000):

            def claim(row: Row | None, movie_id: int = candidate) -> dict[str, Any]:
                if row is not None:
                    raise _Taken
                return {"movieId": movie_id, **base}

            try:
                stored = self.store.update("item", candidate, claim)
            except _Taken:
                candidate += 1
                continue
            with self._lock:
                self._next_id = max(self._next_id, candidate + 1)
            return candidate, stored
        raise EventError([{"loc": [], "msg": "could not find a free movie id: 10,000 ids in a row are taken"}])

    def _item_vector(self, row: Mapping[str, Any]) -> tuple[np.ndarray | None, str]:
        mode = self.config.item_embedding
        tower = None
        if mode in ("tower", "blend") and self.encoder is not None:
            frame = pd.DataFrame([row])
            for c in ("genres", "item_genres"):
                frame[c] = [as_list(row.get(c))]
            tower = _unit(np.asarray(self.encoder.items(frame), dtype=np.float32).reshape(-1))
            if mode == "tower":
                return tower, "tower"
        vec = self.genre_mean(as_list(row.get("genres")))
        if tower is not None:
            return (_unit(tower + vec), "blend") if vec is not None else (tower, "tower")
        return (vec, "genre_mean") if vec is not None else (None, "none")

    def genre_mean(self, genres: Sequence[str]) -> np.ndarray | None:
        """Mean unit vector of the catalog items that have all of ``genres`` (those sharing the most of
        them when none has all); None without a catalog and an index."""
        if self.catalog is None or self.index is None or not len(self.catalog.movie_ids):
            return None
        gm = self.catalog.genre_matrix
        cols = [self.catalog.genre_names.index(g) for g in genres if g in self.catalog.genre_names]
        if cols:
            overlap = gm[:, cols].sum(axis=1)
            rows = np.flatnonzero(overlap == overlap.max()) if overlap.max() > 0 else np.arange(len(gm))
        else:
            rows = np.flatnonzero(gm.sum(axis=1) == 0)
            rows = rows if len(rows) else np.arange(len(gm))
        found, vectors = self.index.vectors(self.catalog.movie_ids[rows])
        if not found.any():
            return None
        return _unit(vectors[found].mean(axis=0))

    def sync_items(self) -> list[int]:
        """Insert into this process's index the items other replicas added since the last call (their
        vectors come from the store, under this space's ``item_kind``; an item with no vector in this
        space, e.g. added before a new retriever went live, gets one made here and stored); returns
        their ids. Cheap when nothing is new: one log read."""
        with self._lock:
            after = self._items_offset
        records = self.store.read_log(ITEMS_LOG, after=after)
        if not records:
            return []
        ids = [int(r["movie_id"]) for _, r in records]
        new = [i for i in ids if self.index is not None and i not in self.index]
        if new and self.index is not None:
            vectors, found = self.store.get_embeddings(self.config.item_kind, new)
            if found.any():
                self.index.add([i for i, f in zip(new, found) if f], vectors[found])
            self._embed_missing([i for i, f in zip(new, found) if not f])
        with self._lock:
            self._items_offset = records[-1][0]
            self._next_id = max(self._next_id, max(ids) + 1)
        return new

    def _embed_missing(self, movie_ids: list[int]) -> None:
        """Vectors in this space for live-added items that have none here (their rows are in the store)."""
        if not movie_ids or self.index is None:
            return
        made: list[tuple[int, np.ndarray]] = []
        for m, row in zip(movie_ids, self.store.get("item", movie_ids)):
            vector = self._item_vector(row)[0] if row is not None else None
            if vector is not None:
                made.append((m, vector))
        if made:
            ids, vecs = [m for m, _ in made], np.stack([v for _, v in made])
            self.store.put_embeddings(self.config.item_kind, ids, vecs)
            self.index.add(ids, vecs)


def _unit(vec: np.ndarray) -> np.ndarray:
    v = np.asarray(vec, dtype=np.float32).reshape(-1)
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


def _seq(row: Mapping[str, Any]) -> int:
    return int((row.get(STATE_KEY) or {}).get("seq", 0))


def seed_stats(store: OnlineStore, ratings: pd.DataFrame, movies: pd.DataFrame, threshold: float = LABEL_THRESHOLD) -> int:
    """Give every user in ``ratings`` the exact realtime statistics (run after a features load, e.g.
    with the ratings and movies of that features version). Atomic per user: a user who already has
    events applied since the load keeps them, re-applied on top of the exact statistics. Returns the
    number of users seeded."""
    cat = movies.set_index("movieId")
    years = cat["year"].to_numpy(dtype=np.float64, na_value=np.nan) if "year" in cat.columns else None

    def seeded(stats: UserStats, user_id: int, row: Row | None) -> dict[str, Any] | None:
        current = (row or {}).get(STATE_KEY)
        if current is not None and current.get("exact"):
            return None  # already exact (seeded before, or built from events alone): left as it is
        if current is None:  # nothing to replay: the exact state as it is (user_features does not change it)
            return user_features(user_id, stats, row)
        # events applied on an approximate state: replay them, on a copy (the store may call this again)
        merged = UserStats.from_dict(stats.to_dict())
        approx = UserStats.from_dict(current)
        for movie_id, (half, ts) in sorted(approx.rated.items(), key=lambda kv: kv[1][1]):
            p = cat.index.get_indexer([movie_id])[0]
            genres = list(cat["genres"].iloc[p]) if p >= 0 else []
            year = float(years[p]) if p >= 0 and years is not None else None
            merged.rate(movie_id, half / 2, ts, genres, year, threshold)
        merged.clicks += approx.clicks
        merged.seq = approx.seq + 1
        merged.offsets = list(approx.offsets)
        return user_features(user_id, merged, row)

    n = 0
    # a share of the users at a time: their states are built, written and dropped before the next share's
    for share in iter_stats(ratings, movies, threshold):

        def seed_one(user_id: int, row: Row | None, share: dict[int, UserStats] = share) -> dict[str, Any] | None:
            return seeded(share[user_id], user_id, row)

        n += store.update_many("user", list(share), seed_one)
    return n

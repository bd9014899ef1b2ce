"""The real-time path: events update the online store at once; cold users and new items are served.

What the HTTP layer calls (no Ray Serve in here; one object per replica, thread-safe)::

    from rayrec.realtime import ColdStart, Realtime, RealtimeConfig, is_cold, seed_stats, seen_items

    # once after each features load into the store: exact incremental statistics for every user
    # (without it a user's first event starts from estimates; see rayrec.realtime.stats)
    seed_stats(store, ratings, movies, spec.label_threshold)

    rt = Realtime(store, RealtimeConfig(user_embedding="tower"),
                  spec=spec, encoder=tower_encoder, index=item_index, catalog=item_catalog)

    # POST /events — one event or a list; EventError → 422 (``.errors`` lists the bad fields),
    # UnknownMovie → 404; each ack carries the event's offset in the durable event log
    acks = rt.ingest({"kind": "rating", "user_id": 7, "movie_id": 1, "value": 4.5})

    # POST /items — a new movie, recommendable and similar-searchable at once (EventError → 422)
    added = rt.add_item({"title": "New Film", "genres": ["Comedy"], "year": 2024})
    rt.sync_items()          # on other replicas: insert items they added (call every few seconds)

    # GET /recommend for a cold user (no row, or few ratings): never empty
    cold = ColdStart.from_features(features_path)
    if is_cold(user_row):
        top = cold.recommend(10, genres=["Comedy"], hour=21, row=user_row)   # [(movie_id, score)]

    seen_items(user_row)     # movies the user rated (exclude them from any list)

Pieces: :mod:`~rayrec.realtime.events` (the validated models), :mod:`~rayrec.realtime.stats`
(incremental user features equal to a batch recompute), :mod:`~rayrec.realtime.updater` (the event
path, user vectors, new items), :mod:`~rayrec.realtime.coldstart`, :mod:`~rayrec.realtime.replay`
(the event log back into a MovieLens folder for the next training run; job ``pipelines.replay``).
"""

from rayrec.realtime.coldstart import ColdContext, ColdStart, hour_bucket, is_cold
from rayrec.realtime.events import AddedItem, Event, EventAck, EventError, NewItem, UnknownMovie, parse_events
from rayrec.realtime.replay import ReplayResult, log_items, log_ratings, merge_ratings, replay, write_movielens
from rayrec.realtime.stats import (
    STATE_KEY,
    Moments,
    UserStats,
    item_with_rating,
    iter_stats,
    seen_items,
    stats_from_ratings,
    user_features,
)
from rayrec.realtime.updater import EVENTS_LOG, ITEMS_LOG, Realtime, RealtimeConfig, seed_stats

__all__ = [
    "AddedItem",
    "ColdContext",
    "ColdStart",
    "EVENTS_LOG",
    "Event",
    "EventAck",
    "EventError",
    "ITEMS_LOG",
    "Moments",
    "NewItem",
    "Realtime",
    "RealtimeConfig",
    "ReplayResult",
    "STATE_KEY",
    "UnknownMovie",
    "UserStats",
    "hour_bucket",
    "is_cold",
    "item_with_rating",
    "iter_stats",
    "log_items",
    "log_ratings",
    "merge_ratings",
    "parse_events",
    "replay",
    "seed_stats",
    "seen_items",
    "stats_from_ratings",
    "user_features",
    "write_movielens",
]

"""What serving knows a user did: batch ratings plus online events, and which likes are fresh."""

from __future__ import annotations

import pandas as pd

from rayrec.serving.history import RatingHistory, merge_events


def test_events_lay_on_top_of_the_batch_history_and_fresh_likes_are_the_online_ones() -> None:
    batch = pd.DataFrame({"userId": [1, 1, 1, 2], "movieId": [10, 11, 12, 10],
                          "rating": [5.0, 2.0, 4.0, 4.0], "timestamp": [1, 2, 3, 1]})  # fmt: skip
    hist = RatingHistory(batch)
    base = hist.user(1)
    assert base.seen == {10, 11, 12} and base.liked == (12, 10) and base.fresh == ()
    events = [
        {"kind": "rating", "movie_id": 20, "value": 4.5},
        {"kind": "click", "movie_id": 21},
        {"kind": "rating", "movieId": 22, "rating": 5},  # the other spelling
        {"kind": "rating", "movie_id": 12, "value": 1.0},  # a batch like taken back
        {"kind": "rating", "movie_id": 20, "value": 2.0},  # a fresh like taken back
        {"kind": "rating", "movie_id": 23, "value": 3.5},  # at the threshold: a like
        {"kind": "rating", "movie_id": None, "value": 5.0},  # no movie: ignored
    ]
    got = merge_events(base, events)
    assert got.seen == {10, 11, 12, 20, 21, 22, 23}
    assert got.liked == (23, 22, 10) and got.fresh == (23, 22) and got.online_events == len(events)
    assert merge_events(base, []) is base
    assert merge_events(hist.user(99), events[:1]).fresh == (20,)  # a user known only online


def test_likes_follow_the_user_rows_order_when_events_share_a_second() -> None:
    """The ranker and the user tower get the likes of ``merge_events``; the real-time updater writes
    the row's ``user_recent_items``. Ratings posted within one second (a user rating a few movies in
    a row) must give both the same five, whatever order they arrived in."""
    from rayrec.realtime.stats import UserStats

    batch = pd.DataFrame({"userId": [1] * 3, "movieId": [10, 11, 12], "rating": [5.0, 4.0, 4.5], "timestamp": [1, 2, 3]})
    base = RatingHistory(batch).user(1)
    row = {"user_rating_count": 3, "user_rating_mean": 4.5, "user_rating_std": 0.5, "user_genres": [],
           "user_recent_items": list(base.liked), "last_timestamp": 3}  # fmt: skip
    # same second, arrival order not movie order; one like taken back, one movie rated twice
    posted = [(50, 5.0, 100), (7, 4.5, 100), (31, 4.0, 100), (99, 5.0, 100), (31, 1.0, 100), (64, 4.0, 100),
              (8, 5.0, 100), (64, 4.5, 100), (5, 5.0, 99)]  # fmt: skip
    stats = UserStats.of_row(row)
    for movie, value, ts in posted:
        stats.rate(movie, value, ts, [], None, 3.5)
    events = [{"kind": "rating", "movie_id": m, "value": v, "timestamp": t} for m, v, t in posted]
    got = merge_events(base, events)
    assert list(got.liked[:5]) == stats.features()["user_recent_items"] == [99, 64, 50, 8, 7]
    assert got.liked == (99, 64, 50, 8, 7, 5, 12, 11, 10) and got.fresh == (99, 64, 50, 8, 7, 5)  # 31: taken back

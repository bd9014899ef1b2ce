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

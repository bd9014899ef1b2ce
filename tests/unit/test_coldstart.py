"""User cold start: popularity within genre × hour-of-day segments, blended with a user's first events,
never an empty list."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from realtime_doubles import item_rows, toy_movies
from rayrec.realtime import ColdContext, ColdStart, UserStats, is_cold, user_features
from rayrec.retrieval import ItemCatalog

HOUR = 3600
DAY0 = 1_600_000_000 - 1_600_000_000 % 86_400  # a midnight, UTC


def catalog(movies: pd.DataFrame) -> ItemCatalog:
    return ItemCatalog.from_frame(item_rows(movies))


def positives(movie_id: int, n: int, hour: int, rating: float = 4.5) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "userId": np.arange(n) + 1,
            "movieId": movie_id,
            "rating": rating,
            "timestamp": DAY0 + hour * HOUR + np.arange(n),
        }
    )


@pytest.fixture(scope="module")
def movies() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "movieId": [1, 2, 3, 4, 5, 6],
            "title": list("abcdef"),
            "year": pd.array([2000] * 6, dtype="Int64"),
            "genres": [["Comedy"], ["Comedy", "Romance"], ["Horror"], ["Horror", "Comedy"], ["Drama"], []],
        }
    )


@pytest.fixture(scope="module")
def cold(movies: pd.DataFrame) -> ColdStart:
    ratings = pd.concat(
        [
            positives(1, 30, hour=9),  # a morning comedy
            positives(2, 20, hour=21),  # an evening comedy
            positives(3, 50, hour=22),  # the most popular: horror, at night
            positives(4, 5, hour=10),
            positives(5, 40, hour=14),
            positives(5, 100, hour=14, rating=1.0),  # negatives do not count
        ]
    )
    return ColdStart.build(ratings, catalog(movies), buckets=4)


def ids(recs: list[tuple[int, float]]) -> list[int]:
    return [m for m, _ in recs]


def test_declared_genres_pick_the_popular_movies_of_those_genres(cold: ColdStart) -> None:
    assert ids(cold.recommend(3, genres=["Horror"], hour=12))[:2] == [3, 4]
    assert set(ids(cold.recommend(3, genres=["Comedy"], hour=12))) == {1, 2, 4}


def test_the_hour_of_day_reorders_within_a_segment(cold: ColdStart) -> None:
    morning, evening = (
        ids(cold.recommend(3, genres=["Comedy"], hour=8)),
        ids(cold.recommend(3, genres=["Comedy"], hour=20)),
    )
    assert morning[0] == 1 and morning.index(1) < morning.index(2)  # morning: the morning comedy first
    assert evening[0] == 2 and evening.index(2) < evening.index(1)  # evening: the evening one


def test_no_context_is_plain_popularity_at_that_hour(cold: ColdStart) -> None:
    assert ids(cold.recommend(1, hour=23)) == [3]
    assert ids(cold.recommend(1, hour=13)) == [5]  # 40 positives at 14h; its 100 negatives do not count


def test_the_list_is_never_empty_and_is_filled_past_the_segment(cold: ColdStart) -> None:
    got = ids(cold.recommend(6, genres=["Romance"], hour=21))
    assert got[0] == 2 and sorted(got) == [1, 2, 3, 4, 5, 6]  # the one romance, then the rest
    assert ids(cold.recommend(3, genres=["Western"])) != []  # a genre nobody has
    assert len(cold.recommend(10)) == 6
    assert ids(cold.recommend(10, exclude=[1, 2, 3, 4, 5])) == [6]  # an unrated movie still fills


def test_empty_ratings_still_answer_from_the_catalog() -> None:
    movies = toy_movies(20)
    cold = ColdStart.build(pd.DataFrame({"movieId": [], "rating": [], "timestamp": []}), catalog(movies))
    assert len(cold.recommend(5, genres=["Drama"])) == 5


def test_a_users_events_shift_the_list_and_rated_movies_disappear(cold: ColdStart, movies: pd.DataFrame) -> None:
    declared = ids(cold.recommend(3, genres=["Comedy"], hour=12))
    assert 3 not in declared
    stats = UserStats()
    cat = movies.set_index("movieId")
    weights = []
    for i, m in enumerate([4, 3]):  # the user likes horror
        stats.rate(m, 5.0, DAY0 + i, list(cat.loc[m, "genres"]), 2000.0, 3.5)
        row = user_features(7, stats)
        weights.append(cold.genre_weights(["Comedy"], row)[cold.genre_names.index("Horror")])
        got = ids(cold.recommend(3, genres=["Comedy"], hour=12, row=row))
        assert m not in got  # rated: never recommended again
    assert 0 < weights[0] < weights[1]  # each event moves the preferences further
    assert got[0] in (1, 2) or "Horror" in cat.loc[got[0], "genres"]


def test_a_batch_row_without_stats_uses_its_top_genres(cold: ColdStart) -> None:
    row = {"userId": 3, "user_rating_count": 40, "user_genres": ["Horror", "Drama"], "user_recent_items": [3]}
    assert set(ids(cold.recommend(2, hour=12, row=row))) == {4, 5}  # its genres; 3 is seen


def test_context_parses_a_query_string_and_validates_the_hour() -> None:
    assert ColdContext.model_validate({"genres": "Comedy, Drama,", "hour": 21}).genres == ["Comedy", "Drama"]
    with pytest.raises(ValueError, match="hour"):
        ColdContext.model_validate({"hour": 24})


def test_is_cold() -> None:
    assert is_cold(None) and is_cold({"user_rating_count": 2}) and not is_cold({"user_rating_count": 5})


def test_on_movielens_a_declared_genre_fills_the_top_10(movielens) -> None:
    cat = ItemCatalog.from_frame(movielens.movies)
    cold = ColdStart.build(movielens.ratings, cat)
    for genre in ("Horror", "Documentary", "Animation"):
        got = ids(cold.recommend(10, genres=[genre], hour=20))
        assert len(got) == 10 and all(genre in cat.genres_of(m) for m in got), genre

"""The MovieLens reader: parsing, validation, malformed rows reported (file, line, reason), clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rayrec.data import DataError, parse_genres, parse_title, read_movielens

MOVIES = """movieId,title,genres
1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy
2,"Heat, The Movie (1995)",Action|Crime|Thriller
3,No Year Here,(no genres listed)
"""

RATINGS = """userId,movieId,rating,timestamp
1,1,4.0,964982703
1,2,5.0,964981247
2,3,0.5,964982224
"""


def folder(tmp_path: Path, ratings: str = RATINGS, movies: str = MOVIES, **extra: str) -> Path:
    d = tmp_path / "ml"
    d.mkdir(exist_ok=True)
    (d / "ratings.csv").write_text(ratings)
    (d / "movies.csv").write_text(movies)
    for name, text in extra.items():
        (d / f"{name}.csv").write_text(text)
    return d


def test_parse_title_and_genres():
    assert parse_title("Toy Story (1995)") == 1995
    assert parse_title("Babylon 5 (1994) ") == 1994
    assert parse_title("No Year Here") is None
    assert parse_genres("Action|Crime") == ["Action", "Crime"]
    assert parse_genres("(no genres listed)") == []
    assert parse_genres("") == []


def test_reads_a_clean_dataset(tmp_path):
    d = folder(
        tmp_path,
        links="movieId,imdbId,tmdbId\n1,0114709,862\n2,0113277,\n",
        tags="userId,movieId,tag,timestamp\n1,1,pixar,964982703\n",
    )
    ml = read_movielens(d)
    assert ml.report.total_bad == 0
    assert ml.ratings.dtypes.astype(str).to_dict() == {
        "userId": "int64", "movieId": "int64", "rating": "float32", "timestamp": "int64",
    }  # fmt: skip
    assert ml.ratings["rating"].tolist() == [4.0, 5.0, 0.5]
    m = ml.movies.set_index("movieId")
    assert m.loc[2, "title"] == "Heat, The Movie (1995)"  # quoted comma kept
    assert m.loc[1, "year"] == 1995 and m.loc[3, "year"] is pd_na()
    assert m.loc[1, "genres"] == ["Adventure", "Animation", "Children", "Comedy", "Fantasy"]
    assert m.loc[3, "genres"] == []
    assert ml.links["imdbId"].tolist() == ["0114709", "0113277"]  # leading zeros kept
    assert ml.links["tmdbId"].isna().tolist() == [False, True]
    assert ml.tags["tag"].tolist() == ["pixar"]


def pd_na():
    import pandas as pd

    return pd.NA


def test_malformed_rows_are_counted_with_line_and_reason(tmp_path):
    ratings = (
        "userId,movieId,rating,timestamp\n"
        "1,1,4.0,964982703\n"  # line 2 ok
        "1,2,five,964981247\n"  # line 3 bad rating
        "2,3,0.5\n"  # line 4 wrong field count
        "2,1,7.0,964982224\n"  # line 5 out of range
        "x,1,3.0,964982224\n"  # line 6 bad userId
        "3,1,3.5,964982225\n"  # line 7 ok
        "3,2,2.5,-5\n"  # line 8 negative timestamp
    )
    ml = read_movielens(folder(tmp_path, ratings=ratings))
    assert len(ml.ratings) == 2
    assert ml.ratings["userId"].tolist() == [1, 3]
    assert ml.report.bad_counts == {"ratings.csv": 5}
    got = {(b.file, b.line, b.reason) for b in ml.report.examples}
    assert got == {
        ("ratings.csv", 3, "rating is not a valid float"),
        ("ratings.csv", 4, "expected 4 fields, got 3"),
        ("ratings.csv", 5, "rating outside 0.5..5.0"),
        ("ratings.csv", 6, "userId is not a valid int"),
        ("ratings.csv", 8, "negative id or timestamp"),
    }
    summary = ml.report.summary()
    assert "5 malformed row(s) in ratings.csv" in summary and "ratings.csv:4:" in summary
    assert ml.report.to_dict()["rows_read"]["ratings.csv"] == 2


def test_duplicate_movie_and_fractional_ids_reported(tmp_path):
    movies = MOVIES + "2,Duplicate (2001),Drama\n4.5,Half (2000),Drama\n"
    ml = read_movielens(folder(tmp_path, movies=movies))
    assert sorted(ml.movies["movieId"]) == [1, 2, 3]
    reasons = {b.line: b.reason for b in ml.report.examples}
    assert reasons == {5: "duplicate movieId (first row kept)", 6: "movieId is not a valid int"}
    assert ml.movies.set_index("movieId").loc[2, "title"].startswith("Heat")


def test_line_numbers_after_several_skipped_lines(tmp_path):
    rows = ["userId,movieId,rating,timestamp"]
    bad = {3, 4, 10, 11, 12, 30}
    for line in range(2, 40):
        rows.append("1,2" if line in bad else f"{line},1,3.0,{line}")
    ml = read_movielens(folder(tmp_path, ratings="\n".join(rows) + "\n"))
    assert {b.line for b in ml.report.examples} == bad
    # kept rows carry their own line number in userId: nothing shifted
    assert ml.ratings["userId"].tolist() == [n for n in range(2, 40) if n not in bad]


def test_missing_folder_or_file_gives_one_clear_error(tmp_path):
    with pytest.raises(DataError, match="dataset folder not found"):
        read_movielens(tmp_path / "absent")
    d = folder(tmp_path)
    (d / "movies.csv").unlink()
    with pytest.raises(DataError, match=r"movies\.csv: file not found"):
        read_movielens(d)


def test_wrong_header_is_named(tmp_path):
    d = folder(tmp_path, ratings="user,item,score,ts\n1,1,4.0,1\n")
    with pytest.raises(DataError, match=r"ratings\.csv: header is 'user,item,score,ts', expected 'userId,movieId,rating,timestamp'"):
        read_movielens(d)


def test_binary_garbage_is_a_data_error(tmp_path):
    d = folder(tmp_path)
    (d / "ratings.csv").write_bytes(b"\xff\xfe\x00garbage\x00\n\x01\x02")
    with pytest.raises(DataError, match="ratings.csv"):
        read_movielens(d)


def test_real_movielens_small(movielens):
    assert len(movielens.ratings) == 100_836
    assert movielens.report.total_bad == 0
    assert movielens.ratings["rating"].between(0.5, 5.0).all()
    assert np.isin(movielens.ratings["movieId"], movielens.movies["movieId"]).all()
    assert movielens.movies["year"].notna().mean() > 0.99


@pytest.mark.parametrize(
    "row, typed, reason",
    [
        ("2,3,nan,964982224", False, "rating is not a valid float"),
        ("2,3,inf,964982224", False, "rating is not a valid float"),
        ("2,3,,964982224", False, "rating is not a valid float"),
        ("2,3.0,4.0,964982224", False, None),  # an int written as a float: the text reader accepts it
        ("2, 3,4.0,964982224", True, None),  # spaces around a value: both readers strip them
        ("99999999999999999999,3,4.0,1", False, "userId is not a valid int"),  # past int64
    ],
)
def test_ratings_that_are_not_clean_numbers_are_read_the_slow_way(tmp_path, row, typed, reason) -> None:
    """The typed reader takes only files of clean numbers; any other row sends the file to the text
    reader, which reports it by line, or accepts it as before."""
    from rayrec.data.movielens import _read_ratings_typed

    d = folder(tmp_path, ratings=RATINGS + row + "\n")
    assert (_read_ratings_typed(d / "ratings.csv") is not None) == typed
    ml = read_movielens(d)
    got = [(b.line, b.reason) for b in ml.report.examples]
    assert got == ([(5, reason)] if reason else [])
    assert len(ml.ratings) == (3 if reason else 4)


def test_typed_and_text_readers_agree(tmp_path, monkeypatch) -> None:
    """A clean file (out-of-range rows included) gives the same frame and report both ways."""
    import rayrec.data.movielens as ml_mod

    rng = np.random.default_rng(0)
    rows = ["userId,movieId,rating,timestamp"] + [
        f"{u},{m},{r},{t}" for u, m, r, t in zip(rng.integers(0, 50, 500), rng.integers(1, 4, 500), rng.choice([0.0, 0.5, 3.5, 5.0, 5.5], 500), rng.integers(-2, 10**9, 500))
    ]
    d = folder(tmp_path, ratings="\n".join(rows) + "\n")
    assert ml_mod._read_ratings_typed(d / "ratings.csv") is not None
    fast = read_movielens(d)
    monkeypatch.setattr(ml_mod, "_read_ratings_typed", lambda path: None)
    slow = read_movielens(d)
    assert fast.ratings.equals(slow.ratings) and len(fast.ratings) < 500
    assert fast.report.to_dict() == slow.report.to_dict() and fast.report.examples == slow.report.examples

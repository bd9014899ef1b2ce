"""The synthetic generator: MovieLens format, the statistical shape, learnable structure, determinism,
caching and config checks. Small configs keep each test around a second."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rayrec.data import MovieLens, SyntheticConfig, generate, read_movielens
from rayrec.data import synthetic
from rayrec.data.synthetic import GENRES

FILES = ("ratings.csv", "movies.csv", "links.csv", "tags.csv")
HEADERS = {
    "ratings.csv": "userId,movieId,rating,timestamp",
    "movies.csv": "movieId,title,genres",
    "links.csv": "movieId,imdbId,tmdbId",
    "tags.csv": "userId,movieId,tag,timestamp",
}
SMALL = SyntheticConfig(n_users=1_000, n_items=2_000, n_ratings=40_000, seed=7, tags_per_1k_ratings=20.0)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, MovieLens]:
    out = generate(tmp_path_factory.mktemp("synthetic") / "small", SMALL)
    return out, read_movielens(out)


def _bytes(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in FILES}


# ------------------------------------------------------------------------------------------ format


def test_reads_back_with_no_malformed_rows(small: tuple[Path, MovieLens]) -> None:
    out, ml = small
    assert ml.report.total_bad == 0, ml.report.summary()
    assert set(ml.report.rows_read) == set(FILES)
    assert ml.links is not None and ml.tags is not None
    assert len(ml.movies) == len(ml.links) == SMALL.n_items
    assert len(ml.tags) > 0
    for name, header in HEADERS.items():
        with open(out / name, encoding="utf-8") as f:
            assert f.readline() == header + "\n"


def test_column_types_and_ids(small: tuple[Path, MovieLens]) -> None:
    _, ml = small
    r = ml.ratings
    assert {c: str(t) for c, t in r.dtypes.items()} == {
        "userId": "int64",
        "movieId": "int64",
        "rating": "float32",
        "timestamp": "int64",
    }
    assert sorted(r["userId"].unique()) == list(range(1, SMALL.n_users + 1))
    movie_ids = ml.movies["movieId"].to_numpy()
    assert movie_ids[0] == 1 and np.all(np.diff(movie_ids) > 0)
    assert movie_ids[-1] > SMALL.n_items  # non-contiguous, as in MovieLens
    assert set(r["movieId"]) <= set(movie_ids)
    assert set(ml.links["movieId"]) == set(movie_ids)
    assert ml.links["imdbId"].str.fullmatch(r"\d{7,}").all()
    assert ml.links["imdbId"].is_unique
    tagged = set(zip(ml.tags["userId"], ml.tags["movieId"]))
    assert tagged <= set(zip(r["userId"], r["movieId"]))  # users tag movies they rated


def test_ratings_are_half_stars_written_like_movielens(small: tuple[Path, MovieLens]) -> None:
    out, ml = small
    text = pd.read_csv(out / "ratings.csv", dtype=str)["rating"]
    assert set(text) <= {f"{k / 2:.1f}" for k in range(1, 11)}  # "4.0", "3.5", never "4"
    stars = ml.ratings["rating"].to_numpy() * 2
    assert np.array_equal(stars, np.round(stars)) and stars.min() >= 1 and stars.max() <= 10


def test_movies_have_years_genres_and_quoted_commas(small: tuple[Path, MovieLens]) -> None:
    out, ml = small
    years = ml.movies["year"]
    assert years.notna().all() and years.min() >= 1930 and years.max() <= 2018
    assert years.median() >= 1980  # skewed recent
    assert all(set(g) <= set(GENRES) for g in ml.movies["genres"])
    assert ml.movies["genres"].map(len).between(0, 4).all()
    assert ml.movies["genres"].map(len).mean() > 1.5
    with open(out / "movies.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))[1:]
    assert all(len(row) == 3 for row in rows)
    assert any("," in title for _, title, _ in rows)  # and yet every row parsed into three fields
    assert [t for _, t, _ in rows] == ml.movies["title"].tolist()


# ------------------------------------------------------------------------------------------- shape


def test_pairs_unique_and_every_user_has_five(small: tuple[Path, MovieLens]) -> None:
    r = small[1].ratings
    assert not r.duplicated(["userId", "movieId"]).any()
    per_user = r.groupby("userId").size()
    assert per_user.min() >= 5
    assert per_user.max() > 5 * per_user.median()  # heavy-tailed activity


def test_timestamps_in_window_and_increasing_per_user(small: tuple[Path, MovieLens]) -> None:
    r = small[1].ratings
    assert r["timestamp"].min() >= SMALL.start_ts and r["timestamp"].max() < SMALL.end_ts
    assert r["userId"].is_monotonic_increasing  # users are contiguous in the file
    assert (r.groupby("userId")["timestamp"].diff().dropna() >= 0).all()
    tags = small[1].tags
    assert tags["timestamp"].between(SMALL.start_ts, SMALL.end_ts - 1).all()


def test_popularity_is_heavy_tailed(small: tuple[Path, MovieLens]) -> None:
    counts = small[1].ratings["movieId"].value_counts()
    top = counts.iloc[: SMALL.n_items // 10].sum()
    assert top / counts.sum() > 0.35


def test_rating_histogram_is_movielens_like(small: tuple[Path, MovieLens]) -> None:
    hist = small[1].ratings["rating"].value_counts(normalize=True)
    assert 3.2 < small[1].ratings["rating"].mean() < 3.8
    assert hist[4.0] > hist[0.5] and hist[3.0] > hist[0.5]
    assert hist[4.0] > hist[4.5] and hist[3.0] > hist[3.5]  # many users use whole stars only
    assert hist.idxmax() == 4.0


def test_genre_taste_predicts_held_out_ratings(small: tuple[Path, MovieLens]) -> None:
    """A user's taste for a genre, measured on half their ratings, predicts the other half beyond
    user and item means: the latent factors are tied to genres and can be learnt."""
    ml = small[1]
    r = ml.ratings.reset_index(drop=True)
    rng = np.random.default_rng(0)
    train = rng.random(len(r)) < 0.5
    mu = r.loc[train, "rating"].mean()
    item_dev = r[train].groupby("movieId")["rating"].mean() - mu
    user_dev = r[train].groupby("userId")["rating"].mean() - mu
    r["resid"] = r["rating"] - mu - r["movieId"].map(item_dev).fillna(0) - r["userId"].map(user_dev).fillna(0)
    genres = ml.movies.set_index("movieId")["genres"]
    long = r.assign(genre=r["movieId"].map(genres)).explode("genre").dropna(subset=["genre"])
    is_train = train[long.index]
    taste = long[is_train].groupby(["userId", "genre"])["resid"].mean()
    test = long[~is_train].join(taste.rename("taste"), on=["userId", "genre"])
    predicted = test.groupby(level=0)["taste"].mean().fillna(0)  # one prediction per held-out rating
    users = r.loc[predicted.index, "userId"]

    def within_user_corr(actual: pd.Series) -> float:
        """Correlation after removing each user's mean: taste across genres, not the user's level."""
        x = predicted - predicted.groupby(users).transform("mean")
        y = actual - actual.groupby(users).transform("mean")
        return float(np.corrcoef(x, y)[0, 1])

    assert within_user_corr(r.loc[predicted.index, "resid"]) > 0.08
    # The same measurement on residuals shuffled within each user finds nothing.
    shuffled = r.groupby("userId")["resid"].transform(lambda s: s.sample(frac=1, random_state=0).to_numpy())
    assert abs(within_user_corr(shuffled.loc[predicted.index])) < 0.04


def _genre_lift(ratings: pd.DataFrame, genres: pd.Series) -> float:
    """How much more often a user's held-out ratings fall in the three genres they over-rated most in
    the other half, relative to those genres' overall share (1.0: no preference)."""
    half = np.random.default_rng(0).random(len(ratings)) < 0.5
    long = ratings.assign(half=half, genre=ratings["movieId"].map(genres)).explode("genre").dropna(subset=["genre"])
    overall = long["genre"].value_counts(normalize=True)
    a = long[long["half"]].groupby(["userId", "genre"]).size().rename("n").reset_index()
    a["score"] = (a["n"] + 1) / (a.groupby("userId")["n"].transform("sum") * a["genre"].map(overall) + 1)
    top = a.sort_values(["userId", "score"], ascending=[True, False]).groupby("userId").head(3)
    b = long[~long["half"]].merge(top[["userId", "genre"]].assign(hit=True), on=["userId", "genre"], how="left")
    hit = b["hit"].notna().groupby(b["userId"]).mean()
    expected = top.assign(p=top["genre"].map(overall)).groupby("userId")["p"].sum()
    return float((hit / expected).median())


def test_users_pick_from_favourite_genres(small: tuple[Path, MovieLens]) -> None:
    """Which items a user rates carries signal too: the genres a user favours in half their ratings
    are over-represented in the other half. Items shuffled across users show no such lift."""
    ml = small[1]
    genres = ml.movies.set_index("movieId")["genres"]
    shuffled = ml.ratings.assign(movieId=np.random.default_rng(1).permutation(ml.ratings["movieId"].to_numpy()))
    assert _genre_lift(ml.ratings, genres) > 1.25
    assert _genre_lift(shuffled, genres) < 1.1


@pytest.mark.parametrize(
    "config",
    [
        SyntheticConfig(n_users=300, n_items=400, n_ratings=20_000, seed=1),
        SyntheticConfig(n_users=50, n_items=10, n_ratings=250, seed=2),  # every user at the minimum
        SyntheticConfig(n_users=100, n_items=60, n_ratings=3_000, seed=3),  # every user at half the catalogue
        SyntheticConfig(n_users=2_000, n_items=30_000, n_ratings=60_000, seed=4),  # sparse, long tail
    ],
    ids=["medium", "minimum", "dense", "sparse"],
)
def test_total_ratings_close_to_requested(tmp_path: Path, config: SyntheticConfig) -> None:
    ml = read_movielens(generate(tmp_path, config))
    assert abs(len(ml.ratings) - config.n_ratings) <= 0.01 * config.n_ratings
    assert ml.ratings.groupby("userId").size().min() >= 5
    assert not ml.ratings.duplicated(["userId", "movieId"]).any()
    marker = json.loads((tmp_path / "SYNTHETIC.json").read_text())
    assert marker["ratings"] == len(ml.ratings)


# ------------------------------------------------------------------------------ determinism, caching


def test_same_seed_same_bytes_and_chunk_size_does_not_matter(tmp_path: Path) -> None:
    config = SyntheticConfig(n_users=1_500, n_items=800, n_ratings=60_000, seed=11)
    a = _bytes(generate(tmp_path / "a", config))
    b = _bytes(generate(tmp_path / "b", config))
    c = _bytes(generate(tmp_path / "c", replace(config, chunk_ratings=5_000)))
    assert a == b == c


def test_different_seed_different_data(tmp_path: Path) -> None:
    config = SyntheticConfig(n_users=200, n_items=300, n_ratings=10_000, seed=1)
    a = _bytes(generate(tmp_path / "a", config))
    b = _bytes(generate(tmp_path / "b", replace(config, seed=2)))
    assert all(a[name] != b[name] for name in FILES)


def _mtimes(folder: Path) -> dict[str, int]:
    return {name: (folder / name).stat().st_mtime_ns for name in (*FILES, "SYNTHETIC.json")}


def test_second_call_reuses_the_dataset(tmp_path: Path) -> None:
    config = SyntheticConfig(n_users=200, n_items=300, n_ratings=10_000, seed=np.int64(5))  # numpy ints accepted
    out = generate(tmp_path, config)
    before = _mtimes(out)
    assert generate(tmp_path, replace(config, chunk_ratings=1_000)) == out  # chunk size only bounds memory
    assert _mtimes(out) == before
    generate(tmp_path, replace(config, seed=6))  # another config regenerates
    assert _mtimes(out)["ratings.csv"] != before["ratings.csv"]


def test_truncated_file_is_regenerated(tmp_path: Path) -> None:
    config = SyntheticConfig(n_users=200, n_items=300, n_ratings=10_000)
    out = generate(tmp_path, config)
    whole = (out / "ratings.csv").read_bytes()
    (out / "ratings.csv").write_bytes(whole[: len(whole) // 2])
    generate(tmp_path, config)
    assert (out / "ratings.csv").read_bytes() == whole


def test_interrupted_run_leaves_nothing_that_looks_complete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = SyntheticConfig(n_users=200, n_items=300, n_ratings=10_000)
    generate(tmp_path, config)

    def fail(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "_make_block", fail)
    with pytest.raises(KeyboardInterrupt):
        generate(tmp_path, replace(config, seed=1))
    assert not (tmp_path / "SYNTHETIC.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FILES)  # no partial files left
    monkeypatch.undo()
    generate(tmp_path, replace(config, seed=1))
    assert (tmp_path / "SYNTHETIC.json").exists()


# ------------------------------------------------------------------------------------------ config


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"n_users": 0}, "n_users"),
        ({"n_items": -5}, "n_items"),
        ({"n_ratings": 0}, "n_ratings"),
        ({"n_factors": 0}, "n_factors"),
        ({"chunk_ratings": 0}, "chunk_ratings"),
        ({"n_users": 2.5}, "n_users"),
        ({"n_users": True}, "n_users"),
        ({"seed": -1}, "seed"),
        ({"n_items": 5}, "n_items"),
        ({"n_users": 100, "n_ratings": 499}, "n_ratings"),  # below 5 per user
        ({"n_users": 10, "n_items": 20, "n_ratings": 101}, "n_ratings"),  # above half of 10 × 20
        ({"start_ts": 100, "end_ts": 100}, "start_ts"),
        ({"tags_per_1k_ratings": -1.0}, "tags_per_1k_ratings"),
        ({"tags_per_1k_ratings": float("nan")}, "tags_per_1k_ratings"),
    ],
)
def test_bad_config_raises_a_clear_error(change: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        SyntheticConfig(**change)  # type: ignore[arg-type]


def test_generate_checks_the_config_before_writing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n_ratings"):
        generate(tmp_path / "out", SyntheticConfig(n_users=10, n_items=20, n_ratings=40))
    assert not (tmp_path / "out").exists()

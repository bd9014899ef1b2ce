"""The Ray Data feature pipeline end to end: exact agreement with the pandas reference, the FeatureSpec
fitted on train only, the statistics report, versioning, and the job's command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import reference as ref
from rayrec import uri
from rayrec.data.movielens import MovieLens, ReadReport
from rayrec.features import FeatureSpec, FeaturesConfig, features_root, run_features
from rayrec.features.spec import OOV


def as_dataset(ratings: pd.DataFrame, movies: pd.DataFrame, source: str = "test data") -> MovieLens:
    return MovieLens(ratings=ratings, movies=movies, links=None, tags=None, report=ReadReport(), source=source)


def read(path: str) -> pd.DataFrame:
    return pd.read_parquet(path)


@pytest.fixture(scope="module")
def random_run(ray_session, tmp_path_factory):
    ratings, movies = ref.random_dataset(n_users=25, n_items=30, n=400, seed=11, ts_span=60)
    # one catalog movie rated only after everything else: it exists in the test split alone
    late = ratings.groupby("userId").size().loc[lambda c: c >= 5].index[:3]
    extra = pd.DataFrame({"userId": late, "movieId": 310, "rating": 4.0, "timestamp": 1_000})
    ratings = pd.concat([ratings, extra.astype(ratings.dtypes.to_dict())], ignore_index=True)
    art = str(tmp_path_factory.mktemp("features-random"))
    # several hash partitions: keys must not be split across blocks
    res = run_features(as_dataset(ratings, movies), FeaturesConfig(artifacts=art, num_blocks=4))
    return ratings, movies, res


def test_samples_agree_exactly_with_reference(random_run):
    ratings, movies, res = random_run
    got = pd.concat([read(res.uri("samples", "train")), read(res.uri("samples", "test"))], ignore_index=True)
    exp = ref.samples(ratings, movies)
    assert set(got["split"]) == {"train", "test"}
    ref.assert_same_features(got, exp, ["userId", "movieId"])
    assert (read(res.uri("samples", "train"))["split"] == "train").all()
    assert (read(res.uri("samples", "test"))["split"] == "test").all()


def test_online_features_are_latest_state(random_run):
    ratings, movies, res = random_run
    users = read(res.uri("online", "users.parquet"))
    ref.assert_same_features(users, ref.latest_users(ratings, movies), ["userId"])
    last = ratings.groupby("userId")["timestamp"].max()
    assert (users.set_index("userId")["last_timestamp"] == last.reindex(users["userId"]).to_numpy()).all()
    items = read(res.uri("online", "items.parquet"))
    # the whole catalog, rated or not, exactly once
    assert sorted(items["movieId"]) == sorted(movies["movieId"])
    ref.assert_same_features(items, ref.latest_items(ratings, movies), ["movieId"])


def test_spec_is_fitted_on_train_only(random_run):
    _, _, res = random_run
    train = read(res.uri("samples", "train"))
    test = read(res.uri("samples", "test"))
    spec = FeatureSpec.load(res.uri("spec.json"))
    assert spec.hash == res.spec.hash
    assert set(spec.vocabs["item"].values) == set(train["movieId"])
    assert set(spec.vocabs["user"].values) == set(train["userId"])
    assert spec.train_rows == len(train)
    assert tuple(spec.train_range) == (int(train["timestamp"].min()), int(train["timestamp"].max()))
    only_test = sorted(set(test["movieId"]) - set(train["movieId"]))
    assert only_test, "the random data should have movies first rated in the test split"
    assert (spec.vocabs["item"].lookup(np.array(only_test)) == OOV).all()
    # normalisation statistics come from train rows: recompute one by hand
    x = train["user_rating_mean"].to_numpy(np.float64)
    x = x[~np.isnan(x)]
    assert spec.numerics["user_rating_mean"].mean == pytest.approx(x.mean(), rel=1e-9)
    assert spec.numerics["user_rating_mean"].std == pytest.approx(x.std(), rel=1e-9)


def test_stats_report_and_versioning(random_run):
    ratings, _, res = random_run
    stats = uri.read_json(res.uri("stats.json"))
    assert stats["ratings"] == len(ratings)
    assert sum(stats["rating_histogram"].values()) == len(ratings)
    assert stats["label_balance"] == pytest.approx((ratings["rating"] >= 3.5).mean())
    assert sum(s["rows"] for s in stats["splits"].values()) == len(ratings)
    assert stats["spec_hash"] == res.spec.hash
    root = features_root(res.path.rsplit("/features/", 1)[0])
    assert uri.latest(root) == res.version


def test_unpublished_run_leaves_latest_alone(random_run, tmp_path):
    ratings, movies, res = random_run
    art = res.path.rsplit("/features/", 1)[0]
    other = run_features(as_dataset(ratings, movies), FeaturesConfig(artifacts=art, num_blocks=2, publish=False))
    assert other.version != res.version
    assert uri.latest(features_root(art)) == res.version
    # same data, same spec, whatever the partitioning: the FeatureSpec is deterministic
    assert other.spec.hash == res.spec.hash


def test_version_holds_one_file_per_block_and_no_leftovers(random_run):
    """The user pass writes each block's samples itself, named by the block's first user: four hash
    partitions give at most four files a split, users never shared between files, and the online
    tables' per-block files are gone once merged."""
    _, _, res = random_run
    version = Path(res.path)
    assert sorted(p.name for p in version.iterdir()) == ["manifest.json", "movies.parquet", "online", "ratings", "samples", "spec.json", "stats.json"]
    assert sorted(p.name for p in (version / "online").iterdir()) == ["items.parquet", "users.parquet"]
    for split in ("train", "test"):
        files = sorted((version / "samples" / split).iterdir())
        assert 1 <= len(files) <= 4
        users = [set(pd.read_parquet(f, columns=["userId"])["userId"]) for f in files]
        assert sum(len(u) for u in users) == len(set().union(*users))  # no user in two files
        for f, u in zip(files, users):
            assert f.name == f"part-{min(u):012d}.parquet"


def test_a_split_without_rows_is_an_empty_table_with_the_columns(ray_session, tmp_path):
    """With no test fraction no block has a test row; the test folder still holds the samples'
    columns, so a training job reads an empty test split instead of failing."""
    from rayrec.training.data import open_features

    ratings, movies = ref.random_dataset(n_users=10, n_items=12, n=120, seed=5, ts_span=30)
    res = run_features(as_dataset(ratings, movies), FeaturesConfig(artifacts=str(tmp_path), test_fraction=0.0, num_blocks=2))
    fv = open_features(str(tmp_path), res.version)
    assert len(fv.test) == 0 and len(fv.train) == len(ratings)
    assert list(fv.test.columns) == list(fv.train.columns)


def test_a_retried_block_writes_the_same_files(tmp_path):
    """A block's task that runs again (a retry after a worker died) overwrites its own files instead
    of adding a second copy of its rows; what it returns is the same."""
    from rayrec.features.pipeline import _item_stage, _user_stage

    ratings, movies = ref.random_dataset(n_users=8, n_items=10, n=60, seed=3, ts_span=30)
    out = str(tmp_path / "v")
    rated = _item_stage(ratings, movies, out).to_pandas()
    first = _user_stage(rated, movies, out)
    files = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.parquet"))
    again = _user_stage(rated, movies, out)
    _item_stage(ratings, movies, out)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.parquet")) == files
    assert first.equals(again)
    samples = pd.concat([pd.read_parquet(tmp_path / "v" / "samples" / s) for s in ("train", "test")])
    assert len(samples) == len(ratings)


def write_movielens(folder: Path, ratings: pd.DataFrame, movies: pd.DataFrame) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    ratings.to_csv(folder / "ratings.csv", index=False)
    titles = [f"{t} ({int(y)})" if pd.notna(y) else t for t, y in zip(movies["title"], movies["year"])]
    genres = ["|".join(g) if len(g) else "(no genres listed)" for g in movies["genres"]]
    pd.DataFrame({"movieId": movies["movieId"], "title": titles, "genres": genres}).to_csv(folder / "movies.csv", index=False)
    return folder


def test_job_command_line_loads_the_online_store(ray_session, tmp_path, capsys):
    from pipelines.features import main
    from rayrec.store import open_store

    ratings, movies = ref.random_dataset(n_users=10, n_items=20, n=120, seed=5)
    data = write_movielens(tmp_path / "ml", ratings, movies)
    art = tmp_path / "art"
    db = tmp_path / "store.sqlite"
    rc = main(["--dataset", str(data), "--artifacts", str(art), "--online-store", f"sqlite:///{db}", "--num-blocks", "2"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "label balance" in out and "online store" in out
    with open_store(f"sqlite:///{db}") as store:
        users = store.get("user", sorted(ratings["userId"].unique()) + [999_999])
        assert all(u is not None for u in users[:-1]) and users[-1] is None
        items = store.get("item", list(movies["movieId"]))
        assert all(i is not None for i in items)
        exp = ref.latest_users(ratings, movies).set_index("userId")
        u0 = users[0]
        assert u0["user_rating_count"] == exp.loc[u0["userId"], "user_rating_count"]
        assert list(u0["user_recent_items"]) == exp.loc[u0["userId"], "user_recent_items"]
    manifest = json.loads((art / "features" / uri.latest(str(art / "features")) / "manifest.json").read_text())
    assert manifest["config"]["threshold"] == 3.5


def test_job_reports_missing_dataset_clearly(tmp_path, capsys):
    from pipelines.features import main

    rc = main(["--dataset", str(tmp_path / "nowhere"), "--artifacts", str(tmp_path / "art")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "nowhere" in err


@pytest.mark.slow
def test_movielens_subset_agrees_with_reference(ray_session, movielens, tmp_path):
    r = movielens.ratings
    r = r[r["userId"] <= 12].reset_index(drop=True)
    res = run_features(as_dataset(r, movielens.movies), FeaturesConfig(artifacts=str(tmp_path), num_blocks=3))
    got = pd.concat([read(res.uri("samples", "train")), read(res.uri("samples", "test"))], ignore_index=True)
    ref.assert_same_features(got, ref.samples(r, movielens.movies), ["userId", "movieId"])

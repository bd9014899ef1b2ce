"""MLflow tracking (rayrec.tracking): off without MLFLOW_TRACKING_URI; on, one run with params,
flattened metrics, per-epoch steps and artifacts in a local SQLite store; never fails a job."""

from __future__ import annotations

import logging
import socket
import sys

import pytest

from rayrec import tracking


@pytest.fixture
def local_mlflow(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root is ./mlruns
    monkeypatch.setenv(tracking.ENV, f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv(tracking.EXPERIMENT_ENV, "rayrec-test")
    return tmp_path


def test_off_without_the_variable(monkeypatch) -> None:
    monkeypatch.delenv(tracking.ENV, raising=False)
    monkeypatch.setitem(sys.modules, "mlflow", None)  # not even imported
    assert not tracking.enabled()
    assert tracking.log_run("train.ranker", "r", params={"a": 1}, metrics={"auc": 0.8}) is None


def test_flatten_keeps_finite_numbers_under_dotted_keys() -> None:
    got = tracking.flatten({"test": {"auc": 0.81, "users": 12, "bad": float("nan"), "flag": True},
                            "history": [1, 2], "name": "x", "recall@10": 0.2})  # fmt: skip
    assert got == {"test.auc": 0.81, "test.users": 12.0, "recall_10": 0.2}


def test_a_run_is_logged_with_params_metrics_steps_and_files(local_mlflow) -> None:
    from mlflow.tracking import MlflowClient

    folder = local_mlflow / "version"
    folder.mkdir()
    (folder / "metrics.json").write_text("{}")
    (folder / "weights.safetensors").write_bytes(b"\0" * 16)
    run_id = tracking.log_run(
        "train.ranker", "ranker-1",
        params={"model": {"hidden": [64, 32], "dropout": 0.1}, "train": {"lr": 3e-3}},
        metrics={"test": {"auc": 0.81}, "epochs": 3, "valid": {"history": [{"epoch": 0}]}},
        history=[{"epoch": 0, "loss": 0.9, "valid_auc": 0.7}, {"epoch": 1, "loss": 0.8, "valid_auc": 0.75}],
        files=str(folder),
    )  # fmt: skip
    assert run_id is not None
    client = MlflowClient()
    run = client.get_run(run_id)
    assert run.info.run_name == "ranker-1" and run.data.tags["rayrec.job"] == "train.ranker"
    assert client.get_experiment(run.info.experiment_id).name == "rayrec-test"
    assert run.data.params == {"model.hidden": "[64, 32]", "model.dropout": "0.1", "train.lr": "0.003"}
    assert run.data.metrics["test.auc"] == 0.81 and run.data.metrics["epochs"] == 3.0
    curve = client.get_metric_history(run_id, "history.loss")
    assert [(m.step, m.value) for m in sorted(curve, key=lambda m: m.step)] == [(0, 0.9), (1, 0.8)]
    assert sorted(a.path for a in client.list_artifacts(run_id)) == ["metrics.json", "weights.safetensors"]


def test_a_failing_tracking_server_is_a_warning_not_an_error(monkeypatch, caplog) -> None:
    pytest.importorskip("mlflow")
    with socket.socket() as s:  # a loopback port nothing listens on: refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv(tracking.ENV, f"http://user:hunter2@127.0.0.1:{port}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with caplog.at_level(logging.WARNING, logger="rayrec.tracking"):
        assert tracking.log_run("index", "index-1", params={}, metrics={"n": 1}) is None
    assert any("MLflow tracking failed" in r.getMessage() for r in caplog.records)


def test_set_without_the_package_is_a_warning(monkeypatch, caplog) -> None:
    monkeypatch.setenv(tracking.ENV, "sqlite:///nowhere.db")
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow raises ImportError
    with caplog.at_level(logging.WARNING, logger="rayrec.tracking"):
        assert tracking.log_run("index", "index-1", params={}, metrics={"n": 1}) is None
    assert any("mlflow is not installed" in r.getMessage() for r in caplog.records)

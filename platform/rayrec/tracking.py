"""Optional experiment tracking with MLflow.

When ``MLFLOW_TRACKING_URI`` is set, the training, index and evaluation jobs log one MLflow run each:
the settings as params, every number of their ``metrics.json`` as a metric (nested keys joined with
``.``), the per-epoch history as steps, and the published version's files as artifacts. Unset,
nothing is logged and MLflow need not be installed (``pip install -e '.[tracking]'``). A local
database works offline::

    MLFLOW_TRACKING_URI=sqlite:///mlflow.db rayrec train --model ranker
    mlflow ui --backend-store-uri sqlite:///mlflow.db      # with the full mlflow package

The experiment is ``rayrec`` (``RAYREC_MLFLOW_EXPERIMENT`` names another). Tracking never fails a job:
an unreachable server or a missing package is a warning, and the job's own outputs are the record.
The tracking URI is never logged (it may hold credentials).
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from rayrec.secrets import mask

__all__ = ["ENV", "EXPERIMENT_ENV", "enabled", "flatten", "log_run"]

log = logging.getLogger(__name__)

ENV = "MLFLOW_TRACKING_URI"
EXPERIMENT_ENV = "RAYREC_MLFLOW_EXPERIMENT"
_KEY = re.compile(r"[^0-9A-Za-z_\-. /]")  # the characters MLflow takes in a key
_PARAM_CHARS = 6000  # MLflow's limit on a param value


def enabled() -> bool:
    return bool(os.environ.get(ENV))


def _leaves(values: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(a.b.c, value)`` for every non-mapping value of a nested mapping, keys made MLflow-safe."""
    for key, value in values.items():
        name = _KEY.sub("_", f"{prefix}{key}")
        if isinstance(value, Mapping):
            yield from _leaves(value, name + ".")
        else:
            yield name, value


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers of a nested mapping, keyed ``a.b.c`` (lists and strings are left out)."""
    return {name: float(v) for name, v in _leaves(values, prefix)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}  # fmt: skip


def _params(values: Mapping[str, Any]) -> dict[str, str]:
    return {name: str(v)[:_PARAM_CHARS] for name, v in _leaves(values)}


def log_run(
    job: str,
    run_name: str,
    *,
    params: Mapping[str, Any],
    metrics: Mapping[str, Any],
    history: Iterable[Mapping[str, Any]] = (),
    files: str | Sequence[str] | None = None,
    tags: Mapping[str, str] | None = None,
) -> str | None:
    """Log one job run to MLflow when tracking is on; returns the MLflow run id, else None.

    ``history``: per-epoch rows, each with an ``epoch`` (the step) and numbers. ``files``: a folder
    whose files are logged as artifacts, or a list of files (local paths; for a remote artifacts URI
    only its address is recorded, as the ``rayrec.path`` tag)."""
    if not enabled():
        return None
    try:
        import mlflow
    except ImportError:
        log.warning("%s is set but mlflow is not installed (pip install -e '.[tracking]'): this run is not tracked", ENV)
        return None
    try:
        mlflow.set_experiment(os.environ.get(EXPERIMENT_ENV) or "rayrec")
        all_tags = {"rayrec.job": job, **(tags or {})}
        folder = files if isinstance(files, str) else None
        listed = [f for f in files or () if os.path.isfile(f)] if folder is None else []
        if folder is not None:
            all_tags["rayrec.path"] = mask(folder)
        with mlflow.start_run(run_name=run_name, tags=all_tags) as run:
            p = _params(params)
            for i in range(0, len(p), 100):  # MLflow takes at most 100 params per call
                mlflow.log_params(dict(list(p.items())[i : i + 100]))
            m = flatten(metrics)
            for i in range(0, len(m), 500):
                mlflow.log_metrics(dict(list(m.items())[i : i + 500]))
            for row in history:
                step = int(row.get("epoch", 0))
                numbers = {k: v for k, v in flatten(row).items() if k != "epoch"}
                if numbers:
                    mlflow.log_metrics({f"history.{k}": v for k, v in numbers.items()}, step=step)
            if folder is not None and "://" not in folder and os.path.isdir(folder):
                mlflow.log_artifacts(folder)
            for f in listed:
                mlflow.log_artifact(f)
            run_id: str = run.info.run_id
        log.info("tracked as MLflow run %s (experiment %s)", run_id, os.environ.get(EXPERIMENT_ENV) or "rayrec")
        return run_id
    except Exception as e:  # noqa: BLE001 - tracking is best effort: the job's outputs are the record
        log.warning("MLflow tracking failed (%s: %s): the job's own outputs are unaffected", type(e).__name__, e)
        return None

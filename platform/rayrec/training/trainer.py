"""Run the training loop on Ray Train and bring the trained weights back to the driver."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from rayrec import uri
from rayrec.training.checkpoint import load_checkpoint
from rayrec.training.config import TrainConfig
from rayrec.training.loop import train_loop_per_worker

__all__ = ["FitResult", "TrainingError", "fit", "runs_root"]

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """A training run failed (after its allowed restarts), or diverged (its loss not finite)."""


@dataclass
class FitResult:
    weights: dict[str, torch.Tensor]  # the best epoch's weights (validated run) or the last epoch's
    progress: dict[str, Any]  # best_metric, best_epoch, stopped, history, starts (resume points)
    path: str  # the run folder holding its checkpoints
    returned: dict[str, Any]  # what rank 0's loop returned in this attempt (``starts``: resume epochs)

    @property
    def epochs_run(self) -> int:
        return len(self.progress["history"])

    @property
    def best_epoch(self) -> int:
        return int(self.progress["best_epoch"])


def runs_root(artifacts: str) -> str:
    """Where training runs keep their checkpoints: a rerun with the same run name resumes there."""
    return uri.join(artifacts, "train_runs")


def _storage_path(storage: str) -> str:
    fs, path = uri.filesystem(storage)
    return storage if "://" in storage else path


def fit(
    task: Any, dataset: Any, tc: TrainConfig, *, name: str, storage: str, init: dict[str, torch.Tensor] | None = None
) -> FitResult:
    """Train ``task`` on the Ray Dataset ``dataset`` with ``tc.num_workers`` workers, from the weights
    ``init`` when given (a continued model: a new optimizer and schedule), else from new ones.

    The run lives at ``<storage>/<name>``; calling again with the same name resumes from its last
    checkpoint (a finished run returns at once with its result)."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    resources = {"CPU": tc.cpus_per_worker}
    trainer = TorchTrainer(
        train_loop_per_worker,  # type: ignore[arg-type]
        train_loop_config={"task": task, "train": tc, "init": init},
        scaling_config=ScalingConfig(num_workers=tc.num_workers, use_gpu=tc.use_gpu, resources_per_worker=resources,
                                     placement_strategy=tc.placement),
        run_config=RunConfig(
            name=name,
            storage_path=_storage_path(storage),
            failure_config=FailureConfig(max_failures=tc.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            logging_config=LoggingConfig(log_level="WARNING"),  # type: ignore[call-arg]  # V2 RunConfig
        ),
        datasets={"train": dataset},
    )
    result = trainer.fit()
    if result.error is not None:
        raise TrainingError(f"training run {name!r} failed: {result.error}") from result.error
    if result.checkpoint is None:
        raise TrainingError(f"training run {name!r} finished without a checkpoint")
    with result.checkpoint.as_directory() as folder:
        state = load_checkpoint(folder)
    diverged = state["progress"].get("diverged")
    if diverged is not None:
        raise TrainingError(
            f"training run {name!r} diverged: its loss was not finite in epoch {diverged + 1} (learning rate {tc.lr:g}, "
            f"batch {tc.batch_size:,} a worker); lower the learning rate (pipelines.train --lr)"
        )
    weights = state["best"] if state["best"] is not None else state["weights"]
    value = getattr(result, "return_value", None)  # Ray Train V2: what rank 0's loop returned
    returned = value if isinstance(value, dict) else {}
    return FitResult(weights=weights, progress=state["progress"], path=uri.join(storage, name), returned=returned)

"""Training on Ray Train: one loop for every model, tasks that adapt it to a model, the job that runs
select → refit → test → registry."""

from rayrec.training.config import TrainConfig, default_train_config
from rayrec.training.jobs import JobConfig, JobResult, run_job
from rayrec.training.tasks import RankTask, RetrieveTask
from rayrec.training.trainer import FitResult, TrainingError, fit, runs_root

__all__ = [
    "FitResult",
    "JobConfig",
    "JobResult",
    "RankTask",
    "RetrieveTask",
    "TrainConfig",
    "TrainingError",
    "default_train_config",
    "fit",
    "run_job",
    "runs_root",
]

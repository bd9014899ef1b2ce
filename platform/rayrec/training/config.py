"""How a model is trained: optimisation, early stopping and the Ray Train scaling knobs."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

__all__ = ["TrainConfig", "default_train_config", "GROWTH"]

#: how many times the batch grows at scale (:meth:`TrainConfig.for_rows`)
GROWTH = 4


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Every default runs on one laptop CPU; ``use_gpu`` switches the device."""

    epochs: int = 12  # the most epochs; early stopping may end sooner
    batch_size: int = 1024  # per worker
    lr: float = 2e-3
    weight_decay: float = 0.0  # decoupled (AdamW); models add their own per-table decay
    schedule: Literal["onecycle", "constant"] = "onecycle"
    patience: int = 3  # epochs without a better validation metric before stopping
    valid_fraction: float = 0.1  # each user's last share of training rows: the validation split
    refit: bool = True  # after selecting the epoch count on validation, retrain on all training rows
    # what the refit learns from: "all" = the train and test samples (every rating the features know:
    # the published model misses none, and the test metrics come from the selection model, which saw
    # no test row); "train" = the train samples only (the test metrics then come from the refit model)
    refit_on: Literal["train", "all"] = "all"
    # where the refit starts: "scratch" = new weights, the selected number of epochs over every row;
    # "selection" = the selection's model, one pass over the rows it did not see (the validation split,
    # and the test samples with refit_on="all"), the newest rows last, as a daily update would; "auto" =
    # "selection" when the selection kept one epoch (both then learn from every row once, and the
    # continuation skips re-reading the nine tenths the selection read: at 25M ratings 90M of the
    # ranker's 125M refit rows), else "scratch"
    refit_from: Literal["auto", "scratch", "selection"] = "auto"
    seed: int = 0
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 0.5  # fractional, so several workers fit on a small machine
    # PyTorch threads of each worker (0: as Ray starts it, one thread for a fractional CPU). The local
    # main job gives its one worker the machine's cores: nothing else runs while a model trains
    threads: int = 0
    # how Ray places the workers: SPREAD puts them on different nodes where it can (each gets a node's
    # cores and memory bandwidth: CPU training), PACK on as few nodes as fit them (GPUs of one machine)
    placement: Literal["SPREAD", "PACK"] = "SPREAD"
    # one CPU worker updates the user-id tables' rows only when a batch reads them, with the same
    # result as updating every row (rayrec.training.lazy; the decay and momentum of the skipped steps
    # in closed form): at ml-25m's 162k users most of a step's work. Several workers or a GPU: every row
    lazy_tables: bool = True
    amp: bool = True  # mixed precision (bfloat16 autocast) when the device is CUDA
    max_failures: int = 2  # worker-failure restarts from the last checkpoint
    shuffle_buffer: int = 100_000  # rows each worker reads at once and deals into batches in a random order
    # a fit of at least this many training rows (sampled negatives included) takes GROWTH × the batch
    # and √GROWTH × the learning rate (:meth:`for_rows`): at that size an epoch still has about 1,000
    # steps of the grown batch, and a step's fixed costs (the dense tables' update, per-layer calls)
    # fall on 4× the rows. 0: the batch never grows (an explicit batch size or learning rate)
    grow_batch_at: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be ≥ 1, got {self.epochs}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be ≥ 2, got {self.batch_size}")
        if self.num_workers < 1:
            raise ValueError(f"num_workers must be ≥ 1, got {self.num_workers}")
        if self.threads < 0:
            raise ValueError(f"threads must be ≥ 0 (0: as Ray starts the worker), got {self.threads}")
        if not 0.0 <= self.valid_fraction < 1.0:
            raise ValueError(f"valid_fraction must be in [0, 1), got {self.valid_fraction}")
        if self.refit_on not in ("train", "all"):
            raise ValueError(f"refit_on must be 'train' or 'all', got {self.refit_on!r}")
        if self.refit_from not in ("auto", "scratch", "selection"):
            raise ValueError(f"refit_from must be 'auto', 'scratch' or 'selection', got {self.refit_from!r}")
        if self.placement not in ("SPREAD", "PACK"):
            raise ValueError(f"placement must be 'SPREAD' or 'PACK', got {self.placement!r}")
        if self.grow_batch_at < 0:
            raise ValueError(f"grow_batch_at must be ≥ 0 (0: never), got {self.grow_batch_at}")
        if self.schedule not in ("onecycle", "constant"):
            raise ValueError(f"schedule must be 'onecycle' or 'constant', got {self.schedule!r}")

    def refit_continues(self, selected_epochs: int) -> bool:
        """Whether the refit continues the selection's model (:attr:`refit_from`), which kept
        ``selected_epochs`` epochs."""
        return self.refit_from == "selection" or (self.refit_from == "auto" and selected_epochs == 1)

    def for_rows(self, rows: int) -> TrainConfig:
        """This config for a job whose first fit has ``rows`` training rows: where ``grow_batch_at``
        is set and reached, :data:`GROWTH` × the batch and √GROWTH × the learning rate (the batch's
        noise falls as it grows; the square-root rule keeps the update's scale), the rule then spent
        (``grow_batch_at`` 0) so that every fit of the job takes the same batch."""
        if not self.grow_batch_at or rows < self.grow_batch_at:
            return self
        return replace(self, batch_size=self.batch_size * GROWTH, lr=self.lr * math.sqrt(GROWTH), grow_batch_at=0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_(self, **changes: Any) -> TrainConfig:
        return replace(self, **changes)


def default_train_config(name: str, **overrides: Any) -> TrainConfig:
    """The tuned defaults of model ``name`` ("ranker" | "retriever") on MovieLens-sized data (the
    ranker's batch grows at scale: :meth:`TrainConfig.for_rows`). An explicit ``batch_size`` or
    ``lr`` turns that growth off."""
    base = {
        # from 4M training rows (about 0.9M rated samples with their negatives) 4,096 rows a batch at
        # 4e-3: on 25M ratings' features 1.3-1.7× the samples/s with a better validation AUC (README)
        "ranker": TrainConfig(epochs=12, batch_size=1024, lr=2e-3, schedule="onecycle", grow_batch_at=4_000_000),
        "retriever": TrainConfig(epochs=12, batch_size=1024, lr=3e-3, schedule="constant"),
    }
    if name not in base:
        raise ValueError(f"unknown model {name!r}; expected one of {sorted(base)}")
    if "batch_size" in overrides or "lr" in overrides:
        overrides.setdefault("grow_batch_at", 0)
    return replace(base[name], **overrides)

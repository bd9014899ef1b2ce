"""Training checkpoints: model, optimizer, schedule, epoch, RNG state and early-stopping progress.

Weights are safetensors; the rest is a dict of tensors and plain values saved with ``torch.save`` and
read back with ``weights_only=True``, so resuming never unpickles arbitrary objects.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

__all__ = ["save_checkpoint", "load_checkpoint", "rng_state", "set_rng_state", "state_to_cpu"]

WEIGHTS, BEST, STATE = "model.safetensors", "best.safetensors", "state.pt"


def state_to_cpu(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of the model's weights (safetensors wants contiguous, unshared tensors)."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


def rng_state() -> dict[str, Any]:
    np_state: tuple[Any, ...] = np.random.get_state(legacy=True)  # type: ignore[assignment]
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.as_tensor(np_state[1].astype(np.int64)), *[float(x) for x in np_state[2:]]],
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def save_checkpoint(
    folder: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None,
    scaler: Any | None,
    epoch: int,
    progress: dict[str, Any],
    best: dict[str, torch.Tensor] | None,
) -> None:
    """Write one checkpoint folder. ``progress``: plain values (best metric, epochs without gain, history)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state_to_cpu(model), str(folder / WEIGHTS))
    if best is not None:
        save_file(best, str(folder / BEST))
    torch.save(
        {
            "epoch": epoch,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": rng_state(),
            "progress": progress,
        },
        folder / STATE,
    )


def load_checkpoint(folder: str | Path) -> dict[str, Any]:
    """The pieces of a checkpoint folder: ``weights``, ``best`` (or None) and the saved state."""
    folder = Path(folder)
    state = torch.load(folder / STATE, map_location="cpu", weights_only=True)
    state["weights"] = load_file(str(folder / WEIGHTS))
    state["best"] = load_file(str(folder / BEST)) if (folder / BEST).is_file() else None
    return state

"""Checkpoints: atomic writes, safe loads, and a model rebuilt from a run's checkpoint.

A checkpoint is a dict of tensors and plain containers (model, optimizer and scheduler state, the
sample streams' positions, RNG states, step, config as a dict), so that it loads with
`torch.load(weights_only=True)`: no pickled code runs when a checkpoint is opened. It is written
atomically (`kadyn.fileio`), so a run killed while saving leaves the previous checkpoint intact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Union

import torch

from kadyn.fileio import atomic_write
from kadyn.model import GPT, ModelConfig

LAST = "checkpoint.pt"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or does not match the run."""


def checkpoint_path(run_dir: Union[str, Path], step: int | None = None) -> Path:
    """The run's latest checkpoint, or the kept one of `step` (--keep-checkpoints)."""
    name = LAST if step is None else f"checkpoint-{step:07d}.pt"
    return Path(run_dir) / name


def save_checkpoint(state: dict[str, Any], path: Union[str, Path]) -> None:
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Union[str, Path], map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint file, or a run directory's latest one."""
    path = Path(path)
    if path.is_dir():
        path = checkpoint_path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated, not a torch file, or holding objects we refuse to unpickle
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"corrupt checkpoint {path}: {first_line}") from None
    if not isinstance(state, dict) or "model" not in state or "model_config" not in state:
        raise CheckpointError(f"corrupt checkpoint {path}: not a kadyn checkpoint")
    return state


def load_model(path: Union[str, Path], map_location: Any = "cpu") -> tuple[GPT, dict[str, Any]]:
    """The trained model of a checkpoint (eval mode) and the checkpoint dict (config, step...)."""
    state = load_checkpoint(path, map_location)
    model = GPT(ModelConfig(**state["model_config"]))
    model.load_state_dict(state["model"])
    return model.eval(), state

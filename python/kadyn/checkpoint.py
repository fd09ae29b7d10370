"""Checkpoints: atomic writes, safe loads, and a model rebuilt from a run's checkpoint.

A checkpoint is a dict of tensors and plain containers (model, optimizer and scheduler state, the
sample streams' positions, RNG states, step, config as a dict), so that it loads with
`torch.load(weights_only=True)`: no pickled code runs when a checkpoint is opened. It is written
atomically (`kadyn.fileio`), so a run killed while saving leaves the previous checkpoint intact.

torch's zip reader checks no CRC, so flipped bytes inside a tensor load silently and train to NaN.
Every checkpoint therefore carries a sha256 of its content (`checksum`: every tensor's dtype, shape
and bytes, every other value's repr, in a fixed order), verified on load. It lives inside the file,
so the file and its checksum are replaced in one atomic rename.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any, Union

import torch

from kadyn.fileio import atomic_write
from kadyn.model import GPT, ModelConfig

LAST = "checkpoint.pt"
CHECKSUM = "checksum"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or does not match the run."""


def checkpoint_path(run_dir: Union[str, Path], step: int | None = None) -> Path:
    """The run's latest checkpoint, or the kept one of `step` (--keep-checkpoints)."""
    name = LAST if step is None else f"checkpoint-{step:07d}.pt"
    return Path(run_dir) / name


def content_digest(state: dict[str, Any]) -> str:
    """sha256 of a checkpoint's content (tensors by dtype, shape and bytes), the checksum left out."""
    digest = hashlib.sha256()

    def visit(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            digest.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(value, dict):
            digest.update(f"D{len(value)}".encode())
            for key in sorted(value, key=repr):
                if key != CHECKSUM or value is not state:
                    digest.update(repr(key).encode())
                    visit(value[key])
        elif isinstance(value, (list, tuple)):
            digest.update(f"L{len(value)}".encode())
            for item in value:
                visit(item)
        else:
            digest.update(repr(value).encode())

    visit(state)
    return digest.hexdigest()


def save_checkpoint(state: dict[str, Any], path: Union[str, Path]) -> None:
    """Write `state` with its checksum, atomically. Serialised in memory first, so that a full
    disk surfaces as the OSError of the write (torch's own writer reports it as an opaque
    'enforce fail ... unexpected pos')."""
    buffer = io.BytesIO()
    torch.save({**state, CHECKSUM: content_digest(state)}, buffer)
    atomic_write(path, lambda f: f.write(buffer.getbuffer()))


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
        raise CheckpointError(f"corrupt checkpoint {path}: {first_line(e)}") from None
    if not isinstance(state, dict) or "model" not in state or "model_config" not in state:
        raise CheckpointError(f"corrupt checkpoint {path}: not a kadyn checkpoint")
    saved = state.pop(CHECKSUM, None)
    if saved is None:
        raise CheckpointError(f"corrupt checkpoint {path}: it carries no checksum")
    if saved != content_digest(state):
        raise CheckpointError(
            f"corrupt checkpoint {path}: its content does not match its checksum (the file was "
            "damaged after it was written)"
        )
    return state


def load_model(path: Union[str, Path], map_location: Any = "cpu") -> tuple[GPT, dict[str, Any]]:
    """The trained model of a run (its directory: the latest checkpoint) or of a checkpoint file,
    in eval mode, and the checkpoint dict (`config`, `train_state` with the step, ...).
    `kadyn.load_model(RUN)`, e.g. `model, ckpt = kadyn.load_model("runs/tiny-...")`."""
    state = load_checkpoint(path, map_location)
    try:
        model = GPT(ModelConfig(**state["model_config"]))
        model.load_state_dict(state["model"])
    except (TypeError, ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint {path}: model does not load ({first_line(e)})") from None
    return model.eval(), state


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (torch's run to dozens of lines), or its type."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__

"""Where a run executes: device, rank and process group, and the autocast policy.

One home for what both the training loop (`kadyn.train`) and the knowledge evaluation
(`kadyn.evaluation`) need to know about the machine, so neither imports the other for it.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from kadyn.config import TrainConfig


@dataclass
class Runtime:
    device: torch.device
    rank: int
    world_size: int
    owns_process_group: bool  # we initialised torch.distributed, so we tear it down

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_runtime(config: TrainConfig) -> Runtime:
    """Pick the device; join the process group when launched by torchrun (WORLD_SIZE > 1)."""
    want_cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but torch sees no CUDA device")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    owns = False
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if want_cuda else "gloo")
        owns = True
    rank = dist.get_rank() if dist.is_initialized() else 0
    world_size = dist.get_world_size() if dist.is_initialized() else 1
    if want_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(config.threads)
        # Fixed thread count + deterministic kernels: a resumed CPU run repeats the same numbers.
        torch.use_deterministic_algorithms(True, warn_only=True)
    return Runtime(device, rank, world_size, owns)


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; plain fp32 on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()

"""torchrun's environment -> this process's rank, world size and device: one setup for `label` and `train`.

Without torchrun (WORLD_SIZE unset or 1) everything runs in this process and no process group is made. Under
torchrun the group uses NCCL on CUDA and gloo on the CPU; each rank takes the GPU of its LOCAL_RANK.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.distributed as dist

from .cli import CliError

# Rank 0 may write checkpoints, validate or merge manifests while the others wait at a barrier: generous.
TIMEOUT = datetime.timedelta(hours=2)


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def resolve_device(device_arg: str | None) -> torch.device:
    """auto/None -> cuda when available, else cpu; CliError for a CUDA device on a machine without one."""
    if device_arg in (None, "auto"):
        device_arg = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device_arg)
    except RuntimeError as error:
        raise CliError(f"--device {device_arg}: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CliError(f"--device {device_arg}: CUDA is not available on this machine")
    return device


@contextlib.contextmanager
def distributed(device_arg: str | None) -> Iterator[Distributed]:
    """The process group for the duration of a command (destroyed on the way out, also on errors)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_arg)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)  # NCCL collectives run on the current device
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
    try:
        yield Distributed(rank, world_size, local_rank, device)
    finally:
        if world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()

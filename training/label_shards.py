"""How `stereo-distill label` splits its work: same-size batches, and whole batches per torchrun rank.

The batch plan depends only on DATA and --batch-size, so a resumed run, or a run with another world size,
computes every pair in the same batch as one uninterrupted process (identical numerics, byte-identical labels).
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass


def plan_batches(samples, batch_size: int) -> list[list]:
    """Same-size samples in batches of at most batch_size, ordered by their first sample's name.

    The plan depends only on the dataset and batch_size, so a resumed run or another world size computes each
    sample in the same batch as an uninterrupted single-process run (identical numerics).
    """
    if batch_size == 1:
        return [[sample] for sample in samples]
    from PIL import Image  # reads only the header; decoding every image to learn its size would double the I/O

    groups: dict[tuple[int, int], list] = {}
    for sample in samples:
        try:
            with Image.open(sample.left) as image:
                size = image.size
        except OSError:
            size = (-1, -1)  # unreadable: its own batch, where it fails and is recorded
        groups.setdefault(size, []).append(sample)
    batches = [group[i: i + batch_size] for group in groups.values() for i in range(0, len(group), batch_size)]
    return sorted(batches, key=lambda batch: batch[0].name)


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()


def init_distributed(device_arg: str | None) -> tuple[Distributed, str]:
    """torchrun's environment -> process group (nccl on CUDA, gloo on CPU) and this rank's device."""
    import torch

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = device_arg or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and world_size > 1:
        device = f"cuda:{local_rank}"
    if device.startswith("cuda:"):
        torch.cuda.set_device(torch.device(device))  # NCCL collectives run on the current device
    if world_size > 1:
        import torch.distributed as dist

        backend = "nccl" if device.startswith("cuda") else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend=backend, timeout=datetime.timedelta(hours=2))
    return Distributed(rank, world_size, local_rank), device


__all__ = ["Distributed", "init_distributed", "plan_batches"]

"""How `stereo-distill label` splits its work: same-size batches, and which rank labels which batch (the ranks
themselves come from `distributed`, the setup `train` shares).

The batch plan depends only on DATA and --batch-size, so a resumed run, or a run with another world size,
computes every pair in the same batch as one uninterrupted process (identical numerics, byte-identical labels).
Which rank computes a batch does not change its labels, so the batches are handed out on demand: each rank takes
the next one nobody has taken yet (`claim`), and a faster GPU or node simply takes more. All ranks finish within
about one batch of each other, also after a resume that left one node's earlier share nearly done.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any


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


def claim(todo: list[int], dist_info: Any) -> Iterator[int]:
    """The entries of `todo` (batch numbers) this rank labels, one at a time.

    One process takes them all in order. Under torchrun every rank must pass the same `todo` (rank 0 decides it and
    broadcasts it); a shared counter in the process group's key-value store (the one torchrun's rendezvous set up)
    hands out each entry to exactly one rank. The counter's key is new for every run, so a restarted run (or
    torchrun restarting its workers) starts counting from zero.
    """
    if not dist_info.active:
        yield from todo
        return
    import torch.distributed as dist

    key = "stereo_distill/label/next/" + dist_info.broadcast(os.urandom(8).hex() if dist_info.is_main else None)
    # The default group's store: the public API has no accessor for it, and a second store would need a port.
    store = dist.distributed_c10d._get_default_store()
    while True:
        index = int(store.add(key, 1)) - 1
        if index >= len(todo):
            return
        yield todo[index]


__all__ = ["claim", "plan_batches"]

"""How `stereo-distill label` splits its work: same-size batches, and whole batches per torchrun rank (the ranks
themselves come from `distributed`, the setup `train` shares).

The batch plan depends only on DATA and --batch-size, so a resumed run, or a run with another world size,
computes every pair in the same batch as one uninterrupted process (identical numerics, byte-identical labels).
"""
from __future__ import annotations


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


__all__ = ["plan_batches"]

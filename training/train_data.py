"""What `train` feeds the student: labelled pairs, the seeded split, and which pairs each step gets.

The assignment of pairs to (step, micro-batch, rank) is a pure function of the seed and the step (`DataPlan`), so
a resumed run, a run with gradient accumulation and a torchrun run of the same global batch see the same data.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import torch

from stereo_depth_ros.models.images import rgb_batch

from .augment import AugmentConfig, augment, center_crop
from .cli import CliError
from .label_files import has_label, read_label

if TYPE_CHECKING:  # the dataset readers are imported where used: bench/train.py runs with torch, cv2, numpy only
    from .datasets import StereoSample

# Key of a batch that carries, instead of tensors, the one-line reason its pairs could not be read. Data loader
# workers return it rather than raising: an exception raised in a worker reaches the main process with the
# worker's traceback pasted into its message.
LOAD_ERROR = "load_error"


@dataclass(frozen=True)
class TrainItem:
    """One labelled pair: the dataset sample and its label folder."""

    sample: StereoSample
    label_dir: Path


def load_item(item: TrainItem) -> dict[str, np.ndarray]:
    """The arrays augmentation works on (see stereo_distill.augment); ground truth only where DATA has it.

    Raises CliError naming the unreadable file and the sample.
    """
    from .datasets import DatasetError

    try:
        left, right = item.sample.load_pair()
        gt = item.sample.load_disparity()
    except DatasetError as error:
        raise CliError(f"{error}; fix or remove sample {item.sample.name}, then re-run to resume") from None
    disp, valid = read_label(item.label_dir)
    if disp.shape != left.shape[:2]:
        raise CliError(f"label of {item.sample.name} is {disp.shape}, image is {left.shape[:2]}")
    out = {"left": left, "right": right, "disp": disp, "valid": valid}
    if gt is not None:
        out["gt_disp"] = np.nan_to_num(gt, nan=0.0).astype(np.float32)
        out["gt_valid"] = np.isfinite(gt) & (gt > 0)
    return out


def collect_items(data: str, labels: str) -> list[TrainItem]:
    """DATA samples that have a label folder; CliError for a missing folder or no labelled pair at all."""
    from .datasets import DatasetError, open_dataset

    labels_root = Path(labels)
    if not labels_root.is_dir():
        raise CliError(f"labels folder {labels_root} does not exist (run `stereo-distill label` first)")
    try:
        dataset = open_dataset(data)
    except DatasetError as error:
        raise CliError(str(error)) from None
    items = [TrainItem(s, labels_root / s.name) for s in dataset if has_label(labels_root / s.name)]
    if not items:
        raise CliError(f"no sample of {data} has a label in {labels_root} "
                       "(expected <sample>/disparity.npy + valid.png)")
    return items


def split_items(items: list[TrainItem], val_fraction: float, seed: int) -> tuple[list[TrainItem], list[TrainItem]]:
    """The held-out split of `datasets.split_samples` (the one `eval --split val` uses too), on training items."""
    from .datasets import split_samples

    by_name = {item.sample.name: item for item in items}
    train_s, val_s = split_samples([item.sample for item in items], val_fraction, seed)
    return [by_name[s.name] for s in train_s], [by_name[s.name] for s in val_s]


def check_crop(items: list[TrainItem], crop: tuple[int, int]) -> None:
    """Refuse a crop larger than a training image (reads image headers only, no decoding).

    Augmentation would otherwise enlarge every such image to cover the crop, scaling its disparities out of the
    label range so that the loss sees (almost) nothing; without augmentation the crop cannot be cut at all.
    """
    from PIL import Image

    sizes = []
    for item in items:
        try:
            with Image.open(item.sample.left) as image:
                width, height = image.size
        except OSError as error:
            raise CliError(f"cannot read image {item.sample.left} ({error}); fix or remove sample "
                           f"{item.sample.name}") from None
        sizes.append((height, width, item.sample.name))
    too_small = [size for size in sizes if size[0] < crop[0] or size[1] < crop[1]]
    if too_small:
        height, width, name = too_small[0]
        fits = (min(s[0] for s in sizes) // 32 * 32, min(s[1] for s in sizes) // 32 * 32)
        raise CliError(f"--crop {crop[0]} {crop[1]} is larger than {len(too_small)} training image(s), e.g. {name} "
                       f"({height}x{width}); the largest crop that fits every image is --crop {fits[0]} {fits[1]}")


def epoch_order(seed: int, epoch: int, n: int) -> list[int]:
    """Permutation of the training items for one epoch: a pure function of (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


@dataclass(frozen=True)
class DataPlan:
    """Which items every (step, micro-batch, rank) gets.

    A step consumes one global batch of batch_size x world x accumulate consecutive entries of the epoch's
    order; the entry for micro-batch k, rank r, slot b sits at (k * world + r) * batch_size + b. So one process
    accumulating K micro-batches of B sees exactly what K ranks with B each see, and the assignment depends
    only on (seed, epoch, step): resuming needs nothing but the step.
    """

    n_items: int
    batch_size: int
    world: int
    accumulate: int
    seed: int

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world * self.accumulate

    @property
    def steps_per_epoch(self) -> int:
        return self.n_items // self.global_batch

    def position(self, step: int) -> dict[str, int]:
        return {"step": step, "epoch": step // self.steps_per_epoch, "index_in_epoch": step % self.steps_per_epoch,
                "global_batch": self.global_batch, "seed": self.seed}

    def indices(self, step: int, micro: int, rank: int) -> list[tuple[int, int, int]]:
        """[(item index, epoch, position in epoch)] for one micro-batch of one rank."""
        epoch, in_epoch = divmod(step, self.steps_per_epoch)
        order = epoch_order(self.seed, epoch, self.n_items)
        base = in_epoch * self.global_batch + (micro * self.world + rank) * self.batch_size
        return [(order[base + b], epoch, base + b) for b in range(self.batch_size)]


class StepBatches(torch.utils.data.Dataset):
    """Micro-batch i (counted from step 0) of this rank, augmented; a pure function of i (so workers are safe)."""

    def __init__(self, items: list[TrainItem], plan: DataPlan, rank: int, aug: AugmentConfig | None,
                 crop: tuple[int, int]):
        self.items, self.plan, self.rank, self.aug, self.crop = items, plan, rank, aug, crop

    def __len__(self) -> int:  # only used by samplers we do not use
        return sys.maxsize

    def __getitem__(self, i: int) -> dict[str, Any]:
        step, micro = divmod(i, self.plan.accumulate)
        samples = []
        for index, epoch, pos in self.plan.indices(step, micro, self.rank):
            try:
                raw = load_item(self.items[index])
            except CliError as error:
                return {LOAD_ERROR: str(error)}
            if self.aug is not None:
                rng = np.random.default_rng([self.plan.seed, epoch, pos])
                samples.append(augment(raw, rng, self.aug))
            else:
                samples.append(center_crop(raw, self.crop))
        return collate(samples)


def collate(samples: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    def stack(key: str, fill: float = 0.0) -> torch.Tensor:
        arrays = [s[key] if key in s else np.full(samples[0]["disp"].shape, fill, np.float32) for s in samples]
        return torch.from_numpy(np.stack([np.asarray(a, np.float32) for a in arrays])).unsqueeze(1)

    return {
        "left": rgb_batch([s["left"] for s in samples]),
        "right": rgb_batch([s["right"] for s in samples]),
        "disp": stack("disp"),
        "valid": stack("valid"),
        "gt_disp": stack("gt_disp"),
        "gt_valid": stack("gt_valid"),
    }


class StepRange(torch.utils.data.Sampler):
    """Micro-batch indices start..stop-1 in order (the data loader's sampler; a resumed run starts mid-way)."""

    def __init__(self, start: int, stop: int):
        self.start, self.stop = start, stop

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start

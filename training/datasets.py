"""Stereo data sources behind one reader interface.

Every source yields `StereoSample`s: a name, the left and right image files and optionally a ground-truth
disparity file in that dataset's own encoding (read by `image_files`). Layouts understood by `open_dataset`
(autodetected):

- ours (and InStereo2K, whose per-sample folders it copies): `DATA/<sample>/left.png`, `right.png`, optional
  `left_disp.png` (uint16, disparity x 100, 0 = invalid), optional `DATA/camera_info.yaml` (not needed here:
  labelling, training and evaluation work on disparity). Sample folders may be nested (InStereo2K as downloaded:
  `train/part*/<id>/`, `test/<id>/`); the name is the relative path. The layout is defined in
  `stereo_depth_ros.dataset_layout` (the node's hard-pair capture writes it too); hidden folders (a writer's
  staging folders) are skipped.
- Middlebury 2014 / MiddEval3: folders with `im0.png`, `im1.png`, optional `disp0GT.pfm` or `disp0.pfm`
  (inf = invalid).
- KITTI 2015 (`image_2`, `image_3`, `disp_occ_0`) and KITTI 2012 (`colored_0`, `colored_1`, `disp_occ`):
  uint16 PNG, disparity x 256, 0 = invalid.
- two plain folders `left/` and `right/`, paired by sorted file name (equal counts required).

Images are returned as uint8 RGB [H, W, 3]; disparities as float32 [H, W] with NaN where invalid.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence, overload

import numpy as np

from stereo_depth_ros.dataset_layout import DatasetError, read_image

from .image_files import read_pfm_disparity, read_scaled_disparity_png

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp")


# ---------------------------------------------------------------------------------------------------------- sample
@dataclass(frozen=True)
class StereoSample:
    """One rectified pair. `disparity` (optional) is read by `disparity_reader`."""

    name: str
    left: Path
    right: Path
    disparity: Path | None = None
    disparity_reader: Callable[[Path], np.ndarray] | None = field(default=None, repr=False, compare=False)

    @property
    def has_disparity(self) -> bool:
        return self.disparity is not None

    def load_left(self) -> np.ndarray:
        return read_image(self.left)

    def load_right(self) -> np.ndarray:
        return read_image(self.right)

    def load_pair(self) -> tuple[np.ndarray, np.ndarray]:
        """(left, right) uint8 RGB; raises DatasetError if they are unreadable or differ in size."""
        left, right = self.load_left(), self.load_right()
        if left.shape != right.shape:
            raise DatasetError(f"sample {self.name}: left {left.shape[:2]} and right {right.shape[:2]} differ in size")
        return left, right

    def load_disparity(self) -> np.ndarray | None:
        """float32 [H, W], left-view pixels, NaN = invalid; None without ground truth."""
        if self.disparity is None or self.disparity_reader is None:
            return None
        return self.disparity_reader(self.disparity)


def _instereo_disp(path: Path) -> np.ndarray:
    return read_scaled_disparity_png(path, 100.0)


def _kitti_disp(path: Path) -> np.ndarray:
    return read_scaled_disparity_png(path, 256.0)


# --------------------------------------------------------------------------------------------------------- dataset
@dataclass
class StereoDataset(Sequence[StereoSample]):
    """An ordered (by name), indexable list of samples and the layout it was read as."""

    root: Path
    layout: str
    samples: list[StereoSample]

    def __len__(self) -> int:
        return len(self.samples)

    @overload
    def __getitem__(self, index: int) -> StereoSample: ...

    @overload
    def __getitem__(self, index: slice) -> list[StereoSample]: ...

    def __getitem__(self, index: int | slice) -> StereoSample | list[StereoSample]:
        return self.samples[index]

    def __iter__(self) -> Iterator[StereoSample]:
        return iter(self.samples)

    def names(self) -> list[str]:
        return [sample.name for sample in self.samples]

    def split(self, val_fraction: float = 0.1, seed: int = 0) -> tuple[list[StereoSample], list[StereoSample]]:
        return split_samples(self.samples, val_fraction, seed)


def split_samples(
    samples: Iterable[StereoSample], val_fraction: float = 0.1, seed: int = 0
) -> tuple[list[StereoSample], list[StereoSample]]:
    """Seeded train/val split decided per sample from a hash of (seed, name).

    Why a hash rather than a shuffled list: a sample keeps its side when other samples are added or removed
    (a new bag extracted into DATA never moves old validation pairs into training). The validation share is
    `val_fraction` in expectation, not exactly; a tiny set that the hash puts all on one side gives its last
    sample to the other side, so that training and validation both have pairs whenever there are two or more.
    """
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"val_fraction must be in [0, 1], got {val_fraction}")
    train: list[StereoSample] = []
    val: list[StereoSample] = []
    for sample in samples:
        digest = hashlib.sha256(f"{seed}/{sample.name}".encode()).digest()
        (val if int.from_bytes(digest[:8], "big") / 2.0**64 < val_fraction else train).append(sample)
    if val_fraction > 0 and not val and len(train) > 1:
        val, train = train[-1:], train[:-1]
    if val_fraction < 1 and not train and len(val) > 1:
        train, val = val[:-1], val[-1:]
    return train, val


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _walk_dirs(root: Path, max_depth: int) -> list[Path]:
    """root and its subfolders up to max_depth levels, sorted, hidden folders skipped."""
    found, frontier = [root], [root]
    for _ in range(max_depth):
        frontier = sorted(child for folder in frontier for child in folder.iterdir()
                          if child.is_dir() and not child.name.startswith("."))
        found.extend(frontier)
    return found


def _relative_name(folder: Path, root: Path) -> str:
    name = folder.relative_to(root).as_posix()
    return name if name != "." else folder.name


def read_folder_pairs(root: Path) -> StereoDataset:
    """Our layout and InStereo2K (any depth): folders holding left.png and right.png."""
    samples = []
    for left in sorted(root.rglob("left.png")):
        folder = left.parent
        right = folder / "right.png"
        if not right.is_file() or any(part.startswith(".") for part in folder.relative_to(root).parts):
            continue
        disp = folder / "left_disp.png"
        samples.append(StereoSample(
            name=_relative_name(folder, root), left=left, right=right,
            disparity=disp if disp.is_file() else None, disparity_reader=_instereo_disp if disp.is_file() else None,
        ))
    return StereoDataset(root, "folders", samples)


def read_middlebury(root: Path) -> StereoDataset:
    """Middlebury 2014 (`disp0.pfm`) and MiddEval3 (`disp0GT.pfm`): folders holding im0.png and im1.png."""
    samples = []
    for left in sorted(root.rglob("im0.png")):
        folder = left.parent
        if not (folder / "im1.png").is_file():
            continue
        disp = next((folder / n for n in ("disp0GT.pfm", "disp0.pfm") if (folder / n).is_file()), None)
        samples.append(StereoSample(
            name=_relative_name(folder, root), left=left, right=folder / "im1.png",
            disparity=disp, disparity_reader=read_pfm_disparity if disp else None,
        ))
    return StereoDataset(root, "middlebury", samples)


KITTI_LAYOUTS = {  # left folder, right folder, ground-truth folder
    "kitti2015": ("image_2", "image_3", "disp_occ_0"),
    "kitti2012": ("colored_0", "colored_1", "disp_occ"),
}


def read_kitti(root: Path) -> StereoDataset:
    """KITTI 2012 / 2015: `root` is a split folder (training/, testing/) or a folder holding them."""
    samples, layout_name = [], "kitti"
    for folder in _walk_dirs(root, 1):
        for layout_name_, (left_dir, right_dir, gt_dir) in KITTI_LAYOUTS.items():
            if not ((folder / left_dir).is_dir() and (folder / right_dir).is_dir()):
                continue
            layout_name = layout_name_
            prefix = "" if folder == root else folder.relative_to(root).as_posix() + "/"
            rights = {p.name: p for p in _images_in(folder / right_dir)}
            for left in _images_in(folder / left_dir):
                if left.name not in rights:
                    continue
                disp = folder / gt_dir / left.name
                samples.append(StereoSample(
                    name=prefix + left.stem, left=left, right=rights[left.name],
                    disparity=disp if disp.is_file() else None,
                    disparity_reader=_kitti_disp if disp.is_file() else None,
                ))
    return StereoDataset(root, layout_name, samples)


def read_left_right_folders(left_dir: Path, right_dir: Path, root: Path | None = None) -> StereoDataset:
    """Two folders of images paired by sorted file name; the sample name is the left file's stem."""
    lefts, rights = _images_in(left_dir), _images_in(right_dir)
    if len(lefts) != len(rights):
        raise DatasetError(
            f"{left_dir} has {len(lefts)} images but {right_dir} has {len(rights)}; pairs are matched by sorted name"
        )
    samples = [StereoSample(name=left.stem, left=left, right=right) for left, right in zip(lefts, rights, strict=True)]
    return StereoDataset(root or left_dir.parent, "left_right_folders", samples)


def _find_left_right_dirs(root: Path) -> tuple[Path, Path] | None:
    children = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    if "left" in children and "right" in children:
        return children["left"], children["right"]
    return None


def open_dataset(path: str | Path) -> StereoDataset:
    """Autodetect the layout under `path` (see the module docstring) and list its samples, sorted by name.

    Raises DatasetError when `path` is missing or holds no stereo pairs in any known layout.
    """
    root = Path(path)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist")
    pair_dirs = _find_left_right_dirs(root)
    if pair_dirs is not None:
        dataset = read_left_right_folders(*pair_dirs, root=root)
    else:
        dataset = None
        for reader in (read_folder_pairs, read_middlebury, read_kitti):
            dataset = reader(root)
            if dataset.samples:
                break
    if dataset is None or not dataset.samples:
        raise DatasetError(
            f"no stereo pairs under {root}: expected <sample>/left.png+right.png, Middlebury im0.png+im1.png, "
            "KITTI image_2+image_3 or colored_0+colored_1, or left/ and right/ image folders"
        )
    names = dataset.names()
    if len(set(names)) != len(names):
        raise DatasetError(f"duplicate sample names under {root}")
    dataset.samples.sort(key=lambda s: s.name)
    return dataset


__all__ = [
    "DatasetError", "StereoDataset", "StereoSample", "open_dataset", "read_left_right_folders", "split_samples",
]

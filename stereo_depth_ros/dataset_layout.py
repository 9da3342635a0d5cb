"""The project's own dataset layout on disk, shared by the node's capture and the offline CLI (one definition).

    DATA/<sample>/left.png, right.png      a rectified pair, 8-bit RGB (or grey) PNG
    DATA/<sample>/meta.json                optional: where the pair came from (stamps, frame_id, ...)
    DATA/camera_info.yaml                  optional: {left: ..., right: ...} in camera_calibration_parsers' layout

`stereo_distill.datasets` reads this layout (with ground truth, other datasets' layouts too); `extract` and the
node's hard-pair capture write it. Offers:
- `write_image` / `read_image`: atomic, lossless image files (uint8 RGB or grey, uint16 grey);
- `camera_info_to_dict`, `write_camera_info`, `read_camera_info`: DATA/camera_info.yaml;
- `write_sample(root, name, left, right, meta)`: one sample folder made visible at once (staged in a hidden folder,
  then renamed), so that a reader never sees half a sample, even after a crash;
- `sample_names(root)`, `folder_bytes(root)`, `remove_staging(root)`: what a folder already holds.

Hidden entries (names starting with '.') are never samples: the readers skip them, which is what makes the staging
folders invisible.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Mapping

import cv2
import numpy as np
import yaml

from stereo_depth_ros.atomic_io import atomic_path, atomic_write_bytes, atomic_write_json, fsync_dir

CAMERA_INFO_FILE = "camera_info.yaml"
SAMPLE_IMAGES = ("left.png", "right.png")
SAMPLE_META = "meta.json"
STAGING_PREFIX = ".staging-"


class DatasetError(ValueError):
    """A dataset or one of its files cannot be read or written; the message names the path."""


# ------------------------------------------------------------------------------------------------------------ images
def read_image(path: str | Path) -> np.ndarray:
    """uint8 RGB [H, W, 3]; grey images are repeated over the three channels."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DatasetError(f"cannot read image {path} (missing, truncated or not an image)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def write_image(path: str | Path, image: np.ndarray) -> None:
    """Atomically write uint8 RGB [H, W, 3] or grey [H, W] (or uint16 grey) as a lossless file chosen by suffix."""
    image = np.ascontiguousarray(image)
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    imwrite_atomic(path, image)


def imwrite_atomic(path: str | Path, image: np.ndarray) -> None:
    """cv2.imwrite of an array already in OpenCV's channel order, atomically."""
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), image):
            raise DatasetError(f"cannot encode image for {path}")


# ------------------------------------------------------------------------------------------------------ calibration
def camera_info_to_dict(msg: Any) -> dict:
    """A sensor_msgs/CameraInfo (rclpy or rosbags object) -> the camera_calibration_parsers YAML layout."""

    def matrix(values: Any, rows: int, cols: int) -> dict:
        return {"rows": rows, "cols": cols, "data": [float(v) for v in values]}

    distortion = [float(v) for v in msg.d]
    return {
        "image_width": int(msg.width),
        "image_height": int(msg.height),
        "camera_name": str(msg.header.frame_id),
        "frame_id": str(msg.header.frame_id),
        "camera_matrix": matrix(msg.k, 3, 3),
        "distortion_model": str(msg.distortion_model),
        "distortion_coefficients": matrix(distortion, 1, len(distortion)),
        "rectification_matrix": matrix(msg.r, 3, 3),
        "projection_matrix": matrix(msg.p, 3, 4),
    }


def write_camera_info(path: str | Path, left: dict, right: dict) -> None:
    """DATA/camera_info.yaml: `{left: <calibration yaml>, right: <calibration yaml>}`, written atomically."""
    text = yaml.safe_dump({"left": left, "right": right}, sort_keys=False)
    atomic_write_bytes(path, text.encode())


def read_camera_info(path: str | Path) -> tuple[dict, dict]:
    try:
        content = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as error:
        raise DatasetError(f"cannot read camera info {path}: {error}") from None
    if not isinstance(content, dict) or not {"left", "right"} <= set(content):
        raise DatasetError(f"camera info {path} must map 'left' and 'right' to calibration blocks")
    return content["left"], content["right"]


# ----------------------------------------------------------------------------------------------------------- samples
def write_sample(root: str | Path, name: str, left: np.ndarray, right: np.ndarray,
                 meta: Mapping[str, Any] | None = None) -> int:
    """Write DATA/<name>/ (left.png, right.png, meta.json) so that it appears complete or not at all.

    The files go to a hidden staging folder in `root` first (fsynced by the atomic writers), which is then renamed
    to `name`. Raises FileExistsError when `name` exists already (the caller picks another name) and OSError or
    DatasetError when writing fails (the staging folder is removed). Returns the sample's size in bytes.
    """
    root = Path(root)
    staging = root / f"{STAGING_PREFIX}{name}"
    final = root / name
    if final.exists():
        raise FileExistsError(f"sample {final} exists already")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        write_image(staging / SAMPLE_IMAGES[0], left)
        write_image(staging / SAMPLE_IMAGES[1], right)
        if meta is not None:
            atomic_write_json(staging / SAMPLE_META, dict(meta))
        size = sum(entry.stat().st_size for entry in staging.iterdir())
        # rename(2) onto an existing empty folder would succeed silently; the check above and this one narrow the
        # window to a concurrent writer creating the same name in between, which the caller's names rule out.
        if final.exists():
            raise FileExistsError(f"sample {final} exists already")
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_dir(root)
    return size


def sample_names(root: str | Path) -> list[str]:
    """Names of the complete samples directly under `root` (folders holding left.png and right.png), sorted."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(entry.name for entry in root.iterdir()
                  if entry.is_dir() and not entry.name.startswith(".")
                  and all((entry / image).is_file() for image in SAMPLE_IMAGES))


def folder_bytes(root: str | Path) -> int:
    """Total size of the regular files under `root` (what a size limit on the folder counts)."""
    total = 0
    for folder, _, files in os.walk(root):
        for file in files:
            try:
                total += os.lstat(os.path.join(folder, file)).st_size
            except FileNotFoundError:  # removed while walking
                pass
    return total


def remove_staging(root: str | Path) -> int:
    """Remove the staging folders a killed writer left in `root`; returns how many there were."""
    root = Path(root)
    if not root.is_dir():
        return 0
    stale = [entry for entry in root.iterdir() if entry.is_dir() and entry.name.startswith(STAGING_PREFIX)]
    for entry in stale:
        shutil.rmtree(entry, ignore_errors=True)
    return len(stale)

"""Disparity files of the datasets we read: scaled uint16 PNGs (InStereo2K x100, KITTI x256) and PFM (Middlebury).

Our own layout's images and camera_info.yaml are `stereo_depth_ros.dataset_layout`'s (the node's capture writes
them too). Writers are atomic.
"""
from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np

from stereo_depth_ros.atomic_io import atomic_write_bytes
from stereo_depth_ros.dataset_layout import DatasetError, imwrite_atomic


def read_scaled_disparity_png(path: str | Path, scale: float) -> np.ndarray:
    """uint16 PNG holding disparity * scale, 0 = invalid (InStereo2K: scale 100, KITTI: 256) -> float32, NaN invalid."""
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise DatasetError(f"cannot read disparity {path}")
    if raw.dtype != np.uint16 or raw.ndim != 2:
        raise DatasetError(f"disparity {path} must be a single-channel uint16 PNG, got {raw.dtype} {raw.shape}")
    disp = raw.astype(np.float32) / np.float32(scale)
    disp[raw == 0] = np.nan
    return disp


def write_scaled_disparity_png(path: str | Path, disparity: np.ndarray, scale: float) -> None:
    """Inverse of `read_scaled_disparity_png`: non-finite or non-positive values are stored as 0 (invalid)."""
    disparity = np.asarray(disparity, np.float64)
    valid = np.isfinite(disparity) & (disparity > 0)
    raw = np.zeros(disparity.shape, np.uint16)
    raw[valid] = np.clip(np.round(disparity[valid] * scale), 1, 65535).astype(np.uint16)
    imwrite_atomic(path, raw)


def read_pfm(path: str | Path) -> np.ndarray:
    """Portable float map -> float32 [H, W] (or [H, W, 3] for colour `PF` files), top row first.

    PFM stores rows bottom to top; the sign of the scale line gives the byte order (negative = little-endian).
    """
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise DatasetError(f"cannot read PFM {path}: {error.strerror}") from None
    # Three whitespace-separated header tokens, then exactly one whitespace byte before the raster.
    match = re.match(rb"(P[Ff])\s+(\d+)\s+(\d+)\s+([-+0-9.eE]+)\s", data)
    if match is None:
        raise DatasetError(f"{path} is not a PFM file (bad header)")
    channels = 3 if match.group(1) == b"PF" else 1
    width, height, scale = int(match.group(2)), int(match.group(3)), float(match.group(4))
    dtype = np.dtype("<f4") if scale < 0 else np.dtype(">f4")
    count = width * height * channels
    raster = data[match.end():]
    if len(raster) < count * 4:
        raise DatasetError(f"PFM {path} is truncated: {len(raster)} of {count * 4} raster bytes")
    values = np.frombuffer(raster, dtype, count).astype(np.float32)
    shape = (height, width, channels) if channels == 3 else (height, width)
    return np.ascontiguousarray(values.reshape(shape)[::-1])


def write_pfm(path: str | Path, array: np.ndarray) -> None:
    """Atomically write float32 [H, W] (or [H, W, 3]) as little-endian PFM (negative scale, bottom row first)."""
    array = np.asarray(array, np.float32)
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
        raise ValueError(f"PFM holds [H, W] or [H, W, 3] arrays, got {array.shape}")
    kind = "PF" if array.ndim == 3 else "Pf"
    header = f"{kind}\n{array.shape[1]} {array.shape[0]}\n-1.0\n".encode()
    atomic_write_bytes(path, header + np.ascontiguousarray(array[::-1]).astype("<f4").tobytes())


def read_pfm_disparity(path: str | Path) -> np.ndarray:
    """Middlebury ground truth: float32 [H, W], inf (unknown) -> NaN."""
    disp = read_pfm(path)
    if disp.ndim != 2:
        raise DatasetError(f"disparity PFM {path} must have one channel")
    disp[~np.isfinite(disp)] = np.nan
    return disp

"""Result files for people to look at: colourised disparity/depth PNGs and PLY point clouds."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from stereo_depth_ros.atomic_io import atomic_write_bytes


def colourise(values: np.ndarray, lo: float, hi: float, reverse: bool = False) -> np.ndarray:
    """uint8 BGR image: TURBO colour map over lo..hi, black where values are NaN."""
    finite = np.isfinite(values)
    scaled = np.clip((np.nan_to_num(values, nan=lo) - lo) / max(hi - lo, 1e-6), 0, 1)
    if reverse:
        scaled = 1 - scaled
    image = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_TURBO)
    image[~finite] = 0
    return image


def write_png(path: Path, image: np.ndarray) -> None:
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise RuntimeError(f"PNG encoding failed for {path}")
    atomic_write_bytes(path, encoded.tobytes())


def write_ply(path: Path, cloud_msg: Any) -> int:
    """Binary PLY of the finite points of an xyz+rgb PointCloud2 (point_step 16). Returns the point count."""
    raw = np.frombuffer(cloud_msg.data, dtype=np.float32).reshape(-1, cloud_msg.point_step // 4)
    xyz = raw[:, :3]
    keep = np.isfinite(xyz).all(axis=1)
    rgb = raw[keep, 3].view(np.uint32)
    vertices = np.empty(int(keep.sum()), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                               ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    vertices["x"], vertices["y"], vertices["z"] = xyz[keep, 0], xyz[keep, 1], xyz[keep, 2]
    vertices["red"] = (rgb >> 16) & 0xFF
    vertices["green"] = (rgb >> 8) & 0xFF
    vertices["blue"] = rgb & 0xFF
    header = ("ply\nformat binary_little_endian 1.0\n"
              f"comment stereo_depth_ros demo, frame {cloud_msg.header.frame_id}\n"
              f"element vertex {len(vertices)}\n"
              "property float x\nproperty float y\nproperty float z\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n")
    atomic_write_bytes(path, header.encode() + vertices.tobytes())
    return len(vertices)

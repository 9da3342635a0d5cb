"""The real stereo pair every machine has: scikit-image's Middlebury 2014 "Motorcycle", with its calibration.

One loader for the demo, the tests, the benches, the toy data of `make loop` and the export's verification pair.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

# The frame the demo and the tests stamp their images with (the launch file's default fixed_frame).
FRAME_ID = "left_camera_optical_frame"

# Calibration of skimage.data.stereo_motorcycle() at its native 741x500 (Middlebury 2014 "Motorcycle", scaled by
# scikit-image; values from its docstring). doffs = cx_right - cx_left.
MOTORCYCLE = {"width": 741, "height": 500, "focal": 994.978, "cx": 311.193, "cy": 254.877, "doffs": 31.086,
              "baseline_m": 0.193001}


@functools.lru_cache(maxsize=1)
def _load() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from skimage import data

    left, right, disparity = data.stereo_motorcycle()
    gt = np.where(np.isfinite(disparity), disparity, np.nan).astype(np.float32)
    return np.ascontiguousarray(left), np.ascontiguousarray(right), gt


def load_motorcycle() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(left, right, disparity) at the native 741x500: uint8 [H, W, 3] RGB views and float32 [H, W] left-view
    ground truth in pixels, NaN where unknown. Fresh copies on every call (the file is read once)."""
    left, right, disparity = _load()
    return left.copy(), right.copy(), disparity.copy()


def motorcycle_pair(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The two views resized to exactly height x width (aspect not kept; still a rectified pair): real image
    content of a given size for benchmarks and verification runs."""
    left, right, _ = _load()
    interp = cv2.INTER_AREA if width * height < left.shape[0] * left.shape[1] else cv2.INTER_LINEAR
    return tuple(cv2.resize(view, (width, height), interpolation=interp) for view in (left, right))  # type: ignore


@dataclass
class StereoRig:
    """A rectified pair at one resolution with its calibration and ground truth.

    left, right: uint8 [H, W, 3] RGB. gt_disparity: float32 [H, W] left-view disparity in pixels between the raw
    images (NaN unknown). fx: focal length (px); cx_left, cx_right, cy: principal points (px); baseline: metres.
    """

    left: np.ndarray
    right: np.ndarray
    gt_disparity: np.ndarray
    fx: float
    cx_left: float
    cx_right: float
    cy: float
    baseline: float

    @property
    def width(self) -> int:
        return int(self.left.shape[1])

    @property
    def height(self) -> int:
        return int(self.left.shape[0])

    @property
    def doffs(self) -> float:
        return self.cx_right - self.cx_left

    def fit_rows(self, height: int) -> "StereoRig":
        """The same rig with exactly `height` rows: rows cropped or replicated evenly at the top and bottom, the
        principal point moved with them (the geometry stays exact, unlike a resize of one axis). For benches that
        need a camera size such as 640x480 from the 741x500 pair."""
        extra = height - self.height
        if extra == 0:
            return self
        top = extra // 2
        if extra > 0:
            def fit(image: np.ndarray, border: int, value: float = 0.0) -> np.ndarray:
                return cv2.copyMakeBorder(image, top, extra - top, 0, 0, border, value=value)
            left, right = fit(self.left, cv2.BORDER_REPLICATE), fit(self.right, cv2.BORDER_REPLICATE)
            gt = fit(self.gt_disparity, cv2.BORDER_CONSTANT, float("nan"))
        else:
            rows = slice(-top, -top + height)
            left, right, gt = self.left[rows], self.right[rows], self.gt_disparity[rows]
        return StereoRig(np.ascontiguousarray(left), np.ascontiguousarray(right), np.ascontiguousarray(gt),
                         self.fx, self.cx_left, self.cx_right, self.cy + top, self.baseline)

    def camera_infos(self, stamp: Any = None) -> tuple[Any, Any]:
        """(left, right) sensor_msgs/CameraInfo of this rig (needs the ROS message packages)."""
        from stereo_devkit.client import stereo_camera_infos

        return stereo_camera_infos(self.width, self.height, self.fx, self.cx_left, self.cy, self.baseline,
                                   cx_right=self.cx_right, stamp=stamp, frame_id=FRAME_ID)

    def gt_depth(self) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            depth = self.fx * self.baseline / (self.gt_disparity + self.doffs)
        return np.where(np.isfinite(depth) & (depth > 0), depth, np.nan).astype(np.float32)


def motorcycle_rig(width: int = 640) -> StereoRig:
    """The Motorcycle pair resized to `width` (aspect kept), calibration and ground truth scaled to match.

    Resizing maps pixel centres u -> (u + 0.5) * s - 0.5, so principal points move that way while focal length
    and disparities (differences of positions) scale by s.
    """
    left, right, disparity = load_motorcycle()
    native_w, native_h = left.shape[1], left.shape[0]
    scale = width / native_w
    height = int(round(native_h * scale))
    if (width, height) != (native_w, native_h):
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        left = cv2.resize(left, (width, height), interpolation=interp)
        right = cv2.resize(right, (width, height), interpolation=interp)
        # Nearest keeps unknown pixels unknown instead of blending them into their neighbours.
        disparity = cv2.resize(disparity, (width, height), interpolation=cv2.INTER_NEAREST) * np.float32(scale)
    sx, sy = width / native_w, height / native_h
    return StereoRig(
        left=np.ascontiguousarray(left), right=np.ascontiguousarray(right), gt_disparity=disparity,
        fx=MOTORCYCLE["focal"] * sx,
        cx_left=(MOTORCYCLE["cx"] + 0.5) * sx - 0.5,
        cx_right=(MOTORCYCLE["cx"] + MOTORCYCLE["doffs"] + 0.5) * sx - 0.5,
        cy=(MOTORCYCLE["cy"] + 0.5) * sy - 0.5,
        baseline=MOTORCYCLE["baseline_m"],
    )

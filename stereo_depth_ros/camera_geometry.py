"""Stereo camera geometry, ROS-free: the two camera_info messages -> `StereoCamera` (plain values).

Offers:
- `StereoCamera.from_camera_info(left_info, right_info)`: focal length and baseline from the right projection
  (`f = P_right[0,0]`, `baseline = -P_right[0,3] / P_right[0,0]`), principal points from both, and the image
  size each camera_info is for; raises `CameraGeometryError` (a ValueError) naming the problem for missing or
  degenerate projections and for values that float32 (the DisparityImage's fields, the depth and point maths)
  cannot hold.
- `StereoCamera.size_problem(width, height)`: why this geometry does not fit images of that size (either side's
  camera_info made for another size), or None.

Messages are duck-typed (`.p`, `.k`, `.width`, `.height`); nothing here imports rclpy. What the geometry is used
for (depth, points, the DisparityImage values) is `postprocess.py`.

Principal points: with ROS rectification both cameras share cx and depth is `f * baseline / d`. When they differ
(verged rigs, Middlebury's `doffs`), depth is `f * baseline / (d + cx_right - cx_left)`, as image_geometry
computes it; the DisparityImage carries that shifted disparity so its consumers can use `Z = f * t / d`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# Largest magnitude float32 holds; the outputs are float32, so every value they are computed from must fit.
FLOAT32_MAX = float(np.finfo(np.float32).max)


class CameraGeometryError(ValueError):
    """camera_info that cannot give a metric stereo geometry."""


def _matrix(info: Any, name: str, rows: int, cols: int, side: str) -> np.ndarray | None:
    values = getattr(info, name, None)
    if values is None:
        values = getattr(info, name.upper(), None)
    if values is None:
        return None
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size != rows * cols:
        raise CameraGeometryError(f"{side} camera_info {name} has {array.size} values, expected {rows * cols}")
    return array.reshape(rows, cols)


@dataclass(frozen=True)
class StereoCamera:
    """A rectified stereo rig at one resolution.

    fx, fy: focal lengths in pixels (fx is the right projection's, which defines depth); baseline: metres (> 0);
    cx, cy: the left principal point (where the disparity and depth images live); cx_right: the right one;
    width, height: the image size the left camera_info is for; right_width, right_height: the right one's (0 when
    a camera_info does not say).
    """

    fx: float
    fy: float
    cx: float
    cy: float
    baseline: float
    cx_right: float | None = None
    width: int = 0
    height: int = 0
    right_width: int = 0
    right_height: int = 0

    @property
    def doffs(self) -> float:
        """cx_right - cx_left: the disparity offset between the principal points (0 for ROS rectification)."""
        return 0.0 if self.cx_right is None else self.cx_right - self.cx

    @classmethod
    def from_camera_info(cls, left_info: Any, right_info: Any) -> "StereoCamera":
        """Geometry from the two rectified camera_info messages (P preferred; K when P is all zero for the left).

        Raises CameraGeometryError naming the problem: missing/zero/NaN projection, zero or NaN focal length,
        zero or NaN baseline (the right P has no translation: not a stereo camera_info pair), or values finite in
        float64 that float32 cannot hold (an absurd focal length would otherwise break the float32 outputs).
        """
        if left_info is None or right_info is None:
            raise CameraGeometryError("camera_info missing for the " + ("left" if left_info is None else "right")
                                      + " camera")
        p_right = _matrix(right_info, "p", 3, 4, "right")
        if p_right is None or not np.any(p_right):
            raise CameraGeometryError("right camera_info has no projection matrix P (all zero)")
        if not np.all(np.isfinite(p_right)):
            raise CameraGeometryError("right camera_info projection P contains NaN or infinity")
        fx = float(p_right[0, 0])
        if fx <= 0.0:
            raise CameraGeometryError(f"right camera_info focal length P[0,0] = {fx} is not positive")
        baseline = -float(p_right[0, 3]) / fx
        if baseline == 0.0:
            raise CameraGeometryError(
                "right camera_info P[0,3] is 0: no baseline (is this the right camera of a rectified pair?)")
        if baseline < 0.0:
            raise CameraGeometryError(
                f"baseline {baseline:.6g} m is negative (P[0,3] = {p_right[0, 3]}): left and right swapped?")

        p_left = _matrix(left_info, "p", 3, 4, "left")
        if p_left is None or not np.any(p_left):
            k_left = _matrix(left_info, "k", 3, 3, "left")
            if k_left is None or not np.any(k_left):
                raise CameraGeometryError("left camera_info has neither a projection P nor intrinsics K")
            intrinsics = k_left
            # The unrectified K's principal point is not comparable with P_right's: assume no offset.
            cx_right = None
        else:
            intrinsics = p_left[:, :3]
            cx_right = float(p_right[0, 2])
        if not np.all(np.isfinite(intrinsics)):
            raise CameraGeometryError("left camera_info projection contains NaN or infinity")
        fy = float(intrinsics[1, 1])
        if fy <= 0.0:
            raise CameraGeometryError(f"left camera_info focal length fy = {fy} is not positive")
        camera = cls(
            fx=fx,
            fy=fy,
            cx=float(intrinsics[0, 2]),
            cy=float(intrinsics[1, 2]),
            baseline=baseline,
            cx_right=cx_right,
            width=int(getattr(left_info, "width", 0) or 0),
            height=int(getattr(left_info, "height", 0) or 0),
            right_width=int(getattr(right_info, "width", 0) or 0),
            right_height=int(getattr(right_info, "height", 0) or 0),
        )
        camera._check_float32()
        return camera

    def _check_float32(self) -> None:
        """Every value the float32 outputs use must be finite (and the scales non-zero) once rounded to float32."""
        values = {"focal length fx": self.fx, "focal length fy": self.fy, "baseline": self.baseline,
                  "principal point cx": self.cx, "principal point cy": self.cy,
                  "right principal point cx": self.cx_right or 0.0, "f * baseline": self.fx * self.baseline,
                  "principal point offset": self.doffs}
        for name, value in values.items():
            if not abs(value) <= FLOAT32_MAX:
                raise CameraGeometryError(f"camera_info {name} = {value:.6g} is beyond float32's range "
                                          f"(+-{FLOAT32_MAX:.3g})")
        for name, value in (("focal length fx", self.fx), ("focal length fy", self.fy), ("baseline", self.baseline),
                            ("f * baseline", self.fx * self.baseline)):
            if float(np.float32(value)) == 0.0:
                raise CameraGeometryError(f"camera_info {name} = {value:.6g} is too small for float32 (rounds to 0)")

    def size_problem(self, width: int, height: int) -> str | None:
        """Why this geometry does not fit images of width x height (a camera_info of either side made for another
        size), or None. A camera_info that gives no size (0) is taken to fit."""
        for side, (w, h) in (("left", (self.width, self.height)), ("right", (self.right_width, self.right_height))):
            if w and h and (w, h) != (width, height):
                return f"{side} camera_info is for {w}x{h} but the images are {width}x{height}"
        return None


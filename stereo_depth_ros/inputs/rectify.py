"""Rectification of raw camera images from their camera_info, as image_proc's rectify node does it. ROS-free.

Offers:
- `RectificationMap.from_camera_info(info)`: validates a camera_info and builds OpenCV's remap tables for it:
  `cv2.initUndistortRectifyMap` for `plumb_bob` and `rational_polynomial`, `cv2.fisheye.initUndistortRectifyMap`
  for `equidistant`, with K, D, R and the 3x3 part of P (the rectified camera). `apply(pixels)` rectifies an image
  ([H, W] or [H, W, C], any channel order, 8 or 16 bit) with bilinear interpolation, black outside the raw view;
  `rectified_info(header)` is the camera_info of the result: K and P from P, D zeros, R identity.
- `Rectifier`: one per camera; `rectify(pixels, info)` keeps the map of the last camera_info content (maps are
  built once, then reused frame after frame; a camera_info that cannot be used is remembered too, so a stream
  of it costs one validation, not one per frame). `builds` counts the maps built.
- `RectificationError` (a ValueError): one line naming the problem: an unsupported distortion model, too few or
  too many coefficients, a singular K, an R that is not a rotation, a P that is not 3x4 or has no focal length,
  a camera_info made for another image size, binning or a region of interest.

What the node chooses where camera_info allows more: the rectified image has the camera_info's width and height
(image_proc does the same); a camera_info with binning or a region of interest (ROI) is refused with a clear error
rather than half supported (no stock stereo driver sends them; rectify such streams with image_proc). A camera that
is already rectified (D all zero, R identity, K equal to P's 3x3) costs nothing: its pixels pass through.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

# Supported models and their numbers of coefficients (0: no distortion given).
DISTORTION_MODELS: dict[str, tuple[int, ...]] = {
    "plumb_bob": (0, 4, 5),
    "rational_polynomial": (0, 8),
    "equidistant": (0, 4),
}
IDENTITY9 = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
# How far R R^T may be from the identity: camera_calibration writes R with ~1e-9 error; a float32 round trip ~1e-7.
ROTATION_TOLERANCE = 1e-3


class RectificationError(ValueError):
    """A camera_info that cannot rectify the images it comes with."""


@dataclass(frozen=True)
class RectifiedCameraInfo:
    """The camera_info of a rectified image (a sensor_msgs/CameraInfo look-alike): K and P from the raw camera's
    P, no distortion, identity R. The header is the raw camera_info's."""

    header: Any
    width: int
    height: int
    k: tuple[float, ...]
    p: tuple[float, ...]
    d: tuple[float, ...] = (0.0,) * 5
    r: tuple[float, ...] = IDENTITY9
    distortion_model: str = "plumb_bob"
    binning_x: int = 0
    binning_y: int = 0


def _values(info: Any, name: str, count: int | None) -> np.ndarray:
    values = getattr(info, name, None)
    array = np.asarray([] if values is None else values, dtype=np.float64).reshape(-1)
    if count is not None and array.size != count:
        shape = {9: "3x3", 12: "3x4"}.get(count, str(count))
        raise RectificationError(f"camera_info {name.upper()} has {array.size} values, expected {count} ({shape})")
    if not np.isfinite(array).all():
        raise RectificationError(f"camera_info {name.upper()} has values that are not finite: {array.tolist()}")
    return array


def _check_binning_and_roi(info: Any, width: int, height: int) -> None:
    binning = (int(getattr(info, "binning_x", 0) or 0), int(getattr(info, "binning_y", 0) or 0))
    if max(binning) > 1:
        raise RectificationError(f"camera_info has binning {binning[0]}x{binning[1]}: the node does not rectify "
                                 "binned images (turn binning off in the driver, or rectify with image_proc)")
    roi = getattr(info, "roi", None)
    if roi is None:
        return
    box = (int(roi.x_offset), int(roi.y_offset), int(roi.width), int(roi.height))
    if box[:2] != (0, 0) or box[2:] not in ((0, 0), (width, height)):
        raise RectificationError(f"camera_info has a region of interest (x {box[0]}, y {box[1]}, {box[2]}x{box[3]} "
                                 "px): the node rectifies full images only (rectify with image_proc instead)")


@dataclass(frozen=True)
class RectificationMap:
    """The remap tables of one camera_info (None when the camera is already rectified) and its rectified info."""

    width: int
    height: int
    model: str
    rectified_k: tuple[float, ...]
    p: tuple[float, ...]
    map1: np.ndarray | None
    map2: np.ndarray | None

    @classmethod
    def from_camera_info(cls, info: Any) -> "RectificationMap":
        """Validate `info` and build its maps; RectificationError naming the first problem."""
        width, height = int(getattr(info, "width", 0) or 0), int(getattr(info, "height", 0) or 0)
        if width <= 0 or height <= 0:
            raise RectificationError(f"camera_info has no image size ({width}x{height}): an uncalibrated camera?")
        _check_binning_and_roi(info, width, height)
        model = str(getattr(info, "distortion_model", "") or "")
        d = _values(info, "d", None)
        if model == "" and not d.any():
            model = "plumb_bob"  # no model and no coefficients: a camera without distortion
        if model not in DISTORTION_MODELS:
            raise RectificationError(f"camera_info distortion model {model!r} is not supported; supported: "
                                     f"{', '.join(DISTORTION_MODELS)}")
        if d.size not in DISTORTION_MODELS[model]:
            raise RectificationError(f"camera_info D has {d.size} coefficients; {model} takes "
                                     f"{' or '.join(str(n) for n in DISTORTION_MODELS[model] if n)}")
        k = _values(info, "k", 9).reshape(3, 3)
        if k[0, 0] <= 0 or k[1, 1] <= 0 or abs(np.linalg.det(k)) < 1e-9:
            raise RectificationError(f"camera_info K is singular (fx {k[0, 0]:g}, fy {k[1, 1]:g}): an uncalibrated "
                                     "camera?")
        r = _values(info, "r", 9).reshape(3, 3)
        if not r.any():
            raise RectificationError("camera_info R is all zero: an uncalibrated camera? (a monocular camera has "
                                     "the identity)")
        if np.abs(r @ r.T - np.eye(3)).max() > ROTATION_TOLERANCE or np.linalg.det(r) < 0:
            raise RectificationError(f"camera_info R is not a rotation matrix: {np.round(r, 4).tolist()}")
        p = _values(info, "p", 12).reshape(3, 4)
        new_k = p[:, :3]
        if new_k[0, 0] <= 0 or new_k[1, 1] <= 0 or abs(np.linalg.det(new_k)) < 1e-9:
            raise RectificationError(f"camera_info P has no usable focal length (fx {new_k[0, 0]:g}, fy "
                                     f"{new_k[1, 1]:g}): an uncalibrated camera?")
        map1 = map2 = None
        already_rectified = not d.any() and np.array_equal(r, np.eye(3)) and np.allclose(k, new_k, rtol=0, atol=1e-9)
        if not already_rectified:
            if model == "equidistant":
                fisheye_d = d.reshape(1, 4) if d.size else np.zeros((1, 4))
                map1, map2 = cv2.fisheye.initUndistortRectifyMap(k, fisheye_d, r, new_k,
                                                                 (width, height), cv2.CV_16SC2)
            else:
                pinhole_d = d if d.size else np.zeros(5)
                map1, map2 = cv2.initUndistortRectifyMap(k, pinhole_d, r, new_k, (width, height), cv2.CV_16SC2)
        return cls(width, height, model, tuple(new_k.reshape(-1).tolist()), tuple(p.reshape(-1).tolist()),
                   map1, map2)

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """The rectified image (a new array; the input itself when the camera is already rectified)."""
        height, width = pixels.shape[:2]
        if (width, height) != (self.width, self.height):
            raise RectificationError(f"camera_info is for {self.width}x{self.height} images but the image is "
                                     f"{width}x{height}")
        if self.map1 is None:
            return pixels
        return cv2.remap(pixels, self.map1, self.map2, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)

    def rectified_info(self, header: Any) -> RectifiedCameraInfo:
        return RectifiedCameraInfo(header=header, width=self.width, height=self.height, k=self.rectified_k,
                                   p=self.p)


def _content_key(info: Any) -> tuple:
    roi = getattr(info, "roi", None)
    return (str(getattr(info, "distortion_model", "")), int(getattr(info, "width", 0) or 0),
            int(getattr(info, "height", 0) or 0), int(getattr(info, "binning_x", 0) or 0),
            int(getattr(info, "binning_y", 0) or 0),
            None if roi is None else (int(roi.x_offset), int(roi.y_offset), int(roi.width), int(roi.height)),
            *(_values_bytes(getattr(info, name, None)) for name in ("d", "k", "r", "p")))


def _values_bytes(values: Any) -> bytes:
    return np.asarray(() if values is None else values, np.float64).tobytes()


class Rectifier:
    """Rectifies one camera's images; the map of the last camera_info content is kept (see the module docstring)."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._map: RectificationMap | RectificationError | None = None
        self.builds = 0

    def map_for(self, info: Any) -> RectificationMap:
        key = _content_key(info)
        if key != self._key:
            self.builds += 1
            try:
                self._map = RectificationMap.from_camera_info(info)
            except RectificationError as exc:
                self._map = exc
            except cv2.error as exc:  # OpenCV refusing values the checks above let through
                self._map = RectificationError(f"camera_info cannot be rectified: {' '.join(str(exc).split())}")
            self._key = key
        if isinstance(self._map, RectificationError):
            raise self._map
        assert self._map is not None
        return self._map

    def rectify(self, pixels: np.ndarray, info: Any) -> tuple[np.ndarray, RectifiedCameraInfo]:
        """(rectified pixels, rectified camera_info); RectificationError naming the problem."""
        rectification = self.map_for(info)
        return rectification.apply(pixels), rectification.rectified_info(getattr(info, "header", None))

"""Stereo camera geometry, ROS-free: camera_info -> StereoCamera, disparity -> depth, points, DisparityImage values.

Offers:
- `StereoCamera.from_camera_info(left_info, right_info)`: focal length and baseline from the right projection
  (`f = P_right[0,0]`, `baseline = -P_right[0,3] / P_right[0,0]`), principal points from both; raises
  `CameraGeometryError` (a ValueError) for missing or degenerate projections.
- `StereoCamera.scaled(width, height)`: the same rig at another (working) resolution.
- `disparity_to_depth`: metres, NaN where the disparity is invalid, <= 0 or below the confidence threshold.
- `depth_to_points` and `pack_rgb` / `fill_pointcloud2`: an organised xyz+rgb cloud (PointCloud2 layout: x, y, z,
  rgb float32, point_step 16) built with array operations.
- `disparity_image_fields`: the values of a stereo_msgs/DisparityImage (f, t, min/max disparity, delta_d,
  valid window) and its disparity map in that message's convention.
- `resize_pair` / `disparity_to_camera`: run the network at a working resolution and bring the disparity back to
  camera pixels.

Messages are duck-typed (`.p`, `.k`, `.width`, `.height`); nothing here imports rclpy.

Principal points: with ROS rectification both cameras share cx and depth is `f * baseline / d`. When they differ
(verged rigs, Middlebury's `doffs`), depth is `f * baseline / (d + cx_right - cx_left)`, as image_geometry
computes it; the DisparityImage carries that shifted disparity so its consumers can use `Z = f * t / d`.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import cv2
import numpy as np

from stereo_depth_ros.image_conversion import array_to_image, byte_array


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
    width, height: the image size these values belong to (0 when the camera_info does not say).
    """

    fx: float
    fy: float
    cx: float
    cy: float
    baseline: float
    cx_right: float | None = None
    width: int = 0
    height: int = 0

    @property
    def doffs(self) -> float:
        """cx_right - cx_left: the disparity offset between the principal points (0 for ROS rectification)."""
        return 0.0 if self.cx_right is None else self.cx_right - self.cx

    @classmethod
    def from_camera_info(cls, left_info: Any, right_info: Any) -> "StereoCamera":
        """Geometry from the two rectified camera_info messages (P preferred; K when P is all zero for the left).

        Raises CameraGeometryError naming the problem: missing/zero/NaN projection, zero or NaN focal length,
        zero or NaN baseline (the right P has no translation: not a stereo camera_info pair).
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
        return cls(
            fx=fx,
            fy=fy,
            cx=float(intrinsics[0, 2]),
            cy=float(intrinsics[1, 2]),
            baseline=baseline,
            cx_right=cx_right,
            width=int(getattr(left_info, "width", 0) or 0),
            height=int(getattr(left_info, "height", 0) or 0),
        )

    def scaled(self, width: int, height: int) -> "StereoCamera":
        """The rig seen at width x height (a resize of the whole image). Needs width/height of this camera.

        Uses the pixel-centre convention of cv2.resize: u' = (u + 0.5) * s - 0.5.
        """
        if self.width <= 0 or self.height <= 0:
            raise CameraGeometryError("cannot scale a StereoCamera whose camera_info gave no width/height")
        sx, sy = width / self.width, height / self.height

        def along_x(u: float) -> float:
            return (u + 0.5) * sx - 0.5

        return replace(
            self,
            fx=self.fx * sx,
            fy=self.fy * sy,
            cx=along_x(self.cx),
            cy=(self.cy + 0.5) * sy - 0.5,
            cx_right=None if self.cx_right is None else along_x(self.cx_right),
            width=width,
            height=height,
        )


def disparity_to_depth(
    disparity: np.ndarray,
    camera: StereoCamera,
    confidence: np.ndarray | None = None,
    confidence_threshold: float = 0.0,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """float32 [H, W] depth in metres: f * baseline / (d + doffs); NaN where d is NaN, non-finite, or d + doffs <= 0,
    or where confidence < confidence_threshold (when both are given)."""
    d = np.asarray(disparity, dtype=np.float32)
    shifted = d + np.float32(camera.doffs) if camera.doffs else d
    if out is None:
        out = np.empty(d.shape, np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        np.divide(np.float32(camera.fx * camera.baseline), shifted, out=out)
    # NaN disparity already gave NaN. f * baseline > 0, so the other invalid inputs show up as depth <= 0
    # (negative, or infinite disparity) or inf (zero disparity); estimators rarely produce them, and a masked
    # write costs several times a comparison, so write only when there is something to fix.
    suspicious = out <= 0
    suspicious |= out == np.inf
    if suspicious.any():
        np.putmask(out, suspicious, np.float32(np.nan))
    if confidence is not None and confidence_threshold > 0.0:
        np.putmask(out, ~(confidence >= confidence_threshold), np.float32(np.nan))
    return out


class _Grid:
    """Cached pixel rays (u - cx) / fx and (v - cy) / fy for the last camera and size (swapped atomically)."""

    def __init__(self) -> None:
        self._entry: tuple | None = None

    def get(self, camera: StereoCamera, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        key = (camera.fx, camera.fy, camera.cx, camera.cy, height, width)
        entry = self._entry
        if entry is None or entry[0] != key:
            rays_x = (np.arange(width, dtype=np.float32) - np.float32(camera.cx)) / np.float32(camera.fx)
            rays_y = (np.arange(height, dtype=np.float32) - np.float32(camera.cy)) / np.float32(camera.fy)
            entry = (key, rays_x[None, :], rays_y[:, None])
            self._entry = entry
        return entry[1], entry[2]


_GRID = _Grid()


def depth_to_points(depth: np.ndarray, camera: StereoCamera, out: np.ndarray | None = None) -> np.ndarray:
    """float32 [H, W, 3] xyz in the left camera's optical frame (x right, y down, z forward), NaN where depth is.

    x = (u - cx) * z / fx, y = (v - cy) * z / fy (rectified cameras share fx, taken from the right projection).
    """
    height, width = depth.shape
    rays_x, rays_y = _GRID.get(camera, height, width)
    if out is None:
        out = np.empty((height, width, 3), np.float32)
    np.multiply(rays_x, depth, out=out[..., 0])
    np.multiply(rays_y, depth, out=out[..., 1])
    out[..., 2] = depth
    return out


def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] RGB -> float32 [H, W] holding 0xFFRRGGBB bit patterns (PCL's packed `rgb` field, alpha
    255 as PCL's PointXYZRGB sets it). Little-endian B, G, R, A bytes are exactly OpenCV's BGRA pixel."""
    bgra = cv2.cvtColor(np.ascontiguousarray(rgb, dtype=np.uint8), cv2.COLOR_RGB2BGRA)
    if np.little_endian:
        return bgra.view(np.float32)[..., 0]
    return np.ascontiguousarray(bgra[..., ::-1]).view(np.float32)[..., 0]


# PointCloud2 layout: (name, byte offset, PointField.FLOAT32 == 7, count)
POINT_FIELDS: tuple[tuple[str, int, int, int], ...] = (
    ("x", 0, 7, 1), ("y", 4, 7, 1), ("z", 8, 7, 1), ("rgb", 12, 7, 1))
POINT_STEP = 16


def cloud_array(depth: np.ndarray, camera: StereoCamera, rgb: np.ndarray | None = None) -> np.ndarray:
    """float32 [H, W, 4] (x, y, z, packed rgb) laid out exactly as the PointCloud2 data (point_step 16).

    Points where depth is NaN have NaN x, y, z (their colour is kept: an organised cloud keeps every pixel).
    rgb: uint8 [H, W, 3] of the same size, or None for white.
    """
    depth = np.ascontiguousarray(depth, dtype=np.float32)
    height, width = depth.shape
    rays_x, rays_y = _GRID.get(camera, height, width)
    if rgb is None:
        packed = np.full((height, width), np.array([0xFFFFFFFF], np.uint32).view(np.float32)[0], np.float32)
    else:
        if rgb.shape[:2] != depth.shape:
            raise ValueError(f"colour image {rgb.shape[:2]} and depth {depth.shape} differ in size")
        packed = np.ascontiguousarray(pack_rgb(rgb))
    # Planar maths, then one interleaving pass: several times faster than writing strided channels.
    return cv2.merge([rays_x * depth, rays_y * depth, depth, packed])


def fill_pointcloud2(msg: Any, cloud: np.ndarray, point_field_type: Any) -> Any:
    """Write a `cloud_array` result into a PointCloud2 `msg` (header left to the caller). Build `msg` with
    `PointCloud2(check_fields=True)` to save rclpy's second copy of the data (see image_conversion.byte_array).

    point_field_type: the PointField message class (passed in so that this module needs no ROS import).
    """
    height, width, channels = cloud.shape
    if channels != 4 or cloud.dtype != np.float32:
        raise ValueError(f"expected a float32 [H, W, 4] cloud, got {cloud.dtype} {cloud.shape}")
    msg.height = height
    msg.width = width
    msg.fields = [point_field_type(name=n, offset=o, datatype=t, count=c) for n, o, t, c in POINT_FIELDS]
    msg.is_bigendian = False
    msg.point_step = POINT_STEP
    msg.row_step = POINT_STEP * width
    msg.is_dense = False
    msg.data = byte_array(cloud)
    return msg


@dataclass(frozen=True)
class DisparityImageFields:
    """Values of a stereo_msgs/DisparityImage besides its header.

    image: float32 [H, W] disparity in the message's convention (d + doffs; invalid = min_disparity - 1, as
    stereo_image_proc marks it, so that its point-cloud consumers skip those pixels).
    valid_window: (x_offset, y_offset, width, height) bounding the valid pixels ((0, 0, 0, 0) when none).
    """

    image: np.ndarray
    f: float
    t: float
    min_disparity: float
    max_disparity: float
    delta_d: float
    valid_window: tuple[int, int, int, int]


def disparity_image_fields(disparity: np.ndarray, camera: StereoCamera | None, max_disparity: float,
                           delta_d: float = 1.0 / 16.0, invalid: np.ndarray | None = None) -> DisparityImageFields:
    """DisparityImage values for a left-view disparity map (NaN = invalid; the estimators return d > 0 or NaN).

    camera None (no camera_info yet) gives f = t = 0 and no principal-point shift. min_disparity is 0 (the
    estimators search 0..max_disparity), max_disparity the search range; `invalid` an optional extra mask.
    """
    d = np.asarray(disparity, dtype=np.float32)
    doffs = camera.doffs if camera is not None else 0.0
    min_disparity = 0.0 + doffs
    if invalid is not None:
        d = np.where(invalid, np.float32(np.nan), d)
    valid = np.isfinite(d)
    # fmax skips NaN, so one vectorised pass marks every NaN (and any value below min_disparity - 1) invalid.
    image = np.fmax(d + np.float32(doffs) if doffs else d, np.float32(min_disparity - 1.0))
    rows = np.flatnonzero(valid.any(axis=1))
    cols = np.flatnonzero(valid.any(axis=0))
    if rows.size:
        window = (int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1))
    else:
        window = (0, 0, 0, 0)
    return DisparityImageFields(
        image=image,
        f=0.0 if camera is None else float(camera.fx),
        t=0.0 if camera is None else float(camera.baseline),
        min_disparity=float(min_disparity),
        max_disparity=float(max_disparity + doffs),
        delta_d=float(delta_d),
        valid_window=window,
    )


def fill_disparity_image(msg: Any, fields: DisparityImageFields) -> Any:
    """Write DisparityImageFields into a stereo_msgs/DisparityImage `msg` (its headers are the caller's)."""
    array_to_image(fields.image, "32FC1", msg.image)
    msg.f = fields.f
    msg.t = fields.t
    msg.min_disparity = fields.min_disparity
    msg.max_disparity = fields.max_disparity
    msg.delta_d = fields.delta_d
    x, y, w, h = fields.valid_window
    msg.valid_window.x_offset = x
    msg.valid_window.y_offset = y
    msg.valid_window.width = w
    msg.valid_window.height = h
    return msg


# ---- working resolution --------------------------------------------------------------------------------------

def working_size(width: int, height: int, input_width: int, input_height: int) -> tuple[int, int]:
    """(width, height) the estimator runs at: the camera's when input_width/input_height are 0."""
    if input_width <= 0 or input_height <= 0:
        return width, height
    return input_width, input_height


def resize_pair(left: np.ndarray, right: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize both RGB images to width x height (area filter when shrinking); unchanged when already that size."""
    if left.shape[1] == width and left.shape[0] == height:
        return left, right
    interp = cv2.INTER_AREA if width < left.shape[1] else cv2.INTER_LINEAR
    return (cv2.resize(left, (width, height), interpolation=interp),
            cv2.resize(right, (width, height), interpolation=interp))


def disparity_to_camera(disparity: np.ndarray, width: int, height: int,
                        confidence: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Bring a working-resolution disparity (and confidence) back to the camera's width x height.

    Disparity is a horizontal distance, so its values scale by width / working width. Nearest-neighbour keeps
    NaN holes from bleeding into their neighbours and keeps depth edges sharp.
    """
    h, w = disparity.shape
    if (w, h) == (width, height):
        return disparity, confidence
    scale = np.float32(width / w)
    resized = cv2.resize(disparity, (width, height), interpolation=cv2.INTER_NEAREST) * scale
    if confidence is not None:
        confidence = cv2.resize(confidence, (width, height), interpolation=cv2.INTER_NEAREST)
    return resized, confidence

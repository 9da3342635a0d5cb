"""From an estimate to message-ready outputs: one definition of the post-processing over numpy and torch arrays.

`postprocess(disparity, confidence, rgb, camera, request, ...)` computes, once per frame and only for the outputs
requested: the valid mask (disparity + doffs > 0, finite, and confidence >= threshold when one is set), the
valid share and window, the DisparityImage map (d + doffs, invalid = min_disparity - 1 as stereo_image_proc marks
it), depth (f * baseline / (d + doffs), NaN where invalid: REP 118), the organised point cloud (x, y, z, packed rgb
float32, the PointCloud2 layout of `messages.py`) and the confidence. `rescale` brings a working-size estimate to
camera pixels first.

Array kinds. The definition below is written once, against a handful of array operations (`array_ops`) picked
by the kind of the disparity: numpy arrays (the CPU backends) or torch tensors (a torch backend that keeps its
outputs on the GPU, contract 1 in TEAM.md). With numpy every result is written straight into the message buffers
(`MessageBuffer`: an array.array that rclpy keeps without copying, reused frame after frame), band by band; with
torch the results stay on the device and each published output crosses to its host buffer once.
"""
from __future__ import annotations

import array
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from stereo_depth_ros.array_ops import array_ops
from stereo_depth_ros.camera_geometry import StereoCamera

# stereo_image_proc's DisparityImage.delta_d: the estimators' disparity is sub-pixel.
DELTA_D = 1.0 / 16.0
WHITE = np.array([0xFFFFFFFF], np.uint32).view(np.float32)[0]


@dataclass(frozen=True)
class OutputRequest:
    """Which outputs a frame needs (the node asks for those with a subscriber)."""

    disparity: bool = True
    depth: bool = True
    points: bool = True
    confidence: bool = True

    def any(self) -> bool:
        return self.disparity or self.depth or self.points or self.confidence


class MessageBuffer:
    """A host buffer laid out as a message's data: `data` (array.array('B'), what rclpy stores as is in a message
    built with check_fields=True) and `array`, a writable numpy view of it with the output's shape and dtype."""

    def __init__(self, shape: tuple[int, ...], dtype: Any = np.float32) -> None:
        dtype = np.dtype(dtype)
        self.data = array.array("B", bytes(int(np.prod(shape)) * dtype.itemsize))
        self.array = np.frombuffer(self.data, dtype).reshape(shape)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.array.shape


class OutputBuffers:
    """Message buffers and scratch planes for one image size, reused across frames (allocated on first use).

    An output of one frame is valid until the next `postprocess` call with the same buffers: publish it (rclpy's
    publish copies) or copy it before processing the next frame.
    """

    def __init__(self, height: int, width: int) -> None:
        self.height, self.width = height, width
        self._buffers: dict[str, Any] = {}

    def message(self, name: str, channels: int = 1) -> MessageBuffer:
        buffer = self._buffers.get(name)
        if buffer is None:
            shape = (self.height, self.width) if channels == 1 else (self.height, self.width, channels)
            buffer = self._buffers[name] = MessageBuffer(shape)
        return buffer

    def scratch(self, name: str, dtype: Any, rows: int, channels: int = 1) -> np.ndarray:
        """A scratch array of `rows` x width (x channels), reused; its first `rows` rows are returned."""
        array_ = self._buffers.get(name)
        if array_ is None or array_.shape[0] < rows:
            shape = (rows, self.width) if channels == 1 else (rows, self.width, channels)
            array_ = self._buffers[name] = np.empty(shape, dtype)
        return array_[:rows]


@dataclass
class Postprocessed:
    """The outputs of one frame, at camera size. Message fields of the DisparityImage besides its map; buffers
    are None for outputs not requested (depth and points also without a camera geometry)."""

    valid_share: float
    valid_window: tuple[int, int, int, int]  # x_offset, y_offset, width, height; zeros when nothing is valid
    f: float
    t: float
    min_disparity: float
    max_disparity: float
    delta_d: float = DELTA_D
    disparity: MessageBuffer | None = None  # float32 [H, W]: d + doffs, invalid = min_disparity - 1
    depth: MessageBuffer | None = None  # float32 [H, W] metres, NaN where invalid
    points: MessageBuffer | None = None  # float32 [H, W, 4]: x, y, z, packed rgb
    confidence: MessageBuffer | None = None  # float32 [H, W] in 0..1
    # Share of all pixels with a valid disparity and confidence >= `confident_at` (postprocess's argument); None
    # when not asked for. Without a confidence map every valid pixel counts as confident.
    confident_share: float | None = None


def pack_rgb(rgb: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 [H, W, 3] RGB -> float32 [H, W] holding 0xFFRRGGBB bit patterns (PCL's packed `rgb` field, alpha
    255 as PCL's PointXYZRGB sets it). Little-endian B, G, R, A bytes are exactly OpenCV's BGRA pixel.
    out: optional uint8 [H, W, 4] scratch reused for the BGRA pixels."""
    bgra = cv2.cvtColor(np.ascontiguousarray(rgb, dtype=np.uint8), cv2.COLOR_RGB2BGRA, dst=out)
    if np.little_endian:
        return bgra.view(np.float32)[..., 0]
    return np.ascontiguousarray(bgra[..., ::-1]).view(np.float32)[..., 0]


def rescale(disparity: Any, confidence: Any, width: int, height: int) -> tuple[Any, Any]:
    """Bring a working-size disparity (and confidence) to the camera's width x height.

    Disparity is a horizontal distance, so its values scale by width / working width. Nearest-neighbour keeps
    NaN holes from bleeding into their neighbours and keeps depth edges sharp.
    """
    h, w = disparity.shape
    if (w, h) == (width, height):
        return disparity, confidence
    ops = array_ops(disparity)
    disparity = ops.rescale(disparity, width, height, width / w)
    if confidence is not None:
        confidence = ops.rescale(confidence, width, height, 1.0)
    return disparity, confidence


class _RayCache:
    """Pixel rays (u - cx) / fx and (v - cy) / fy for the last camera, size and array kind (swapped atomically)."""

    def __init__(self) -> None:
        self._entry: tuple | None = None

    def get(self, ops: Any, camera: StereoCamera, height: int, width: int, like: Any) -> tuple[Any, Any]:
        key = (id(ops), getattr(like, "device", None), camera.fx, camera.fy, camera.cx, camera.cy, height, width)
        entry = self._entry
        if entry is None or entry[0] != key:
            entry = (key, ops.rays(camera, height, width, like))
            self._entry = entry
        return entry[1]


def postprocess(disparity: Any, confidence: Any, rgb: np.ndarray | None, camera: StereoCamera | None,
                request: OutputRequest, buffers: OutputBuffers, *, confidence_threshold: float = 0.0,
                disparity_range: float = 0.0, rays: _RayCache | None = None,
                confident_at: float | None = None) -> Postprocessed:
    """Outputs of one frame from its camera-size disparity (numpy or torch, NaN where invalid).

    camera: None gives disparity only (f = t = 0, no depth or points). rgb: uint8 [H, W, 3] left image for the
    cloud's colours (None: white). disparity_range: the range searched, in camera pixels (for max_disparity).
    Each mask is computed once; outputs not requested are not computed. confident_at: also count the confident
    share at this confidence (for the node's hard-pair capture).
    """
    ops = array_ops(disparity)
    height, width = disparity.shape
    offset = camera.doffs if camera is not None else 0.0
    geometric = camera is not None and (request.depth or request.points)
    wanted = {"disparity": request.disparity or geometric, "depth": geometric,
              "points": geometric and request.points, "confidence": request.confidence and confidence is not None}
    out = {name: buffers.message(name, channels=4 if name == "points" else 1)
           for name, on in wanted.items() if on}
    ray_planes = None
    if wanted["points"]:
        assert camera is not None
        ray_planes = (rays or _RayCache()).get(ops, camera, height, width, disparity)
    count, confident, x0, y0, x1, y1 = 0, 0, width, height, -1, -1
    results: dict[str, Any] = {}
    for band in ops.bands(height, width):
        views = {name: buffer.array[band] for name, buffer in out.items()}
        band_count, (bx, by, bw, bh), band_confident = _postprocess_band(
            ops, band, disparity[band], None if confidence is None else confidence[band],
            None if rgb is None else rgb[band], camera, request, buffers, views, results,
            confidence_threshold, None if ray_planes is None else (ray_planes[0], ray_planes[1][band]), confident_at)
        confident += band_confident
        if band_count:
            count += band_count
            x0, x1 = min(x0, bx), max(x1, bx + bw - 1)
            y0, y1 = min(y0, band.start + by), max(y1, band.start + by + bh - 1)
    window = (x0, y0, x1 - x0 + 1, y1 - y0 + 1) if count else (0, 0, 0, 0)
    result = Postprocessed(
        valid_share=count / float(height * width), valid_window=window,
        f=0.0 if camera is None else float(camera.fx), t=0.0 if camera is None else float(camera.baseline),
        min_disparity=float(offset), max_disparity=float(disparity_range + offset),
        confident_share=None if confident_at is None else confident / float(height * width))
    for name, values in results.items():
        if name == "disparity" and not request.disparity:
            continue  # computed as depth's denominator only
        ops.to_host(values, out[name])
        setattr(result, name, out[name])
    return result


def _postprocess_band(ops: Any, band: slice, disparity: Any, confidence: Any, rgb: np.ndarray | None,
                      camera: StereoCamera | None, request: OutputRequest, buffers: OutputBuffers,
                      out: dict[str, np.ndarray], results: dict[str, Any], threshold: float,
                      rays: tuple[Any, Any] | None,
                      confident_at: float | None) -> tuple[int, tuple[int, int, int, int], int]:
    """The definition, for the rows of one band (the whole image on a device): fills `results` with the band's
    outputs (numpy: written into `out`'s message views; torch: device tensors) and returns (count, window,
    confident count: 0 unless confident_at is given)."""
    offset = camera.doffs if camera is not None else 0.0
    valid = ops.valid_mask(disparity, offset, confidence, threshold, buffers)
    count, window = ops.count_and_window(valid)
    if "disparity" in out:
        # d + doffs where valid, NaN elsewhere: the disparity map's values and depth's denominator in one pass.
        # With numpy it is written straight into the disparity message buffer (its NaNs get the marker last).
        shifted = ops.shifted_or_nan(valid, disparity, offset, out["disparity"])
        if "depth" in out:
            assert camera is not None
            depth = results["depth"] = ops.divide(camera.fx * camera.baseline, shifted, out["depth"])
            if "points" in out:
                assert rays is not None
                if rgb is None:
                    packed = np.full(disparity.shape, WHITE, np.float32)
                else:
                    packed = pack_rgb(rgb, out=buffers.scratch("bgra", np.uint8, rgb.shape[0], channels=4))
                results["points"] = ops.cloud(depth, rays, ops.colours(packed, disparity), buffers, out["points"])
        results["disparity"] = ops.replace_nan(shifted, offset - 1.0, out["disparity"])
    if "confidence" in out:
        results["confidence"] = ops.copy(confidence, out["confidence"])
    confident = 0
    if confident_at is not None:
        if confidence is None or (threshold > 0.0 and confident_at == threshold):
            confident = count  # the valid mask above is this mask already
        else:  # `valid` is no longer needed: its scratch may be reused
            confident, _ = ops.count_and_window(ops.valid_mask(disparity, offset, confidence, confident_at, buffers))
    return count, window, confident


def _published(ops: Any, values: Any, buffer: MessageBuffer) -> MessageBuffer:
    ops.to_host(values, buffer)
    return buffer

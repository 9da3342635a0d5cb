"""The array operations behind `postprocess`: one small table for numpy (+ OpenCV), one for torch tensors.

`array_ops(values)` picks the table by the kind of `values`; torch is imported only when a tensor arrives, so the
CPU backends never load it. Both tables offer the same operations with the same meaning; the numpy one writes into
the caller's buffers (`out`), the torch one returns device tensors that `to_host` copies into them once.

Why an in-house dispatch of a dozen operations rather than the array API (array-api-compat): the standard has no
`out=` arguments, so every step would allocate a fresh array and each output would need one more copy into its
message buffer, and it has no equivalent of the OpenCV kernels (masked copy, channel interleave, bounding box,
NaN patching) that keep the numpy path within the node's budget of 1 ms per 640x480 frame. Measured on this
sequence (CPU time, 2 shared cores, numpy 2.4, array-api-compat 1.16 written the array-API way: xp.where,
xp.stack, then a copy into the message buffers): 2.4 ms vs 0.70 ms at 640x480, 8.0 ms vs 3.1 ms at 1280x720.
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from stereo_depth_ros.camera_geometry import StereoCamera

if TYPE_CHECKING:
    from stereo_depth_ros.postprocess import MessageBuffer, OutputBuffers

NAN32 = np.float32(np.nan)
# Pixels per band of the numpy path (see _NumpyOps.bands): ~60 bytes a pixel, ~4 MB per band, within the L2/L3
# of common CPUs. Measured with bench/node.py (frames cache-cold, as in the node): 2^16 best by a little, 2^14
# loses to per-call overhead, one band (no banding) to memory traffic.
BAND_PIXELS = 1 << 16


def nearest_source_indices(src: int, dst: int) -> np.ndarray:
    """Source index of each of `dst` output pixels along one axis, as OpenCV's INTER_NEAREST computes it
    (resizeNN): floor(i * (1 / (dst / src))) in double precision, clamped to the image. torch's "nearest" uses a
    float32 scale instead and picks other pixels for many size pairs (416 -> 640, 576 -> 640, 384 -> 848...)."""
    inverse_scale = 1.0 / (dst / src)  # OpenCV's ifx = 1 / fx with fx = dsize / ssize: not always src / dst
    return np.minimum(np.floor(np.arange(dst, dtype=np.float64) * inverse_scale), src - 1).astype(np.int64)


def is_torch(value: Any) -> bool:
    return type(value).__module__.startswith("torch")


class _NumpyOps:
    """numpy + OpenCV, writing into the caller's buffers (`out`); every operation is one vectorised pass."""

    def valid_mask(self, disparity: np.ndarray, offset: float, confidence: np.ndarray | None, threshold: float,
                   buffers: OutputBuffers) -> np.ndarray:
        rows = disparity.shape[0]
        valid = buffers.scratch("valid", np.bool_, rows)
        scratch = buffers.scratch("scratch_mask", np.bool_, rows)
        np.isfinite(disparity, out=valid)
        np.greater(disparity, np.float32(-offset), out=scratch)  # NaN compares False
        valid &= scratch
        if confidence is not None and threshold > 0.0:
            np.greater_equal(confidence, np.float32(threshold), out=scratch)
            valid &= scratch
        return valid

    def count_and_window(self, valid: np.ndarray) -> tuple[int, tuple[int, int, int, int]]:
        mask = valid.view(np.uint8)
        x, y, w, h = cv2.boundingRect(mask)
        return cv2.countNonZero(mask), (int(x), int(y), int(w), int(h))

    def shifted_or_nan(self, valid: np.ndarray, disparity: np.ndarray, offset: float, out: np.ndarray) -> np.ndarray:
        out.fill(NAN32)
        cv2.copyTo(disparity, valid.view(np.uint8), dst=out)
        if offset:
            np.add(out, np.float32(offset), out=out)
        return out

    def divide(self, numerator: float, values: np.ndarray, out: np.ndarray) -> np.ndarray:
        return np.divide(np.float32(numerator), values, out=out)  # NaN stays NaN; values > 0 elsewhere

    def replace_nan(self, values: np.ndarray, fill: float, out: np.ndarray) -> np.ndarray:
        if out is not values:
            np.copyto(out, values)
        cv2.patchNaNs(out, fill)
        return out

    def cloud(self, depth: np.ndarray, rays: tuple[np.ndarray, np.ndarray], packed: np.ndarray,
              buffers: OutputBuffers, out: np.ndarray) -> np.ndarray:
        rows = depth.shape[0]
        x, y = buffers.scratch("x", np.float32, rows), buffers.scratch("y", np.float32, rows)
        np.multiply(rays[0], depth, out=x)
        np.multiply(rays[1], depth, out=y)
        # Planar maths, then one interleaving pass: several times faster than writing strided channels.
        cv2.merge([x, y, depth, packed], dst=out)
        return out

    def rays(self, camera: StereoCamera, height: int, width: int, like: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rays_x = (np.arange(width, dtype=np.float32) - np.float32(camera.cx)) / np.float32(camera.fx)
        rays_y = (np.arange(height, dtype=np.float32) - np.float32(camera.cy)) / np.float32(camera.fy)
        # A row and a column (broadcast): full planes would be more memory traffic than the maths saves.
        return rays_x[None, :], rays_y[:, None]

    def bands(self, height: int, width: int) -> list[slice]:
        """Row bands small enough that one band's inputs, scratch and outputs stay in the CPU's cache: the
        sequence is memory-bound (some 60 bytes a pixel move), and a whole frame pass after pass would stream
        about twice the memory traffic."""
        rows = max(1, BAND_PIXELS // max(width, 1))
        return [slice(start, min(start + rows, height)) for start in range(0, height, rows)]

    def colours(self, packed: np.ndarray, like: np.ndarray) -> np.ndarray:
        return packed

    def copy(self, values: np.ndarray, out: np.ndarray) -> np.ndarray:
        np.copyto(out, values)
        return out

    def to_host(self, values: np.ndarray, buffer: MessageBuffer) -> None:
        pass  # every operation above already wrote into the message buffer (band by band)

    def rescale(self, values: np.ndarray, width: int, height: int, factor: float) -> np.ndarray:
        resized = cv2.resize(values, (width, height), interpolation=cv2.INTER_NEAREST)
        if factor != 1.0:
            np.multiply(resized, np.float32(factor), out=resized)
        return resized


class _TorchOps:
    """The same operations on torch tensors (on their device); results are device tensors until `to_host`."""

    def __init__(self) -> None:
        import torch

        self.torch = torch

    def valid_mask(self, disparity: Any, offset: float, confidence: Any, threshold: float,
                   buffers: OutputBuffers) -> Any:
        valid = self.torch.isfinite(disparity) & (disparity > -offset)
        if confidence is not None and threshold > 0.0:
            valid &= confidence >= threshold
        return valid

    def count_and_window(self, valid: Any) -> tuple[int, tuple[int, int, int, int]]:
        rows = self.torch.nonzero(valid.any(dim=1)).flatten()
        if rows.numel() == 0:
            return 0, (0, 0, 0, 0)
        cols = self.torch.nonzero(valid.any(dim=0)).flatten()
        y0, y1, x0, x1 = (int(v) for v in (rows[0], rows[-1], cols[0], cols[-1]))
        return int(valid.sum()), (x0, y0, x1 - x0 + 1, y1 - y0 + 1)

    def shifted_or_nan(self, valid: Any, disparity: Any, offset: float, out: np.ndarray) -> Any:
        shifted = disparity + float(np.float32(offset)) if offset else disparity
        return self.torch.where(valid, shifted, self.torch.full_like(disparity, float("nan")))

    def divide(self, numerator: float, values: Any, out: np.ndarray) -> Any:
        return float(np.float32(numerator)) / values

    def replace_nan(self, values: Any, fill: float, out: np.ndarray) -> Any:
        return self.torch.nan_to_num(values, nan=float(np.float32(fill)))

    def cloud(self, depth: Any, rays: tuple[Any, Any], packed: Any, buffers: OutputBuffers, out: np.ndarray) -> Any:
        return self.torch.stack([rays[0] * depth, rays[1] * depth, depth, packed], dim=-1)

    def bands(self, height: int, width: int) -> list[slice]:
        return [slice(0, height)]  # one launch per operation on the device

    def rays(self, camera: StereoCamera, height: int, width: int, like: Any) -> tuple[Any, Any]:
        torch = self.torch
        kw = {"dtype": torch.float32, "device": like.device}
        rays_x = (torch.arange(width, **kw) - float(np.float32(camera.cx))) / float(np.float32(camera.fx))
        rays_y = (torch.arange(height, **kw) - float(np.float32(camera.cy))) / float(np.float32(camera.fy))
        return rays_x[None, :], rays_y[:, None]

    def colours(self, packed: np.ndarray, like: Any) -> Any:
        return self.torch.from_numpy(np.ascontiguousarray(packed)).to(like.device)

    def copy(self, values: Any, out: np.ndarray) -> Any:
        return values

    def to_host(self, values: Any, buffer: MessageBuffer) -> None:
        # The one crossing of this output to the host, straight into its message buffer.
        self.torch.from_numpy(buffer.array).copy_(values)

    def rescale(self, values: Any, width: int, height: int, factor: float) -> Any:
        rows = _nearest_index_tensor(values.shape[0], height, str(values.device))
        cols = _nearest_index_tensor(values.shape[1], width, str(values.device))
        resized = values.index_select(0, rows).index_select(1, cols)  # the pixels cv2.resize(INTER_NEAREST) picks
        return resized * float(np.float32(factor)) if factor != 1.0 else resized


@functools.lru_cache(maxsize=8)  # a stream keeps one (working, camera) size pair
def _nearest_index_tensor(src: int, dst: int, device: str) -> Any:
    import torch

    return torch.from_numpy(nearest_source_indices(src, dst)).to(device)


_NUMPY_OPS = _NumpyOps()
_TORCH_OPS: list[_TorchOps] = []


def array_ops(values: Any) -> Any:
    """The operations for the kind of `values` (numpy array or torch tensor); torch is imported only for tensors."""
    if isinstance(values, np.ndarray):
        return _NUMPY_OPS
    if is_torch(values):
        if not _TORCH_OPS:
            _TORCH_OPS.append(_TorchOps())
        return _TORCH_OPS[0]
    raise TypeError(f"expected a numpy array or a torch tensor, got {type(values).__name__}")

"""Getting a stereo pair onto the device at the network's working size.

`PairUploader` copies both images into one reused host buffer ([2, H, W, 3], page-locked on CUDA) and from there
with one non-blocking copy into a reused device buffer: no allocation per frame, and the copy overlaps whatever
the device is still doing. The copy and the event that marks its end are on the current stream of the uploader's
own device (`cuda:1` included), which is made current for them. `resize_pair_on_device` then converts to float
and resizes on the device.

The resize is OpenCV's, written as two small matrix products, because OpenCV cannot run on the device and the
device path must give the network the same input as the host path (`resize_pair` of the estimator base: INTER_AREA
when shrinking, INTER_LINEAR otherwise). torch's own `interpolate(mode="area")` averages whole pixels and so differs
from INTER_AREA whenever the ratio is not an integer (e.g. 720 -> 480 rows).
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch

from stereo_depth_ros.inference.capture import device_context


class PairUploader:
    """Reused host and device buffers for one pair; reallocated only when the image size or dtype changes."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self._host: torch.Tensor | None = None
        self._device: torch.Tensor | None = None
        self._copied: torch.cuda.Event | None = None  # the last host -> device copy
        self.allocations = 0  # buffer (re)allocations so far; stays 1 while the size does not change

    def upload(self, left: np.ndarray, right: np.ndarray) -> torch.Tensor:
        """left, right: [H, W, 3] uint8 (float inputs become float32) -> [2, H, W, 3] on the device."""
        if left.shape != right.shape:
            raise ValueError(f"left {left.shape} and right {right.shape} differ in shape")
        if left.ndim != 3 or left.shape[2] != 3:
            raise ValueError(f"expected RGB images [H, W, 3], got shape {left.shape}")
        dtype = np.uint8 if left.dtype == np.uint8 and right.dtype == np.uint8 else np.float32
        shape = (2, *left.shape)
        if self._host is None or tuple(self._host.shape) != shape or self._host.numpy().dtype != dtype:
            self._host, self._device = self._allocate(shape, torch.uint8 if dtype == np.uint8 else torch.float32)
            self._copied = None
            self.allocations += 1
        if self._copied is not None:
            # the previous frame's copy may still be reading the host buffer: wait for it before overwriting
            self._copied.synchronize()
        host = self._host.numpy()
        np.copyto(host[0], left, casting="unsafe")
        np.copyto(host[1], right, casting="unsafe")
        assert self._device is not None
        if self.cuda:
            with device_context(self.device):
                self._device.copy_(self._host, non_blocking=True)
                self._copied = torch.cuda.Event()
                self._copied.record(torch.cuda.current_stream(self.device))
        return self._device

    def _allocate(self, shape: tuple[int, ...], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(host buffer, device buffer) for one pair; the same tensor off CUDA."""
        host = torch.empty(shape, dtype=dtype, pin_memory=self.cuda)
        if not self.cuda:
            return host, host
        with device_context(self.device):
            return host, torch.empty(shape, dtype=dtype, device=self.device)


def resize_pair_on_device(pair: torch.Tensor, width: int, height: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[2, H, W, 3] images (any dtype, 0..255) -> left, right float32 [1, 3, height, width] on the same device.

    Same sampling as the host path's `resize_pair` with OpenCV: INTER_AREA when the width shrinks, otherwise
    INTER_LINEAR; unchanged size is a plain conversion. Equal to OpenCV on float input up to float rounding; on
    uint8 input OpenCV rounds its result (and uses fixed-point weights when enlarging), so the two differ by less
    than one grey level.
    """
    images = pair.permute(0, 3, 1, 2).float()
    src_h, src_w = images.shape[-2:]
    if (src_h, src_w) != (height, width):
        if width >= src_w:
            kind = "linear"
        else:  # OpenCV's INTER_AREA averages only when no axis grows; otherwise it uses its own linear variant
            kind = "area" if height <= src_h else "area_zoom"
        rows = _resize_matrix(src_h, height, kind, str(pair.device))
        cols = _resize_matrix(src_w, width, kind, str(pair.device))
        images = torch.matmul(torch.matmul(rows, images), cols.T)
    return images[0:1].contiguous(), images[1:2].contiguous()


@functools.lru_cache(maxsize=16)
def _resize_matrix(src: int, dst: int, kind: str, device: str) -> torch.Tensor:
    """[dst, src] float32 weights of one axis (cached: a stream keeps one size)."""
    weights = {"area": area_weights, "area_zoom": area_zoom_weights, "linear": linear_weights}[kind](src, dst)
    return torch.from_numpy(weights.astype(np.float32)).to(device)


def area_weights(src: int, dst: int) -> np.ndarray:
    """OpenCV INTER_AREA when shrinking: output i averages the source interval [i*s, (i+1)*s), s = src/dst, each
    source pixel weighted by the length of its overlap with the interval."""
    scale = src / dst
    weights = np.zeros((dst, src), np.float64)
    for i in range(dst):
        start, stop = i * scale, (i + 1) * scale
        for j in range(int(math.floor(start)), min(src, int(math.ceil(stop)))):
            weights[i, j] = (min(stop, j + 1) - max(start, j)) / scale
    return weights


def linear_weights(src: int, dst: int) -> np.ndarray:
    """OpenCV INTER_LINEAR: output i samples source x = (i + 0.5) * src/dst - 0.5, clamped to the image."""
    scale = src / dst
    weights = np.zeros((dst, src), np.float64)
    for i in range(dst):
        x = (i + 0.5) * scale - 0.5
        x0 = int(math.floor(x))
        frac = x - x0
        if x0 < 0:
            x0, frac = 0, 0.0
        if x0 >= src - 1:
            x0, frac = src - 1, 0.0
        weights[i, x0] += 1.0 - frac
        if frac:
            weights[i, x0 + 1] += frac
    return weights


def area_zoom_weights(src: int, dst: int) -> np.ndarray:
    """OpenCV INTER_AREA when some axis grows: a linear interpolation whose fraction is the overlap of output
    pixel i with source pixel floor(i*s) (sharper than INTER_LINEAR), indices clamped to the image."""
    scale, inverse = src / dst, dst / src
    weights = np.zeros((dst, src), np.float64)
    for i in range(dst):
        x0 = int(math.floor(i * scale))
        frac = (i + 1) - (x0 + 1) * inverse
        frac = 0.0 if frac <= 0 else frac - math.floor(frac)
        weights[i, min(max(x0, 0), src - 1)] += 1.0 - frac
        weights[i, min(x0 + 1, src - 1)] += frac
    return weights

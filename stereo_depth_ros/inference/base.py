"""The estimator interface shared by the node, the demo and the offline evaluation.

An estimator takes one rectified pair as numpy RGB images and returns the left-view disparity in pixels of the
image it was given. Backends live in their own modules and are imported lazily by `create_estimator`, so that
the SGBM baseline works on a machine without torch or onnxruntime.

Per-frame contract (TEAM.md, contract 1):
- `estimate_at(left, right, width, height)`: run at a working size and return the disparity at that size, in
  working-size pixels. The base class resizes with OpenCV; a backend may do it on its device instead.
- `iters`: refinement iterations (None = the model's default), settable between frames. Backends without
  iterations (`has_iterations = False`) keep None; backends whose count is fixed when built
  (`iters_fixed = True`, an ONNX export) refuse any other value with ValueError.
- `supports_device_outputs` / `device_outputs`: a backend that can leave its outputs on its device (torch on
  CUDA) says so; when the caller sets `device_outputs = True`, `disparity`/`confidence` may be device tensors,
  still being computed when `estimate_at` returns: `synchronize()` waits for them.
- `warmup(height, width, source_size)`: the first frames' work done ahead (captures, buffers), from images of the
  camera's size when known.
"""
from __future__ import annotations

import abc
import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import cv2
import numpy as np

# backend name -> "module:factory"; the factory takes the keyword options of `create_estimator`.
BACKENDS: dict[str, str] = {
    "torch": "stereo_depth_ros.inference.torch_backend:TorchEstimator",
    "onnxruntime": "stereo_depth_ros.inference.onnx_backend:OnnxEstimator",
    "opencv_sgbm": "stereo_depth_ros.inference.sgbm_backend:SgbmEstimator",
}


@dataclass
class StereoEstimate:
    """What an estimator returns for one pair.

    disparity: float32 [H, W], positive left-view disparity in pixels; NaN where the backend has no value (a numpy
    array, or a device tensor when the caller asked for device outputs).
    confidence: float32 [H, W] in 0..1 (1 = trusted), or None when the backend cannot tell.
    iterations: refinement iterations actually run (None when the backend has none).
    budget_missed: a latency budget was set and not even one iteration fitted in it.
    """

    disparity: Any
    confidence: Any = None
    iterations: int | None = None
    budget_missed: bool = False


def resize_pair(left: np.ndarray, right: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize both RGB images to width x height (area filter when shrinking, linear when enlarging); unchanged
    when already that size."""
    if left.shape[1] == width and left.shape[0] == height:
        return left, right
    interp = cv2.INTER_AREA if width < left.shape[1] else cv2.INTER_LINEAR
    return (cv2.resize(left, (width, height), interpolation=interp),
            cv2.resize(right, (width, height), interpolation=interp))


class StereoEstimator(abc.ABC):
    """Base class of every backend."""

    name: str = "estimator"
    has_iterations: ClassVar[bool] = True
    iters_fixed: ClassVar[bool] = False
    supports_device_outputs: ClassVar[bool] = False
    device_outputs: bool = False
    # Disparity range really searched, in working pixels, when it differs from the one requested (SGBM rounds up
    # to 16); None: the requested range. The DisparityImage reports this, not the request.
    disparity_range: int | None = None

    @abc.abstractmethod
    def estimate(self, left: np.ndarray, right: np.ndarray) -> StereoEstimate:
        """left, right: uint8 [H, W, 3] RGB (or float32 0..255), same shape. Returns a StereoEstimate at [H, W]."""

    def estimate_batch(self, lefts: Sequence[np.ndarray], rights: Sequence[np.ndarray]) -> list[StereoEstimate]:
        """Several pairs of one size at once (offline labelling). This default runs them one by one; a backend
        that batches on its device overrides it and returns what `estimate` would for each pair."""
        return [self.estimate(left, right) for left, right in zip(lefts, rights, strict=True)]

    def estimate_at(self, left: np.ndarray, right: np.ndarray, width: int, height: int) -> StereoEstimate:
        """Estimate at the working size width x height: disparity (and confidence) at that size, in its pixels."""
        work_left, work_right = resize_pair(left, right, width, height)
        return self.estimate(work_left, work_right)

    def warmup(self, height: int, width: int, source_size: tuple[int, int] | None = None) -> None:
        """Run once at the working size height x width, from images of `source_size` ((height, width), the
        camera's; default the working size), so the first real frame does not pay for lazy initialisation."""
        src_h, src_w = source_size or (height, width)
        blank = np.zeros((src_h, src_w, 3), np.uint8)
        self.estimate_at(blank, blank, width, height)

    def synchronize(self) -> None:
        """Wait until the last estimate's work is done. A no-op for host backends; one whose outputs stay on a
        device (`device_outputs`) waits for that device, so that a stage timing ends when the work does."""
        return None

    @property
    def iters(self) -> int | None:
        """Refinement iterations per frame (None = the model's default, or no iterations at all)."""
        return self.__dict__.get("_iters")

    @iters.setter
    def iters(self, value: int | None) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"iters must be a positive int (or None for the model's default), got {value!r}")
        if not self.has_iterations:
            if value is not None:
                raise ValueError(f"backend {self.name} has no refinement iterations (iters must stay unset)")
            return
        if self.iters_fixed and "_iters" in self.__dict__ and value != self.__dict__["_iters"]:
            fixed = self.__dict__["_iters"]
            count = "the iteration count" if fixed is None else f"a fixed {fixed} iterations"
            raise ValueError(f"backend {self.name} runs {count} set when it was built (e.g. by the ONNX export); "
                             f"cannot change to {value}")
        self.__dict__["_iters"] = value


def create_estimator(backend: str, **options) -> StereoEstimator:
    """Build the named backend. Raises ValueError naming the valid backends for an unknown name."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {sorted(BACKENDS)}")
    module_name, factory_name = BACKENDS[backend].split(":")
    factory = getattr(importlib.import_module(module_name), factory_name)
    return factory(**options)

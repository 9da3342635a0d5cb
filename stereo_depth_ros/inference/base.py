"""The estimator interface shared by the node, the demo and the offline evaluation.

An estimator takes one rectified pair as numpy RGB images and returns the left-view disparity in pixels of the
image it was given. Backends live in their own modules and are imported lazily by `create_estimator`, so that
the SGBM baseline works on a machine without torch or onnxruntime.
"""
from __future__ import annotations

import abc
import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

import numpy as np

from stereo_depth_ros.camera_geometry import resize_pair

if TYPE_CHECKING:  # torch is optional for this module: SGBM runs without it
    import torch

# numpy on the host; a torch tensor on the device when the estimator's `device_outputs` is on
ArrayOrTensor = Union[np.ndarray, "torch.Tensor"]

# backend name -> "module:factory"; the factory takes the keyword options of `create_estimator`.
BACKENDS: dict[str, str] = {
    "torch": "stereo_depth_ros.inference.torch_backend:TorchEstimator",
    "onnxruntime": "stereo_depth_ros.inference.onnx_backend:OnnxEstimator",
    "opencv_sgbm": "stereo_depth_ros.inference.sgbm_backend:SgbmEstimator",
}


@dataclass
class StereoEstimate:
    """What an estimator returns for one pair.

    disparity: float32 [H, W], positive left-view disparity in pixels; NaN where the backend has no value.
    confidence: float32 [H, W] in 0..1 (1 = trusted), or None when the backend cannot tell.
    Both are numpy arrays, or torch tensors on the device when the estimator's `device_outputs` is on.
    iterations: refinement iterations actually run (None when the backend has none).
    budget_missed: a latency budget was set and not even one iteration fitted it (one was run anyway).
    """

    disparity: ArrayOrTensor
    confidence: ArrayOrTensor | None = None
    iterations: int | None = None
    budget_missed: bool = False


class StereoEstimator(abc.ABC):
    """Base class of every backend."""

    name: str = "estimator"
    # Refinement iterations (None = the model's default, or no iterations at all, e.g. SGBM). Settable.
    iters: int | None = None
    # Backends that can hand back device tensors set supports_device_outputs; a caller then sets device_outputs.
    supports_device_outputs: bool = False
    device_outputs: bool = False

    @abc.abstractmethod
    def estimate(self, left: np.ndarray, right: np.ndarray) -> StereoEstimate:
        """left, right: uint8 [H, W, 3] RGB (or float32 0..255), same shape. Returns a StereoEstimate at [H, W]."""

    def estimate_at(self, left: np.ndarray, right: np.ndarray, width: int, height: int) -> StereoEstimate:
        """Run at the working size width x height: the disparity comes back at that size, in its pixels.

        This resizes on the host (`camera_geometry.resize_pair`: area when shrinking, linear when enlarging);
        backends with a device override it to resize there.
        """
        work_left, work_right = resize_pair(left, right, width, height)
        return self.estimate(work_left, work_right)

    def warmup(self, height: int, width: int) -> None:
        """Run once at the given size so the first real frame does not pay for lazy initialisation."""
        blank = np.zeros((height, width, 3), np.uint8)
        self.estimate(blank, blank)


def create_estimator(backend: str, **options) -> StereoEstimator:
    """Build the named backend. Raises ValueError naming the valid backends for an unknown name."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {sorted(BACKENDS)}")
    module_name, factory_name = BACKENDS[backend].split(":")
    factory = getattr(importlib.import_module(module_name), factory_name)
    return factory(**options)

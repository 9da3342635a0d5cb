"""The estimator interface shared by the node, the demo and the offline evaluation.

An estimator takes one rectified pair as numpy RGB images and returns the left-view disparity in pixels of the
image it was given. Backends live in their own modules and are imported lazily by `create_estimator`, so that
the SGBM baseline works on a machine without torch or onnxruntime.
"""
from __future__ import annotations

import abc
import importlib
from collections.abc import Sequence
from dataclasses import dataclass

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

    disparity: float32 [H, W], positive left-view disparity in pixels; NaN where the backend has no value.
    confidence: float32 [H, W] in 0..1 (1 = trusted), or None when the backend cannot tell.
    """

    disparity: np.ndarray
    confidence: np.ndarray | None = None


class StereoEstimator(abc.ABC):
    """Base class of every backend."""

    name: str = "estimator"

    @abc.abstractmethod
    def estimate(self, left: np.ndarray, right: np.ndarray) -> StereoEstimate:
        """left, right: uint8 [H, W, 3] RGB (or float32 0..255), same shape. Returns a StereoEstimate at [H, W]."""

    def estimate_batch(self, lefts: Sequence[np.ndarray], rights: Sequence[np.ndarray]) -> list[StereoEstimate]:
        """Several pairs of one size at once (offline labelling). This default runs them one by one; a backend
        that batches on its device overrides it and returns what `estimate` would for each pair."""
        return [self.estimate(left, right) for left, right in zip(lefts, rights)]

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

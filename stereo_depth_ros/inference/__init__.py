"""One estimator interface over the backends (torch, onnxruntime, opencv_sgbm)."""

from stereo_depth_ros.inference.base import BACKENDS, StereoEstimate, StereoEstimator, create_estimator

__all__ = ["BACKENDS", "StereoEstimate", "StereoEstimator", "create_estimator"]

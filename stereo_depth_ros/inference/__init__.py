"""One estimator interface over the backends (torch, onnxruntime, opencv_sgbm)."""

from stereo_depth_ros.inference.base import BACKENDS, StereoEstimate, StereoEstimator, create_estimator
from stereo_depth_ros.inference.factory import EstimatorSourceError, open_estimator, source_kind

__all__ = ["BACKENDS", "EstimatorSourceError", "StereoEstimate", "StereoEstimator", "create_estimator",
           "open_estimator", "source_kind"]

"""opencv_sgbm: the weight-free baseline (OpenCV semi-global block matching) behind the estimator interface.

`SgbmEstimator(max_disparity=192, block_size=5, ...)` matches both views (the right view by mirroring the pair,
since the contrib ximgproc right matcher is not in opencv-python-headless) and derives a per-pixel confidence from
their left-right consistency: 1 / (1 + |d_left(x) - d_right(x - d_left(x))|). Pixels that fail OpenCV's uniqueness
test, the speckle filter, or the left-right check (more than `lr_max_diff` px apart) are NaN with confidence 0.
"""
from __future__ import annotations

import cv2
import numpy as np

from stereo_depth_ros.inference.base import StereoEstimate, StereoEstimator

FIXED_POINT = 16.0  # SGBM returns disparity * 16 as int16


class SgbmEstimator(StereoEstimator):
    """cv2.StereoSGBM with defaults scaled to `max_disparity`.

    max_disparity: largest disparity searched (rounded up to OpenCV's multiple of 16); block_size: odd matching
    window; P1/P2: smoothness penalties (default 8 and 32 x block area, the values OpenCV's documentation suggests
    for one channel); uniqueness_ratio, speckle_window, speckle_range: OpenCV's post-filters; lr_max_diff: the
    largest left-right disagreement (px) still reported. mode: "sgbm_3way" (fast) | "sgbm" | "hh" (full DP).
    """

    name = "opencv_sgbm"
    has_iterations = False  # no refinement loop: `iters` stays None

    def __init__(self, max_disparity: int = 192, block_size: int = 5, uniqueness_ratio: int = 10,
                 speckle_window: int = 100, speckle_range: int = 2, lr_max_diff: float = 1.0,
                 P1: int | None = None, P2: int | None = None, mode: str = "sgbm_3way") -> None:
        if max_disparity <= 0:
            raise ValueError(f"max_disparity must be positive, got {max_disparity}")
        if block_size < 1 or block_size % 2 == 0:
            raise ValueError(f"block_size must be odd and positive, got {block_size}")
        modes = {"sgbm": cv2.STEREO_SGBM_MODE_SGBM, "sgbm_3way": cv2.STEREO_SGBM_MODE_SGBM_3WAY,
                 "hh": cv2.STEREO_SGBM_MODE_HH}
        if mode not in modes:
            raise ValueError(f"unknown SGBM mode {mode!r}; expected one of {sorted(modes)}")
        # OpenCV searches a multiple of 16: this is the range really searched (the DisparityImage reports it).
        self.num_disparities = int(-(-max_disparity // 16) * 16)
        self.disparity_range = self.num_disparities
        self.lr_max_diff = float(lr_max_diff)
        area = block_size * block_size
        self.matcher = cv2.StereoSGBM_create(
            minDisparity=0,
            numDisparities=self.num_disparities,
            blockSize=block_size,
            P1=8 * area if P1 is None else P1,
            P2=32 * area if P2 is None else P2,
            disp12MaxDiff=-1,  # the explicit left-right check below replaces OpenCV's one-sided test
            uniquenessRatio=uniqueness_ratio,
            speckleWindowSize=speckle_window,
            speckleRange=speckle_range,
            mode=modes[mode],
        )

    @staticmethod
    def _gray(image: np.ndarray) -> np.ndarray:
        if image.dtype != np.uint8:
            image = np.clip(image, 0, 255).astype(np.uint8)
        if image.ndim == 3:
            return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        return image

    def _match(self, reference: np.ndarray, other: np.ndarray) -> np.ndarray:
        """Disparity (px) of every column of `reference`, matched against `other` shifted to the left.

        OpenCV gives no result for the first numDisparities columns, even where the true disparity is small
        enough for a match to exist; a replicated border of that width moves the blind strip out of the image.
        """
        pad = self.num_disparities
        padded = [cv2.copyMakeBorder(image, 0, 0, pad, 0, cv2.BORDER_REPLICATE) for image in (reference, other)]
        return self.matcher.compute(*padded)[:, pad:].astype(np.float32) / FIXED_POINT

    def estimate(self, left: np.ndarray, right: np.ndarray) -> StereoEstimate:
        if left.shape != right.shape:
            raise ValueError(f"left {left.shape} and right {right.shape} differ in shape")
        gl, gr = self._gray(left), self._gray(right)
        height, width = gl.shape
        disp_left = self._match(gl, gr)
        # The right view's disparity: match the mirrored pair, then mirror back.
        disp_right = np.ascontiguousarray(
            self._match(np.ascontiguousarray(gr[:, ::-1]), np.ascontiguousarray(gl[:, ::-1]))[:, ::-1])
        valid = disp_left > 0  # invalid pixels come back as (minDisparity - 1) * 16
        columns = np.arange(width, dtype=np.float32)[None, :] - np.where(valid, disp_left, 0.0)
        target = np.clip(np.rint(columns), 0, width - 1).astype(np.intp)
        partner = np.take_along_axis(disp_right, target, axis=1)
        disagreement = np.abs(disp_left - partner)
        valid &= (partner > 0) & (disagreement <= self.lr_max_diff) & (columns >= 0)
        confidence = np.where(valid, 1.0 / (1.0 + disagreement), 0.0).astype(np.float32)
        disparity = np.where(valid, disp_left, np.nan).astype(np.float32)
        return StereoEstimate(disparity=disparity, confidence=confidence)

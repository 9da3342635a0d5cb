"""The per-frame sequence of stereo_depth_node, ROS-free: one object the node, the benches and the tests call.

    pipeline = StereoPipeline(estimator, input_width=0, input_height=0, max_disparity=192)
    result = pipeline.process(left, right, OutputRequest(points=False), infos=(left_info, right_info))

`process` owns the sequence: convert the images (`image_conversion`, when given Image messages) and check the
pair -> camera geometry (from the camera_info pair, cached until its content changes, validated once) ->
`estimator.estimate_at` at the working size (the backend resizes) -> rescale to camera pixels -> masks and the
requested outputs (`postprocess`), written into message-ready buffers reused frame after frame. It returns the
outputs, the valid share, the iterations the backend ran and per-stage timings.

Lazy like stereo_image_proc: nothing is estimated when no output is requested (or when only depth/points are and
there is no camera geometry); confidence is computed only when it is requested, `confidence_threshold` > 0 or
`report_confident_share` is set (backends with a `with_confidence` switch skip it); depth and points only when
requested. `report_confident_share` (the node's hard-pair capture on low confidence) adds
`FrameResult.confident_share`: the share of pixels with a valid disparity and a confidence at or above
`confidence_threshold` when that is > 0, else `capture_policy.DEFAULT_CONFIDENT_AT` (0.5).

Bad pairs raise `PairError(kind, message)` (kind groups warnings for throttling); camera_info that cannot give a
geometry for these images is not an error: the frame gets disparity only and `FrameResult.camera_problem` says
why.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stereo_depth_ros.camera_geometry import CameraGeometryError, StereoCamera
from stereo_depth_ros.capture_policy import DEFAULT_CONFIDENT_AT
from stereo_depth_ros.image_conversion import ImageConversionError, image_to_rgb
from stereo_depth_ros.inference.base import StereoEstimator
from stereo_depth_ros.postprocess import OutputBuffers, OutputRequest, Postprocessed, _RayCache, postprocess, rescale

# Below this the networks' 1/32 feature maps are a pixel or two wide and SGBM's search window covers the image:
# the output would be noise, so such pairs are rejected with a warning instead.
MIN_IMAGE_SIDE = 32
ALL_OUTPUTS = OutputRequest()


class PairError(ValueError):
    """A pair that cannot be processed; `kind` groups warnings for throttling."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def working_size(width: int, height: int, input_width: int, input_height: int) -> tuple[int, int]:
    """(width, height) the estimator runs at: the camera's when input_width/input_height are 0."""
    if input_width <= 0 or input_height <= 0:
        return width, height
    return input_width, input_height


def _info_key(info: Any) -> tuple:
    return (np.asarray(getattr(info, "p", ()), np.float64).tobytes(),
            np.asarray(getattr(info, "k", ()), np.float64).tobytes(),
            int(getattr(info, "width", 0) or 0), int(getattr(info, "height", 0) or 0))


class CameraCache:
    """StereoCamera of the last camera_info pair, rebuilt (and validated) only when their content changes;
    a degenerate pair's error is cached as well. `builds` counts the rebuilds."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._value: StereoCamera | CameraGeometryError | None = None
        self.builds = 0

    def get(self, left_info: Any, right_info: Any) -> StereoCamera:
        key = (_info_key(left_info), _info_key(right_info))
        if key != self._key:
            self.builds += 1
            try:
                self._value = StereoCamera.from_camera_info(left_info, right_info)
            except CameraGeometryError as exc:
                self._value = exc
            self._key = key
        if isinstance(self._value, CameraGeometryError):
            raise self._value
        assert self._value is not None
        return self._value


@dataclass
class FrameResult:
    """One processed pair. outputs is None when nothing was estimated (nothing requested that could be made)."""

    width: int
    height: int
    outputs: Postprocessed | None = None
    camera: StereoCamera | None = None
    camera_problem: tuple[str, str] | None = None  # (kind, message) when depth could not be made
    iterations: int | None = None
    budget_missed: bool = False
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage

    @property
    def confident_share(self) -> float | None:
        """Share of confident pixels (pipeline.report_confident_share); None when not computed."""
        return self.outputs.confident_share if self.outputs is not None else None

    @property
    def inference_s(self) -> float:
        return self.timings.get("estimate", 0.0)

    @property
    def valid_share(self) -> float:
        return self.outputs.valid_share if self.outputs is not None else float("nan")


class StereoPipeline:
    """convert -> estimate at the working size -> rescale -> masks -> outputs, for one estimator.

    confidence_threshold may be changed between frames (the node's runtime parameter); `clock` times the stages.
    report_confident_share: also compute confidence and report FrameResult.confident_share (hard-pair capture).
    """

    def __init__(self, estimator: StereoEstimator, *, input_width: int = 0, input_height: int = 0,
                 max_disparity: int = 192, confidence_threshold: float = 0.0,
                 clock: Any = time.perf_counter) -> None:
        self.estimator = estimator
        self.clock = clock  # of the stage timings (a benchmark may pass time.thread_time)
        self.input_width, self.input_height = input_width, input_height
        self.max_disparity = max_disparity
        self.confidence_threshold = confidence_threshold
        self.report_confident_share = False
        self.cameras = CameraCache()
        self._buffers: OutputBuffers | None = None
        self._rays = _RayCache()
        self._rgb_buffers: dict[str, np.ndarray] = {}
        if estimator.supports_device_outputs:
            estimator.device_outputs = True  # post-processing runs where the outputs are (contract 1)

    # -- stages ----------------------------------------------------------------------------------------------
    def read_pair(self, left: Any, right: Any) -> tuple[np.ndarray, np.ndarray]:
        """uint8 RGB arrays of a pair given as Image messages (converted) or arrays; PairError when unusable."""
        images = []
        for side, image in (("left", left), ("right", right)):
            if isinstance(image, np.ndarray):
                images.append(image)
                continue
            try:
                # A colour conversion writes into the previous pair's array when the size is the same (valid until
                # the next pair, like the outputs): no large allocation per image.
                buffer = self._rgb_buffers.get(side)
                rgb = image_to_rgb(image, out=buffer)
                if rgb is not buffer and rgb.flags.owndata and rgb.flags.writeable:
                    self._rgb_buffers[side] = rgb
                images.append(rgb)
            except ImageConversionError as exc:
                raise PairError(f"image:{side}", f"{side} image: {exc}") from None
        if not isinstance(left, np.ndarray) and left.encoding != right.encoding:
            raise PairError("encoding_mismatch", f"left image is {left.encoding} but right is {right.encoding}; "
                                                 "a stereo pair needs one encoding")
        if images[0].shape != images[1].shape:
            (lh, lw), (rh, rw) = images[0].shape[:2], images[1].shape[:2]
            raise PairError("size_mismatch", f"left image is {lw}x{lh} but right is {rw}x{rh}")
        height, width = images[0].shape[:2]
        if min(height, width) < MIN_IMAGE_SIDE:
            raise PairError("too_small", f"image {width}x{height} is too small for stereo matching "
                                         f"(needs at least {MIN_IMAGE_SIDE} px on each side)")
        return images[0], images[1]

    def camera(self, left_info: Any, right_info: Any, width: int,
               height: int) -> tuple[StereoCamera | None, tuple[str, str] | None]:
        """(geometry, None) for images of width x height, or (None, (kind, why)) when only disparity can be made."""
        if left_info is None or right_info is None:
            missing = " and ".join(side for side, info in (("left", left_info), ("right", right_info)) if info is None)
            return None, ("missing_info", f"no camera_info for the {missing} camera: publishing disparity only "
                                          "(no depth, no points)")
        try:
            camera = self.cameras.get(left_info, right_info)
        except CameraGeometryError as exc:
            return None, ("bad_info", f"degenerate camera_info ({exc}): publishing disparity only "
                                      "(no depth, no points)")
        problem = camera.size_problem(width, height)
        if problem:
            return None, ("info_size", f"{problem}: publishing disparity only (no depth, no points)")
        return camera, None

    def needs_confidence(self, request: OutputRequest) -> bool:
        return request.confidence or self.confidence_threshold > 0.0 or self.report_confident_share

    @property
    def confident_at(self) -> float:
        """The confidence a pixel needs to count as confident in FrameResult.confident_share."""
        return self.confidence_threshold if self.confidence_threshold > 0.0 else DEFAULT_CONFIDENT_AT

    def warmup(self, width: int, height: int, request: OutputRequest | None = None) -> None:
        """Do the first frame's one-off work now, for camera images of width x height and the outputs `request`
        (those of the next frames, as far as known): the backend runs at the working size from images of the
        camera's size (its upload buffers fit them) with confidence on or off as `process` will ask for it (None:
        every output), so that a torch backend captures exactly the graph the first real frame replays."""
        work_w, work_h = working_size(width, height, self.input_width, self.input_height)
        if hasattr(self.estimator, "with_confidence"):
            self.estimator.with_confidence = self.needs_confidence(request or ALL_OUTPUTS)
        self.estimator.warmup(work_h, work_w, source_size=(height, width))

    def _output_buffers(self, height: int, width: int) -> OutputBuffers:
        buffers = self._buffers
        if buffers is None or (buffers.height, buffers.width) != (height, width):
            buffers = self._buffers = OutputBuffers(height, width)
        return buffers

    # -- the sequence ----------------------------------------------------------------------------------------
    def process(self, left: Any, right: Any, request: OutputRequest = ALL_OUTPUTS, *,
                camera: StereoCamera | None = None, infos: tuple[Any, Any] | None = None) -> FrameResult:
        """One pair: left/right as Image messages or uint8 RGB arrays; the geometry as plain values (`camera`) or
        the camera_info pair (`infos`, cached). Outputs are valid until the next call (buffers are reused)."""
        clock = self.clock
        t0 = clock()
        left_rgb, right_rgb = self.read_pair(left, right)
        height, width = left_rgb.shape[:2]
        t1 = clock()
        problem = None
        if infos is not None:
            camera, problem = self.camera(infos[0], infos[1], width, height)
        result = FrameResult(width=width, height=height, camera=camera, camera_problem=problem)
        if camera is None and (request.depth or request.points):
            request = OutputRequest(disparity=request.disparity, depth=False, points=False,
                                    confidence=request.confidence)
        result.timings["convert"] = t1 - t0
        if not request.any():
            return result

        threshold = self.confidence_threshold
        with_confidence = self.needs_confidence(request)
        if hasattr(self.estimator, "with_confidence"):
            self.estimator.with_confidence = with_confidence
        work_w, work_h = working_size(width, height, self.input_width, self.input_height)
        t2 = clock()
        estimate = self.estimator.estimate_at(left_rgb, right_rgb, work_w, work_h)
        if self.estimator.device_outputs:
            self.estimator.synchronize()  # device outputs may still be computing: their wait is the estimate's
        t3 = clock()
        confidence = estimate.confidence if with_confidence else None
        disparity, confidence = rescale(estimate.disparity, confidence, width, height)
        t4 = clock()
        searched = (self.estimator.disparity_range or self.max_disparity) * width / work_w
        result.outputs = postprocess(
            disparity, confidence, left_rgb if request.points else None, camera, request,
            self._output_buffers(height, width), confidence_threshold=threshold if confidence is not None else 0.0,
            disparity_range=searched, rays=self._rays,
            confident_at=self.confident_at if self.report_confident_share else None)
        t5 = clock()
        result.iterations, result.budget_missed = estimate.iterations, estimate.budget_missed
        result.timings.update(estimate=t3 - t2, rescale=t4 - t3, postprocess=t5 - t4)
        return result

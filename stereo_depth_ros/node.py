"""stereo_depth_node: rectified stereo pairs in; disparity, metric depth, a coloured point cloud and confidence out.

A thin rclpy shell over the ROS-free modules: `sync` pairs the images (stereo_image_proc's policies),
`image_conversion` reads them, an estimator from `inference` computes the disparity, `camera_geometry` turns it
into depth and points, and `diagnostics` keeps the figures behind /diagnostics.

Threading: subscription callbacks only hand the synchronised pair to a one-slot mailbox (`mailbox`); a worker
thread runs inference and publishes. When pairs arrive faster than inference, the newest pair wins and the others
are counted as dropped, so latency stays bounded by one inference instead of growing with a queue.

Bad input (a malformed image, mismatched pair, missing or degenerate camera_info, stale stamps) is reported with a
throttled warning naming the problem and the pair is skipped (or, without camera geometry, only disparity is
published); the node keeps running. Invalid parameters stop it at start-up with one message and exit status 2.
"""
from __future__ import annotations

import re
import signal
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, qos_profile_sensor_data, qos_profile_system_default
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
from stereo_msgs.msg import DisparityImage

from stereo_depth_ros.camera_geometry import (
    CameraGeometryError,
    StereoCamera,
    cloud_array,
    disparity_image_fields,
    disparity_to_camera,
    disparity_to_depth,
    fill_disparity_image,
    fill_pointcloud2,
    resize_pair,
    working_size,
)
from stereo_depth_ros.config import ConfigError, NodeConfig, estimator_options, is_ros_own_parameter
from stereo_depth_ros.diagnostics import FrameStats, Throttle, format_value, summary_line
from stereo_depth_ros.image_conversion import ImageConversionError, array_to_image, image_to_rgb
from stereo_depth_ros.inference import create_estimator
from stereo_depth_ros.mailbox import LatestMailbox
from stereo_depth_ros.sync import StereoFrame, StereoSynchronizer

NODE_NAME = "stereo_depth_node"
# Below this the networks' 1/32 feature maps are a pixel or two wide and SGBM's search window covers the image:
# the output would be noise, so such pairs are rejected with a warning instead.
MIN_IMAGE_SIDE = 32
WARNING_PERIOD_S = 5.0
STATUS_LOG_PERIOD_S = 10.0
EXIT_BAD_PARAMETERS = 2
EXIT_BACKEND_FAILED = 1


class InputError(ValueError):
    """A synchronised pair that cannot be processed; `kind` groups warnings for throttling."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class StartupError(RuntimeError):
    """The node cannot start (bad parameters or a backend that fails to load); `code` is the exit status."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class _Job:
    frame: StereoFrame
    received: float  # time.monotonic() when the pair was complete


class StereoDepthNode(Node):
    def __init__(self, **node_kwargs) -> None:
        super().__init__(NODE_NAME, **node_kwargs)
        self.config = self._read_parameters()
        try:
            self.estimator = create_estimator(self.config.backend, **estimator_options(self.config))
        except Exception as exc:  # any loader failure becomes one line, not a traceback
            raise StartupError(f"backend {self.config.backend} failed to load: {type(exc).__name__}: {exc}",
                               EXIT_BACKEND_FAILED) from exc

        self.stats = FrameStats(window=max(5.0, 3 * self.config.diagnostics_period))
        self._throttle = Throttle(WARNING_PERIOD_S)
        self._mailbox: LatestMailbox[_Job] = LatestMailbox()
        self._infos_warned = False
        self._stale_seen = 0
        self._newest_stamp = {"left": -1, "right": -1}  # newest image stamp (ns) seen per side
        self._hardware_id = ""

        self.sync = StereoSynchronizer(
            self._on_frame,
            approximate=self.config.approximate_sync,
            tolerance_seconds=self.config.approximate_sync_tolerance_seconds,
            queue_size=self.config.queue_size,
        )
        qos_in = qos_profile_system_default if self.config.use_system_default_qos else qos_profile_sensor_data
        qos_in = QoSProfile(history=qos_in.history, depth=max(self.config.queue_size, 1),
                            reliability=qos_in.reliability, durability=qos_in.durability)
        self.create_subscription(Image, "left/image_rect", self._image_callback("left", self.sync.add_left_image),
                                 qos_in)
        self.create_subscription(Image, "right/image_rect",
                                 self._image_callback("right", self.sync.add_right_image), qos_in)
        self.create_subscription(CameraInfo, "left/camera_info", self.sync.add_left_info, qos_in)
        self.create_subscription(CameraInfo, "right/camera_info", self.sync.add_right_info, qos_in)

        self.pub_disparity = self.create_publisher(DisparityImage, "disparity", 5)
        self.pub_depth = self.create_publisher(Image, "depth", 5)
        self.pub_points = self.create_publisher(PointCloud2, "points2", 5) if self.config.publish_points else None
        self.pub_confidence = (self.create_publisher(Image, "confidence", 5)
                               if self.config.publish_confidence else None)
        self.pub_diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(self.config.diagnostics_period, self._publish_diagnostics)
        self._last_status_log = time.monotonic()

        self._worker = threading.Thread(target=self._work, name="stereo_depth_worker", daemon=True)
        self._worker.start()
        self.get_logger().info(
            f"ready: backend {self.config.backend}"
            + (f" ({self.config.model}, {self.config.model_path})" if self.config.backend != "opencv_sgbm" else "")
            + f", {'approximate' if self.config.approximate_sync else 'exact'} sync ({self.sync.implementation}), "
            f"{'system default' if self.config.use_system_default_qos else 'sensor-data'} QoS")

    # -- parameters -------------------------------------------------------------------------------------------
    def _read_parameters(self) -> NodeConfig:
        defaults = NodeConfig().as_dict()
        descriptions = NodeConfig.parameter_descriptions()
        for name, default in defaults.items():
            # Typing is left to NodeConfig (one validator, one message format: an int for a float parameter is
            # fine, a string for an int names the parameter); parameters apply at start-up only.
            descriptor = ParameterDescriptor(description=descriptions[name], dynamic_typing=True, read_only=True)
            self.declare_parameter(name, default, descriptor)
        values = {name: self.get_parameter(name).value for name in defaults}
        overrides = getattr(self, "_parameter_overrides", {})
        # rclpy's own parameters (use_sim_time, qos_overrides.*) may sit in a shared params file.
        unknown = sorted(name for name in overrides
                         if not self.has_parameter(name) and not is_ros_own_parameter(name))
        try:
            if unknown:
                raise ConfigError(f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(defaults)}")
            return NodeConfig.from_dict(values).validate()
        except ConfigError as exc:
            raise StartupError(f"invalid parameters: {exc}", EXIT_BAD_PARAMETERS) from None

    # -- callbacks (executor thread) --------------------------------------------------------------------------
    def _image_callback(self, side: str, add):
        def callback(msg: Image) -> None:
            stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
            newest = self._newest_stamp[side]
            self._newest_stamp[side] = max(newest, stamp)
            add(msg)
            stale = self.sync.stats.dropped_stale
            if stale != self._stale_seen:
                self._stale_seen = stale
                what = "duplicated" if stamp == newest else "out-of-order" if stamp < newest else "late"
                self._warn(f"stamp:{what}",
                           f"{side} image dropped, {what} stamp {msg.header.stamp.sec}.{msg.header.stamp.nanosec:09d}"
                           f" s (newest seen {newest / 1e9:.9f} s); {stale} stale images so far")
        return callback

    def _on_frame(self, frame: StereoFrame) -> None:
        # Runs inside the synchroniser, under its lock: hand over and return.
        dropped = self._mailbox.put(_Job(frame, time.monotonic()))
        self.stats.pair_received(dropped_older=dropped)

    # -- worker thread -----------------------------------------------------------------------------------------
    def _work(self) -> None:
        while not self._mailbox.closed:
            job = self._mailbox.get(timeout=0.5)
            if job is None:
                continue
            try:
                self._process(job)
            except InputError as exc:
                self.stats.pair_rejected(str(exc))
                self._warn(exc.kind, f"pair skipped: {exc}")
            except Exception as exc:  # never let one pair kill the node
                if self._mailbox.closed or not rclpy.ok(context=self.context):
                    break
                self.stats.pair_rejected(f"{type(exc).__name__}: {exc}")
                self._warn(f"error:{type(exc).__name__}", f"pair failed: {type(exc).__name__}: {exc}")

    def _read_pair(self, frame: StereoFrame) -> tuple[np.ndarray, np.ndarray]:
        images = []
        for side, msg in (("left", frame.left_image), ("right", frame.right_image)):
            try:
                images.append(image_to_rgb(msg))
            except ImageConversionError as exc:
                raise InputError(f"image:{side}", f"{side} image: {exc}") from None
        left_msg, right_msg = frame.left_image, frame.right_image
        if left_msg.encoding != right_msg.encoding:
            raise InputError("encoding_mismatch", f"left image is {left_msg.encoding} but right is "
                                                  f"{right_msg.encoding}; a stereo pair needs one encoding")
        if images[0].shape != images[1].shape:
            raise InputError("size_mismatch", f"left image is {left_msg.width}x{left_msg.height} but right is "
                                              f"{right_msg.width}x{right_msg.height}")
        height, width = images[0].shape[:2]
        if min(height, width) < MIN_IMAGE_SIDE:
            raise InputError("too_small", f"image {width}x{height} is too small for stereo matching "
                                          f"(needs at least {MIN_IMAGE_SIDE} px on each side)")
        return images[0], images[1]

    def _camera(self, frame: StereoFrame, width: int, height: int) -> StereoCamera | None:
        """The rig for this pair, or None (with a warning) when only disparity can be published."""
        if frame.left_info is None or frame.right_info is None:
            missing = " and ".join(s for s, i in (("left", frame.left_info), ("right", frame.right_info)) if i is None)
            stamp = frame.left_image.header.stamp
            self._warn("missing_info", f"no camera_info for the {missing} camera matching stamp "
                                       f"{stamp.sec}.{stamp.nanosec:09d}: publishing disparity only "
                                       "(no depth, no points)")
            return None
        try:
            camera = StereoCamera.from_camera_info(frame.left_info, frame.right_info)
        except CameraGeometryError as exc:
            self._warn("bad_info", f"degenerate camera_info ({exc}): publishing disparity only (no depth, no points)")
            return None
        if camera.width and camera.height and (camera.width, camera.height) != (width, height):
            self._warn("info_size", f"camera_info is for {camera.width}x{camera.height} but the images are "
                                    f"{width}x{height}: publishing disparity only (no depth, no points)")
            return None
        return camera

    def _process(self, job: _Job) -> None:
        frame = job.frame
        left, right = self._read_pair(frame)
        height, width = left.shape[:2]
        header = frame.left_image.header
        self._hardware_id = header.frame_id
        camera = self._camera(frame, width, height)

        work_w, work_h = working_size(width, height, self.config.input_width, self.config.input_height)
        work_left, work_right = resize_pair(left, right, work_w, work_h)
        start = time.perf_counter()
        estimate = self.estimator.estimate(work_left, work_right)
        inference_s = time.perf_counter() - start
        disparity, confidence = disparity_to_camera(estimate.disparity, width, height, estimate.confidence)

        threshold = self.config.confidence_threshold
        unconfident = confidence < threshold if (confidence is not None and threshold > 0.0) else None
        fields = disparity_image_fields(disparity, camera, self.config.max_disparity * width / work_w,
                                        invalid=unconfident)
        # check_fields=True lets rclpy keep the array.array payloads as they are instead of copying them again.
        msg = DisparityImage(check_fields=True)
        msg.image = Image(check_fields=True)
        msg.header = header
        msg.image.header = header
        fill_disparity_image(msg, fields)
        self.pub_disparity.publish(msg)

        if camera is not None:
            depth = disparity_to_depth(disparity, camera, confidence, threshold)
            valid_share = float(np.count_nonzero(np.isfinite(depth))) / depth.size
            depth_msg = array_to_image(depth, "32FC1", Image(check_fields=True))
            depth_msg.header = header
            self.pub_depth.publish(depth_msg)
            if self.pub_points is not None and self.pub_points.get_subscription_count() > 0:
                cloud = fill_pointcloud2(PointCloud2(check_fields=True), cloud_array(depth, camera, left), PointField)
                cloud.header = header
                self.pub_points.publish(cloud)
        else:
            valid_share = float(np.count_nonzero(np.isfinite(disparity))) / disparity.size
        if (self.pub_confidence is not None and confidence is not None
                and self.pub_confidence.get_subscription_count() > 0):
            conf_msg = array_to_image(np.ascontiguousarray(confidence, np.float32), "32FC1", Image(check_fields=True))
            conf_msg.header = header
            self.pub_confidence.publish(conf_msg)

        self.stats.pair_published(time.monotonic() - job.received, inference_s, valid_share)

    # -- reporting -----------------------------------------------------------------------------------------------
    def _warn(self, kind: str, message: str) -> None:
        # Throttled per problem (numbers aside), so that a recurring problem cannot hide a different one.
        if self._throttle.ready(kind + ":" + re.sub(r"[0-9.]+", "#", message)):
            self.get_logger().warning(message)

    def _publish_diagnostics(self) -> None:
        snap = self.stats.snapshot()
        snap["stale_images"] = self.sync.stats.dropped_stale
        snap["pairs_without_camera_info"] = self.sync.stats.missing_info
        status = DiagnosticStatus()
        status.name = f"{self.get_fully_qualified_name()}: stereo depth"
        status.hardware_id = self._hardware_id
        idle = snap["received_pairs"] == 0
        if idle:
            status.level, status.message = DiagnosticStatus.OK, "waiting for stereo pairs"
        elif float(snap["input_rate_hz"]) > 0 and snap["output_rate_hz"] == 0:
            status.level, status.message = DiagnosticStatus.WARN, "pairs arrive but none is published"
        else:
            status.level, status.message = DiagnosticStatus.OK, summary_line(snap)
        status.values = [KeyValue(key="backend", value=self.config.backend),
                         KeyValue(key="sync", value=self.sync.implementation)]
        status.values += [KeyValue(key=key, value=format_value(value)) for key, value in snap.items()]
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        array.status = [status]
        self.pub_diagnostics.publish(array)
        now = time.monotonic()
        if not idle and now - self._last_status_log >= max(STATUS_LOG_PERIOD_S, self.config.diagnostics_period):
            self._last_status_log = now
            self.get_logger().info(summary_line(snap))

    # -- shutdown ----------------------------------------------------------------------------------------------
    def close(self, timeout: float = 30.0) -> None:
        """Stop the worker (it finishes the pair in hand) and wait for it."""
        self._mailbox.close()
        if self._worker.is_alive():
            self._worker.join(timeout)


def main(args: list[str] | None = None) -> int:
    rclpy.init(args=args)
    node = None
    try:
        try:
            node = StereoDepthNode()
        except StartupError as exc:
            rclpy.logging.get_logger(NODE_NAME).fatal(str(exc))
            return exc.code
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        try:
            executor.spin()
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
        return 0
    finally:
        # A second SIGINT during the clean-up is common (`ros2 launch` forwards one after the terminal's own)
        # and must not turn a clean exit into a KeyboardInterrupt traceback; the clean-up itself is bounded.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if node is not None:
            node.close()
            node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())

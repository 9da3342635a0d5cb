"""stereo_depth_node: rectified stereo pairs in; disparity, metric depth, a coloured point cloud and confidence out.

A thin rclpy shell: it wires parameters, subscriptions and publishers. `sync` pairs the images (stereo_image_proc's
policies), `pipeline.StereoPipeline` owns the per-frame sequence, `messages` wraps its buffers in messages and
`diagnostics` keeps the figures behind /diagnostics. Lazy like stereo_image_proc: an output is computed only while
something subscribes to it; with no subscriber at all no inference runs and pairs are counted as idle.

Threading: subscription callbacks only hand the synchronised pair to a one-slot mailbox (`mailbox`); a worker
thread runs the pipeline and publishes; the newest pair wins, so latency stays bounded by one inference.

Bad input gets a throttled warning naming the problem and the pair is skipped (or, without camera geometry, only
disparity is published); the node keeps running. Invalid parameters stop it at start-up with one message and exit
status 2. `confidence_threshold`, `iters`, `publish_points`, `publish_confidence` can be set at run time. Hard-pair
capture (`capture_*`, the `~/capture` Trigger service) is `capture.HardPairCapture`'s: the worker offers it each pair.
"""
from __future__ import annotations

import re
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.clock import Clock, ClockType
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSPolicyKind
from rclpy.qos_overriding_options import QoSOverridingOptions
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_srvs.srv import Trigger
from stereo_msgs.msg import DisparityImage

from stereo_depth_ros.capture import CaptureError, open_capture
from stereo_depth_ros.config import estimator_options
from stereo_depth_ros.diagnostics import FrameStats, Throttle, summary_line
from stereo_depth_ros.inference import create_estimator
from stereo_depth_ros.mailbox import LatestMailbox
from stereo_depth_ros.messages import OutputMessages, diagnostic_array
from stereo_depth_ros.node_parameters import (EXIT_BACKEND_FAILED, EXIT_BAD_PARAMETERS, USAGE, StartupError,
                                              declare_and_read, first_line, fit_to_backend, ready_line,
                                              resolve_params_files, runtime_change, wants_help)
from stereo_depth_ros.pipeline import PairError, StereoPipeline
from stereo_depth_ros.postprocess import OutputRequest
from stereo_depth_ros.inputs.sources import FrameDecoder, input_topics
from stereo_depth_ros.inputs.sync import StereoFrame, StereoSynchronizer
from stereo_depth_ros.node_inputs import NodeInputs

NODE_NAME = "stereo_depth_node"
WARNING_PERIOD_S = 5.0
STATUS_LOG_PERIOD_S = 10.0
# The first pair of a stream waits this long for a camera_info that has not been seen yet (image_transport's
# CameraPublisher sends the image first); a few frame periods at the slowest common camera rates.
INFO_WAIT_S = 0.5
SYNC_POLL_PERIOD_S = 0.05
GRAPH_POLL_PERIOD_S = 1.0  # publishers' QoS and counts (input health, reliability that follows the drivers)


@dataclass
class _Job:
    frame: StereoFrame
    received: float  # time.monotonic() when the pair was complete


def _stamp_text(header: Any) -> str:
    return f"{header.stamp.sec}.{header.stamp.nanosec:09d}"


class StereoDepthNode(Node):
    def __init__(self, **node_kwargs: Any) -> None:
        super().__init__(NODE_NAME, **node_kwargs)
        self.config = declare_and_read(self)
        try:
            self.estimator = create_estimator(self.config.backend, **estimator_options(self.config))
        except Exception as exc:  # any loader failure becomes one line, not a traceback
            raise StartupError(f"backend {self.config.backend} failed to load: {type(exc).__name__}: {exc}",
                               EXIT_BACKEND_FAILED) from exc
        self.config, note = fit_to_backend(self.config, self.estimator)
        if note:
            self.get_logger().info(note)
        self.pipeline = StereoPipeline(self.estimator, input_width=self.config.input_width,
                                       input_height=self.config.input_height,
                                       max_disparity=self.config.max_disparity,
                                       confidence_threshold=self.config.confidence_threshold)
        self.stats = FrameStats(window=max(5.0, 3 * self.config.diagnostics_period))
        self._throttle = Throttle(WARNING_PERIOD_S)
        try:
            self.capture = open_capture(self.config, warn=self._warn)
        except CaptureError as exc:
            raise StartupError(f"invalid parameters: parameter {exc}", EXIT_BAD_PARAMETERS) from None
        self.pipeline.report_confident_share = self.capture is not None and self.capture.wants_confidence
        if self.config.input_width and self.config.input_height:
            self._warmup(self.config.input_width, self.config.input_height)  # the working size is known now
        self._warmup_size: tuple[int, int] | None = None  # camera size to warm up at, from the first camera_info
        self._warmed = False  # warm up (again) at the camera's size too: the upload buffers are camera-sized
        self._mailbox: LatestMailbox[_Job] = LatestMailbox()
        self._messages = OutputMessages()
        self._hardware_id = ""
        # Which topics and message types come in, and what makes the pipeline's pair of them (inputs/sources.py).
        self.sources = input_topics(self.config.image_transport, self.config.rectify)
        self.decoder = FrameDecoder(compressed=self.sources.compressed, rectify=self.config.rectify)

        self.sync = StereoSynchronizer(
            self._on_frame,
            approximate=self.config.approximate_sync,
            tolerance_seconds=self.config.approximate_sync_tolerance_seconds,
            queue_size=self.config.queue_size,
            info_wait_seconds=INFO_WAIT_S,
            warn=self._warn,
        )
        # As image_pipeline: `qos_overrides./<topic>.subscription.<policy>` (and .publisher.) in a params file
        # take effect on these topics; every policy, not only rclpy's default three (history, depth, reliability).
        overrides = QoSOverridingOptions([kind for kind in QoSPolicyKind if kind is not QoSPolicyKind.INVALID])
        try:  # inputs: reliable from reliable drivers, still matching best-effort ones (node_inputs, inputs.qos)
            image_type = CompressedImage if self.sources.compressed else Image
            image_topics = (self.sources.image_topic("left", self.resolve_topic_name),
                            self.sources.image_topic("right", self.resolve_topic_name))
            self.inputs = NodeInputs(self, self.sync, self.config.queue_size, self.config.use_system_default_qos,
                                     overrides, self._warn, self.config.approximate_sync,
                                     self.config.approximate_sync_tolerance_seconds, self._on_camera_info,
                                     image_type=image_type, image_topics=image_topics)
            self._create_outputs(overrides)
        except (RuntimeError, ParameterException) as exc:  # a qos_overrides.* value rclpy cannot use
            if not rclpy.ok(context=self.context):
                raise  # a signal during start-up: main() treats it as the shutdown it is
            raise StartupError(f"invalid parameters: QoS override: {exc}", EXIT_BAD_PARAMETERS) from None
        self.pub_diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_service(Trigger, "~/capture", self._on_capture)
        # Steady clock: with use_sim_time and no /clock, ROS time stands still and so would these timers.
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self.create_timer(self.config.diagnostics_period, self._publish_diagnostics, clock=steady)
        self.create_timer(SYNC_POLL_PERIOD_S, self.sync.poll, clock=steady)
        self.create_timer(GRAPH_POLL_PERIOD_S, self.inputs.poll, clock=steady)
        self._last_status_log = time.monotonic()
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self._worker = threading.Thread(target=self._work, name="stereo_depth_worker", daemon=True)
        self._worker.start()
        self.get_logger().info(ready_line(self.config, self.estimator, self.sync.implementation, self.capture,
                                          self.inputs.qos_summary()))

    def _create_outputs(self, overrides: QoSOverridingOptions) -> None:
        self.pub_disparity = self.create_publisher(DisparityImage, "disparity", 5, qos_overriding_options=overrides)
        self.pub_depth = self.create_publisher(Image, "depth", 5, qos_overriding_options=overrides)
        self.pub_points = self.create_publisher(PointCloud2, "points2", 5, qos_overriding_options=overrides)
        self.pub_confidence = self.create_publisher(Image, "confidence", 5, qos_overriding_options=overrides)

    def _on_set_parameters(self, parameters: list) -> SetParametersResult:
        """`ros2 param set` on a runtime parameter, applied from the next pair (node_parameters.runtime_change)."""
        try:
            config = runtime_change(self.config, self.estimator, parameters)
        except ValueError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        if config is not self.config:
            self.config = config
            self.pipeline.confidence_threshold = config.confidence_threshold
            self.get_logger().info("parameters set: " + ", ".join(f"{p.name} = {p.value}" for p in parameters))
        return SetParametersResult(successful=True)

    # -- callbacks (executor thread) --------------------------------------------------------------------------
    def _on_capture(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        """~/capture: the next pair is captured (the reply comes at once; the writer works in the background)."""
        response.success, response.message = (self.capture.trigger() if self.capture is not None
                                               else (False, "capture is off: set the capture_dir parameter"))
        return response

    def _on_camera_info(self, msg: CameraInfo) -> None:
        if not self._warmed and msg.width and msg.height:
            self._warmed = True
            self._warmup_size = (int(msg.width), int(msg.height))  # the worker warms up before the next pair

    def _on_frame(self, frame: StereoFrame) -> None:
        # Runs inside the synchroniser, under its lock: hand over and return.
        dropped = self._mailbox.put(_Job(frame, time.monotonic()))
        self.stats.pair_received(dropped_older=dropped)

    # -- worker thread -----------------------------------------------------------------------------------------
    def _warmup(self, width: int, height: int, request: OutputRequest | None = None) -> None:
        start = time.monotonic()
        try:
            self.pipeline.warmup(width, height, request)
        except Exception as exc:  # a backend that cannot run this size says so on the first pair anyway
            self._warn("warmup", f"backend warm-up at {width}x{height} failed: {type(exc).__name__}: {exc}")
            return
        self.get_logger().info(f"backend warmed up for {width}x{height} images in {time.monotonic() - start:.2f} s")

    def _work(self) -> None:
        while not self._mailbox.closed:
            if self._warmup_size is not None:
                size, self._warmup_size = self._warmup_size, None
                self._warmup(*size, self._request())  # with the outputs subscribed now (confidence or not)
            job = self._mailbox.get(timeout=0.2)
            if job is None:
                continue
            try:
                request = self._request()
                if self.capture is not None or request.any():  # lazy: no decoding for nobody
                    job.frame = self.decoder.decode(job.frame)  # decompress/rectify here, off the executor
                confident_share = self._process(job, request)
                if self.capture is not None:  # after publishing; queues references, never waits for the disk
                    self.capture.offer_frame(job.frame, confident_share, self.get_fully_qualified_name())
            except PairError as exc:
                self.stats.pair_rejected(str(exc))
                self._warn(exc.kind, f"pair skipped: {exc}")
            except Exception as exc:  # never let one pair kill the node
                if self._mailbox.closed or not rclpy.ok(context=self.context):
                    break
                self.stats.pair_rejected(f"{type(exc).__name__}: {exc}")
                self._warn(f"error:{type(exc).__name__}", f"pair failed: {type(exc).__name__}: {exc}")

    def _request(self) -> OutputRequest:
        """The outputs somebody subscribes to (stereo_image_proc's lazy rule)."""
        return OutputRequest(
            disparity=self.pub_disparity.get_subscription_count() > 0,
            depth=self.pub_depth.get_subscription_count() > 0,
            points=self.config.publish_points and self.pub_points.get_subscription_count() > 0,
            confidence=self.config.publish_confidence and self.pub_confidence.get_subscription_count() > 0)

    def _process(self, job: _Job, request: OutputRequest) -> float | None:
        """Publish the outputs of one pair; returns its confident share (None when no inference ran)."""
        frame = job.frame
        if not request.any():
            self.stats.pair_idle()
            return None
        header = frame.left_image.header
        self._hardware_id = header.frame_id
        result = self.pipeline.process(frame.left_image, frame.right_image, request,
                                       infos=(frame.left_info, frame.right_info))
        if result.camera_problem is not None:
            kind, message = result.camera_problem
            self._warn(kind, f"{message} [stamp {_stamp_text(header)}]")
        out = result.outputs
        if out is None:  # only depth/points wanted, and no camera geometry to make them
            self.stats.pair_idle()
            return None
        if out.disparity is not None:
            self.pub_disparity.publish(self._messages.disparity(out, header))
        if out.depth is not None:
            self.pub_depth.publish(self._messages.image("depth", out.depth, header))
        if out.points is not None:
            self.pub_points.publish(self._messages.cloud(out.points, header))
        if out.confidence is not None:
            self.pub_confidence.publish(self._messages.image("confidence", out.confidence, header))
        self.stats.pair_published(time.monotonic() - job.received, result.inference_s, out.valid_share,
                                  result.iterations, result.budget_missed)
        return result.confident_share

    # -- reporting -----------------------------------------------------------------------------------------------
    def _warn(self, kind: str, message: str) -> None:
        # Throttled per problem (numbers aside), so that a recurring problem cannot hide a different one; the
        # throttle remembers a bounded number of problems.
        if self._throttle.ready(kind + ":" + re.sub(r"[0-9.]+", "#", message)):
            self.get_logger().warning(message)

    def _publish_diagnostics(self) -> None:
        snap = self.stats.snapshot()
        problems = self.inputs.report(snap)  # input figures into snap; the input problems, logged (throttled)
        snap.update(self.capture.counters() if self.capture is not None else {"capture": "off"})
        self.pub_diagnostics.publish(diagnostic_array(
            snap, f"{self.get_fully_qualified_name()}: stereo depth", self._hardware_id,
            {"backend": self.config.backend, "sync": self.sync.implementation}, self.get_clock().now().to_msg(),
            problems=[message for _, message in problems]))
        idle = snap["received_pairs"] == 0
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
        if self.capture is not None:
            self.capture.close(timeout)  # writes what is queued; a sample cut short never appears


def main(args: list[str] | None = None) -> int:
    logger = rclpy.logging.get_logger(NODE_NAME)
    argv = sys.argv if args is None else args
    if wants_help(argv):
        print(USAGE, end="")
        return 0
    try:
        args = resolve_params_files(argv)
        rclpy.init(args=args)
    except StartupError as exc:
        logger.fatal(str(exc))
        return exc.code
    except Exception as exc:  # rcl refusing the command line (bad YAML, a -p without a value, an unknown flag)
        logger.fatal(f"invalid command line: {first_line(exc)}")
        return EXIT_BAD_PARAMETERS

    def log_warning(message, category, *_rest, **_kw) -> None:
        logger.warning(f"{category.__name__}: {message}")

    # Python warnings from the backends (a precision this device cannot run, a CUDA graph capture that fell back)
    # become node log lines, like every other message of the node, instead of a source line on stderr.
    warnings.showwarning = log_warning
    node = None
    try:
        try:
            node = StereoDepthNode()
        except StartupError as exc:
            logger.fatal(str(exc))
            return exc.code
        except (KeyboardInterrupt, ExternalShutdownException):
            return 0  # Ctrl-C while starting: a clean stop
        except Exception:
            if rclpy.ok():
                raise
            return 0  # SIGINT/SIGTERM invalidated the context while starting: a stop, not a failure
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        try:
            executor.spin()
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
        except Exception:  # a SIGINT racing the executor ("context is not valid") is a shutdown, not a failure
            if rclpy.ok(context=node.context):
                raise
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

"""Talk to a `stereo_depth_node` over real DDS: publish stereo pairs and camera_info, record every output.

`StereoClient` is an rclpy node in a private context; the message helpers build its inputs. The node itself runs
as its own process (`stereo_devkit.node_process`). The demo, the end-to-end bench and the tests share both.
"""
from __future__ import annotations

import itertools
import os
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

OUTPUT_TOPICS = ("disparity", "depth", "points2", "confidence")


@dataclass
class Received:
    """One output message and the wall-clock time (time.time()) at which the client got it."""

    stamp: float
    msg: Any


class StereoClient:
    """An rclpy node in its own context: publishes left/right images and camera_info, records the node's outputs.

    `env` must be the environment of the node under test (`isolated_ros_env`); its discovery settings are applied
    to this process before the participant is created. Topic names are relative to `namespace`.

    By default the client publishes like a stock camera driver: RELIABLE publishers (realsense2_camera,
    zed-ros2-wrapper and depthai-ros default to reliable) from a participant on Fast DDS's default transports,
    whatever profile the node's environment names; `driver_profile=True` gives it the node's Fast DDS profile (a
    driver started from the node's launch file), `reliable_inputs=False` best-effort publishers. `compressed`:
    the image publishers send sensor_msgs/CompressedImage (on the image topics as given: name them .../compressed).
    """

    _instances = itertools.count()

    def __init__(self, env: Mapping[str, str], namespace: str = "", name: str | None = None,
                 inputs: Mapping[str, str] | None = None, outputs: Sequence[str] = OUTPUT_TOPICS,
                 diagnostics: bool = True, reliable_inputs: bool = True, driver_profile: bool = False,
                 compressed: bool = False):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy, HistoryPolicy
        from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
        from stereo_msgs.msg import DisparityImage

        profile_keys = ("FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_DEFAULT_PROFILES_FILE")
        for key in ("ROS_AUTOMATIC_DISCOVERY_RANGE", *profile_keys):
            if key in env and (driver_profile or key not in profile_keys):
                os.environ[key] = env[key]
            else:
                os.environ.pop(key, None)
        self._rclpy = rclpy
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=int(env["ROS_DOMAIN_ID"]),
                   signal_handler_options=rclpy.signals.SignalHandlerOptions.NO)
        # A unique name: several clients may live in one process (rosout keys its publishers by node name).
        name = name or f"stereo_client_{os.getpid()}_{next(self._instances)}"
        self.node = rclpy.create_node(name, namespace=namespace, context=self.context)
        topics = {"left_image": "left/image_rect", "right_image": "right/image_rect",
                  "left_info": "left/camera_info", "right_info": "right/camera_info"}
        topics.update(inputs or {})
        qos_in = QoSProfile(depth=10, history=HistoryPolicy.KEEP_LAST,
                            reliability=(ReliabilityPolicy.RELIABLE if reliable_inputs
                                         else ReliabilityPolicy.BEST_EFFORT))
        self.pub = {
            "left_image": self.node.create_publisher(CompressedImage if compressed else Image, topics["left_image"],
                                                     qos_in),
            "right_image": self.node.create_publisher(CompressedImage if compressed else Image, topics["right_image"],
                                                      qos_in),
            "left_info": self.node.create_publisher(CameraInfo, topics["left_info"], qos_in),
            "right_info": self.node.create_publisher(CameraInfo, topics["right_info"], qos_in),
        }
        types = {"disparity": DisparityImage, "depth": Image, "points2": PointCloud2, "confidence": Image}
        self._cond = threading.Condition()
        self.received: dict[str, list[Received]] = defaultdict(list)
        qos_out = QoSProfile(depth=50, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE)
        self._subs = [self.node.create_subscription(types[t], t, self._recorder(t), qos_out) for t in outputs]
        if diagnostics:
            self._subs.append(self.node.create_subscription(DiagnosticArray, "/diagnostics",
                                                            self._recorder("diagnostics"), qos_out))
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._spinner = threading.Thread(target=self._spin, name="stereo_client_spin", daemon=True)
        self._spinner.start()

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except Exception:  # the context was shut down while spinning
            pass

    def _recorder(self, topic: str) -> Callable[[object], None]:
        def record(msg: object) -> None:
            with self._cond:
                self.received[topic].append(Received(time.time(), msg))
                self._cond.notify_all()
        return record

    def wait_for_node(self, timeout: float = 20.0) -> bool:
        """Wait until the node subscribes to all four inputs and we subscribe to its outputs (discovery)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            inputs_ok = all(p.get_subscription_count() > 0 for p in self.pub.values())
            outputs_ok = all(s.get_publisher_count() > 0 for s in self._subs
                             if s.topic_name.endswith(("disparity", "depth")))
            if inputs_ok and outputs_ok:
                # Matching is reported a little before the first sample can flow both ways.
                time.sleep(0.3)
                return True
            time.sleep(0.1)
        return False

    def publish(self, left_image, right_image, left_info=None, right_info=None, info_lead: float = 0.0) -> None:
        """Publish one pair, camera_info first.

        Topics are independent streams, so the node may see the images before the camera_info of the same stamp;
        until it has seen one camera_info it does not wait for them. `info_lead` seconds between the two make sure
        the first pair of a stream carries its camera_info.
        """
        if left_info is not None:
            self.pub["left_info"].publish(left_info)
        if right_info is not None:
            self.pub["right_info"].publish(right_info)
        if info_lead > 0 and (left_info is not None or right_info is not None):
            time.sleep(info_lead)
        self.pub["left_image"].publish(left_image)
        self.pub["right_image"].publish(right_image)

    def count(self, topic: str) -> int:
        with self._cond:
            return len(self.received[topic])

    def wait_for(self, topic: str, predicate: Callable[[Any], bool] | None = None, timeout: float = 15.0,
                 start: int = 0) -> Any:
        """The first message on `topic` from index `start` on that satisfies `predicate`, or None on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            index = start
            while True:
                items = self.received[topic]
                while index < len(items):
                    msg = items[index].msg
                    index += 1
                    if predicate is None or predicate(msg):
                        return msg
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)

    def wait_for_stamp(self, topic: str, stamp, timeout: float = 15.0):
        """The message on `topic` whose header stamp equals `stamp` (builtin_interfaces/Time), or None."""
        return self.wait_for(topic, lambda m: m.header.stamp == stamp, timeout)

    def received_at(self, topic: str, stamp) -> float | None:
        with self._cond:
            for item in self.received[topic]:
                if item.msg.header.stamp == stamp:
                    return item.stamp
        return None

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        self._rclpy.try_shutdown(context=self.context)
        self._spinner.join(timeout=5.0)

    def __enter__(self) -> "StereoClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def stamp_from_seconds(seconds: float):
    """builtin_interfaces/Time from a float of seconds."""
    from builtin_interfaces.msg import Time

    nanos = int(round(seconds * 1e9))
    return Time(sec=nanos // 1_000_000_000, nanosec=nanos % 1_000_000_000)


def diagnostic_values(array_msg, name_contains: str = "stereo_depth") -> dict[str, str] | None:
    """key -> value of the first DiagnosticStatus whose name contains `name_contains`, or None."""
    for status in array_msg.status:
        if name_contains in status.name:
            return {kv.key: kv.value for kv in status.values}
    return None



def image_message(array, encoding: str, stamp, frame_id: str):
    """sensor_msgs/Image for a numpy array (through the project's one image conversion)."""
    from sensor_msgs.msg import Image

    from stereo_depth_ros.image_conversion import array_to_image

    msg = array_to_image(array, encoding, Image())
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    return msg


def compressed_message(array, encoding: str, stamp, frame_id: str, codec: str = "png", jpeg_quality: int = 90):
    """sensor_msgs/CompressedImage of an rgb8 or mono8 array as compressed_image_transport writes it: colour is
    handed to OpenCV's encoder as BGR, the format is "<encoding>; <codec> compressed bgr8|mono8"."""
    import cv2
    from sensor_msgs.msg import CompressedImage

    from stereo_depth_ros.image_conversion import byte_array

    colour = encoding != "mono8"
    pixels = cv2.cvtColor(array, cv2.COLOR_RGB2BGR) if colour else array
    params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if codec == "jpeg" else []
    ok, data = cv2.imencode(".jpg" if codec == "jpeg" else ".png", pixels, params)
    if not ok:
        raise ValueError(f"cannot encode a {encoding} image as {codec}")
    msg = CompressedImage()
    msg.format = f"{encoding}; {codec} compressed {'bgr8' if colour else 'mono8'}"
    msg.data = byte_array(data)
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    return msg


def stereo_camera_infos(width: int, height: int, fx: float, cx_left: float, cy: float, baseline: float,
                        cx_right: float | None = None, fy: float | None = None, stamp=None,
                        frame_id: str = "left_camera_optical_frame"):
    """Rectified (left, right) sensor_msgs/CameraInfo of an ideal stereo rig.

    baseline in metres; the right projection carries the translation, P_right[0,3] = -fx * baseline, as
    camera_calibration writes it. cx_right defaults to cx_left (ROS rectification); a different value models
    Middlebury's doffs. Both share the left frame_id: after rectification the images share one optical frame.
    """
    from sensor_msgs.msg import CameraInfo

    fy = fx if fy is None else fy
    cx_right = cx_left if cx_right is None else cx_right
    infos = []
    for cx, tx in ((cx_left, 0.0), (cx_right, -fx * baseline)):
        info = CameraInfo()
        info.width, info.height = int(width), int(height)
        info.distortion_model = "plumb_bob"
        info.d = [0.0] * 5
        info.k = [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0]
        info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
        info.p = [fx, 0.0, cx, tx, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0]
        if stamp is not None:
            info.header.stamp = stamp
        info.header.frame_id = frame_id
        infos.append(info)
    return infos[0], infos[1]


class RigStreamer:
    """Streams one stereo rig through a StereoClient, each pair stamped with the wall clock as it goes out, so
    that an output's receipt time minus its stamp is the end-to-end latency through the node.

    rig: a `stereo_devkit.motorcycle.StereoRig` (or anything with left, right and camera_infos(stamp)).
    """

    def __init__(self, client: StereoClient, rig: Any, encoding: str = "rgb8", frame_id: str | None = None) -> None:
        from stereo_devkit.motorcycle import FRAME_ID

        self.client, self.rig, self.encoding = client, rig, encoding
        self.frame_id = frame_id or FRAME_ID
        self.sent: dict[tuple[int, int], float] = {}  # (sec, nanosec) -> time.time() when published

    def publish(self, info_lead: float = 0.0) -> Any:
        """One pair with its camera_info, stamped now; returns the stamp."""
        stamp = stamp_from_seconds(time.time())
        left_info, right_info = self.rig.camera_infos(stamp)
        self.client.publish(image_message(self.rig.left, self.encoding, stamp, self.frame_id),
                            image_message(self.rig.right, self.encoding, stamp, self.frame_id),
                            left_info, right_info, info_lead=info_lead)
        self.sent[(stamp.sec, stamp.nanosec)] = stamp.sec + stamp.nanosec * 1e-9
        return stamp

    def warm_up(self, timeout: float, topic: str = "disparity") -> bool:
        """One pair with its camera_info ahead of it; True once its output arrived (the first inference pays
        for lazy initialisation, so benches start measuring after this)."""
        stamp = self.publish(info_lead=0.3)
        return self.client.wait_for_stamp(topic, stamp, timeout=timeout) is not None

    def stream(self, rate: float, seconds: float | None = None, pairs: int | None = None,
               first_info_lead: float = 0.0) -> tuple[int, Any]:
        """Publish at `rate` Hz for `seconds` or `pairs` pairs (whichever is given); returns (count, last stamp)."""
        count, last, next_time = 0, None, time.monotonic()
        start = next_time
        while (pairs is None or count < pairs) and (seconds is None or time.monotonic() - start < seconds):
            last = self.publish(info_lead=first_info_lead if count == 0 else 0.0)
            count += 1
            next_time += 1.0 / rate
            time.sleep(max(0.0, next_time - time.monotonic()))
        return count, last

    def latencies_s(self, received: Sequence[Received]) -> list[float]:
        """Stamp-to-receipt seconds of the received outputs whose pair this streamer sent."""
        return [item.stamp - self.sent[key] for item in received
                if (key := (item.msg.header.stamp.sec, item.msg.header.stamp.nanosec)) in self.sent]

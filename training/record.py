"""Record the stereo topics and their camera_info into a rosbag2, for machines without `ros2 bag`.

On a ROS 2 distribution `ros2 bag record` is the first choice; this command covers pip-only installs (the PyPI
rclpy wheels have no rosbag2). It subscribes with rclpy, with the node's input QoS rule
(stereo_depth_ros.inputs.qos): reliable from reliable publishers (a camera-sized image lost on the way is sent
again), best effort where a publisher is best effort, and writes the serialized messages untouched with `rosbags`'
writer: rclpy's wire bytes are the CDR that rosbag2 stores, so `stereo-distill extract` reads the bag back
pixel-exact. Each message is logged at its receive time, as `ros2 bag record` does.

The image topics' types (sensor_msgs/Image or CompressedImage) are taken from the ROS graph, so recording starts
once both publishers are seen (--wait seconds at most). It stops on SIGINT or SIGTERM, after --duration seconds,
or after --max-pairs stereo pairs (left and right header stamps within --tolerance); every stop closes the bag,
so it always ends with its metadata.yaml. A bag killed with SIGKILL lacks it (`ros2 bag reindex` repairs one).
"""
from __future__ import annotations

import argparse
import importlib
import signal
import struct
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

from .cli import CliError

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
STORAGES = ("mcap", "sqlite3")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", type=Path, metavar="OUT", help="rosbag2 folder to create (must not exist)")
    parser.add_argument("--left-topic", required=True, help="left image topic (sensor_msgs/Image or CompressedImage)")
    parser.add_argument("--right-topic", required=True, help="right image topic")
    parser.add_argument("--left-info", default=None,
                        help="left sensor_msgs/CameraInfo topic (default: camera_info beside --left-topic)")
    parser.add_argument("--right-info", default=None, help="right CameraInfo topic (default: beside --right-topic)")
    parser.add_argument("--duration", type=float, default=0.0, help="stop after S seconds of recording (0 = no limit)")
    parser.add_argument("--max-pairs", type=int, default=0, help="stop after N stereo pairs (0 = no limit)")
    parser.add_argument("--storage", choices=STORAGES, default="mcap",
                        help="rosbag2 storage (default: mcap, as ros2 bag since Iron)")
    parser.add_argument("--tolerance", type=float, default=0.005,
                        help="largest left/right header stamp difference for a pair, seconds (as extract)")
    parser.add_argument("--wait", type=float, default=30.0,
                        help="seconds to wait for the image publishers to appear (default: 30)")


def info_topic_beside(image_topic: str) -> str:
    """/stereo/left/image_rect -> /stereo/left/camera_info (the image_pipeline convention, as extract)."""
    return image_topic.rsplit("/", 1)[0] + "/camera_info"


def header_stamp_ns(serialized: bytes) -> int:
    """The header stamp of a serialized Image, CompressedImage or CameraInfo, read from its CDR bytes.

    All three start with std_msgs/Header, whose first field is the stamp (int32 sec, uint32 nanosec) right
    after the 4-byte encapsulation header. Reading 8 bytes spares deserializing a whole image just to pair it.
    """
    little_endian = serialized[1] == 1  # encapsulation kind: 0x0001 CDR_LE, 0x0000 CDR_BE
    sec, nanosec = struct.unpack_from("<iI" if little_endian else ">iI", serialized, 4)
    return sec * 1_000_000_000 + nanosec


class PairCounter:
    """Counts stereo pairs among arriving stamps: a stamp pairs with an unused one of the other view within
    the tolerance (extract later pairs by mutually nearest stamps; for a --max-pairs limit this is enough)."""

    def __init__(self, tolerance_ns: int, memory: int = 64) -> None:
        self.tolerance_ns = tolerance_ns
        self.pending: dict[str, deque[int]] = {"left": deque(maxlen=memory), "right": deque(maxlen=memory)}
        self.pairs = 0

    def add(self, side: str, stamp_ns: int) -> None:
        other = self.pending["right" if side == "left" else "left"]
        match = next((s for s in other if abs(s - stamp_ns) <= self.tolerance_ns), None)
        if match is None:
            self.pending[side].append(stamp_ns)
        else:
            other.remove(match)
            self.pairs += 1


def _message_class(type_name: str) -> Any:
    """sensor_msgs/msg/Image -> the rclpy message class (imported by name; no rosidl_runtime_py needed)."""
    package, _, name = type_name.split("/")
    return getattr(importlib.import_module(f"{package}.msg"), name)


def _typestore() -> Any:
    from rosbags.typesys import Stores, get_typestore

    # Image, CompressedImage and CameraInfo are the same in every ROS 2 release; Kilted is the wheels' release.
    store = getattr(Stores, "ROS2_KILTED", None) or Stores.ROS2_JAZZY
    return get_typestore(store)


def _validate(args: argparse.Namespace) -> None:
    if args.out.exists():
        raise CliError(f"{args.out} already exists; rosbag2 folders are never overwritten (choose a new OUT)")
    if not args.out.parent.is_dir():
        raise CliError(f"the folder {args.out.parent} for OUT does not exist")
    for name in ("duration", "tolerance", "wait"):
        if getattr(args, name) < 0:
            raise CliError(f"--{name} must be >= 0, got {getattr(args, name)}")
    if args.max_pairs < 0:
        raise CliError(f"--max-pairs must be >= 0, got {args.max_pairs}")
    if args.left_topic == args.right_topic:
        raise CliError(f"--left-topic and --right-topic are the same topic ({args.left_topic})")


class _Stop:
    """Set by SIGINT/SIGTERM; the spin loop checks it and the bag is closed normally."""

    def __init__(self) -> None:
        self.reason = ""

    def __call__(self, signum: int, _frame: Any) -> None:
        self.reason = signal.Signals(signum).name


def run(args: argparse.Namespace) -> int:
    _validate(args)
    try:
        import rclpy
        from stereo_depth_ros.inputs.qos import input_profile, reliability_for
        from rclpy.signals import SignalHandlerOptions
    except ImportError as error:
        raise CliError(f"record needs rclpy ({error}); on a ROS 2 distribution use `ros2 bag record`") from None
    from rosbags.rosbag2 import StoragePlugin, Writer

    stop = _Stop()
    # rclpy's own SIGINT handler would shut the context down under the writer; ours only asks the loop to end.
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node("stereo_distill_record")
    try:
        image_types = _wait_for_types(node, rclpy, (args.left_topic, args.right_topic), args.wait, stop)
        if stop.reason:
            print(f"record: {stop.reason} before the publishers appeared; no bag written", file=sys.stderr)
            return 130
        topics = {
            args.left_topic: ("left", image_types[args.left_topic]),
            args.right_topic: ("right", image_types[args.right_topic]),
            args.left_info or info_topic_beside(args.left_topic): ("left_info", CAMERA_INFO_TYPE),
            args.right_info or info_topic_beside(args.right_topic): ("right_info", CAMERA_INFO_TYPE),
        }
        plugin = StoragePlugin.MCAP if args.storage == "mcap" else StoragePlugin.SQLITE3
        typestore = _typestore()
        counts = dict.fromkeys(topics, 0)
        pairs = PairCounter(round(args.tolerance * 1e9))
        with Writer(args.out, version=9, storage_plugin=plugin) as writer:
            connections = {topic: writer.add_connection(topic, type_name, typestore=typestore)
                           for topic, (_, type_name) in topics.items()}

            def on_message(topic: str, role: str):
                def callback(serialized: bytes) -> None:
                    writer.write(connections[topic], node.get_clock().now().nanoseconds, serialized)
                    counts[topic] += 1
                    if role in ("left", "right"):
                        pairs.add(role, header_stamp_ns(serialized))
                return callback

            for topic, (role, type_name) in topics.items():
                qos = input_profile(depth=10, use_system_default_qos=False)
                qos.reliability = reliability_for(i.qos_profile.reliability
                                                  for i in node.get_publishers_info_by_topic(topic))
                # raw=True hands over the serialized bytes: written as they came, never decoded.
                node.create_subscription(_message_class(type_name), topic, on_message(topic, role), qos, raw=True)
            print(f"record: {', '.join(f'{t} ({n})' for t, (_, n) in topics.items())} -> {args.out} "
                  f"({args.storage}); Ctrl-C stops", file=sys.stderr, flush=True)
            started = time.monotonic()
            while not stop.reason:
                rclpy.spin_once(node, timeout_sec=0.1)
                if args.max_pairs and pairs.pairs >= args.max_pairs:
                    stop.reason = f"{args.max_pairs} pairs"
                elif args.duration and time.monotonic() - started >= args.duration:
                    stop.reason = f"{args.duration:g} s"
        elapsed = time.monotonic() - started
        print(f"record: stopped ({stop.reason}) after {elapsed:.1f} s: {pairs.pairs} pairs; "
              + ", ".join(f"{t} {n}" for t, n in counts.items()) + f" messages -> {args.out}", file=sys.stderr)
        for topic, (role, _) in topics.items():
            if counts[topic] == 0:
                print(f"record: warning: nothing arrived on {topic} ({role})", file=sys.stderr)
        return 0
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _wait_for_types(node: Any, rclpy: Any, image_topics: tuple[str, str], wait_s: float, stop: _Stop
                    ) -> dict[str, str]:
    """Each image topic's type as the ROS graph reports it; CliError when one does not appear in time."""
    deadline = time.monotonic() + wait_s
    found: dict[str, str] = {}
    while not stop.reason:
        graph = dict(node.get_topic_names_and_types())
        for topic in image_topics:
            types = graph.get(topic, [])
            if types and topic not in found:
                usable = [t for t in types if t in IMAGE_TYPES]
                if not usable:
                    raise CliError(f"{topic} carries {types[0]}, not one of {', '.join(IMAGE_TYPES)}")
                found[topic] = usable[0]
        if len(found) == len(image_topics) or time.monotonic() >= deadline:
            break
        rclpy.spin_once(node, timeout_sec=0.2)
    missing = [t for t in image_topics if t not in found]
    if missing and not stop.reason:
        raise CliError(f"no publisher of {', '.join(missing)} appeared within {wait_s:g} s "
                       "(check the topic names with `ros2 topic list`, ROS_DOMAIN_ID and discovery range)")
    return found


__all__ = ["PairCounter", "add_arguments", "header_stamp_ns", "info_topic_beside", "run"]

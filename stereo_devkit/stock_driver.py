"""A stand-in for a stock stereo camera driver, as its own process: what a user's camera looks like to the node.

Real drivers (realsense2_camera, zed-ros2-wrapper, depthai-ros) are other processes with their own middleware
defaults: Fast DDS's default transports (its ~512 KiB shared-memory segment, so camera-sized images go over UDP
on loopback), RELIABLE depth-5 publishers by default, camera_info beside each image. This process is that:
it drops any Fast DDS profile from its environment unless told otherwise (`--keep-profile`), publishes the
real Motorcycle pair at the camera's size and encoding, stamped with the wall clock, and prints one JSON line
with what it sent.

    python -m stereo_devkit.stock_driver --size 640x480 --rate 5 --pairs 40 [--reliability reliable] \
        [--encoding rgb8|bgr8|bgra8|mono8] [--right-offset-ms 0] [--no-right] [--no-info] [--namespace NS]

The discovery settings (ROS_DOMAIN_ID, ROS_AUTOMATIC_DISCOVERY_RANGE) come from the environment. Before
streaming it waits up to `--wait` seconds for a subscriber on both image topics (`--wait 0`: do not wait), so a
run measures delivery, not discovery.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import cv2
import numpy as np

PROFILE_VARIABLES = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")
ENCODINGS = ("rgb8", "bgr8", "bgra8", "mono8")


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None
    if width < 32 or height < 32:
        raise argparse.ArgumentTypeError(f"size {text} is below 32x32")
    return width, height


def camera_views(width: int, height: int, encoding: str) -> tuple[Any, tuple[np.ndarray, np.ndarray]]:
    """(rig, (left, right) in `encoding`): the Motorcycle rig at `width`, rows fitted to `height`."""
    from stereo_devkit.motorcycle import motorcycle_rig

    rig = motorcycle_rig(width).fit_rows(height)
    codes = {"rgb8": None, "bgr8": cv2.COLOR_RGB2BGR, "bgra8": cv2.COLOR_RGB2BGRA, "mono8": cv2.COLOR_RGB2GRAY}
    code = codes[encoding]
    views = tuple(np.ascontiguousarray(view if code is None else cv2.cvtColor(view, code))
                  for view in (rig.left, rig.right))
    return rig, views  # type: ignore[return-value]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m stereo_devkit.stock_driver", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=_size, default=(640, 480), help="WIDTHxHEIGHT (default 640x480)")
    parser.add_argument("--rate", type=float, default=5.0, help="pairs per second (default 5)")
    parser.add_argument("--pairs", type=int, default=40, help="pairs to send (default 40)")
    parser.add_argument("--encoding", choices=ENCODINGS, default="rgb8")
    parser.add_argument("--reliability", choices=("reliable", "best_effort"), default="reliable",
                        help="publisher reliability (drivers default to reliable)")
    parser.add_argument("--depth", type=int, default=5, help="publisher history depth (drivers: 5)")
    parser.add_argument("--namespace", default="", help="namespace of the driver's topics")
    parser.add_argument("--topics", default="left/image_rect,right/image_rect,left/camera_info,right/camera_info",
                        help="left image, right image, left info, right info (comma-separated)")
    parser.add_argument("--right-offset-ms", type=float, default=0.0,
                        help="stamp the right image this much later than the left (a rig without hardware sync)")
    parser.add_argument("--no-right", action="store_true", help="never publish the right image")
    parser.add_argument("--no-info", action="store_true", help="publish no camera_info")
    parser.add_argument("--wait", type=float, default=20.0, help="seconds to wait for the node's subscriptions")
    parser.add_argument("--keep-profile", action="store_true",
                        help="keep a Fast DDS profile named in the environment (a driver started from our launch)")
    parser.add_argument("--linger", type=float, default=1.0,
                        help="seconds to keep the publishers after the last pair (reliable resends)")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.pairs < 1 or args.depth < 1:
        parser.error("--rate must be > 0, --pairs and --depth >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.keep_profile:  # a stock driver knows nothing of our profile: Fast DDS's defaults
        for name in PROFILE_VARIABLES:
            os.environ.pop(name, None)
    import rclpy
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image

    from stereo_devkit.client import image_message, stamp_from_seconds

    width, height = args.size
    rig, (left, right) = camera_views(width, height, args.encoding)
    rclpy.init(args=None)
    node = rclpy.create_node(f"stock_driver_{os.getpid()}", namespace=args.namespace)
    qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=args.depth, durability=DurabilityPolicy.VOLATILE,
                     reliability=(ReliabilityPolicy.RELIABLE if args.reliability == "reliable"
                                  else ReliabilityPolicy.BEST_EFFORT))
    names = args.topics.split(",")
    if len(names) != 4:
        print("stock_driver: --topics needs four comma-separated names", file=sys.stderr)
        return 2
    pub_left, pub_right = (node.create_publisher(Image, name, qos) for name in names[:2])
    pub_infos = [node.create_publisher(CameraInfo, name, qos) for name in names[2:]]
    deadline = time.monotonic() + args.wait
    watched = [pub_left] + ([] if args.no_right else [pub_right])
    while args.wait > 0 and time.monotonic() < deadline and any(p.get_subscription_count() == 0 for p in watched):
        time.sleep(0.05)
    matched = all(p.get_subscription_count() > 0 for p in watched)
    if matched and args.wait > 0:
        time.sleep(0.5)  # matching is reported a little before samples flow
    stamps: list[float] = []
    next_time = time.monotonic()
    for _ in range(args.pairs):
        now = time.time()
        stamp = stamp_from_seconds(now)
        right_stamp = stamp_from_seconds(now + args.right_offset_ms / 1e3)
        if not args.no_info:
            left_info, right_info = rig.camera_infos(stamp)
            right_info.header.stamp = right_stamp
            pub_infos[0].publish(left_info)
            pub_infos[1].publish(right_info)
        pub_left.publish(image_message(left, args.encoding, stamp, "left_camera_optical_frame"))
        if not args.no_right:
            pub_right.publish(image_message(right, args.encoding, right_stamp, "left_camera_optical_frame"))
        stamps.append(stamp.sec + stamp.nanosec * 1e-9)
        next_time += 1.0 / args.rate
        time.sleep(max(0.0, next_time - time.monotonic()))
    time.sleep(max(0.0, args.linger))
    print(json.dumps({"sent": len(stamps), "stamps": stamps, "matched": matched, "size": [width, height],
                      "encoding": args.encoding, "reliability": args.reliability}), flush=True)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())

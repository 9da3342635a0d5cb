"""Per-frame overhead of stereo_depth_node excluding inference, stage by stage, with real rclpy message classes.

Runs what the node does for one pair around the estimator: synchronise the four inputs, convert both images to
RGB, read the camera geometry, then build the DisparityImage, depth, confidence and PointCloud2 messages from a
fixed disparity map (standing in for the network's output). Publishing itself (DDS) is left out; the
`serialize` row shows what rclpy's CDR serialisation of the four outputs costs, as an indication of the copy a
publish makes. Prints a table of medians in milliseconds per resolution.

    .venv/bin/python bench/node.py [--frames 50] [--sizes 640x480 1280x720] [--encoding bgr8]
    .venv/bin/python bench/node.py --inference opencv_sgbm torch [--model-path weights/sceneflow.pth]

With --inference, also times the estimators themselves on the same sizes (torch without --model-path runs the
seeded random init: the speed is the same as with trained weights).
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections import defaultdict

import cv2
import numpy as np
from rclpy.serialization import serialize_message
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
from stereo_msgs.msg import DisparityImage

from stereo_depth_ros.camera_geometry import (
    StereoCamera, cloud_array, disparity_image_fields, disparity_to_depth, fill_disparity_image, fill_pointcloud2)
from stereo_depth_ros.config import NodeConfig
from stereo_depth_ros.image_conversion import array_to_image, image_to_rgb
from stereo_depth_ros.sync import StereoSynchronizer

STAGES = ("sync", "convert", "geometry", "disparity_msg", "depth_msg", "confidence_msg", "points_msg")


def camera_infos(width: int, height: int) -> tuple[CameraInfo, CameraInfo]:
    f, baseline = 0.8 * width, 0.12
    infos = []
    for tx in (0.0, -f * baseline):
        info = CameraInfo()
        info.width, info.height = width, height
        info.k = [f, 0.0, width / 2, 0.0, f, height / 2, 0.0, 0.0, 1.0]
        info.p = [f, 0.0, width / 2, tx, 0.0, f, height / 2, 0.0, 0.0, 0.0, 1.0, 0.0]
        infos.append(info)
    return infos[0], infos[1]


def stamped(msg, k: int):
    msg.header.stamp.sec, msg.header.stamp.nanosec = 1000 + k // 30, (k % 30) * 33_000_000
    msg.header.frame_id = "left_camera_optical_frame"
    return msg


def camera_image(width: int, height: int, encoding: str, seed: int) -> Image:
    rng = np.random.default_rng(seed)
    channels = {"mono8": 1, "rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4}[encoding]
    shape = (height, width) if channels == 1 else (height, width, channels)
    return array_to_image(rng.integers(0, 256, shape, dtype=np.uint8), encoding, Image())


def network_like_output(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Disparity (about 10 % NaN) and confidence maps with the spatial structure of real ones: invalid and
    unconfident pixels come in blobs (occlusions, textureless areas), not as independent random pixels."""
    rng = np.random.default_rng(0)

    def smooth(cells: int) -> np.ndarray:
        coarse = rng.random((max(height // cells, 1), max(width // cells, 1))).astype(np.float32)
        return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_LINEAR)

    disparity = (1.0 + 120.0 * smooth(32)).astype(np.float32)
    disparity[smooth(16) < 0.25] = np.nan
    confidence = np.clip(smooth(8) * 1.2, 0, 1).astype(np.float32)
    return disparity, confidence


def run(width: int, height: int, frames: int, encoding: str, sync_impl: str,
        clock=time.perf_counter, threshold: float = 0.0) -> dict[str, list[float]]:
    times: dict[str, list[float]] = defaultdict(list)
    left_template, right_template = camera_image(width, height, encoding, 1), camera_image(width, height, encoding, 2)
    left_info, right_info = camera_infos(width, height)
    disparity, confidence = network_like_output(width, height)
    got = []
    sync = StereoSynchronizer(got.append, implementation=sync_impl)
    camera_cache: tuple | None = None
    for k in range(frames + 5):  # the first 5 warm caches and allocators
        # Fresh messages per frame, as subscriptions deliver them (not timed: rclpy builds them in C).
        msgs = []
        for template, info in ((left_template, left_info), (right_template, right_info)):
            image = Image()
            image.height, image.width, image.encoding, image.step = (
                template.height, template.width, template.encoding, template.step)
            image.data = template.data
            msgs += [stamped(image, k), stamped(info, k)]
        t0 = clock()
        sync.add_left_info(msgs[1])
        sync.add_right_info(msgs[3])
        sync.add_left_image(msgs[0])
        sync.add_right_image(msgs[2])
        frame = got.pop()
        t1 = clock()
        left, right = image_to_rgb(frame.left_image), image_to_rgb(frame.right_image)
        t2 = clock()
        # The node re-reads geometry only when the camera_info content changes.
        key = (tuple(frame.left_info.p), tuple(frame.right_info.p))
        if camera_cache is None or camera_cache[0] != key:
            camera_cache = (key, StereoCamera.from_camera_info(frame.left_info, frame.right_info))
        camera = camera_cache[1]
        t3 = clock()
        header = frame.left_image.header
        unconfident = confidence < threshold if threshold > 0 else None
        fields = disparity_image_fields(disparity, camera, 192, invalid=unconfident)
        # check_fields=True lets rclpy keep our array.array data without another copy.
        disp_msg = DisparityImage(check_fields=True)
        disp_msg.image = Image(check_fields=True)
        disp_msg.header = header
        disp_msg.image.header = header
        fill_disparity_image(disp_msg, fields)
        t4 = clock()
        depth = disparity_to_depth(disparity, camera, confidence, threshold)
        depth_msg = array_to_image(depth, "32FC1", Image(check_fields=True))
        depth_msg.header = header
        t5 = clock()
        conf_msg = array_to_image(confidence, "32FC1", Image(check_fields=True))
        conf_msg.header = header
        t6 = clock()
        cloud = fill_pointcloud2(PointCloud2(check_fields=True), cloud_array(depth, camera, left), PointField)
        cloud.header = header
        t7 = clock()
        for msg in (disp_msg, depth_msg, conf_msg, cloud):
            serialize_message(msg)
        t8 = clock()
        assert right.shape == left.shape
        if k >= 5:
            for name, (a, b) in zip(STAGES + ("serialize",),
                                    zip((t0, t1, t2, t3, t4, t5, t6, t7), (t1, t2, t3, t4, t5, t6, t7, t8))):
                times[name].append((b - a) * 1e3)
            times["total"].append((t7 - t0) * 1e3)
            times["total_without_points"].append((t6 - t0) * 1e3)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--sizes", nargs="+", default=["640x480", "1280x720"])
    parser.add_argument("--encoding", default="bgr8", choices=["mono8", "rgb8", "bgr8", "rgba8", "bgra8"])
    parser.add_argument("--sync", default="auto", choices=["auto", "builtin", "message_filters"])
    parser.add_argument("--confidence-threshold", type=float, default=NodeConfig().confidence_threshold,
                        help="the node's confidence_threshold (default: config/stereo.yaml's)")
    parser.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                        help="wall: elapsed time; cpu: this thread's CPU time, which leaves out the time other "
                             "processes hold the CPU (use on a shared machine)")
    parser.add_argument("--inference", nargs="*", default=[], choices=["opencv_sgbm", "torch", "onnxruntime"],
                        help="also time these backends' estimate() per frame")
    parser.add_argument("--inference-frames", type=int, default=3)
    parser.add_argument("--model-path", default=None, help="checkpoint (torch) or .onnx (onnxruntime)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes]
    clock = time.perf_counter if args.clock == "wall" else time.thread_time
    results = {size: run(*size, args.frames, args.encoding, args.sync, clock, args.confidence_threshold)
               for size in sizes}
    impl = StereoSynchronizer(print, implementation=args.sync).implementation
    print(f"stereo_depth_node per-frame overhead excluding inference: median ms over {args.frames} frames, "
          f"{args.encoding} input, sync={impl}, {args.clock} clock, "
          f"confidence_threshold {args.confidence_threshold}, {platform.processor() or platform.machine()}, "
          f"numpy {np.__version__}")
    header = f"{'stage':<22}" + "".join(f"{f'{w}x{h}':>12}" for w, h in sizes)
    print(header)
    print("-" * len(header))
    rows = STAGES + ("total", "total_without_points", "serialize")
    for name in rows:
        label = {"total": "TOTAL (all outputs)", "total_without_points": "total without points",
                 "serialize": "(serialize, not in total)"}.get(name, name)
        print(f"{label:<22}" + "".join(f"{statistics.median(results[s][name]):>12.2f}" for s in sizes))
    for backend in args.inference:
        row = [time_inference(backend, w, h, args) for w, h in sizes]
        print(f"{'inference ' + backend:<22}" + "".join(f"{v:>12.1f}" for v in row))
    return 0


def time_inference(backend: str, width: int, height: int, args: argparse.Namespace) -> float:
    """Median ms of estimate() on a real-looking pair (skimage's Motorcycle resized) after one warm-up."""
    from stereo_depth_ros.inference import create_estimator
    from stereo_devkit.motorcycle import motorcycle_pair

    options = {"opencv_sgbm": {"max_disparity": 192},
               "torch": {"model_path": args.model_path, "device": args.device},
               "onnxruntime": {"model_path": args.model_path}}[backend]
    estimator = create_estimator(backend, **options)
    left, right = motorcycle_pair(height, width)
    estimator.estimate(left, right)
    times = []
    for _ in range(args.inference_frames):
        start = time.perf_counter()
        estimator.estimate(left, right)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


if __name__ == "__main__":
    raise SystemExit(main())

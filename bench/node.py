"""Per-frame overhead of stereo_depth_node excluding inference, stage by stage, with real rclpy message classes.

Runs what the node runs for one pair around the estimator: synchronise the four inputs, then the node's
`StereoPipeline` (convert both images, camera geometry from the camera_info pair, estimate, rescale, masks and
outputs) with a stand-in estimator that returns a fixed, network-like disparity and confidence (so the estimate
row is ~0 and left out of the total), then wrap the outputs in the DisparityImage, depth, confidence and
PointCloud2 messages. Publishing itself (DDS) is left out; the `serialize` row shows what rclpy's CDR
serialisation of the four outputs costs, as an indication of the copy a publish makes. Prints a table of medians
in milliseconds per resolution.

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
from sensor_msgs.msg import CameraInfo, Image

from stereo_depth_ros.config import NodeConfig
from stereo_depth_ros.image_conversion import array_to_image
from stereo_depth_ros.inference.base import StereoEstimate, StereoEstimator
from stereo_depth_ros.messages import OutputMessages
from stereo_depth_ros.pipeline import StereoPipeline
from stereo_depth_ros.postprocess import OutputRequest
from stereo_depth_ros.inputs.sync import StereoSynchronizer

STAGES = ("sync", "convert", "geometry+checks", "rescale", "postprocess", "messages")


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


class FixedEstimator(StereoEstimator):
    """Stands in for the network: returns the same disparity and confidence for every pair (not timed)."""

    name = "fixed"

    def __init__(self, disparity: np.ndarray, confidence: np.ndarray) -> None:
        self.disparity, self.confidence = disparity, confidence

    def estimate(self, left: np.ndarray, right: np.ndarray) -> StereoEstimate:
        return StereoEstimate(self.disparity.copy(), self.confidence.copy())  # fresh arrays, as a backend returns


def run(width: int, height: int, frames: int, encoding: str, sync_impl: str,
        clock=time.perf_counter, threshold: float = 0.0, points: bool = True) -> dict[str, list[float]]:
    times: dict[str, list[float]] = defaultdict(list)
    # A real backend frees blocks larger than any output (SGBM's cost volume, torch tensors), which raises glibc's
    # mmap threshold: rclpy's large message copies (serialize, publish) then reuse heap memory instead of paying
    # page faults on every frame (10x on `serialize` here). The stand-in estimator frees nothing that large.
    np.ones(width * height * 32, np.uint8).sum()
    left_template, right_template = camera_image(width, height, encoding, 1), camera_image(width, height, encoding, 2)
    left_info, right_info = camera_infos(width, height)
    pipeline = StereoPipeline(FixedEstimator(*network_like_output(width, height)), max_disparity=192,
                              confidence_threshold=threshold, clock=clock)
    request = OutputRequest(disparity=True, depth=True, points=points, confidence=True)
    builder = OutputMessages()
    got = []
    sync = StereoSynchronizer(got.append, implementation=sync_impl, info_wait_seconds=0.0)
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
        result = pipeline.process(frame.left_image, frame.right_image, request,
                                  infos=(frame.left_info, frame.right_info))
        t2 = clock()
        header = frame.left_image.header
        out = result.outputs
        assert out is not None and out.disparity is not None and out.depth is not None
        assert out.confidence is not None and (out.points is not None) == points
        messages = [builder.disparity(out, header), builder.image("depth", out.depth, header),
                    builder.image("confidence", out.confidence, header)]
        if out.points is not None:
            messages.append(builder.cloud(out.points, header))
        t3 = clock()
        for msg in messages:
            serialize_message(msg)
        t4 = clock()
        if k >= 5:
            stage = result.timings
            times["sync"].append((t1 - t0) * 1e3)
            times["convert"].append(stage["convert"] * 1e3)
            # What process() spent besides its timed stages (pair checks, cached geometry, the estimator call's
            # own stand-in being excluded).
            times["geometry+checks"].append(
                (t2 - t1 - sum(stage.values())) * 1e3)
            times["rescale"].append(stage["rescale"] * 1e3)
            times["postprocess"].append(stage["postprocess"] * 1e3)
            times["messages"].append((t3 - t2) * 1e3)
            times["serialize"].append((t4 - t3) * 1e3)
            times["total"].append((t3 - t0 - stage["estimate"]) * 1e3)
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
    no_points = {size: run(*size, args.frames, args.encoding, args.sync, clock, args.confidence_threshold,
                           points=False) for size in sizes}
    impl = StereoSynchronizer(print, implementation=args.sync).implementation
    print(f"stereo_depth_node per-frame overhead excluding inference: median ms over {args.frames} frames, "
          f"{args.encoding} input, sync={impl}, {args.clock} clock, "
          f"confidence_threshold {args.confidence_threshold}, {platform.processor() or platform.machine()}, "
          f"numpy {np.__version__}")
    header = f"{'stage':<26}" + "".join(f"{f'{w}x{h}':>12}" for w, h in sizes)
    print(header)
    print("-" * len(header))
    for name in STAGES + ("total", "total_without_points", "serialize"):
        label = {"total": "TOTAL (all outputs)", "total_without_points": "total without points",
                 "serialize": "(serialize, not in total)"}.get(name, name)
        source = no_points if name == "total_without_points" else results
        key = "total" if name == "total_without_points" else name
        print(f"{label:<26}" + "".join(f"{statistics.median(source[s][key]):>12.2f}" for s in sizes))
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

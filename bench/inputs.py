"""The node's camera inputs: what decoding compressed images and rectifying raw ones cost, and what they change.

    .venv/bin/python bench/inputs.py costs [--reps 30]
    .venv/bin/python bench/inputs.py node [--pairs 5]
    .venv/bin/python bench/inputs.py presets

costs: per pair (left + right), in this process, as the node's worker thread runs it (inputs/sources.py's
FrameDecoder on sensor_msgs messages): decoding JPEG (quality 90) and PNG (compression level 3,
compressed_image_transport's defaults) at 640x480 and 1280x720, rgb8 and mono8; rectifying rgb8 and mono8 with
cached maps (and building the maps, once per camera_info). Median and 90th percentile of --reps runs.

node: the Motorcycle pair (741x500) through stereo_depth_node over DDS (opencv_sgbm, the node in its own process,
reliable QoS on both sides, and the Fast DDS profile on both sides, as `driver:=true` runs a driver: a 1.1 MB
image from a publisher on Fast DDS's default transports did not arrive here at all, which is issue 18's subject,
not this bench's), one node per input kind:
raw rgb8 (the reference), PNG and JPEG-90 CompressedImage, and a raw pair with distortion and a small rotation
(stereo_devkit/raw_camera.py: known K, D, R, P) rectified by the node. Prints how each disparity map differs from
the reference's for the same pairs.

presets: `ros2 launch stereo_depth_ros stereo.launch.py camera:=<preset> backend:=opencv_sgbm` for each preset and
what `ros2 node info /stereo_depth_node` prints (needs the ROS tooling wheels).
"""
from __future__ import annotations

import argparse
import functools
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from stereo_depth_ros.inputs.sources import FrameDecoder  # noqa: E402
from stereo_depth_ros.inputs.sync import StereoFrame  # noqa: E402
from stereo_devkit.client import StereoClient, compressed_message, image_message, stamp_from_seconds  # noqa: E402
from stereo_devkit.motorcycle import FRAME_ID, motorcycle_pair, motorcycle_rig  # noqa: E402
from stereo_devkit.node_process import NodeProcess, isolated_ros_env, node_command, package_fastdds_profile  # noqa
from stereo_devkit.raw_camera import raw_stereo_rig  # noqa: E402

SIZES = ((640, 480), (1280, 720))
# The node's default input QoS (reliable from the reliable client): this bench is about what the inputs do to
# the pixels.
SGBM = {"backend": "opencv_sgbm", "max_disparity": 64}


def machine() -> str:
    import cv2

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, OpenCV {cv2.__version__} "
            f"({cv2.getNumThreads()} threads); load average {load}")


def timed(function, reps: int) -> tuple[float, float]:
    """(median, 90th percentile) milliseconds of `function()` over `reps` runs after one warm-up run."""
    function()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        function()
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times)), float(np.percentile(times, 90))


def costs(reps: int) -> None:
    stamp = stamp_from_seconds(1.0)
    print(f"# decode and rectification cost per pair (left + right), {reps} runs; {machine()}")
    print("| size | input | per pair: median ms | p90 ms | compressed size per image |")
    print("|---|---|---|---|---|")
    for width, height in SIZES:
        left, right = motorcycle_pair(height, width)
        for encoding in ("rgb8", "mono8"):
            views = (left, right) if encoding == "rgb8" else tuple(v.mean(axis=2).astype(np.uint8) for v in (left,
                                                                                                          right))
            for codec in ("jpeg", "png"):
                msgs = [compressed_message(v, encoding, stamp, FRAME_ID, codec, jpeg_quality=90) for v in views]
                frame = StereoFrame(msgs[0], msgs[1], None, None)
                decoder = FrameDecoder(compressed=True)
                median, p90 = timed(functools.partial(decoder.decode, frame), reps)
                label = "JPEG q90" if codec == "jpeg" else "PNG"
                print(f"| {width}x{height} | {label} {encoding} decode | {median:.2f} | {p90:.2f} | "
                      f"{len(msgs[0].data) / 1024:.0f} KiB |")
            raw = raw_stereo_rig(motorcycle_rig(width).fit_rows(height))
            pixels = (raw.left, raw.right) if encoding == "rgb8" else tuple(
                v.mean(axis=2).astype(np.uint8) for v in (raw.left, raw.right))
            infos = raw.camera_infos(stamp)
            frame = StereoFrame(image_message(pixels[0], encoding, stamp, FRAME_ID),
                                image_message(pixels[1], encoding, stamp, FRAME_ID), *infos)
            decoder = FrameDecoder(rectify=True)
            start = time.perf_counter()
            decoder.decode(frame)  # builds both maps
            build = (time.perf_counter() - start) * 1e3
            median, p90 = timed(functools.partial(decoder.decode, frame), reps)
            print(f"| {width}x{height} | rectify {encoding} (maps cached) | {median:.2f} | {p90:.2f} | - |")
            print(f"| {width}x{height} | rectify {encoding}: first pair, maps built | {build:.1f} | - | - |")


def run_node(params: dict, env: dict, workdir: Path, messages, inputs: dict | None = None,
             compressed: bool = False) -> list[tuple[np.ndarray, float]]:
    """(disparity map, min_disparity) per pair: `messages(stamp)` -> (left, right, left_info, right_info)."""
    results = []
    with NodeProcess(node_command({**params, "diagnostics_period": 1.0}), env, workdir / "node.log", cwd=REPO) \
            as node, StereoClient(env, inputs=inputs, compressed=compressed, outputs=("disparity",)) as client:
        if not client.wait_for_node(60.0):
            raise SystemExit(f"node did not come up:\n{node.log()[-2000:]}")
        for index in range(len(PAIR_STAMPS)):
            stamp = PAIR_STAMPS[index]
            client.publish(*messages(stamp), info_lead=0.3 if index == 0 else 0.05)
            msg = client.wait_for_stamp("disparity", stamp, timeout=60.0)
            if msg is None:
                raise SystemExit(f"no disparity for pair {index}:\n{node.log()[-2000:]}")
            data = np.frombuffer(msg.image.data, np.float32).reshape(msg.image.height, msg.image.width).copy()
            results.append((data, float(msg.min_disparity)))
        node.stop()
    return results


def compare(name: str, got: list, reference: list) -> None:
    diffs, differing, got_share, ref_share = [], [], [], []
    for (g, g_min), (r, r_min) in zip(got, reference, strict=True):
        g_ok, r_ok = g >= g_min, r >= r_min
        both = g_ok & r_ok
        diffs.append(np.abs(g - r)[both])
        differing.append(float(np.mean((g != r) | (g_ok != r_ok))))
        got_share.append(g_ok.mean())
        ref_share.append(r_ok.mean())
    d = np.concatenate(diffs)
    print(f"| {name} | {d.max():.3f} | {np.median(d):.3f} | {np.mean(d):.3f} | {100 * np.mean(d > 1):.2f} % | "
          f"{100 * np.mean(differing):.2f} % | {100 * np.mean(got_share):.1f} % | {100 * np.mean(ref_share):.1f} % |")


PAIR_STAMPS: list = []


def node_runs(pairs: int) -> None:
    rig = motorcycle_rig(741)
    raw = raw_stereo_rig(rig)
    PAIR_STAMPS[:] = [stamp_from_seconds(time.time() + 0.1 * i) for i in range(pairs)]
    print(f"# the Motorcycle pair {rig.width}x{rig.height} through stereo_depth_node (opencv_sgbm, max_disparity 64),"
          f" {pairs} pairs per input; {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        # A domain of its own: other DDS runs on this machine must not feed this node (nor it them).
        env = isolated_ros_env(tmp, domain_id=random.randrange(5, 100), fastdds_profile=package_fastdds_profile())
        compressed_inputs = {"left_image": "left/image_rect/compressed", "right_image": "right/image_rect/compressed"}

        def plain(stamp):
            return (image_message(rig.left, "rgb8", stamp, FRAME_ID), image_message(rig.right, "rgb8", stamp, FRAME_ID),
                    *rig.camera_infos(stamp))

        def packed(codec):
            def messages(stamp):
                return (compressed_message(rig.left, "rgb8", stamp, FRAME_ID, codec, 90),
                        compressed_message(rig.right, "rgb8", stamp, FRAME_ID, codec, 90), *rig.camera_infos(stamp))
            return messages

        def distorted(stamp):
            return (image_message(raw.left, "rgb8", stamp, FRAME_ID), image_message(raw.right, "rgb8", stamp, FRAME_ID),
                    *raw.camera_infos(stamp))

        runs = {}
        for name, params, messages, inputs, compressed in (
                ("raw rgb8 (reference)", SGBM, plain, None, False),
                ("PNG CompressedImage", {**SGBM, "image_transport": "compressed"}, packed("png"), compressed_inputs,
                 True),
                ("JPEG q90 CompressedImage", {**SGBM, "image_transport": "compressed"}, packed("jpeg"),
                 compressed_inputs, True),
                ("raw distorted + rotated, rectify: true", {**SGBM, "rectify": True}, distorted,
                 {"left_image": "left/image_raw", "right_image": "right/image_raw"}, False)):
            workdir = Path(tmp) / name.split()[0]
            workdir.mkdir(exist_ok=True)
            runs[name] = run_node(params, env, workdir, messages, inputs, compressed)
        print("| input | max abs diff (px) | median | mean | > 1 px | pixels differing at all | answered | answered "
              "by reference |")
        print("|---|---|---|---|---|---|---|---|")
        reference = runs.pop("raw rgb8 (reference)")
        for name, got in runs.items():
            compare(name, got, reference)
    print("abs diff over the pixels both answered; 'differing at all': share of all pixels whose value or validity "
          "differs")
    print(f"raw distorted pair: plumb_bob D {[float(x) for x in raw.left_camera.d]}, rotations left/right "
          f"{np.degrees(np.arccos((np.trace(raw.left_camera.r) - 1) / 2)):.2f} / "
          f"{np.degrees(np.arccos((np.trace(raw.right_camera.r) - 1) / 2)):.2f} degrees")


def presets() -> None:
    from stereo_depth_ros.camera_presets import PRESETS

    venv_bin = Path(sys.executable).parent
    for camera in PRESETS:
        with tempfile.TemporaryDirectory() as tmp:
            env = isolated_ros_env(tmp, domain_id=random.randrange(5, 100))
            env["PATH"] = f"{venv_bin}{os.pathsep}{env['PATH']}"
            env["AMENT_PREFIX_PATH"] = sys.prefix
            command = ["ros2", "launch", "stereo_depth_ros", "stereo.launch.py", f"camera:={camera}",
                       "backend:=opencv_sgbm"]
            with NodeProcess(command, env, Path(tmp) / "launch.log", cwd=tmp) as launch:
                if not launch.wait_for_log("ready:", timeout=60):
                    raise SystemExit(launch.log())
                info = subprocess.run(["ros2", "node", "info", "/stereo_depth_node", "--no-daemon", "--spin-time",
                                       "5"], env=env, capture_output=True, text=True, timeout=60)
                launch.stop()
            ready = next(line for line in launch.log().splitlines() if "ready:" in line)
            print(f"$ ros2 launch stereo_depth_ros stereo.launch.py camera:={camera} backend:=opencv_sgbm")
            print(ready.split("]: ", 1)[-1].replace("\x1b[0m", ""))
            print("$ ros2 node info /stereo_depth_node")
            print(info.stdout.split("  Publishers:")[0].rstrip() + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("costs").add_argument("--reps", type=int, default=30)
    sub.add_parser("node").add_argument("--pairs", type=int, default=5)
    sub.add_parser("presets")
    args = parser.parse_args()
    if args.command == "costs":
        costs(args.reps)
    elif args.command == "node":
        node_runs(args.pairs)
    else:
        presets()


if __name__ == "__main__":
    main()

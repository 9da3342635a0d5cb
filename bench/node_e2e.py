"""End-to-end figures through real DDS: transport latency with and without the Fast DDS profile, and the node's
latency and sustained output rate with a given backend.

    .venv/bin/python bench/node_e2e.py transport [--size 1280x720] [--frames 90] [--rate 30]
    .venv/bin/python bench/node_e2e.py node [--backend torch] [--size 640x480] [--seconds 20] [--rate 10]

transport: one process publishes rgb8 images (reliable QoS, stamped at publish time), another subscribes and
records receipt time minus stamp; run once without a profile (Fast DDS defaults: a ~512 KiB shared-memory
segment) and once with config/fastdds_shm.xml. Each run is a fresh pair of processes because Fast DDS reads its
profile once per process.

node: stereo_depth_node in its own process (with the Fast DDS profile, as the launch file does), fed the
Motorcycle pair at --rate for --seconds by a client that publishes like a stock camera driver (reliable, on Fast
DDS's default transports: stereo_devkit.client.StereoClient); reports end-to-end latency (stamp -> disparity received by the client),
the output rate the node sustains, and the node's own inference time and drop count from /diagnostics. The torch
backend uses weights/sceneflow.pth when present, else the parity fixture's seeded weights (same architecture,
same speed). Figures depend on the machine: print them with it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from stereo_depth_ros.inputs.sync import stamp_ns  # noqa: E402
from stereo_devkit.client import diagnostic_values, image_message, stamp_from_seconds  # noqa: E402
from stereo_devkit.node_process import isolated_ros_env  # noqa: E402

from node_stream import stream_and_collect, warmed_up_node  # noqa: E402  (bench/, beside this script)

PROFILE = REPO / "config" / "fastdds_shm.xml"


def parse_size(text: str) -> tuple[int, int]:
    width, height = (int(v) for v in text.lower().split("x"))
    return width, height


# -- transport --------------------------------------------------------------------------------------------------

def _transport_role(role: str, width: int, height: int, frames: int, rate: float) -> None:
    """Body of one transport process: 'pub' or 'sub' (prints a JSON line)."""
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node(f"bench_{role}")
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    if role == "pub":
        publisher = node.create_publisher(Image, "bench_image", qos)
        pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), np.uint8)
        deadline = time.monotonic() + 30
        while publisher.get_subscription_count() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)
        for _ in range(frames):
            msg = image_message(pixels, "rgb8", stamp_from_seconds(time.time()), "bench")
            msg.header.stamp = stamp_from_seconds(time.time())
            publisher.publish(msg)
            time.sleep(1.0 / rate)
        time.sleep(1.0)
    else:
        latencies = []

        def record(msg: Image) -> None:
            latencies.append(time.time() - stamp_ns(msg) * 1e-9)

        node.create_subscription(Image, "bench_image", record, qos)
        deadline = time.monotonic() + 30 + frames / rate
        while len(latencies) < frames and time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.1)
        lat = np.array(latencies) * 1e3
        print(json.dumps({"received": len(latencies), "median_ms": float(np.median(lat)) if lat.size else None,
                          "p90_ms": float(np.percentile(lat, 90)) if lat.size else None}))
    node.destroy_node()
    rclpy.try_shutdown()


def bench_transport(args: argparse.Namespace) -> None:
    width, height = parse_size(args.size)
    print(f"transport: {width}x{height} rgb8 ({width * height * 3 / 2**20:.2f} MiB), {args.frames} frames at "
          f"{args.rate} Hz, reliable QoS, two processes")
    for label, profile in (("default Fast DDS", None), ("fastdds_shm.xml", PROFILE)):
        with tempfile.TemporaryDirectory(prefix="bench_transport_") as tmp:
            env = isolated_ros_env(tmp, fastdds_profile=profile)
            role = [sys.executable, __file__, "_transport", "--size", args.size, "--frames", str(args.frames),
                    "--rate", str(args.rate)]
            sub = subprocess.Popen(role + ["--role", "sub"], env=env, stdout=subprocess.PIPE, text=True)
            pub = subprocess.run(role + ["--role", "pub"], env=env, capture_output=True, text=True)
            out, _ = sub.communicate(timeout=120)
            line = [x for x in out.splitlines() if x.startswith("{")]
            result = json.loads(line[-1]) if line else {"received": 0, "median_ms": None, "p90_ms": None}
            if pub.returncode != 0:
                result["publisher_error"] = pub.stderr[-300:]
        print(f"  {label:18s} received {result['received']:3d}/{args.frames}  median {_ms(result['median_ms'])}  "
              f"p90 {_ms(result['p90_ms'])}")


def _ms(value) -> str:
    return "   n/a  " if value is None else f"{value:7.1f} ms"


# -- node -------------------------------------------------------------------------------------------------------

def bench_node(args: argparse.Namespace) -> None:
    from stereo_devkit.motorcycle import motorcycle_rig

    width, height = parse_size(args.size)
    rig = motorcycle_rig(width).fit_rows(height)  # the camera's aspect kept: rows cropped or padded
    params: dict[str, object] = {"backend": args.backend, "max_disparity": args.max_disparity}
    if args.backend == "torch":
        weights = REPO / "weights" / "sceneflow.pth"
        if not weights.is_file():
            weights = REPO.parent / "shared" / "parity" / "rt_igev" / "weights.pth"
        params.update({"model": "rt_igev", "model_path": str(weights), "device": args.device})
        if args.iters:
            params["iters"] = args.iters
    elif args.backend == "onnxruntime":
        params["model_path"] = args.model_path
    with tempfile.TemporaryDirectory(prefix="bench_node_") as tmp:
        env = isolated_ros_env(tmp, fastdds_profile=None if args.no_profile else PROFILE)
        with warmed_up_node(params, env, tmp, rig, warmup_timeout=300.0) as (node, client, streamer):
            start = time.monotonic()
            streamed = stream_and_collect(client, streamer, args.rate, args.seconds, timeout=300.0)
            elapsed = time.monotonic() - start
            diag = client.wait_for("diagnostics", None, timeout=5.0, start=max(client.count("diagnostics") - 1, 0))
            node.stop()
    values = diagnostic_values(diag) if diag is not None else {}
    lat = streamed.latencies_ms
    print(f"node: backend {args.backend}{' (' + str(params.get('model_path')) + ')' if 'model_path' in params else ''}"
          f", {width}x{height} rgb8 at {args.rate} Hz for {args.seconds:.0f} s, Fast DDS profile "
          f"{'off' if args.no_profile else 'on'}")
    print(f"  sent {streamed.sent} pairs in {args.seconds:.0f} s, published {len(streamed.outputs)} (the node keeps "
          f"only the newest pair while busy) -> sustained {streamed.rate:.2f} Hz; whole run {elapsed:.1f} s")
    if lat.size:
        print(f"  latency stamp -> disparity at the client: median {np.median(lat):.0f} ms, min {lat.min():.0f} ms, "
              f"max {lat.max():.0f} ms")
    print(f"  node diagnostics: inference {values.get('inference_ms_median', '?')} ms (median), receive-to-publish "
          f"{values.get('latency_ms_median', '?')} ms, dropped {values.get('dropped_pairs', '?')}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    transport = sub.add_parser("transport", help="image latency between two processes, profile on vs off")
    transport.add_argument("--size", default="1280x720")
    transport.add_argument("--frames", type=int, default=90)
    transport.add_argument("--rate", type=float, default=30.0)
    role = sub.add_parser("_transport")
    role.add_argument("--role", choices=["pub", "sub"], required=True)
    role.add_argument("--size", default="1280x720")
    role.add_argument("--frames", type=int, default=90)
    role.add_argument("--rate", type=float, default=30.0)
    node = sub.add_parser("node", help="latency and sustained rate through stereo_depth_node")
    node.add_argument("--backend", default="torch", choices=["torch", "onnxruntime", "opencv_sgbm"])
    node.add_argument("--model-path", default="", help="the .onnx file for onnxruntime")
    node.add_argument("--device", default="auto")
    node.add_argument("--iters", type=int, default=0, help="refinement iterations (0 = model default)")
    node.add_argument("--size", default="640x480")
    node.add_argument("--rate", type=float, default=10.0)
    node.add_argument("--seconds", type=float, default=20.0)
    node.add_argument("--max-disparity", type=int, default=192)
    node.add_argument("--no-profile", action="store_true", help="run without the Fast DDS profile")
    args = parser.parse_args()
    if args.mode == "_transport":
        width, height = parse_size(args.size)
        _transport_role(args.role, width, height, args.frames, args.rate)
        return 0
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
          f"python {platform.python_version()}")
    if args.mode == "transport":
        bench_transport(args)
    else:
        bench_node(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

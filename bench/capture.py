"""Hard-pair capture under load: the node's output rate with capture off and with capture on every pair.

    .venv/bin/python bench/capture.py [--size 640x480] [--rate 15] [--seconds 20] [--max-disparity 128] [--rounds 1]

Runs stereo_depth_node (opencv_sgbm, the Fast DDS profile, as the launch file does) twice in its own process, fed
the Motorcycle pair as rgb8 at --rate for --seconds by a client that publishes like a stock camera driver
(reliable, Fast DDS's default transports): once with capture off, once with `capture_every_s` tiny so
that every pair the node processes is offered to the capture writer. Prints, for each run, the pairs sent and
published, the sustained output rate (first to last output), the client's stamp -> disparity latency and the
node's inference time, and for the capture run the pairs written, dropped (queue full) and failed, and the folder
size. The load average before each run is printed with it: figures taken on a shared machine are pessimistic.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from stereo_depth_ros.dataset_layout import folder_bytes, sample_names  # noqa: E402
from stereo_devkit.client import diagnostic_values  # noqa: E402
from stereo_devkit.motorcycle import motorcycle_rig  # noqa: E402
from stereo_devkit.node_process import isolated_ros_env  # noqa: E402

from node_stream import stream_and_collect, warmed_up_node  # noqa: E402  (bench/, beside this script)

PROFILE = REPO / "config" / "fastdds_shm.xml"


def run(args: argparse.Namespace, capture: bool) -> dict:
    width, height = (int(v) for v in args.size.split("x"))
    rig = motorcycle_rig(width).fit_rows(height)
    params: dict[str, object] = {"backend": "opencv_sgbm", "max_disparity": args.max_disparity,
                                 "diagnostics_period": 0.5}
    with tempfile.TemporaryDirectory(prefix="bench_capture_") as tmp:
        folder = Path(tmp) / "captures"
        if capture:
            params.update(capture_dir=str(folder), capture_every_s=1e-6, capture_max_pairs=0,
                          capture_max_megabytes=0.0)
        env = isolated_ros_env(tmp, fastdds_profile=PROFILE)
        load = os.getloadavg()[0]
        with warmed_up_node(params, env, tmp, rig, warmup_timeout=120.0) as (node, client, streamer):
            streamed = stream_and_collect(client, streamer, args.rate, args.seconds, timeout=60.0)
            diag = client.wait_for("diagnostics", None, timeout=5.0, start=client.count("diagnostics"))
            values = diagnostic_values(diag) if diag is not None else {}
            if capture:  # let the writer finish: every pair offered is then written or dropped
                deadline = time.monotonic() + 60.0
                while time.monotonic() < deadline:
                    diag = client.wait_for("diagnostics", None, timeout=5.0, start=client.count("diagnostics"))
                    now = diagnostic_values(diag) if diag is not None else {}
                    offered = int(now.get("processed_pairs", 0)) + int(now.get("idle_pairs", 0))
                    if int(now.get("captured_pairs", 0)) + int(now.get("capture_dropped", 0)) == offered:
                        values.update({k: v for k, v in now.items() if k.startswith("capture")})
                        break
            node.stop()
        latencies = streamed.latencies_ms
        return {"load": load, "sent": streamed.sent, "published": len(streamed.outputs), "rate": streamed.rate,
                "latency": float(np.median(latencies)) if latencies.size else float("nan"), "values": values,
                "samples": len(sample_names(folder)), "megabytes": folder_bytes(folder) / 1e6 if capture else 0.0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--rate", type=float, default=15.0, help="input pairs per second")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--max-disparity", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=1,
                        help="off/on pairs of runs, alternated (on a shared machine the load drifts between runs)")
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
          f"python {platform.python_version()}; opencv_sgbm ({args.max_disparity} px), {args.size} rgb8 at "
          f"{args.rate:g} Hz for {args.seconds:g} s")
    for capture in (False, True) * args.rounds:
        result = run(args, capture)
        values = result["values"]
        print(f"capture {'on (every pair)' if capture else 'off'}: load average {result['load']:.1f}; sent "
              f"{result['sent']}, published {result['published']} -> sustained {result['rate']:.2f} Hz; latency "
              f"median {result['latency']:.0f} ms; node inference {values.get('inference_ms_median', '?')} ms, "
              f"dropped by the node (busy) {values.get('dropped_pairs', '?')}")
        if capture:
            print(f"  capture: written {values.get('captured_pairs', '?')} pairs "
                  f"({result['samples']} in the folder, {result['megabytes']:.1f} MB), dropped (queue full) "
                  f"{values.get('capture_dropped', '?')}, failed {values.get('capture_failed', '?')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

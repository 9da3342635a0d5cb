"""What reaches the node from a camera driver: delivered share of pairs and latency, per transport setup.

Each row starts the node as a user does (`ros2 launch stereo_depth_ros stereo.launch.py`, so with the launch
file's Fast DDS profile on the node's side), a stock-driver stand-in as its own process
(`stereo_devkit.stock_driver`: the Motorcycle pair at the camera's size, rgb8, RELIABLE or BEST_EFFORT depth-5
publishers, on Fast DDS's default transports or on the project's profile), and a viewer in this process that
subscribes to `disparity` like RViz (reliable, default transports). The estimator is made cheap so that only
transport and input are measured: opencv_sgbm at a 160x120 working size with 16 disparities, no points, no
confidence (`--estimator default` runs the README's launch instead: SGBM at the camera's size).

    delivered: disparity outputs the viewer got for the pairs the driver sent (share of sent pairs)
    formed:    complete pairs the node's synchroniser formed (its /diagnostics), share of sent pairs
    received:  left / right images that reached the node (its /diagnostics; "–" for a node without input health)
    plain:     with --plain, complete pairs a plain reliable rclpy subscriber in the viewer received (equal stamps
               on both sides): what the node should form as well
    latency:   driver stamp -> viewer receipt, median and 90th percentile

    .venv/bin/python bench/transport.py                      # the full matrix (16 rows, about 5 minutes)
    .venv/bin/python bench/transport.py --sizes 640x480 --rates 5,auto --reliability reliable \
        --transports default --estimator default             # the stock driver against the README's launch
    .venv/bin/python bench/transport.py --node-code ../old     # the node (and launch file) from another checkout

`auto` as a rate: 80 % of the node's own processing rate (measured on a first short run). Prints a table and,
with `--out FILE.json`, writes every figure. Needs the ROS tooling (`ros2 launch`): the venv with
../shared/ros/wheels, or a ROS 2 distribution.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from stereo_depth_ros.atomic_io import atomic_write_json  # noqa: E402
from stereo_devkit.node_process import isolated_ros_env, package_fastdds_profile  # noqa: E402

CHEAP = {"backend": "opencv_sgbm", "input_width": 160, "input_height": 120, "max_disparity": 16,
         "publish_points": False, "publish_confidence": False}
STREAM_S = 6.0


def _params_file(folder: Path, estimator: str) -> Path | None:
    if estimator == "default":
        return None
    lines = ["stereo_depth_node:", "  ros__parameters:"]
    lines += [f"    {key}: {json.dumps(value)}" for key, value in CHEAP.items()]
    path = folder / "transport_bench.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


class Viewer:
    """An rclpy subscriber to `disparity` and `/diagnostics`, on default transports, in its own context."""

    def __init__(self, env: dict[str, str], plain: bool = False) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from stereo_msgs.msg import DisparityImage

        os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = env["ROS_AUTOMATIC_DISCOVERY_RANGE"]
        for key in ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE"):
            os.environ.pop(key, None)
        self._rclpy, self.context = rclpy, rclpy.Context()
        rclpy.init(context=self.context, domain_id=int(env["ROS_DOMAIN_ID"]),
                   signal_handler_options=rclpy.signals.SignalHandlerOptions.NO)
        self.node = rclpy.create_node(f"transport_viewer_{os.getpid()}", context=self.context)
        self.received: dict[int, float] = {}
        self.diagnostics: dict[str, str] = {}
        self.node.create_subscription(DisparityImage, "disparity", self._on_disparity,
                                      QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self.plain: dict[str, set[int]] = {"left": set(), "right": set()}
        if plain:
            from sensor_msgs.msg import Image

            for side in self.plain:
                self.node.create_subscription(Image, f"{side}/image_rect", functools.partial(self._on_image, side),
                                              QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except Exception:  # shut down while spinning
            pass

    def _on_disparity(self, msg) -> None:
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        self.received.setdefault(stamp, time.time())

    def _on_image(self, side: str, msg) -> None:
        self.plain[side].add(msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec)

    def _on_diagnostics(self, msg) -> None:
        for status in msg.status:
            if "stereo" in status.name:
                self.diagnostics = {kv.key: kv.value for kv in status.values}

    def wait_for_node(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.node.count_publishers("disparity") and self.diagnostics:
                return True
            time.sleep(0.1)
        return False

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        self._rclpy.try_shutdown(context=self.context)
        self._thread.join(timeout=5.0)


def run_row(size: str, rate: float, reliability: str, transports: str, estimator: str, node_code: Path | None,
            seconds: float, plain: bool = False) -> dict:
    """One configuration: launch, stream, count. Returns the row's figures."""
    with tempfile.TemporaryDirectory(prefix="bench_transport_") as tmp:
        folder = Path(tmp)
        env = isolated_ros_env(folder, fastdds_profile=None)
        launch_file = "stereo.launch.py"
        command = ["ros2", "launch", "stereo_depth_ros", launch_file]
        if node_code is not None:  # another checkout's node and launch file, this venv's libraries
            env["PYTHONPATH"] = f"{node_code}{os.pathsep}{env.get('PYTHONPATH', '')}"
            command = ["ros2", "launch", str(node_code / "launch" / launch_file)]
        params = _params_file(folder, estimator)
        if params is None and node_code is not None:  # that checkout's own defaults, not the installed ones
            params = node_code / "config" / "stereo.yaml"
        command += ["backend:=opencv_sgbm"] + ([f"params_file:={params}"] if params else [])
        log = open(folder / "launch.log", "wb")
        launch = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=folder,
                                  start_new_session=True)
        viewer = Viewer(env, plain)
        try:
            if not viewer.wait_for_node(60.0):
                raise SystemExit(f"node did not come up:\n{(folder / 'launch.log').read_text()[-2000:]}")
            driver_env = dict(env, PYTHONPATH=str(REPO))
            driver = [sys.executable, "-m", "stereo_devkit.stock_driver", "--size", size, "--rate", f"{rate:g}",
                      "--pairs", str(max(2, int(rate * seconds))), "--reliability", reliability]
            if transports == "profile":
                driver_env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(package_fastdds_profile())
                driver.append("--keep-profile")
            done = subprocess.run(driver, env=driver_env, capture_output=True, text=True, cwd=REPO, timeout=600)
            if done.returncode != 0:
                raise SystemExit(f"stock driver failed: {done.stderr[-1500:]}")
            sent = json.loads(done.stdout.strip().splitlines()[-1])
            time.sleep(2.0)  # the last outputs and one more /diagnostics
            diagnostics = dict(viewer.diagnostics)
        finally:
            viewer.close()
            os.killpg(launch.pid, signal.SIGINT)
            try:
                launch.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(launch.pid, signal.SIGKILL)
            log.close()
    stamps = {int(round(s * 1e9)) for s in sent["stamps"]}
    got = {stamp: at for stamp, at in viewer.received.items() if stamp in stamps}
    latency = np.array([at - stamp / 1e9 for stamp, at in got.items()]) * 1e3
    formed = diagnostics.get("complete_pairs", diagnostics.get("received_pairs"))
    return {"size": size, "rate_hz": rate, "reliability": reliability, "transports": transports,
            "sent": sent["sent"], "delivered": len(got), "formed": int(formed) if formed else None,
            "received_left": _int(diagnostics.get("left_image_received")),
            "received_right": _int(diagnostics.get("right_image_received")),
            "plain_pairs": len(viewer.plain["left"] & viewer.plain["right"] & stamps) if plain else None,
            "latency_ms_median": float(np.median(latency)) if latency.size else None,
            "latency_ms_p90": float(np.percentile(latency, 90)) if latency.size else None,
            "inference_ms_median": _float(diagnostics.get("inference_ms_median"))}


def _int(text: str | None) -> int | None:
    return int(text) if text is not None and text.isdigit() else None


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def _count(value: int | None) -> str:
    return "–" if value is None else str(value)


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"


def _share(part: int | None, whole: int) -> str:
    return "–" if part is None else f"{part}/{whole} ({100 * part / whole:.0f} %)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="640x480,1280x720", help="WIDTHxHEIGHT, comma-separated")
    parser.add_argument("--rates", default="15,30", help="Hz, comma-separated; 'auto' = 80 %% of the node's speed")
    parser.add_argument("--reliability", default="reliable,best_effort",
                        help="the driver's publishers: reliable and/or best_effort, comma-separated")
    parser.add_argument("--transports", default="default,profile",
                        help="the driver's Fast DDS transports: default and/or profile (config/fastdds_shm.xml)")
    parser.add_argument("--estimator", choices=("cheap", "default"), default="cheap")
    parser.add_argument("--seconds", type=float, default=STREAM_S, help="streaming time per row")
    parser.add_argument("--node-code", type=Path, help="run the node and launch file of another checkout")
    parser.add_argument("--plain", action="store_true",
                        help="also count the pairs a plain reliable subscriber receives (the viewer subscribes images)")
    parser.add_argument("--out", type=Path, help="write the rows as JSON")
    args = parser.parse_args(argv)
    for name, allowed in (("reliability", {"reliable", "best_effort"}), ("transports", {"default", "profile"})):
        wrong = set(getattr(args, name).split(",")) - allowed
        if wrong:
            parser.error(f"--{name}: {', '.join(sorted(wrong))} not in {', '.join(sorted(allowed))}")
    for size in args.sizes.split(","):
        if not re.fullmatch(r"\d{2,5}x\d{2,5}", size):
            parser.error(f"--sizes: {size!r} is not WIDTHxHEIGHT")
    for rate in args.rates.split(","):
        if rate != "auto" and not re.fullmatch(r"\d+(\.\d+)?", rate):
            parser.error(f"--rates: {rate!r} is not a rate in Hz or auto")
    if shutil.which("ros2") is None:
        print("bench/transport.py: `ros2` not found: activate the venv (source .venv/bin/activate; it needs "
              "../shared/ros/wheels) or source a ROS 2 distribution", file=sys.stderr)
        return 2
    node_code = args.node_code.resolve() if args.node_code else None
    load = os.getloadavg()
    print(f"transport bench: node {'from ' + str(node_code) if node_code else 'from this checkout'}, estimator "
          f"{args.estimator}, {args.seconds:g} s per row, load average {load[0]:.2f} at start")
    rows = []
    header = ("| driver | transports | size | rate | delivered | formed | received L / R | latency median / p90 ms |"
              + (" plain subscriber's pairs |" if args.plain else ""))
    print(header + "\n|" + "---|" * (header.count("|") - 1))
    for size in args.sizes.split(","):
        speed: float | None = None
        for rate_text in args.rates.split(","):
            for reliability in args.reliability.split(","):
                for transports in args.transports.split(","):
                    if rate_text == "auto" and speed is None:
                        probe = run_row(size, 2.0, "reliable", "profile", args.estimator, node_code, 4.0)
                        speed = 1000.0 / probe["inference_ms_median"] if probe["inference_ms_median"] else 2.0
                    rate = 0.8 * speed if rate_text == "auto" and speed else float(rate_text)
                    row = run_row(size, rate, reliability, transports, args.estimator, node_code, args.seconds,
                                  args.plain)
                    rows.append(row)
                    print(f"| {reliability.replace('_', ' ')} | {transports} | {size} | {rate:.1f} Hz | "
                          f"{_share(row['delivered'], row['sent'])} | {_share(row['formed'], row['sent'])} | "
                          f"{_count(row['received_left'])} / {_count(row['received_right'])} | "
                          f"{_ms(row['latency_ms_median'])} / {_ms(row['latency_ms_p90'])} |"
                          + (f" {_share(row['plain_pairs'], row['sent'])} |" if args.plain else ""), flush=True)
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    if args.out:
        atomic_write_json(args.out, {"node_code": str(node_code or "this checkout"), "estimator": args.estimator,
                                     "load_average_start": load[0], "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())

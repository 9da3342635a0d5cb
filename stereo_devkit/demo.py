"""`make demo`: run stereo_depth_node on a real stereo pair over real DDS and score it against ground truth.

What it does:
1. picks the estimator: the RT-IGEV student when weights are in weights/ (.onnx files -> onnxruntime, the fp32
   export at its own size; else sceneflow.pth -> torch), otherwise the weight-free opencv_sgbm baseline, and says
   which;
2. starts `stereo_depth_node` as its own process (own session, discovery limited to this host, a domain of its
   own, the package's Fast DDS shared-memory profile);
3. streams scikit-image's Middlebury "Motorcycle" pair at a camera-like rate like a stock camera driver would
   (reliable publishers on Fast DDS's default transports, from this process), with camera_info built from its
   real calibration scaled to the streamed resolution (including Middlebury's `doffs`: the right camera's
   principal point is `doffs` pixels right of the left one, so depth = f * B / (d + doffs));
4. receives disparity, depth and the point cloud; writes out/demo/disparity.png, depth.png (colourised),
   points.ply and metrics.json;
5. prints the end-to-end latency (stamp to receipt, through DDS) and EPE / bad-2 / depth error against the
   ground truth.

    python -m stereo_devkit.demo [--width 640] [--frames 20] [--rate 10] [--backend auto|...] [--out out/demo]
"""
from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stereo_depth_ros.atomic_io import atomic_write_json
from stereo_devkit.client import RigStreamer, StereoClient, diagnostic_values
from stereo_devkit.node_process import NodeProcess, isolated_ros_env, node_command, package_fastdds_profile
from stereo_devkit.motorcycle import StereoRig, motorcycle_rig
from stereo_devkit.outputs import colourise, write_png, write_ply
from stereo_devkit.metrics import compute_metrics, describe_metrics


class DemoError(Exception):
    """The node did not come up or did not answer: printed with its log, exit status 1."""


@dataclass
class Streamed:
    """What came back for the last pair streamed: the messages, the node's diagnostics and the latencies."""

    disparity: Any
    depth: Any
    cloud: Any
    diagnostics: dict[str, str]
    latencies_ms: np.ndarray
    node_exit_code: int


def _number(text: str | None) -> float | int | None:
    """A /diagnostics value (DiagnosticStatus values are strings) as a JSON number; None when absent or not one."""
    for kind in (int, float):
        try:
            return kind(text)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            continue
    return None


def _settled(msg: Any) -> bool:
    """/diagnostics after the stream: every pair the node formed is accounted for (processed, dropped while busy,
    rejected or idle), so the demo's summary adds up."""
    values = diagnostic_values(msg) or {}
    counts = [_number(values.get(key)) for key in ("received_pairs", "processed_pairs", "dropped_pairs",
                                                   "rejected_pairs", "idle_pairs")]
    if any(not isinstance(count, int) for count in counts):
        return False
    received, *outcomes = counts
    return bool(received) and received == sum(outcomes)  # type: ignore[arg-type]


def choose_backend(requested: str, weights_dir: Path) -> tuple[str, dict[str, object], str]:
    """(backend, node parameters, a sentence saying why)."""
    onnx_files = sorted(weights_dir.glob("*.onnx"))
    checkpoint = weights_dir / "sceneflow.pth"
    if requested == "auto":
        if onnx_files:
            requested = "onnxruntime"
        elif checkpoint.is_file():
            requested = "torch"
        else:
            return ("opencv_sgbm", {"backend": "opencv_sgbm"},
                    f"no student weights in {weights_dir} (sceneflow.pth or an .onnx export), so the weight-free "
                    "opencv_sgbm baseline runs; see weights/README.md for how to get the RT-IGEV weights")
    if requested == "onnxruntime":
        if not onnx_files:
            raise SystemExit(f"demo: backend onnxruntime needs an .onnx file in {weights_dir}")
        return onnx_choice(onnx_files)
    if requested == "torch":
        if not checkpoint.is_file():
            raise SystemExit(f"demo: backend torch needs {checkpoint} (see weights/README.md)")
        return ("torch", {"backend": "torch", "model": "rt_igev", "model_path": str(checkpoint)},
                f"RT-IGEV student from {checkpoint} (torch)")
    return "opencv_sgbm", {"backend": "opencv_sgbm"}, "opencv_sgbm baseline (requested)"


def onnx_choice(onnx_files: list[Path]) -> tuple[str, dict[str, object], str]:
    """The export the demo runs among `onnx_files` (e.g. `make loop`'s fp32 and fp16 exports), with its size.

    The fp32 export is preferred: the fp16 one is for GPUs, and onnxruntime's CPU provider runs it slowly if at
    all. A fixed-size export refuses other sizes, so its size (from the file's graph and metadata) becomes the
    node's working resolution (input_width/input_height); the node resizes the streamed pair to it.
    """
    from stereo_depth_ros.inference.onnx_backend import read_export_limits, read_export_metadata

    def precision(path: Path) -> str:
        try:
            return read_export_metadata(path).get("precision", "unknown")
        except Exception:  # not readable as ONNX: the node will say why when it loads it
            return "unknown"

    precisions = {path: precision(path) for path in onnx_files}
    chosen = sorted(onnx_files, key=lambda p: (precisions[p] != "fp32", precisions[p] == "fp16", p.name))[0]
    params: dict[str, object] = {"backend": "onnxruntime", "model_path": str(chosen)}
    size = "any size"
    try:
        fixed = read_export_limits(chosen).fixed_size
    except Exception:
        fixed = None
    if fixed is not None:
        params.update(input_height=fixed[0], input_width=fixed[1])
        size = f"working size {fixed[1]}x{fixed[0]}, the export's"
    others = [p.name for p in onnx_files if p != chosen]
    return ("onnxruntime", params, f"RT-IGEV student from {chosen} (onnxruntime, {precisions[chosen]}, {size})"
            + (f"; not used: {', '.join(others)}" if others else ""))


def stream(args: argparse.Namespace, rig: StereoRig, params: dict[str, object], workdir: Path) -> Streamed:
    """Start the node, stream `args.frames` pairs at `args.rate` Hz, collect the outputs of the last one."""
    shutil.rmtree(workdir, ignore_errors=True)
    env = isolated_ros_env(workdir, fastdds_profile=package_fastdds_profile())
    log_path = workdir / "node.log"
    with NodeProcess(node_command(params), env, log_path) as node, StereoClient(env) as client:
        if not client.wait_for_node(timeout=60.0):
            node.stop()
            raise DemoError(f"the node did not come up; its log ({log_path}):\n{node.log()[-3000:]}")
        print(f"[demo] node up (domain {env['ROS_DOMAIN_ID']}, log {log_path})")
        streamer = RigStreamer(client, rig)
        _, stamp = streamer.stream(args.rate, pairs=args.frames, first_info_lead=0.2)
        # The newest pair always gets processed (older ones may be dropped while inference is busy).
        disparity = client.wait_for_stamp("disparity", stamp, timeout=args.timeout)
        depth = client.wait_for_stamp("depth", stamp, timeout=10.0)
        cloud = client.wait_for_stamp("points2", stamp, timeout=10.0)
        # A /diagnostics published after the last outputs arrived, with every pair accounted for.
        diag = client.wait_for("diagnostics", _settled, timeout=10.0, start=client.count("diagnostics"))
        latencies = streamer.latencies_s(list(client.received["disparity"]))
        code = node.stop()
    if disparity is None or depth is None:
        raise DemoError(f"no output for the last pair; node log ({log_path}):\n{log_path.read_text()[-3000:]}")
    return Streamed(disparity, depth, cloud, (diagnostic_values(diag) or {}) if diag is not None else {},
                    np.array(latencies) * 1e3, code)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out).resolve()
    backend, params, why = choose_backend(args.backend, Path(args.weights).resolve())
    print(f"[demo] backend: {backend}: {why}")
    rig = motorcycle_rig(args.width)
    print(f"[demo] Middlebury Motorcycle at {rig.width}x{rig.height}, f = {rig.fx:.2f} px, baseline "
          f"{rig.baseline * 1000:.1f} mm, doffs {rig.doffs:.2f} px; streaming {args.frames} pairs at {args.rate} Hz")
    params.update({"max_disparity": args.max_disparity, "publish_confidence": False})
    try:
        # ROS logs and launch temporaries of this run, next to its outputs (out/ is ignored by git).
        got = stream(args, rig, params, out / "ros")
    except DemoError as error:
        print(f"[demo] {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C: the node process was stopped on the way out (NodeProcess)
        print("[demo] interrupted", file=sys.stderr)
        return 130

    disp_msg = got.disparity
    disp_img = np.frombuffer(disp_msg.image.data, np.float32).reshape(disp_msg.image.height, disp_msg.image.width)
    # The DisparityImage carries d + doffs (so that Z = f * t / d holds); the ground truth is d.
    estimate = np.where(disp_img > disp_msg.min_disparity - 0.5, disp_img - np.float32(rig.doffs), np.nan)
    errors = compute_metrics(estimate, rig.gt_disparity, reference="ground_truth")
    depth_map = np.frombuffer(got.depth.data, np.float32).reshape(got.depth.height, got.depth.width)
    gt_depth = rig.gt_depth()
    both = np.isfinite(depth_map) & np.isfinite(gt_depth)
    abs_rel = float(np.mean(np.abs(depth_map[both] - gt_depth[both]) / gt_depth[both])) if both.any() else float("nan")

    gt_finite = rig.gt_disparity[np.isfinite(rig.gt_disparity)]
    d_lo, d_hi = float(gt_finite.min()), float(gt_finite.max())
    z = gt_depth[np.isfinite(gt_depth)]
    write_png(out / "disparity.png", colourise(estimate, d_lo, d_hi))
    write_png(out / "disparity_gt.png", colourise(rig.gt_disparity, d_lo, d_hi))
    write_png(out / "depth.png", colourise(depth_map, float(np.percentile(z, 1)), float(np.percentile(z, 99)),
                                           reverse=True))
    write_png(out / "left.png", rig.left)
    points = write_ply(out / "points.ply", got.cloud) if got.cloud is not None else 0
    lat = got.latencies_ms
    metrics = {
        "backend": backend, "width": rig.width, "height": rig.height, "frames_sent": args.frames,
        "frames_processed": int(lat.size), "latency_ms_median": float(np.median(lat)) if lat.size else None,
        "latency_ms_min": float(lat.min()) if lat.size else None,
        "node_inference_ms": _number(got.diagnostics.get("inference_ms_median")),
        "dropped_pairs": _number(got.diagnostics.get("dropped_pairs")), "disparity_metrics": errors,
        "depth_abs_rel": abs_rel, "points": points, "node_exit_code": got.node_exit_code,
    }
    atomic_write_json(out / "metrics.json", metrics)

    print(f"[demo] {lat.size} of {args.frames} pairs sent came back as disparity; the node formed "
          f"{got.diagnostics.get('received_pairs', '?')} pairs, dropped {metrics['dropped_pairs']} while busy (the "
          f"newest pair wins) and rejected {got.diagnostics.get('rejected_pairs', '?')}")
    if lat.size:
        print(f"[demo] latency stamp -> disparity received: median {np.median(lat):.1f} ms, min {lat.min():.1f} ms "
              f"(node inference {got.diagnostics.get('inference_ms_median', '?')} ms)")
    print(f"[demo] vs ground truth: {describe_metrics(errors)}; depth abs-rel {abs_rel * 100:.1f} %")
    print(f"[demo] wrote {out}/disparity.png, disparity_gt.png, depth.png, left.png, points.ply ({points} points), "
          "metrics.json")
    if backend == "opencv_sgbm":
        print("[demo] this was the opencv_sgbm baseline; put the student's weights in weights/ (weights/README.md) "
              "to run RT-IGEV")
    print(f"[demo] node stopped with exit status {got.node_exit_code}")
    return 0 if got.node_exit_code == 0 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stereo_devkit.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--backend", default="auto", choices=["auto", "torch", "onnxruntime", "opencv_sgbm"])
    parser.add_argument("--weights", default="weights", help="folder with sceneflow.pth or *.onnx")
    parser.add_argument("--width", type=int, default=640, help="streamed width (the pair is 741x500 natively)")
    parser.add_argument("--frames", type=int, default=20, help="pairs to stream")
    parser.add_argument("--rate", type=float, default=10.0, help="stream rate in Hz")
    parser.add_argument("--max-disparity", type=int, default=128, help="search range at the streamed width")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the last output")
    parser.add_argument("--out", default="out/demo", help="where the PNGs, PLY, metrics and the node's log go")
    args = parser.parse_args(argv)
    if not 64 <= args.width <= 4096:
        parser.error("--width must be in 64..4096")
    if args.frames < 1 or args.rate <= 0:
        parser.error("--frames must be >= 1 and --rate > 0")
    if not Path(args.weights).is_dir():
        parser.error(f"--weights {args.weights}: no such folder (it holds sceneflow.pth or an .onnx export; "
                     "see weights/README.md)")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())

"""`make demo`: run stereo_depth_node on a real stereo pair over real DDS and score it against ground truth.

What it does:
1. picks the estimator: the RT-IGEV student when weights are in weights/ (an .onnx file -> onnxruntime, else
   sceneflow.pth -> torch), otherwise the weight-free opencv_sgbm baseline, and says which;
2. starts `stereo_depth_node` as its own process (own session, discovery limited to this host, a domain of its
   own, the package's Fast DDS shared-memory profile);
3. streams scikit-image's Middlebury "Motorcycle" pair at a camera-like rate, with camera_info built from its
   real calibration scaled to the streamed resolution (including Middlebury's `doffs`: the right camera's
   principal point is `doffs` pixels right of the left one, so depth = f * B / (d + doffs));
4. receives disparity, depth and the point cloud; writes out/demo/disparity.png, depth.png (colourised),
   points.ply and metrics.json;
5. prints the end-to-end latency (stamp to receipt, through DDS) and EPE / bad-2 / depth error against the
   ground truth.

    python -m stereo_depth_ros.demo [--width 640] [--frames 20] [--rate 10] [--backend auto|...] [--out out/demo]
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from stereo_depth_ros.atomic_io import atomic_path, atomic_write_bytes, atomic_write_json

REPO = Path(__file__).resolve().parents[1]
FRAME_ID = "left_camera_optical_frame"

# Calibration of skimage.data.stereo_motorcycle() at its native 741x500 (Middlebury 2014 "Motorcycle", scaled by
# scikit-image; values from its docstring). doffs = cx_right - cx_left.
MOTORCYCLE = {"width": 741, "height": 500, "focal": 994.978, "cx": 311.193, "cy": 254.877, "doffs": 31.086,
              "baseline_m": 0.193001}


@dataclass
class StereoRig:
    """A rectified pair at one resolution with its calibration and ground truth.

    left, right: uint8 [H, W, 3] RGB. gt_disparity: float32 [H, W] left-view disparity in pixels between the raw
    images (NaN unknown). fx: focal length (px); cx_left, cx_right, cy: principal points (px); baseline: metres.
    """

    left: np.ndarray
    right: np.ndarray
    gt_disparity: np.ndarray
    fx: float
    cx_left: float
    cx_right: float
    cy: float
    baseline: float

    @property
    def width(self) -> int:
        return self.left.shape[1]

    @property
    def height(self) -> int:
        return self.left.shape[0]

    @property
    def doffs(self) -> float:
        return self.cx_right - self.cx_left

    def camera_infos(self, stamp=None):
        from stereo_depth_ros.client import stereo_camera_infos

        return stereo_camera_infos(self.width, self.height, self.fx, self.cx_left, self.cy, self.baseline,
                                   cx_right=self.cx_right, stamp=stamp, frame_id=FRAME_ID)

    def gt_depth(self) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            depth = self.fx * self.baseline / (self.gt_disparity + self.doffs)
        return np.where(np.isfinite(depth) & (depth > 0), depth, np.nan).astype(np.float32)


def motorcycle_rig(width: int = 640) -> StereoRig:
    """The Motorcycle pair resized to `width` (aspect kept), calibration and ground truth scaled to match.

    Resizing maps pixel centres u -> (u + 0.5) * s - 0.5, so principal points move that way while focal length
    and disparities (differences of positions) scale by s.
    """
    from skimage import data

    left, right, disparity = data.stereo_motorcycle()
    native_w, native_h = left.shape[1], left.shape[0]
    scale = width / native_w
    height = int(round(native_h * scale))
    if (width, height) != (native_w, native_h):
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        left = cv2.resize(left, (width, height), interpolation=interp)
        right = cv2.resize(right, (width, height), interpolation=interp)
        # Nearest keeps unknown pixels unknown instead of blending them into their neighbours.
        disparity = cv2.resize(disparity, (width, height), interpolation=cv2.INTER_NEAREST) * np.float32(scale)
    sx, sy = width / native_w, height / native_h
    gt = np.where(np.isfinite(disparity), disparity, np.nan).astype(np.float32)
    return StereoRig(
        left=np.ascontiguousarray(left), right=np.ascontiguousarray(right), gt_disparity=gt,
        fx=MOTORCYCLE["focal"] * sx,
        cx_left=(MOTORCYCLE["cx"] + 0.5) * sx - 0.5,
        cx_right=(MOTORCYCLE["cx"] + MOTORCYCLE["doffs"] + 0.5) * sx - 0.5,
        cy=(MOTORCYCLE["cy"] + 0.5) * sy - 0.5,
        baseline=MOTORCYCLE["baseline_m"],
    )


def disparity_errors(estimate: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """EPE and bad-N (% of pixels off by more than N px) over pixels where both are finite.

    `coverage` is the share of ground-truth pixels the estimate covers; an estimator that leaves holes (SGBM) is
    scored on what it returns, so read the two together.
    """
    known = np.isfinite(reference)
    both = known & np.isfinite(estimate)
    if not both.any():
        return {"epe": float("nan"), "bad1": float("nan"), "bad2": float("nan"), "bad3": float("nan"),
                "coverage": 0.0}
    err = np.abs(estimate[both] - reference[both])
    return {"epe": float(err.mean()), "bad1": float((err > 1).mean() * 100), "bad2": float((err > 2).mean() * 100),
            "bad3": float((err > 3).mean() * 100), "coverage": float(both.sum() / max(known.sum(), 1))}


def colourise(values: np.ndarray, lo: float, hi: float, reverse: bool = False) -> np.ndarray:
    """uint8 BGR image: TURBO colour map over lo..hi, black where values are NaN."""
    finite = np.isfinite(values)
    scaled = np.clip((np.nan_to_num(values, nan=lo) - lo) / max(hi - lo, 1e-6), 0, 1)
    if reverse:
        scaled = 1 - scaled
    image = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_TURBO)
    image[~finite] = 0
    return image


def write_png(path: Path, image: np.ndarray) -> None:
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise RuntimeError(f"PNG encoding failed for {path}")
    atomic_write_bytes(path, encoded.tobytes())


def write_ply(path: Path, cloud_msg) -> int:
    """Binary PLY of the finite points of an xyz+rgb PointCloud2 (point_step 16). Returns the point count."""
    raw = np.frombuffer(cloud_msg.data, dtype=np.float32).reshape(-1, cloud_msg.point_step // 4)
    xyz = raw[:, :3]
    keep = np.isfinite(xyz).all(axis=1)
    rgb = raw[keep, 3].view(np.uint32)
    vertices = np.empty(int(keep.sum()), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                               ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    vertices["x"], vertices["y"], vertices["z"] = xyz[keep, 0], xyz[keep, 1], xyz[keep, 2]
    vertices["red"] = (rgb >> 16) & 0xFF
    vertices["green"] = (rgb >> 8) & 0xFF
    vertices["blue"] = rgb & 0xFF
    header = ("ply\nformat binary_little_endian 1.0\n"
              f"comment stereo_depth_ros demo, frame {cloud_msg.header.frame_id}\n"
              f"element vertex {len(vertices)}\n"
              "property float x\nproperty float y\nproperty float z\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n")
    atomic_write_bytes(path, header.encode() + vertices.tobytes())
    return len(vertices)


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
        return ("onnxruntime", {"backend": "onnxruntime", "model_path": str(onnx_files[0])},
                f"RT-IGEV student from {onnx_files[0]} (onnxruntime)")
    if requested == "torch":
        if not checkpoint.is_file():
            raise SystemExit(f"demo: backend torch needs {checkpoint} (see weights/README.md)")
        return ("torch", {"backend": "torch", "model": "rt_igev", "model_path": str(checkpoint)},
                f"RT-IGEV student from {checkpoint} (torch)")
    return "opencv_sgbm", {"backend": "opencv_sgbm"}, "opencv_sgbm baseline (requested)"


def fastdds_profile() -> Path | None:
    """The package's shared-memory profile: the repo's config/ or the installed share directory."""
    candidate = REPO / "config" / "fastdds_shm.xml"
    if candidate.is_file():
        return candidate
    try:
        from ament_index_python.packages import get_package_share_directory

        candidate = Path(get_package_share_directory("stereo_depth_ros")) / "config" / "fastdds_shm.xml"
    except Exception:
        return None
    return candidate if candidate.is_file() else None


def run(args: argparse.Namespace) -> int:
    from stereo_depth_ros.client import (NodeProcess, StereoClient, diagnostic_values, image_message,
                                         isolated_ros_env, node_command, stamp_from_seconds)

    out = Path(args.out).resolve()
    backend, params, why = choose_backend(args.backend, Path(args.weights).resolve())
    print(f"[demo] backend: {backend}: {why}")
    rig = motorcycle_rig(args.width)
    print(f"[demo] Middlebury Motorcycle at {rig.width}x{rig.height}, f = {rig.fx:.2f} px, baseline "
          f"{rig.baseline * 1000:.1f} mm, doffs {rig.doffs:.2f} px; streaming {args.frames} pairs at {args.rate} Hz")
    params.update({"max_disparity": args.max_disparity, "publish_confidence": False})
    # ROS logs and launch temporaries of this run, next to its outputs (out/ is ignored by git).
    workdir = out / "ros"
    shutil.rmtree(workdir, ignore_errors=True)
    env = isolated_ros_env(workdir, fastdds_profile=fastdds_profile())
    log_path = workdir / "node.log"
    left_rgb = rig.left
    sent: dict[tuple[int, int], float] = {}
    with NodeProcess(node_command(params), env, log_path) as node, StereoClient(env) as client:
        if not client.wait_for_node(timeout=60.0):
            node.stop()
            print(f"[demo] the node did not come up; its log ({log_path}):\n{node.log()[-3000:]}", file=sys.stderr)
            return 1
        print(f"[demo] node up (domain {env['ROS_DOMAIN_ID']}, log {log_path})")
        period = 1.0 / args.rate
        next_time = time.monotonic()
        last_stamp = None
        for index in range(args.frames):
            stamp = stamp_from_seconds(time.time())
            left_info, right_info = rig.camera_infos(stamp)
            client.publish(image_message(left_rgb, "rgb8", stamp, FRAME_ID),
                           image_message(rig.right, "rgb8", stamp, FRAME_ID), left_info, right_info,
                           info_lead=0.2 if index == 0 else 0.0)
            sent[(stamp.sec, stamp.nanosec)] = stamp.sec + stamp.nanosec * 1e-9
            last_stamp = stamp
            next_time += period
            time.sleep(max(0.0, next_time - time.monotonic()))
        # The newest pair always gets processed (older ones may be dropped while inference is busy).
        disparity = client.wait_for_stamp("disparity", last_stamp, timeout=args.timeout)
        depth = client.wait_for_stamp("depth", last_stamp, timeout=10.0)
        cloud = client.wait_for_stamp("points2", last_stamp, timeout=10.0)
        diag = client.wait_for("diagnostics", lambda m: (diagnostic_values(m) or {}).get("processed_pairs", "0") != "0",
                               timeout=10.0, start=max(client.count("diagnostics") - 1, 0))
        latencies = []
        for item in list(client.received["disparity"]):
            key = (item.msg.header.stamp.sec, item.msg.header.stamp.nanosec)
            if key in sent:
                latencies.append(item.stamp - sent[key])
        code = node.stop()
    if disparity is None or depth is None:
        print(f"[demo] no output for the last pair; node log ({log_path}):\n{Path(log_path).read_text()[-3000:]}",
              file=sys.stderr)
        return 1

    disp_img = np.frombuffer(disparity.image.data, np.float32).reshape(disparity.image.height, disparity.image.width)
    # The DisparityImage carries d + doffs (so that Z = f * t / d holds); the ground truth is d.
    estimate = np.where(disp_img > disparity.min_disparity - 0.5, disp_img - np.float32(rig.doffs), np.nan)
    errors = disparity_errors(estimate, rig.gt_disparity)
    depth_map = np.frombuffer(depth.data, np.float32).reshape(depth.height, depth.width)
    gt_depth = rig.gt_depth()
    both = np.isfinite(depth_map) & np.isfinite(gt_depth)
    abs_rel = float(np.mean(np.abs(depth_map[both] - gt_depth[both]) / gt_depth[both])) if both.any() else float("nan")

    out.mkdir(parents=True, exist_ok=True)
    gt_finite = rig.gt_disparity[np.isfinite(rig.gt_disparity)]
    d_lo, d_hi = float(gt_finite.min()), float(gt_finite.max())
    write_png(out / "disparity.png", colourise(estimate, d_lo, d_hi))
    write_png(out / "disparity_gt.png", colourise(rig.gt_disparity, d_lo, d_hi))
    z = gt_depth[np.isfinite(gt_depth)]
    write_png(out / "depth.png", colourise(depth_map, float(np.percentile(z, 1)), float(np.percentile(z, 99)),
                                           reverse=True))
    with atomic_path(out / "left.png") as tmp:
        cv2.imwrite(str(tmp), cv2.cvtColor(rig.left, cv2.COLOR_RGB2BGR))
    points = write_ply(out / "points.ply", cloud) if cloud is not None else 0
    diag_values = diagnostic_values(diag) if diag is not None else {}
    lat = np.array(latencies) * 1e3
    metrics = {
        "backend": backend, "width": rig.width, "height": rig.height, "frames_sent": args.frames,
        "frames_processed": len(latencies), "latency_ms_median": float(np.median(lat)) if lat.size else None,
        "latency_ms_min": float(lat.min()) if lat.size else None,
        "node_inference_ms": diag_values.get("inference_ms_median"), "dropped_pairs": diag_values.get("dropped_pairs"),
        "epe_px": errors["epe"], "bad2_percent": errors["bad2"], "bad3_percent": errors["bad3"],
        "coverage": errors["coverage"], "depth_abs_rel": abs_rel, "points": points, "node_exit_code": code,
    }
    atomic_write_json(out / "metrics.json", metrics)

    print(f"[demo] processed {len(latencies)} of {args.frames} pairs (the node drops older pairs while busy; "
          f"dropped: {metrics['dropped_pairs']})")
    if lat.size:
        print(f"[demo] latency stamp -> disparity received: median {np.median(lat):.1f} ms, min {lat.min():.1f} ms "
              f"(node inference {diag_values.get('inference_ms_median', '?')} ms)")
    print(f"[demo] vs ground truth: EPE {errors['epe']:.2f} px, bad-2 {errors['bad2']:.1f} %, bad-3 "
          f"{errors['bad3']:.1f} % over {errors['coverage'] * 100:.0f} % of the known pixels; depth abs-rel "
          f"{abs_rel * 100:.1f} %")
    print(f"[demo] wrote {out}/disparity.png, depth.png, points.ply ({points} points), metrics.json")
    if backend == "opencv_sgbm":
        print("[demo] this was the opencv_sgbm baseline; put the student's weights in weights/ (weights/README.md) "
              "to run RT-IGEV")
    print(f"[demo] node stopped with exit status {code}")
    return 0 if code == 0 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stereo_depth_ros.demo", description=__doc__.split("\n")[0])
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
    return run(args)


if __name__ == "__main__":
    sys.exit(main())

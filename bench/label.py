"""Labelling figures: teacher throughput, precision agreement, and a real bag -> extract -> label run.

Throughput (pairs/s of the whole label step: teacher on the pair, teacher on the mirrored swapped pair,
left-right check) on the Motorcycle pair resized to --height x --width; with two precisions also the EPE between
their labels (all pixels, and pixels both call valid):

    python bench/label.py                                           # small, CPU
    python bench/label.py --height 860 --width 1080 --max-disp 768 --precision fp32 bf16   # InStereo2K size, GPU

The real run (--demo-bag): the Motorcycle pair streamed as a camera would (rectified images and camera_info at
--rate Hz, a little stamp jitter between the cameras), written as a rosbag2 with rosbags, then
`stereo-distill extract` and `stereo-distill label` on it, each timed, with the counts and the valid share:

    python bench/label.py --demo-bag --frames 6 --width 256 --iters 4

Scaling (--scaling): the real `stereo-distill label` on --pairs Motorcycle pairs under torchrun with 1, then 2, ...
processes (--processes) on this machine, --threads each; prints every rank's pairs/s through the teacher (label's
own per-rank line: first batch to last, start-up apart), the processes together, the speed-up over one process,
the wall time with start-up, and the load average before and after (the machine may be shared):

    python bench/label.py --scaling --pairs 8 --processes 1 2

The teacher is --teacher, else the fixture weights in ../shared/parity/selective_igev/weights.pth when present
(seeded, untrained: the figures are speed and plumbing, not label quality), else a seeded random init.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
FIXTURE = REPO.parent / "shared" / "parity" / "selective_igev" / "weights.pth"


def default_teacher(given: str | None) -> str | None:
    if given:
        return given
    return str(FIXTURE) if FIXTURE.is_file() else None


# ------------------------------------------------------------------------------------------------- throughput
def throughput(args) -> int:
    import torch

    from stereo_depth_ros.inference import create_estimator
    from stereo_devkit.motorcycle import motorcycle_pair
    from stereo_distill.label import Thresholds, label_batch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    teacher = default_teacher(args.teacher)
    left, right = motorcycle_pair(args.height, args.width)
    lefts, rights = [left] * args.batch_size, [right] * args.batch_size
    print(f"label bench: {args.model} ({teacher or 'seeded init'}), {args.height}x{args.width}, iters {args.iters}, "
          f"max_disp {args.max_disp}, batch {args.batch_size}, device {device}, torch threads {torch.get_num_threads()}")
    labels = {}
    for precision in args.precision:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "bf16 needs CUDA": handled just below
            # label's estimator (a checkpoint teacher); model_path None = the seeded init.
            estimator = create_estimator("torch", model=args.model, model_path=teacher, device=device,
                                         precision=precision, iters=args.iters, max_disparity=args.max_disp,
                                         with_confidence=False)
            model = estimator.model
        label = precision
        if precision != "fp32" and device == "cpu":
            if not args.cpu_autocast:
                print(f"  {precision}: skipped (needs CUDA; --cpu-autocast emulates it with CPU autocast)")
                continue
            # The model applies reduced precision on CUDA only; CPU autocast runs the same stretches in bf16/fp16
            # so that the precision's effect on the labels can be estimated without a GPU.
            dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
            model._autocast = lambda _device, dtype=dtype: torch.autocast("cpu", dtype=dtype)
            label = f"{precision} (CPU autocast)"
        thresholds = Thresholds()
        max_disp = float(model.config.max_disp)
        label_batch(estimator, lefts, rights, thresholds, max_disp)  # warm-up: allocator, cudnn autotuning
        started = time.perf_counter()
        for _ in range(args.repeats):
            disparity, valid, _stats = label_batch(estimator, lefts, rights, thresholds, max_disp)
        seconds = time.perf_counter() - started
        pairs = args.repeats * args.batch_size
        labels[label] = (disparity[0], valid[0])
        print(f"  {label}: {pairs / seconds:.3f} pairs/s ({seconds / pairs:.3f} s/pair over {pairs} pairs), "
              f"valid share {valid.mean():.3f}")
        del model, estimator
    if len(labels) == 2:
        (a, va), (b, vb) = labels.values()
        both = va & vb
        names = " vs ".join(labels)
        print(f"  EPE {names}: {np.abs(a - b).mean():.4f} px all pixels, "
              f"{np.abs(a - b)[both].mean() if both.any() else float('nan'):.4f} px where both valid; "
              f"valid masks agree on {(va == vb).mean():.4f} of pixels")
    return 0


# ------------------------------------------------------------------------------------------------ the real run
def write_demo_bag(path: Path, frames: int, width: int, rate: float, storage: str) -> dict:
    """The demo stream (Motorcycle, calibration scaled to `width`) as a rosbag2 written with rosbags."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    from stereo_devkit.motorcycle import FRAME_ID, motorcycle_rig

    ts = get_typestore(Stores.ROS2_KILTED)
    Image, CameraInfo = ts.types["sensor_msgs/msg/Image"], ts.types["sensor_msgs/msg/CameraInfo"]
    Header, Time = ts.types["std_msgs/msg/Header"], ts.types["builtin_interfaces/msg/Time"]
    Roi = ts.types["sensor_msgs/msg/RegionOfInterest"]
    rig = motorcycle_rig(width)
    rng = np.random.default_rng(0)
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    start_ns = time.time_ns()

    def header(ns: int):
        return Header(stamp=Time(sec=ns // 10**9, nanosec=ns % 10**9), frame_id=FRAME_ID)

    def info(ns: int, cx: float, tx: float):
        return CameraInfo(
            header=header(ns), height=rig.height, width=rig.width, distortion_model="plumb_bob", d=np.zeros(5),
            k=np.array([rig.fx, 0, cx, 0, rig.fx, rig.cy, 0, 0, 1.0]), r=np.eye(3).reshape(-1),
            p=np.array([rig.fx, 0, cx, tx, 0, rig.fx, rig.cy, 0, 0, 0, 1.0, 0]), binning_x=0, binning_y=0,
            roi=Roi(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))

    with Writer(path, version=9, storage_plugin=plugin) as writer:
        topics = {}
        for side in ("left", "right"):
            topics[side, "image"] = writer.add_connection(f"/stereo/{side}/image_rect", Image.__msgtype__, typestore=ts)
            topics[side, "info"] = writer.add_connection(f"/stereo/{side}/camera_info", CameraInfo.__msgtype__,
                                                         typestore=ts)
        for index in range(frames):
            left_ns = start_ns + int(index * 1e9 / rate)
            for side, image, cx, tx in (("left", rig.left, rig.cx_left, 0.0),
                                        ("right", rig.right, rig.cx_right, -rig.fx * rig.baseline)):
                # Hardware-triggered cameras still stamp a little apart.
                ns = left_ns if side == "left" else left_ns + int(rng.integers(-1_000_000, 1_000_000))
                msg = Image(header=header(ns), height=rig.height, width=rig.width, encoding="rgb8", is_bigendian=0,
                            step=rig.width * 3, data=np.ascontiguousarray(image).reshape(-1))
                writer.write(topics[side, "info"], ns, ts.serialize_cdr(info(ns, cx, tx), CameraInfo.__msgtype__))
                writer.write(topics[side, "image"], ns, ts.serialize_cdr(msg, Image.__msgtype__))
    return {"width": rig.width, "height": rig.height}


def demo_bag(args) -> int:
    out = Path(args.out or tempfile.mkdtemp(prefix="label_demo_"))
    bag, data, labels = out / "bag", out / "data", out / "labels"
    if bag.exists():
        print(f"{bag} exists; pass another --out", file=sys.stderr)
        return 2
    teacher = default_teacher(args.teacher)
    if teacher is None:
        print("no teacher: pass --teacher CKPT (the fixture weights are absent)", file=sys.stderr)
        return 2
    size = write_demo_bag(bag, args.frames, args.width, args.rate, args.storage)
    bag_bytes = sum(p.stat().st_size for p in bag.iterdir())
    print(f"demo bag: {args.frames} stereo frames {size['width']}x{size['height']} rgb8 + camera_info, {args.storage}, "
          f"{bag_bytes / 1e6:.1f} MB -> {bag}")
    cli = [sys.executable, "-m", "stereo_distill.cli"]
    timings = {}
    for name, command in [
        ("extract", [*cli, "extract", str(bag), "--left-topic", "/stereo/left/image_rect",
                     "--right-topic", "/stereo/right/image_rect", "--out", str(data)]),
        ("label", [*cli, "label", str(data), "--teacher", teacher, "--out", str(labels), "--model", args.model,
                   "--iters", str(args.iters), "--max-disp", str(args.max_disp), "--device", args.device or "cpu"]),
    ]:
        started = time.perf_counter()
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        timings[name] = time.perf_counter() - started
        last = [line for line in result.stderr.splitlines() if line.startswith(f"{name}:") or " pairs written" in line]
        print(f"  {name}: exit {result.returncode}, {timings[name]:.1f} s (process wall time, incl. start-up); "
              f"{last[-1].strip() if last else ''}")
        if result.returncode != 0:
            print(result.stderr[-2000:], file=sys.stderr)
            return result.returncode
    manifest = json.loads((labels / "manifest.json").read_text())
    shares = [s["valid_share"] for s in manifest["samples"].values()]
    summary = manifest["summary"]
    print(f"  result: {summary['labelled']} labelled of {summary['samples']} extracted pairs, {summary['failed']} failed, "
          f"valid share mean {np.mean(shares):.3f} (min {min(shares):.3f}, max {max(shares):.3f}), "
          f"camera_info.yaml {'present' if (data / 'camera_info.yaml').is_file() else 'absent'}, "
          f"{len(shares) / timings['label']:.3f} pairs/s end to end")
    print(f"  teacher sha256 {manifest['teacher']['sha256'][:16]}..., config {manifest['teacher']['config']}")
    return 0


# ------------------------------------------------------------------------------------------------ scaling
RANK_LINE = re.compile(r"label: rank (\d+) on (\S+): (\d+) pairs in ([\d.]+) s, ([\d.]+) pairs/s "
                       r"\(start-up ([\d.]+) s\)")


def scaling(args) -> int:
    import os

    import torch

    from stereo_depth_ros.dataset_layout import write_image
    from stereo_depth_ros.models import load_model
    from stereo_devkit.motorcycle import motorcycle_pair

    out = Path(args.out or tempfile.mkdtemp(prefix="label_scaling_"))
    data = out / "data"
    left, right = motorcycle_pair(args.height, args.width)
    for i in range(args.pairs):  # the same pair under different names: the teacher's work does not depend on it
        write_image(data / f"{i:06d}" / "left.png", left)
        write_image(data / f"{i:06d}" / "right.png", right)
    teacher = default_teacher(args.teacher)
    if teacher is None:
        teacher = str(out / "seeded_teacher.pth")
        torch.save(load_model(args.model).state_dict(), teacher)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               PYTHONPATH=str(REPO))
    print(f"label scaling: {args.pairs} pairs {args.width}x{args.height}, {args.model} ({teacher}), iters "
          f"{args.iters}, max_disp {args.max_disp}, batch {args.batch_size}, {args.threads} thread(s) per process, "
          f"CPU cores {os.cpu_count()}, torch {torch.__version__}")
    base = None
    for processes in args.processes:
        load_before = os.getloadavg()[0]
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
                   "-m", "stereo_distill.cli", "label", str(data), "--teacher", teacher, "--out",
                   str(out / f"labels_{processes}"), "--model", args.model, "--iters", str(args.iters),
                   "--max-disp", str(args.max_disp), "--batch-size", str(args.batch_size), "--sheet-rows", "0",
                   "--device", args.device or "cpu"]
        started = time.perf_counter()
        result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if result.returncode != 0:
            print(result.stderr[-3000:], file=sys.stderr)
            return result.returncode
        ranks = [RANK_LINE.search(line) for line in result.stderr.splitlines()]
        ranks = [m for m in ranks if m]
        together = sum(int(m.group(3)) for m in ranks) / max(float(m.group(4)) for m in ranks)
        base = base or together
        for m in ranks:
            print(f"  {processes} process(es): rank {m.group(1)}: {int(m.group(3))} pairs, {float(m.group(5)):.3f} "
                  f"pairs/s (start-up {float(m.group(6)):.1f} s)")
        print(f"  {processes} process(es) together: {together:.3f} pairs/s, x{together / base:.2f} of one process; "
              f"wall {wall:.1f} s with start-up; load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default=None, help="teacher checkpoint (default: the fixture weights)")
    parser.add_argument("--model", default="selective_igev")
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--iters", type=int, default=8, help="GRU iterations (upstream's Middlebury setting: 80)")
    parser.add_argument("--max-disp", type=int, default=192)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=("fp32", "bf16", "fp16"),
                        help="one or two precisions; two also give the EPE between their labels")
    parser.add_argument("--repeats", type=int, default=3, help="timed batches per precision")
    parser.add_argument("--device", default=None)
    parser.add_argument("--cpu-autocast", action="store_true",
                        help="on CPU, emulate bf16/fp16 with CPU autocast (an estimate of the EPE between precisions)")
    parser.add_argument("--demo-bag", action="store_true", help="the real run: bag -> extract -> label")
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    parser.add_argument("--out", default=None, help="--demo-bag/--scaling output folder (default: a new temporary one)")
    parser.add_argument("--scaling", action="store_true", help="stereo-distill label under torchrun, 1..N processes")
    parser.add_argument("--pairs", type=int, default=8, help="--scaling: pairs to label")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="--scaling: process counts")
    parser.add_argument("--threads", type=int, default=1, help="--scaling: torch threads per process")
    args = parser.parse_args(argv)
    if len(args.precision) > 2:
        parser.error("--precision takes one or two values")
    if args.scaling:
        return scaling(args)
    if args.demo_bag:
        if args.width == parser.get_default("width"):
            args.width = 256
        return demo_bag(args)
    return throughput(args)


if __name__ == "__main__":
    sys.exit(main())

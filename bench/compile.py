"""`capture: compile` against eager through the torch backend, on any device (the CPU default is decided here).

    .venv/bin/python bench/compile.py                                  # CPU: 480x640 and 240x320, 8 iterations
    .venv/bin/python bench/compile.py --sizes 240x320 --repeats 3 --device cpu

Per size: `TorchEstimator(capture=...)` with "off" (eager) and "compile" on the Motorcycle pair (uint8, upload,
resize, network, confidence), seeded weights (speed does not depend on them), each row in a fresh child process
(a compilation leaves state behind). first s: the first call, which compiles (or, eager, pays lazy
initialisation); median ms / CPU ms: median wall and process-CPU time of --repeats calls after it (CUDA
synchronised; CPU time is the steadier figure when other jobs share the cores); max |d| px: largest disparity
difference from eager of the same size (pixels valid in both) and how many pixels are valid in only one. Prints a
markdown table and the machine's load average before and after each row.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from stereo_depth_ros.inference.torch_backend import TorchEstimator  # noqa: E402
from stereo_devkit.motorcycle import motorcycle_pair  # noqa: E402


def parse_size(text: str) -> tuple[int, int]:
    height, width = (int(v) for v in text.lower().split("x"))
    return height, width


def measure(variant: str, size: tuple[int, int], args: argparse.Namespace) -> tuple[dict, np.ndarray]:
    height, width = size
    left, right = motorcycle_pair(height, width)
    estimator = TorchEstimator(model="rt_igev", device=args.device, iters=args.iters, capture=variant)
    cuda = estimator.device.type == "cuda"

    def call() -> np.ndarray:
        disparity = estimator.estimate_at(left, right, width, height).disparity
        if cuda:
            torch.cuda.synchronize(estimator.device)
        return disparity

    began = time.perf_counter()
    call()
    first_s = time.perf_counter() - began
    wall, cpu = [], []
    disparity = None
    for _ in range(args.repeats):
        began, began_cpu = time.perf_counter(), time.process_time()
        disparity = call()
        wall.append((time.perf_counter() - began) * 1e3)
        cpu.append((time.process_time() - began_cpu) * 1e3)
    assert disparity is not None
    return ({"first_s": first_s, "median_ms": statistics.median(wall), "cpu_ms": statistics.median(cpu),
             "fallback": estimator.captures.fallback_reason}, disparity)


def load_text() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def run_row(size: tuple[int, int], variant: str, args: argparse.Namespace, folder: Path) -> tuple[dict, np.ndarray]:
    """`measure` in a child process (this script with --row)."""
    out = folder / f"{size[0]}x{size[1]}_{variant}"
    command = [sys.executable, __file__, "--device", args.device, "--iters", str(args.iters), "--repeats",
               str(args.repeats), "--row", f"{size[0]}x{size[1]}", variant, str(out)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.with_suffix(".json").read_text()), np.load(out.with_suffix(".npy"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", nargs="+", type=parse_size, default=[(480, 640), (240, 320)])
    parser.add_argument("--iters", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--row", nargs=3, metavar=("HxW", "VARIANT", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.row:
        size, variant, out = args.row
        row, disparity = measure(variant, parse_size(size), args)
        Path(out).with_suffix(".json").write_text(json.dumps(row))
        np.save(Path(out).with_suffix(".npy"), disparity)
        return 0
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads\n")
    print("| size | variant | first s | median ms | CPU ms | max |d| px | valid in one | load before / after |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for size in args.sizes:
            reference = None
            for variant in ("off", "compile"):
                before = load_text()
                row, disparity = run_row(size, variant, args, Path(folder))
                if reference is None:
                    reference = disparity
                both = np.isfinite(reference) & np.isfinite(disparity)
                diff = float(np.abs(disparity[both] - reference[both]).max()) if both.any() else float("nan")
                one = int((np.isfinite(reference) != np.isfinite(disparity)).sum())
                name = "eager" if variant == "off" else variant
                note = f" ({row['fallback']})" if row["fallback"] else ""
                print(f"| {size[0]}x{size[1]} | {name}{note} | {row['first_s']:.1f} | {row['median_ms']:.0f} | "
                      f"{row['cpu_ms']:.0f} | {diff:.2e} | {one} | {before} / {load_text()} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

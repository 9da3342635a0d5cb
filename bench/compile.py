"""`capture: compile` against eager through the torch backend, on any device (the CPU default is decided here).

    .venv/bin/python bench/compile.py                                  # CPU: 480x640 and 240x320, 8 iterations
    .venv/bin/python bench/compile.py --sizes 240x320 --repeats 3 --device cpu

Per size, in a fresh child process (a compilation leaves state behind): `TorchEstimator(capture=...)` with "off"
(eager) and "compile" on the Motorcycle pair (uint8, upload, resize, network, confidence), seeded weights (speed
does not depend on them). first s: the first call, which compiles (eager: pays lazy initialisation). Then the two
run in turn, call by call and the order alternating, --repeats times each, so that both see the same load on a
shared machine: median ms and CPU ms (process CPU time, all threads) per call, and compile / eager: the median of
the per-round ratios of wall times (CUDA synchronised). max |d| px: the largest disparity difference from eager
(pixels valid in both), and how many pixels are valid in only one. Prints a markdown table and the load average
around each size.
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


def measure_size(size: tuple[int, int], args: argparse.Namespace) -> dict:
    """Both variants at one size, interleaved (see the module docstring)."""
    height, width = size
    left, right = motorcycle_pair(height, width)
    estimators = {variant: TorchEstimator(model="rt_igev", device=args.device, iters=args.iters, capture=variant)
                  for variant in ("off", "compile")}

    def call(variant: str) -> tuple[float, float, np.ndarray]:
        estimator = estimators[variant]
        began, began_cpu = time.perf_counter(), time.process_time()
        disparity = estimator.estimate_at(left, right, width, height).disparity
        if estimator.device.type == "cuda":
            torch.cuda.synchronize(estimator.device)
        return (time.perf_counter() - began) * 1e3, (time.process_time() - began_cpu) * 1e3, disparity

    result: dict = {"first_s": {}, "wall_ms": {"off": [], "compile": []}, "cpu_ms": {"off": [], "compile": []}}
    outputs = {}
    for variant in estimators:
        result["first_s"][variant] = call(variant)[0] / 1e3
    for round_ in range(args.repeats):
        for variant in ("off", "compile") if round_ % 2 == 0 else ("compile", "off"):  # neither always goes first
            wall, cpu, outputs[variant] = call(variant)
            result["wall_ms"][variant].append(wall)
            result["cpu_ms"][variant].append(cpu)
    reference, compiled = outputs["off"], outputs["compile"]
    both = np.isfinite(reference) & np.isfinite(compiled)
    result["max_diff_px"] = float(np.abs(compiled[both] - reference[both]).max()) if both.any() else None
    result["valid_in_one"] = int((np.isfinite(reference) != np.isfinite(compiled)).sum())
    result["fallback"] = estimators["compile"].captures.fallback_reason
    return result


def load_text() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", nargs="+", type=parse_size, default=[(480, 640), (240, 320)])
    parser.add_argument("--iters", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size-json", nargs=2, metavar=("HxW", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.size_json:
        size, out = args.size_json
        Path(out).write_text(json.dumps(measure_size(parse_size(size), args)))
        return 0
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {args.iters} iterations, {args.repeats} interleaved rounds\n")
    print("| size | variant | first s | median ms | CPU ms | compile / eager | max |d| px | valid in one | "
          "load before / after |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for height, width in args.sizes:
            out = Path(folder) / f"{height}x{width}.json"
            before = load_text()
            subprocess.run([sys.executable, __file__, "--device", args.device, "--iters", str(args.iters),
                            "--repeats", str(args.repeats), "--size-json", f"{height}x{width}", str(out)],
                           check=True, stdout=subprocess.DEVNULL)
            after = load_text()
            r = json.loads(out.read_text())
            ratio = statistics.median(c / e for c, e in zip(r["wall_ms"]["compile"], r["wall_ms"]["off"],
                                                            strict=True))
            for variant, name in (("off", "eager"), ("compile", "compile")):
                extra = (f"{ratio:.2f} | {r['max_diff_px']:.2e} | {r['valid_in_one']}" if variant == "compile"
                         else "- | - | -")
                note = f" ({r['fallback']})" if variant == "compile" and r["fallback"] else ""
                print(f"| {height}x{width} | {name}{note} | {r['first_s'][variant]:.1f} | "
                      f"{statistics.median(r['wall_ms'][variant]):.0f} | {statistics.median(r['cpu_ms'][variant]):.0f}"
                      f" | {extra} | {before} / {after} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

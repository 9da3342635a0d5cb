"""TensorRT on an exported student: the node's onnxruntime TensorRT provider, and trtexec when it is installed.

    python bench/tensorrt.py --onnx student.onnx [--fp16] [--runs 50] [--cache DIR]

For the export (fixed size: the Motorcycle pair at its size; dynamic: --height/--width), with the node's own
estimator (`OnnxEstimator` with `TensorrtOptions`, as the trt_* parameters make it):
- the first start: session creation + first pair, which builds the engine and writes it to the cache;
- a second start on the warm cache (what every later node start pays);
- ms per pair (median and 90th percentile over --runs, after 3 warm-up pairs);
- max and mean |difference| of the disparity to onnxruntime's CPU provider on the same pair.
Then `trtexec --onnx=... [--stronglyTyped]` (the command `stereo-distill export` prints) if trtexec is on PATH,
with its median GPU compute time. Without a usable TensorRT (no GPU, no TensorRT libraries) it says why and stops.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
TRT = "TensorrtExecutionProvider"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", required=True, help="an export of `stereo-distill export`")
    parser.add_argument("--fp16", action="store_true", help="trt_fp16: TensorRT may run any layer in float16")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--cache", default=None, help="engine cache folder (default: a new temporary folder)")
    parser.add_argument("--height", type=int, default=480, help="pair size for a dynamic export")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--trtexec-timeout", type=float, default=600)
    args = parser.parse_args(argv)
    if not Path(args.onnx).is_file():
        parser.error(f"--onnx {args.onnx}: no such file (make one with `stereo-distill export`)")

    import onnxruntime as ort

    from stereo_depth_ros.inference.onnx_backend import (
        OnnxEstimator, TensorrtOptions, read_export_limits, read_export_metadata, unusable_providers)
    from stereo_devkit.motorcycle import motorcycle_pair

    path = Path(args.onnx)
    meta = read_export_metadata(path)
    size = read_export_limits(path).fixed_size or (args.height, args.width)
    left, right = motorcycle_pair(*size)
    print(f"tensorrt bench: {path.name} ({meta.get('precision')}, {meta.get('iters')} iterations, "
          f"{size[1]}x{size[0]}), onnxruntime {ort.__version__}, trt_fp16 {args.fp16}")
    why = unusable_providers([TRT], ort).get(TRT) or (None if TRT in ort.get_available_providers()
                                                       else "this onnxruntime build has no TensorRT provider")
    if why:
        print(f"  TensorRT provider cannot run here: {why}")
    else:
        cache = args.cache or tempfile.mkdtemp(prefix="trt_engines_")
        options = TensorrtOptions(fp16=args.fp16, engine_cache_dir=cache)
        reference = OnnxEstimator(str(path), providers=["CPUExecutionProvider"]).estimate(left, right).disparity
        for start in ("first start (builds the engine)", "second start (cached engine)"):
            started = time.perf_counter()
            estimator = OnnxEstimator(str(path), providers=[TRT, "CUDAExecutionProvider"], tensorrt=options)
            result = estimator.estimate(left, right).disparity
            seconds = time.perf_counter() - started
            print(f"  {start}: {seconds:.1f} s to the first disparity, on {estimator.providers[0]}")
        for _ in range(3):
            estimator.estimate(left, right)
        times = []
        for _ in range(args.runs):
            started = time.perf_counter()
            estimator.estimate(left, right)
            times.append((time.perf_counter() - started) * 1000)
        both = np.isfinite(result) & np.isfinite(reference)
        diff = np.abs(result[both] - reference[both])
        print(f"  per pair: median {np.median(times):.2f} ms, p90 {np.percentile(times, 90):.2f} ms over {args.runs} "
              f"(host arrays in and out, as the node calls it); vs CPU provider max {diff.max():.3g} px, "
              f"mean {diff.mean():.3g} px; engines in {options.engine_dir(path)}")
    trtexec = shutil.which("trtexec")
    if trtexec is None:
        print("  trtexec: not on PATH (JetPack: /usr/src/tensorrt/bin/trtexec)")
        return 0
    command = [trtexec, f"--onnx={path}"] + (["--stronglyTyped"] if meta.get("precision") == "fp16" else [])
    result_trtexec = subprocess.run(command, capture_output=True, text=True, timeout=args.trtexec_timeout)
    median = re.search(r"GPU Compute Time: .*?median = ([\d.]+) ms", result_trtexec.stdout)
    print(f"  {' '.join(command[1:])}: exit {result_trtexec.returncode}, GPU compute median "
          f"{median.group(1) + ' ms' if median else '(not reported)'}")
    if result_trtexec.returncode:
        print(result_trtexec.stdout[-2000:] + result_trtexec.stderr[-2000:])
    return 0


if __name__ == "__main__":
    sys.exit(main())

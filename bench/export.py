"""ONNX export figures: parity with PyTorch (fp32, fp16) and onnxruntime latency next to PyTorch's.

    python bench/export.py [--model CKPT] [--height 224 --width 320] [--iters 8] [--repeats 3]

Exports with `stereo-distill export` (which verifies and prints max |onnx - torch|), then times the node's
onnxruntime estimator against the PyTorch `predict` on a Motorcycle crop (median of --repeats after a warm-up).
Default model: weights/sceneflow.pth, else the RT-IGEV parity fixture (seeded weights: timings are the same).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO.parent / "shared" / "parity" / "rt_igev" / "weights.pth"


def _median_s(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    official = REPO / "weights" / "sceneflow.pth"
    parser.add_argument("--model", default=str(official if official.is_file() else FIXTURE))
    parser.add_argument("--height", type=int, default=224)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--iters", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", nargs="+", default=["fp32", "fp16"], choices=("fp32", "fp16"))
    args = parser.parse_args()

    import torch

    from stereo_depth_ros.inference import create_estimator
    from stereo_distill.cli import main as cli
    from stereo_devkit.motorcycle import motorcycle_pair

    left, right = motorcycle_pair(args.height, args.width)
    torch_est = create_estimator("torch", model="rt_igev", model_path=args.model, device="cpu", iters=args.iters)
    torch_s = _median_s(lambda: torch_est.estimate(left, right), args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        for precision in args.precision:
            out = Path(tmp) / f"student_{precision}.onnx"
            buffer = io.StringIO()
            with contextlib.redirect_stdout(buffer):
                rc = cli(["export", "--model", args.model, "--out", str(out), "--iters", str(args.iters),
                          "--height", str(args.height), "--width", str(args.width), "--precision", precision])
            if rc != 0:
                print(json.dumps({"precision": precision, "export": "failed", "exit_status": rc}))
                continue
            text = buffer.getvalue()
            report = json.loads(text[text.index("{"):])
            est = create_estimator("onnxruntime", model_path=str(out), providers=["CPUExecutionProvider"])
            ort_s = _median_s(lambda: est.estimate(left, right), args.repeats)
            print(json.dumps({
                "precision": precision, "size": [args.height, args.width], "iters": args.iters,
                "max_abs_px_vs_torch_fp32": report["max_abs_px"],
                "per_input": {c["input"]: c["max_abs_px"] for c in report["verification"]},
                "onnxruntime_cpu_s": round(ort_s, 4), "torch_cpu_s": round(torch_s, 4),
                "torch_threads": torch.get_num_threads(), "file_mb": report["file_mb"],
                "loadavg": [round(x, 2) for x in os.getloadavg()],
            }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

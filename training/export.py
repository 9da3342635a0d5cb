"""Export the RT-IGEV student to ONNX (iterations fixed) and verify it against PyTorch.

The graph takes "left" and "right" float32 [1,3,H,W] RGB 0..255 and returns "disparity" float32 [1,1,H,W]
(and "confidence" [1,1,H,W] in 0..1 unless --no-confidence);
padding to a multiple of 32 (edge replication, as the PyTorch model's `predict`) happens inside the graph.
Input size: fixed at export (--height/--width, default 480x640) or dynamic (--dynamic: any size from 32x32; the
cost volume is traced in a form that records no width, see models/cost_volume.py). The metadata records the
limits (min_height, min_width, size_divisor) that the node's onnxruntime backend checks before running.
Precision fp16 stores weights and runs the network in float16 behind float32 inputs/outputs; the correlation
volume's accumulation, the geometry lookup, softmaxes, regression and upsampling stay float32 (models/base.py), and
the report gives the largest float32 values where float16 would overflow (`fp16_headroom`).
The file is written only after onnxruntime has run it and matched PyTorch within --tolerance, and after the graph
passed the TensorRT check (tensorrt_check.py: operators, GridSample rank, control flow, shapes, opset; the trtexec
command line is printed): --tensorrt-check fail (default) writes nothing when something would stop trtexec, warn
reports it and writes the file anyway (onnxruntime's CPU/CUDA providers still run it), off skips the check.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from stereo_depth_ros.pad_split import MIN_SIDE

from .cli import CliError
from .provenance import sha256_file

OPSET = 17
META_PREFIX = "stereo_depth_ros."
DEFAULT_TOLERANCE = {"fp32": 1e-3, "fp16": 0.5}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="RT-IGEV checkpoint (official or ours)")
    parser.add_argument("--out", required=True, help="ONNX file to write (atomically, after verification)")
    parser.add_argument("--iters", type=int, default=None, help="GRU iterations baked in (default: valid_iters)")
    parser.add_argument("--height", type=int, default=None,
                        help="input height (default 480); with --dynamic only the tracing/verification size")
    parser.add_argument("--width", type=int, default=None, help="input width (default 640), see --height")
    parser.add_argument("--dynamic", action="store_true", help="dynamic height and width instead of a fixed size")
    parser.add_argument("--precision", choices=("fp32", "fp16"), default="fp32", help="weights/compute dtype")
    parser.add_argument("--max-disp", type=int, default=None, help="override the model's max_disp")
    parser.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (>= 17, default {OPSET})")
    parser.add_argument("--tolerance", type=float, default=None,
                        help="max abs difference (px) to PyTorch float32 that verification accepts "
                             "(default 1e-3 for fp32, 0.5 for fp16)")
    parser.add_argument("--confidence", action=argparse.BooleanOptionalAction, default=True,
                        help="also output the model's confidence map (default on)")
    parser.add_argument("--no-verify", action="store_true", help="skip the onnxruntime verification (not advised)")
    parser.add_argument("--tensorrt-check", choices=("fail", "warn", "off"), default="fail",
                        help="what a graph TensorRT could not build does: fail (default, nothing written), warn "
                             "(written anyway: onnxruntime still runs it), off (not checked)")


# ---------------------------------------------------------------------------------------------------- graph
def _export_module(model, iters: int, dtype, confidence: bool = False):
    """nn.Module (left, right) -> disparity [, confidence], with the pad/unpad of `predict` written with
    traceable shape math (so that a dynamic-size graph pads correctly at any size)."""
    import torch
    import torch.nn.functional as F

    from stereo_depth_ros.pad_split import pad_lrtb

    class StereoExport(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = model

        def forward(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
            h, w = left.shape[-2], left.shape[-1]
            pads = list(pad_lrtb(h, w))  # the model's InputPadder split, on traced sizes
            left_pad, top = pads[0], pads[2]
            l_img = F.pad(left.to(dtype), pads, mode="replicate")
            r_img = F.pad(right.to(dtype), pads, mode="replicate")
            result = self.net.run(l_img, r_img, iters=iters, test_mode=True, with_confidence=confidence)
            disp = result.predictions[-1][:, :, top:top + h, left_pad:left_pad + w].float()
            if not confidence:
                return disp
            return disp, result.confidence[:, :, top:top + h, left_pad:left_pad + w].float()

    return StereoExport().eval()


def export_onnx(model, path: Path, iters: int, height: int, width: int, dynamic: bool, half: bool,
                opset: int, confidence: bool = True) -> str:
    """Write the graph to `path` (not atomic: the caller verifies first). Returns the exporter used."""
    import torch

    dtype = torch.float16 if half else torch.float32
    if half:
        model = model.half()
    module = _export_module(model, iters, dtype, confidence)
    example = (torch.rand(1, 3, height, width) * 255, torch.rand(1, 3, height, width) * 255)
    outputs = ["disparity", "confidence"] if confidence else ["disparity"]
    dynamic_axes = {name: {2: "height", 3: "width"} for name in ["left", "right", *outputs]} if dynamic else None
    # The TorchScript exporter handles this network (the fixture's upstream export used it); the dynamo
    # exporter needs onnxscript and is tried only when the first one fails.
    errors = []
    for exporter in ("torchscript", "dynamo"):
        try:
            with torch.no_grad(), warnings.catch_warnings():
                # The tracer's remarks (a shape compared in Python, a constant it cannot fold, instance norm kept
                # in train mode, which is what the network computes) say what the trace may have frozen; the
                # exported graph is run against PyTorch right after (`--tolerance`), which is the real check.
                warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
                warnings.filterwarnings("ignore", message=r"(Constant folding|ONNX export mode is set to)")
                torch.onnx.export(
                    module, example, str(path), input_names=["left", "right"], output_names=outputs,
                    opset_version=opset, dynamic_axes=dynamic_axes, dynamo=exporter == "dynamo",
                    do_constant_folding=True,
                )
            return exporter
        except Exception as error:  # noqa: BLE001 -- reported together below
            errors.append(f"{exporter}: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
    raise CliError("ONNX export failed: " + " | ".join(errors))


def add_metadata(path: Path, props: dict[str, str]) -> None:
    import onnx

    graph = onnx.load(str(path))
    existing = {p.key: p for p in graph.metadata_props}
    for key, value in props.items():
        if key in existing:
            existing[key].value = value
        else:
            graph.metadata_props.add(key=key, value=value)
    onnx.save(graph, str(path))


# --------------------------------------------------------------------------------------------- verification
def _chw(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image.astype(np.float32).transpose(2, 0, 1)[None])


def ort_session(path: Path, providers: list[str] | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])


def verify(path: Path, reference_model, iters: int, sizes: list[tuple[int, int]]) -> list[dict]:
    """Run the file in onnxruntime (CPU) on a random and a real pair per size; compare to PyTorch float32."""
    import torch

    from stereo_devkit.motorcycle import motorcycle_pair

    session = ort_session(path)
    rng = np.random.default_rng(0)
    module = _export_module(reference_model, iters, torch.float32, confidence=False)
    results = []
    for height, width in sizes:
        real = motorcycle_pair(height, width)
        random_pair = (rng.uniform(0, 255, (height, width, 3)), rng.uniform(0, 255, (height, width, 3)))
        for kind, (left, right) in (("random", random_pair), ("motorcycle", real)):
            l_in, r_in = _chw(left), _chw(right)
            with torch.no_grad():
                start = time.perf_counter()
                expected = module(torch.from_numpy(l_in), torch.from_numpy(r_in)).numpy()
                torch_s = time.perf_counter() - start
            start = time.perf_counter()
            got = session.run(["disparity"], {"left": l_in, "right": r_in})[0]
            ort_s = time.perf_counter() - start
            if got.shape != expected.shape:
                raise CliError(f"onnxruntime returned {got.shape}, PyTorch {expected.shape}")
            diff = np.abs(got.astype(np.float64) - expected)
            results.append({"input": kind, "height": height, "width": width, "max_abs_px": float(diff.max()),
                            "mean_abs_px": float(diff.mean()), "torch_s": torch_s, "ort_s": ort_s})
    return results


def tensorrt_gate(staging: Path, out: Path, mode: str, opt_size: tuple[int, int], report: dict) -> None:
    """The TensorRT check of the staged graph: printed, added to the report, and fatal in mode "fail"."""
    if mode == "off":
        return
    from .tensorrt_check import check_onnx

    result = check_onnx(staging, opt_size)
    for line in result.lines():
        print(line, file=sys.stderr)
    report["tensorrt"] = result.as_dict()
    if not result.ok and mode == "fail":
        raise CliError(f"TensorRT {result.tensorrt} could not build {out.name}: {'; '.join(result.blockers)}; "
                       "nothing written (--tensorrt-check warn writes it anyway: onnxruntime's CPU and CUDA "
                       "providers run it)")


# ------------------------------------------------------------------------------------------------------ run
def run(args) -> int:
    from stereo_depth_ros.atomic_io import atomic_path
    from stereo_depth_ros.models import load_model

    if args.opset < 17:
        raise CliError(f"--opset must be >= 17 (GridSample), got {args.opset}")
    if (args.height is None) != (args.width is None):
        raise CliError("give both --height and --width (or neither: 480 x 640)")
    height, width = (args.height, args.width) if args.height is not None else (480, 640)
    if height < MIN_SIDE or width < MIN_SIDE:
        raise CliError(f"input size {height}x{width} is too small (at least {MIN_SIDE}x{MIN_SIDE})")
    if args.iters is not None and args.iters < 1:
        raise CliError(f"--iters must be >= 1, got {args.iters}")
    model_path = Path(args.model)
    if not model_path.is_file():
        raise CliError(f"checkpoint {model_path} does not exist")
    out = Path(args.out)
    if out.suffix.lower() != ".onnx":
        raise CliError(f"--out {out} must end in .onnx")

    overrides = {"max_disp": args.max_disp} if args.max_disp else {}
    try:
        model = load_model("rt_igev", checkpoint=str(model_path), device="cpu", **overrides)
        reference = load_model("rt_igev", checkpoint=str(model_path), device="cpu", **overrides)
    except (OSError, ValueError, RuntimeError, KeyError) as error:
        raise CliError(f"cannot load {model_path}: {str(error).splitlines()[0]}") from None
    model.eval()
    reference.eval()
    iters = args.iters or model.config.valid_iters
    half = args.precision == "fp16"

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="export_") as tmp:
        staging = Path(tmp) / out.name
        exporter = export_onnx(model, staging, iters, height, width, args.dynamic, half, args.opset,
                               args.confidence)
        if half:
            from .export_fp16 import fix_float16_ranges

            fix_float16_ranges(staging)
        export_s = time.perf_counter() - start
        import dataclasses

        add_metadata(staging, {
            META_PREFIX + "padded_inside": "1",
            META_PREFIX + "iters": str(iters),
            META_PREFIX + "model": "rt_igev",
            META_PREFIX + "precision": args.precision,
            META_PREFIX + "input_size": "dynamic" if args.dynamic else f"{height}x{width}",
            # What the node's onnxruntime backend checks before running (see its ExportLimits).
            META_PREFIX + "min_height": str(MIN_SIDE if args.dynamic else height),
            META_PREFIX + "min_width": str(MIN_SIDE if args.dynamic else width),
            META_PREFIX + "size_divisor": "1",  # the graph pads to the networks' stride itself
            META_PREFIX + "source_sha256": sha256_file(model_path),
            META_PREFIX + "config": json.dumps(dataclasses.asdict(model.config), sort_keys=True),
            META_PREFIX + "exporter": exporter,
        })
        report = {"out": str(out), "exporter": exporter, "opset": args.opset, "iters": iters,
                  "precision": args.precision, "dynamic": args.dynamic, "export_s": round(export_s, 2),
                  "file_mb": round(staging.stat().st_size / 2**20, 2)}
        tensorrt_gate(staging, out, args.tensorrt_check, (height, width), report)
        if not args.no_verify:
            # A dynamic graph is also checked at a size that is not a multiple of 32 (the in-graph padding path).
            sizes = [(height, width)] if not args.dynamic else [(height, width), (height + 13, width + 19)]
            try:
                checks = verify(staging, reference, iters, sizes)
            except CliError:
                raise
            except Exception as error:  # noqa: BLE001 -- onnxruntime refusing the graph is a verification failure
                raise CliError(f"onnxruntime cannot run the export: {str(error).splitlines()[0]}") from None
            tolerance = args.tolerance if args.tolerance is not None else DEFAULT_TOLERANCE[args.precision]
            worst = max(c["max_abs_px"] for c in checks)
            report.update(verification=checks, max_abs_px=worst, tolerance_px=tolerance)
            for c in checks:
                print(f"verify {c['input']:<10} {c['height']}x{c['width']}: max |onnx {args.precision} - torch fp32| = "
                      f"{c['max_abs_px']:.3g} px (mean {c['mean_abs_px']:.3g}); torch {c['torch_s']:.3f} s, "
                      f"onnxruntime {c['ort_s']:.3f} s", file=sys.stderr)
            if not worst <= tolerance:
                print(json.dumps(report, indent=2))
                raise CliError(f"verification failed: max abs difference {worst:.3g} px > tolerance {tolerance} px; "
                               f"{out} not written")
        if half:
            from .export_fp16 import float16_headroom

            report["fp16_headroom"] = float16_headroom(reference, height, width)
            print("fp16 headroom (largest float32 magnitudes; float16 ends at 65504): " + ", ".join(
                f"{k} {v:.3g}" for k, v in report["fp16_headroom"].items()), file=sys.stderr)
        with atomic_path(out) as final:
            final.write_bytes(staging.read_bytes())
    print(json.dumps(report, indent=2))
    return 0

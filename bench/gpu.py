"""One command for the GPU evidence: the student's variants, the pipeline, upstream side by side, the teacher and
training, printed as one table at the end and written as JSON.

    PYTHONPATH=. python3 bench/gpu.py --weights .gpu/weights.pth --out OUT     # on a GPU machine: the whole table
    PYTHONPATH=. python3 bench/gpu.py --upstream ../IGEV-plusplus --out OUT    # + upstream's RT-IGEV beside ours
    .venv/bin/python bench/gpu.py --device cpu --quick                         # the same code at tiny sizes
    .venv/bin/python bench/gpu.py --device cpu --only budget                   # one section, full sizes

Rows (CUDA: sizes as listed; --quick: tiny sizes, 2 iterations, few repeats):
- student, 480x640 and 720x1280, 8 iterations, {fp32, bf16, fp16} x {eager, cuda_graph}: TorchEstimator.estimate_at
  on the uint8 Motorcycle pair (scikit-image's Middlebury copy, resized), i.e. upload + device resize + network +
  validity mask, outputs left on the device. Median latency by CUDA events after warm-up (the first warm-up call
  captures; its time is `first_call_ms` in the JSON), fps, peak memory (torch's allocator, capture pools
  included), max and mean |disparity difference| in pixels against fp32 eager of the same size (pixels valid in
  both; `valid_mismatch` in the JSON counts the rest).
- budget, 480x640, fp32, captured: no budget, then budgets of 80 % and 50 % of that frame time: the iteration
  count chosen, the latency achieved, misses, the fitted fixed + per-iteration cost, and captures made on live
  frames (warm-up captures every count the budget may choose: 0 expected).
- pipeline, 480x640: the whole per-frame pipeline; `stage_ms_last_frame` in the JSON (the estimate stage ends
  with the device synchronised).
- warmup, device, pool (bench/gpu_fixes.py): warm-up at the camera size (720x1280 camera, 480x640 working, no
  confidence: frame 1 must capture and allocate nothing), the student captured on cuda:1 (when there are two
  GPUs), and the peak memory of the budget's captures with a pool per graph vs the shared pool.
- upstream (--upstream DIR, a checkout of gangweix/IGEV-plusplus; bench/upstream_rt_igev.py builds it offline):
  upstream's RT-IGEV eager fp32 on our weights and the same pair (already on the device, so it pays no upload),
  its speed ratio to ours and its |difference| from our fp32 eager.
- teacher, 860x1080, max_disp 768, 80 iterations: pairs/s in fp32 and bf16, and their |difference|.
- training, 320x768 crops, batch 8, 22 iterations: steps/s of bench/train.py's distillation step, fp32 and bf16.
- compile: torch.compile(mode="reduce-overhead") instead of cuda_graph, each in a child process with a timeout;
  the last section, as each new shape is compiled first.
The time guard (--time-limit, default 440 s) skips rows that would not finish in time, with a note, so that the run
stays under 8 minutes. --out is a file ending in .json, or a folder (created) that receives gpu_bench.json; it is
rewritten after every row, so a run cut short keeps what it measured. --weights: the student's checkpoint (seeded
init when absent; speed does not depend on it). Imports only torch, timm, numpy, OpenCV, scikit-image and this
repository's models and inference modules (no rclpy, no rosbags).
"""
from __future__ import annotations

import argparse
import datetime
import platform
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from gpu_compare import compile_section, isolated_row, upstream_section  # noqa: E402
from gpu_fixes import device_section, pool_section, warmup_section  # noqa: E402
from gpu_measure import Deadline, Row  # noqa: E402
from gpu_sections import (  # noqa: E402
    Settings,
    budget_section,
    pipeline_section,
    student_section,
    teacher_section,
    training_section,
)

from stereo_depth_ros.atomic_io import atomic_write_json  # noqa: E402

DEFAULT_TIME_LIMIT_S = 440.0  # 8 minutes less the start-up and a margin
SECTIONS = ("student", "budget", "pipeline", "warmup", "pool", "device", "upstream", "teacher", "training",
            "compile")


def full_settings(device: torch.device) -> Settings:
    return Settings(device=device, student_sizes=[(480, 640), (720, 1280)], student_iters=8, warmup=5, repeats=50,
                    teacher_size=(860, 1080), teacher_max_disp=768, teacher_iters=80, teacher_repeats=3,
                    train_crop=(320, 768), train_batch=8, train_iters=22, train_steps=10, train_warmup=2,
                    costs_s={"student": 20, "upstream": 30, "teacher": 90, "training": 60, "compile": 200})


def quick_settings(device: torch.device) -> Settings:
    return Settings(device=device, student_sizes=[(32, 32), (32, 64)], student_iters=2, warmup=1, repeats=1,
                    teacher_size=(32, 64), teacher_max_disp=32, teacher_iters=1, teacher_repeats=1,
                    train_crop=(32, 64), train_batch=1, train_iters=1, train_steps=1,
                    costs_s={"student": 1, "upstream": 1, "teacher": 1, "training": 1, "compile": 1})


def parse_size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be HxW (e.g. 480x640), got {text!r}") from None
    return height, width


def json_path(out: str) -> Path:
    path = Path(out)
    return path if path.suffix == ".json" else path / "gpu_bench.json"


def format_value(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) >= 0.01 or value == 0 else f"{value:.1e}"
    return str(value)


def table(rows: list[Row]) -> str:
    header = ("section", "size", "precision", "variant", "iters", "median ms", "rate", "peak MiB",
              "max |d| px", "mean |d| px", "note")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        rate = "-" if row.rate is None else f"{row.rate:.2f} {row.rate_unit}"
        cells = (row.section, row.size, row.precision, row.variant, format_value(row.iters),
                 format_value(row.median_ms), rate, format_value(row.peak_mib, 0), format_value(row.max_diff_px, 3),
                 format_value(row.mean_diff_px, 4), row.note or "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}), {torch.get_num_threads()} threads"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # cuda by default even without a GPU: the full sizes on a CPU take tens of minutes, which nobody wants by accident.
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few repeats (what `make test` runs)")
    parser.add_argument("--weights", default=None, help="student checkpoint (default: seeded init)")
    parser.add_argument("--upstream", default=None, help="a checkout of gangweix/IGEV-plusplus to run beside ours")
    parser.add_argument("--out", default=None, help="a .json file, or a folder that receives gpu_bench.json")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=None, help="run only these sections")
    parser.add_argument("--time-limit", type=float, default=DEFAULT_TIME_LIMIT_S, help="seconds (default 440)")
    parser.add_argument("--iters", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, default=None, help=argparse.SUPPRESS)
    # the child process of a compile row (gpu_sections.run_isolated_row)
    parser.add_argument("--isolated-row", nargs=3, metavar=("HxW", "PRECISION", "VARIANT"), help=argparse.SUPPRESS)
    parser.add_argument("--reference", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--row-json", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.weights and not Path(args.weights).is_file():
        print(f"error: --weights {args.weights} is not a file", file=sys.stderr)
        return 2
    if args.upstream and not (Path(args.upstream) / "core_rt" / "rt_igev_stereo.py").is_file():
        print(f"error: --upstream {args.upstream} is not a checkout of gangweix/IGEV-plusplus "
              "(no core_rt/rt_igev_stereo.py)", file=sys.stderr)
        return 2
    try:
        device = torch.device(args.device)
    except RuntimeError:
        print(f"error: unknown --device {args.device!r}", file=sys.stderr)
        return 2
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device here; `--device cpu --quick` runs the same code at tiny sizes in seconds, "
              "`--device cpu` the full sizes (tens of minutes)", file=sys.stderr)
        return 2

    settings = quick_settings(device) if args.quick else full_settings(device)
    settings.weights = args.weights
    settings.upstream = Path(args.upstream).resolve() if args.upstream else None
    if args.quick:
        settings.train_warmup = 0
    for name in ("iters", "repeats", "warmup"):
        if getattr(args, name) is not None:
            setattr(settings, {"iters": "student_iters"}.get(name, name), getattr(args, name))

    if args.isolated_row:
        size, precision, variant = args.isolated_row
        row = isolated_row(settings, parse_size(size), precision, variant,
                           Path(args.reference) if args.reference else None)
        atomic_write_json(args.row_json, row.as_dict())
        return 0

    deadline = Deadline(args.time_limit)
    rows: list[Row] = []
    report: dict[str, Any] = {
        "device": device_name(device), "torch": torch.__version__, "cuda": torch.version.cuda,
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "quick": args.quick, "weights": args.weights or "seeded init", "upstream": args.upstream,
        "time_limit_s": args.time_limit, "rows": [],
    }
    out = json_path(args.out) if args.out else None
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)

    def emit(row: Row) -> None:
        rows.append(row)
        print(f"[{deadline.elapsed_s():5.0f} s] {row.section} {row.size} {row.precision} {row.variant}: "
              f"{'-' if row.median_ms is None else f'{row.median_ms:.2f} ms'} {row.note}".rstrip(), flush=True)
        report["rows"].append(row.as_dict())
        report["elapsed_s"] = round(deadline.elapsed_s(), 1)
        if out is not None:
            atomic_write_json(out, report)

    sections: list[tuple[str, Callable[[Settings, Deadline, Callable[[Row], None]], None]]] = [
        ("student", student_section), ("budget", budget_section), ("pipeline", pipeline_section),
        ("warmup", warmup_section), ("pool", pool_section), ("device", device_section),
        ("upstream", upstream_section), ("teacher", teacher_section), ("training", training_section),
        ("compile", compile_section)]
    sections = [(name, section) for name, section in sections if not args.only or name in args.only]
    print(f"device: {report['device']}, torch {torch.__version__}; time limit {args.time_limit:.0f} s", flush=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # e.g. "fp16 needs CUDA": rows carry their own notes
        for name, section in sections:
            try:
                section(settings, deadline, emit)
            except Exception as error:  # one broken section must not cost the others' figures
                emit(Row(name, note=f"failed: {type(error).__name__}: {str(error).splitlines()[0][:160]}"))
                if device.type == "cuda":
                    torch.cuda.empty_cache()

    print(f"\n{report['device']}, torch {torch.__version__}, weights: {report['weights']}, "
          f"{deadline.elapsed_s():.0f} s\n")
    print(table(rows))
    if out is not None:
        print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The sections of bench/gpu.py: student variants, pipeline, upstream side by side, teacher, training, compile.

Each section emits `Row`s through `emit` as soon as they are measured (bench/gpu.py prints them and rewrites the
JSON), so a run cut short still leaves every finished figure behind. Every row asks the time guard first.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gpu_measure import (
    Deadline,
    PeakMemory,
    Row,
    as_tensor,
    disparity_difference,
    median,
    motorcycle_pair,
    time_ms,
    to_numpy,
)

from stereo_depth_ros.inference.torch_backend import TorchEstimator

BENCH = Path(__file__).resolve().parent
VARIANT_NAMES = {"off": "eager", "cuda_graph": "cuda_graph", "compile": "compile"}
Emit = Callable[[Row], None]


@dataclass
class Settings:
    """Sizes and repetitions of one run (bench/gpu.py builds the full and the --quick set)."""

    device: torch.device
    student_sizes: list[tuple[int, int]]
    student_iters: int
    warmup: int
    repeats: int
    teacher_size: tuple[int, int]
    teacher_max_disp: int
    teacher_iters: int
    teacher_repeats: int
    train_crop: tuple[int, int]
    train_batch: int
    train_iters: int
    train_steps: int
    costs_s: dict[str, float]  # expected seconds per row, for the time guard
    precisions: tuple[str, ...] = ("fp32", "bf16", "fp16")
    weights: str | None = None
    upstream: Path | None = None
    train_warmup: int = 1
    compile_timeout_s: float = 240.0
    results: dict[str, Any] = field(default_factory=dict)  # what later sections compare against


def size_text(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def warning_notes(caught: list[warnings.WarningMessage]) -> list[str]:
    notes: list[str] = []
    for item in caught:
        text = str(item.message).splitlines()[0]
        if text not in notes:
            notes.append(text)
    return notes


# ---- student ------------------------------------------------------------------------------------------------------
def measure_student(s: Settings, size: tuple[int, int], precision: str, variant: str) -> tuple[Row, np.ndarray]:
    """One student configuration through TorchEstimator.estimate_at (upload, device resize, network, masks), with
    outputs left on the device; latency = median of s.repeats calls after s.warmup (the first one captures)."""
    height, width = size
    left, right = motorcycle_pair(height, width)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with PeakMemory(s.device) as memory:
            estimator = TorchEstimator(model="rt_igev", model_path=s.weights, device=str(s.device),
                                       precision=precision, iters=s.student_iters, capture=variant)
            estimator.device_outputs = True
            first_ms, _ = time_ms(lambda: estimator.estimate_at(left, right, width, height), s.device, 0, 1)
            times, estimate = time_ms(lambda: estimator.estimate_at(left, right, width, height), s.device,
                                      max(0, s.warmup - 1), s.repeats)
    ms = median(times)
    row = Row("student", size_text(size), precision, VARIANT_NAMES[variant], s.student_iters, ms, 1e3 / ms, "fps",
              memory.mib, note="; ".join(warning_notes(caught)),
              extra={"captures": estimator.captures.captures, "min_ms": min(times),
                     "first_call_ms": first_ms[0]})
    return row, to_numpy(estimate.disparity)


def student_section(s: Settings, deadline: Deadline, emit: Emit) -> None:
    """{fp32, bf16, fp16} x {eager, cuda_graph} per size; differences against fp32 eager of the same size."""
    for size in s.student_sizes:
        reference = None
        for precision in s.precisions:
            for variant in ("off", "cuda_graph"):
                row = Row("student", size_text(size), precision, VARIANT_NAMES[variant], s.student_iters)
                if not deadline.allows(s.costs_s["student"]):
                    row.note = deadline.skip_note(s.costs_s["student"])
                    emit(row)
                    continue
                try:
                    row, disparity = measure_student(s, size, precision, variant)
                except Exception as error:  # e.g. out of memory: the other rows still run
                    row.note = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:160]}"
                    emit(row)
                    continue
                if reference is None and (precision, variant) == ("fp32", "off"):
                    reference = disparity
                    s.results[f"reference {size_text(size)}"] = disparity
                if reference is not None:
                    difference = disparity_difference(reference, disparity)
                    row.max_diff_px, row.mean_diff_px = difference["max_diff_px"], difference["mean_diff_px"]
                    row.extra["valid_mismatch"] = difference["valid_mismatch"]
                s.results[f"ms {size_text(size)} {precision} {row.variant}"] = row.median_ms
                emit(row)


# ---- latency budget -----------------------------------------------------------------------------------------------
def budget_section(s: Settings, deadline: Deadline, emit: Emit) -> None:
    """The student (fp32, default capture) at the first size without a budget, then at 80 % and 50 % of that
    frame time: the iteration count each frame chose, the latency achieved, and the misses."""
    size = s.student_sizes[0]
    height, width = size
    left, right = motorcycle_pair(height, width)
    estimator = TorchEstimator(model="rt_igev", model_path=s.weights, device=str(s.device), iters=s.student_iters)
    estimator.device_outputs = True
    full_ms = None
    chosen: list[int] = []  # the iteration count of each timed frame of the current row

    def frame() -> None:
        chosen.append(estimator.estimate_at(left, right, width, height).iterations or 0)

    for share in (None, 0.8, 0.5):
        row = Row("budget", size_text(size), "fp32", VARIANT_NAMES[estimator.capture_mode])
        if not deadline.allows(s.costs_s["student"]):
            row.note = deadline.skip_note(s.costs_s["student"])
            emit(row)
            continue
        if share is not None and full_ms is None:
            continue
        estimator.latency_budget_ms = 0.0 if share is None else share * full_ms
        estimator.warmup(height, width)  # captures; with a budget also measures the full count and one iteration
        chosen.clear()
        misses = estimator.budget_misses
        times, _ = time_ms(frame, s.device, 0, max(3, s.repeats // 5))
        ms = median(times)
        full_ms = ms if share is None else full_ms
        row.iters, row.median_ms, row.rate, row.rate_unit = max(set(chosen), key=chosen.count), ms, 1e3 / ms, "fps"
        budget = estimator.latency_budget_ms
        row.variant += " no budget" if share is None else f" budget {budget:.1f} ms"
        fit = estimator.cost_model
        row.extra = {"budget_ms": budget, "iterations": chosen, "misses": estimator.budget_misses - misses,
                     "fixed_ms": fit.fixed_ms, "per_iteration_ms": fit.per_iteration_ms, "max_ms": max(times)}
        if share is not None:
            row.note = (f"chose {min(chosen)}-{max(chosen)} iterations, {row.extra['misses']} misses of "
                        f"{len(chosen)}; fit {fit.fixed_ms:.1f} ms + {fit.per_iteration_ms:.2f} ms/iteration")
        emit(row)


# ---- pipeline -----------------------------------------------------------------------------------------------------
def pipeline_section(s: Settings, deadline: Deadline, emit: Emit) -> None:
    """The whole per-frame pipeline (upload -> inference -> depth + points + confidence -> host bytes)."""
    size = s.student_sizes[0]
    emit(Row("pipeline", size_text(size), "fp32", "cuda_graph", s.student_iters, note="pipeline not merged"))


# ---- upstream -----------------------------------------------------------------------------------------------------
def upstream_section(s: Settings, deadline: Deadline, emit: Emit) -> None:
    """Upstream's RT-IGEV, eager fp32 (its evaluation), on our weights and the same pair, per student size."""
    if s.upstream is None:
        return
    from upstream_rt_igev import build_upstream, file_digests, upstream_predict

    from stereo_depth_ros.models import load_model

    ours = load_model("rt_igev", checkpoint=s.weights, device="cpu")
    digests = file_digests(s.upstream, ["core_rt/rt_igev_stereo.py", "core_rt/geometry.py", "core_rt/update.py"])
    for size in s.student_sizes:
        row = Row("upstream", size_text(size), "fp32", "upstream eager", s.student_iters)
        reference = s.results.get(f"reference {size_text(size)}")
        if reference is None or not deadline.allows(s.costs_s["upstream"]):
            row.note = "no fp32 eager reference of ours at this size" if reference is None else \
                deadline.skip_note(s.costs_s["upstream"])
            emit(row)
            continue
        left, right = (as_tensor(im, s.device) for im in motorcycle_pair(*size))
        with PeakMemory(s.device) as memory:
            model = build_upstream(s.upstream, ours.state_dict(), s.device)
            predict = upstream_predict(model)
            times, output = time_ms(lambda: predict(left, right, s.student_iters), s.device, s.warmup,  # noqa: B023
                                    s.repeats)
        upstream = to_numpy(output)[0, 0]
        upstream = np.where(upstream > 0, upstream, np.nan)  # the same validity rule as ours
        difference = disparity_difference(reference, upstream)
        ms = median(times)
        row.median_ms, row.rate, row.rate_unit, row.peak_mib = ms, 1e3 / ms, "fps", memory.mib
        row.max_diff_px, row.mean_diff_px = difference["max_diff_px"], difference["mean_diff_px"]
        ratios = {f"speed_ratio_vs_ours_{variant}": ms / ours_ms for variant in ("eager", "cuda_graph")
                  if (ours_ms := s.results.get(f"ms {size_text(size)} fp32 {variant}"))}
        row.extra = {**ratios, "valid_mismatch": difference["valid_mismatch"], "upstream_sha256": digests}
        row.note = "upstream ms / ours fp32 ms: " + ", ".join(
            f"{key.removeprefix('speed_ratio_vs_ours_')} {value:.2f}x" for key, value in ratios.items())
        emit(row)
        del model
    sys.path.remove(str(s.upstream))


# ---- teacher ------------------------------------------------------------------------------------------------------
def teacher_section(s: Settings, deadline: Deadline, emit: Emit) -> None:
    """Selective-IGEV labelling throughput (pairs/s) in fp32 and bf16 and their mean |difference|."""
    height, width = s.teacher_size
    left, right = motorcycle_pair(height, width)
    reference = None
    for precision in ("fp32", "bf16"):
        row = Row("teacher", size_text(s.teacher_size), precision, "eager", s.teacher_iters,
                  extra={"max_disp": s.teacher_max_disp})
        if not deadline.allows(s.costs_s["teacher"]):
            row.note = deadline.skip_note(s.costs_s["teacher"])
            emit(row)
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with PeakMemory(s.device) as memory:
                teacher = TorchEstimator(model="selective_igev", device=str(s.device), precision=precision,
                                         iters=s.teacher_iters, max_disparity=s.teacher_max_disp, capture="off",
                                         with_confidence=False)
                teacher.device_outputs = True
                times, estimate = time_ms(lambda: teacher.estimate(left, right), s.device, 1,  # noqa: B023
                                          s.teacher_repeats)
        ms = median(times)
        row.median_ms, row.rate, row.rate_unit, row.peak_mib = ms, 1e3 / ms, "pairs/s", memory.mib
        row.note = "; ".join(warning_notes(caught))
        disparity = to_numpy(estimate.disparity)
        if reference is None:
            reference = disparity
        else:
            difference = disparity_difference(reference, disparity)
            row.max_diff_px, row.mean_diff_px = difference["max_diff_px"], difference["mean_diff_px"]
        emit(row)


# ---- training -----------------------------------------------------------------------------------------------------
def import_stereo_distill() -> None:
    """`training/` is installed under the import name stereo_distill; a plain checkout on PYTHONPATH (the GPU
    machine: no pip install) gets the same package registered under that name."""
    if importlib.util.find_spec("stereo_distill") is not None:
        return
    folder = BENCH.parent / "training"
    spec = importlib.util.spec_from_file_location("stereo_distill", folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    assert spec is not None and spec.loader is not None
    package = importlib.util.module_from_spec(spec)
    sys.modules["stereo_distill"] = package
    spec.loader.exec_module(package)


def training_section(s: Settings, deadline: Deadline, emit: Emit) -> None:
    """Distillation steps/s through bench/train.py's step (forward, loss, backward, clip, AdamW, OneCycle)."""
    import_stereo_distill()
    spec = importlib.util.spec_from_file_location("bench_train", BENCH / "train.py")
    assert spec is not None and spec.loader is not None
    train_bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_bench)
    for precision in ("fp32", "bf16"):
        row = Row("training", size_text(s.train_crop), precision, f"batch {s.train_batch}", s.train_iters)
        if not deadline.allows(s.costs_s["training"]):
            row.note = deadline.skip_note(s.costs_s["training"])
            emit(row)
            continue
        args = argparse.Namespace(device=str(s.device), crop=list(s.train_crop), batch_size=s.train_batch,
                                  train_iters=s.train_iters, steps=s.train_steps, warmup=s.train_warmup)
        result = train_bench.bench(args, precision)
        row.median_ms, row.rate, row.rate_unit = result["median_step_s"] * 1e3, result["steps_per_s"], "steps/s"
        if "peak_memory_gib" in result:
            row.peak_mib = result["peak_memory_gib"] * 1024
        row.extra = {"pairs_per_s": result["pairs_per_s"]}
        if s.device.type != "cuda" and precision != "fp32":
            row.note = "runs fp32 off CUDA"
        emit(row)


# ---- compile ------------------------------------------------------------------------------------------------------
def compile_section(s: Settings, deadline: Deadline, emit: Emit) -> None:
    """torch.compile(mode="reduce-overhead") rows, each in a child process with a hard timeout (a compilation
    cannot be interrupted in-process), to compare with the cuda_graph rows."""
    for size in s.student_sizes:
        for precision in s.precisions:
            row = Row("compile", size_text(size), precision, "compile", s.student_iters)
            reference = s.results.get(f"reference {size_text(size)}")
            if s.device.type != "cuda":
                row.note = "compile rows run on CUDA only"
            elif reference is None:
                row.note = "no fp32 eager reference at this size"
            elif not deadline.allows(s.costs_s["compile"]):
                row.note = deadline.skip_note(s.costs_s["compile"])
            else:
                row = run_isolated_row(s, size, precision, "compile", reference,
                                       min(s.compile_timeout_s, deadline.remaining_s() - 10.0))
            emit(row)


def run_isolated_row(s: Settings, size: tuple[int, int], precision: str, variant: str, reference: np.ndarray,
                     timeout_s: float) -> Row:
    """`bench/gpu.py --isolated-row` in a child process, killed after timeout_s."""
    with tempfile.TemporaryDirectory() as folder:
        reference_path, row_path = Path(folder) / "reference.npy", Path(folder) / "row.json"
        np.save(reference_path, reference)
        command = [sys.executable, str(BENCH / "gpu.py"), "--device", str(s.device), "--iters", str(s.student_iters),
                   "--repeats", str(s.repeats), "--warmup", str(s.warmup),
                   "--isolated-row", size_text(size), precision, variant,
                   "--reference", str(reference_path), "--row-json", str(row_path)]
        if s.weights:
            command += ["--weights", s.weights]
        try:
            done = subprocess.run(command, timeout=max(1.0, timeout_s), capture_output=True, text=True)
        except subprocess.TimeoutExpired:
            return Row("compile", size_text(size), precision, VARIANT_NAMES[variant], s.student_iters,
                       note=f"did not finish within {timeout_s:.0f} s (compilation included)")
        if done.returncode != 0 or not row_path.is_file():
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            return Row("compile", size_text(size), precision, VARIANT_NAMES[variant], s.student_iters,
                       note=f"failed (exit {done.returncode}): {tail[0][:160]}")
        return Row(**json.loads(row_path.read_text()))


def isolated_row(s: Settings, size: tuple[int, int], precision: str, variant: str, reference: Path | None) -> Row:
    """The child's side of `run_isolated_row`: one student row, compared with the parent's reference."""
    row, disparity = measure_student(s, size, precision, variant)
    row.section = "compile" if variant == "compile" else "student"
    if reference is not None:
        difference = disparity_difference(np.load(reference), disparity)
        row.max_diff_px, row.mean_diff_px = difference["max_diff_px"], difference["mean_diff_px"]
        row.extra["valid_mismatch"] = difference["valid_mismatch"]
    return row

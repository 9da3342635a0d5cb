"""The sections of bench/gpu.py measured in this process: student variants, latency budget, pipeline, teacher,
training (bench/gpu_compare.py holds upstream side by side and the compile rows).

Each section emits `Row`s through `emit` as soon as they are measured (bench/gpu.py prints them and rewrites the
JSON), so a run cut short still leaves every finished figure behind. Every row asks the time guard first.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
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
    disparity_difference,
    median,
    motorcycle_pair,
    time_ms,
    to_numpy,
)

from stereo_depth_ros.camera_geometry import StereoCamera
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


def plain_camera(height: int, width: int) -> StereoCamera:
    """A camera with plain calibration values for pipeline rows: the work per frame does not depend on them."""
    return StereoCamera(fx=float(width), fy=float(width), cx=width / 2 - 0.5, cy=height / 2 - 0.5, baseline=0.1,
                        width=width, height=height)


def warning_notes(caught: list[warnings.WarningMessage]) -> list[str]:
    notes: list[str] = []
    for item in caught:
        text = str(item.message).splitlines()[0]
        if text not in notes:
            notes.append(text)
    return notes


def add_difference(row: Row, reference: np.ndarray, disparity: np.ndarray) -> None:
    """max/mean |disparity - reference| into the row; pixels valid in only one of them into extra and the note
    (a map that turned NaN would otherwise show a difference of 0)."""
    difference = disparity_difference(reference, disparity)
    row.max_diff_px, row.mean_diff_px = difference["max_diff_px"], difference["mean_diff_px"]
    row.extra["valid_mismatch"] = difference["valid_mismatch"]
    if difference["valid_mismatch"]:
        row.note = "; ".join(filter(None, [row.note, f"{difference['valid_mismatch']} px valid in only one map"]))


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
                    add_difference(row, reference, disparity)
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
        misses, captures = estimator.budget_misses, estimator.captures.captures
        times, _ = time_ms(frame, s.device, 0, max(3, s.repeats // 5))
        ms = median(times)
        full_ms = ms if share is None else full_ms
        row.iters, row.median_ms, row.rate, row.rate_unit = max(set(chosen), key=chosen.count), ms, 1e3 / ms, "fps"
        budget = estimator.latency_budget_ms
        row.variant += " no budget" if share is None else f" budget {budget:.1f} ms"
        fit = estimator.cost_model
        row.extra = {"budget_ms": budget, "iterations": chosen, "misses": estimator.budget_misses - misses,
                     "fixed_ms": fit.fixed_ms, "per_iteration_ms": fit.per_iteration_ms, "max_ms": max(times),
                     "captures_in_frames": estimator.captures.captures - captures,
                     "outliers": fit.outliers}
        if share is not None:
            row.note = (f"chose {min(chosen)}-{max(chosen)} iterations, {row.extra['misses']} misses of "
                        f"{len(chosen)}; fit {fit.fixed_ms:.1f} ms + {fit.per_iteration_ms:.2f} ms/iteration")
        emit(row)


# ---- pipeline -----------------------------------------------------------------------------------------------------
def pipeline_section(s: Settings, deadline: Deadline, emit: Emit) -> None:
    """The whole per-frame pipeline at the first student size: uint8 pair -> upload -> inference -> disparity,
    depth, points and confidence -> message-ready host buffers (`StereoPipeline.process`, every output requested).
    With the torch backend on CUDA the post-processing runs on the device (the pipeline turns device outputs on)."""
    size = s.student_sizes[0]
    height, width = size
    row = Row("pipeline", size_text(size), "fp32", "", s.student_iters)
    if not deadline.allows(s.costs_s["student"]):
        row.note = deadline.skip_note(s.costs_s["student"])
        emit(row)
        return
    from stereo_depth_ros.pipeline import StereoPipeline

    left, right = motorcycle_pair(height, width)
    camera = plain_camera(height, width)
    with PeakMemory(s.device) as memory:
        estimator = TorchEstimator(model="rt_igev", model_path=s.weights, device=str(s.device),
                                   iters=s.student_iters)
        pipeline = StereoPipeline(estimator, max_disparity=192)
        pipeline.warmup(width, height)
        times, result = time_ms(lambda: pipeline.process(left, right, camera=camera), s.device, s.warmup, s.repeats)
    ms = median(times)
    row.variant = VARIANT_NAMES[estimator.capture_mode]
    row.median_ms, row.rate, row.rate_unit, row.peak_mib = ms, 1e3 / ms, "fps", memory.mib
    row.extra = {"device_outputs": estimator.device_outputs, "min_ms": min(times),
                 "stage_ms_last_frame": {k: v * 1e3 for k, v in result.timings.items()}}
    row.note = "device post-processing" if estimator.device_outputs else "host post-processing"
    emit(row)


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
            add_difference(row, reference, disparity)
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

"""The sections of bench/gpu.py that check issue 20's fixes where only a GPU can: the second GPU, warm-up at the
camera size, and the captures' shared memory pool.

- device: the student captured on the second GPU (cuda:1 when the run's device is cuda:0), two different pairs in
  turn: each replay must equal eager on that GPU for its own pair (a capture made on another device's stream
  records nothing and replays its capture-time output). Needs two GPUs; a note says so otherwise.
- warmup: the pipeline with a working size (the first student size) below the camera's (the second), confidence
  not requested: `StereoPipeline.warmup` at the camera size, then frames. Frame 1 must capture nothing and
  allocate no upload buffer; its latency next to the median's.
- pool: peak device memory of the captures a latency budget needs (every count of `budget_counts`), with one
  memory pool per graph (what each capture had before) and with the shared pool, next to a single capture.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from gpu_measure import Deadline, PeakMemory, Row, median, motorcycle_pair, time_ms, to_numpy
from gpu_sections import VARIANT_NAMES, Emit, Settings, plain_camera, size_text

from stereo_depth_ros.inference.capture import CaptureContext
from stereo_depth_ros.inference.torch_backend import TorchEstimator


def student(s: Settings, device: torch.device | str, **options: Any) -> TorchEstimator:
    return TorchEstimator(model="rt_igev", model_path=s.weights, device=str(device), iters=s.student_iters,
                          **options)


# ---- device -------------------------------------------------------------------------------------------------------
def device_section(s: Settings, deadline: Deadline, emit: Emit) -> None:
    size = s.student_sizes[0]
    row = Row("device", size_text(size), "fp32", "cuda_graph", s.student_iters)
    count = torch.cuda.device_count() if s.device.type == "cuda" else 0
    if count < 2:
        row.note = f"needs 2 CUDA devices (this machine has {count})"
        emit(row)
        return
    if not deadline.allows(s.costs_s["student"]):
        row.note = deadline.skip_note(s.costs_s["student"])
        emit(row)
        return
    other = torch.device("cuda", 1 if (s.device.index or 0) == 0 else 0)
    height, width = size
    first = motorcycle_pair(height, width)
    second = tuple(np.ascontiguousarray(np.roll(image, 16, axis=1)) for image in first)  # other content
    eager, captured = student(s, other, capture="off"), student(s, other, capture="cuda_graph")
    for estimator in (eager, captured):
        estimator.device_outputs = True
    differences, changed = [], []
    for pair in (first, second, first, second):
        want = to_numpy(eager.estimate_at(*pair, width, height).disparity)
        got = to_numpy(captured.estimate_at(*pair, width, height).disparity)
        both = np.isfinite(want) & np.isfinite(got)
        differences.append(float(np.abs(got[both] - want[both]).max()) if both.any() else float("nan"))
        changed.append(got)
    times, _ = time_ms(lambda: captured.estimate_at(*first, width, height), other, s.warmup, s.repeats)
    ms = median(times)
    follows = not np.array_equal(changed[0], changed[1], equal_nan=True)
    row.variant = f"cuda_graph on {other}"
    row.median_ms, row.rate, row.rate_unit, row.max_diff_px = ms, 1e3 / ms, "fps", max(differences)
    row.extra = {"device": str(other), "max_diff_per_frame_px": differences, "replays_follow_input": follows,
                 "captures": captured.captures.captures, "fallback": captured.captures.fallback_reason}
    row.note = ("replays follow their input and equal eager on that GPU" if follows and max(differences) == 0.0
                else "WRONG: replays do not follow their input (capture on another device?)" if not follows
                else f"replays differ from eager by up to {max(differences):.3g} px")
    emit(row)


# ---- warm-up ------------------------------------------------------------------------------------------------------
def warmup_section(s: Settings, deadline: Deadline, emit: Emit) -> None:
    (work_h, work_w), (cam_h, cam_w) = s.student_sizes[0], s.student_sizes[-1]
    row = Row("warmup", f"{cam_h}x{cam_w}->{work_h}x{work_w}", "fp32", "", s.student_iters)
    if not deadline.allows(s.costs_s["student"]):
        row.note = deadline.skip_note(s.costs_s["student"])
        emit(row)
        return
    from stereo_depth_ros.pipeline import StereoPipeline
    from stereo_depth_ros.postprocess import OutputRequest

    left, right = motorcycle_pair(cam_h, cam_w)
    camera = plain_camera(cam_h, cam_w)
    request = OutputRequest(confidence=False)  # nobody wants confidence: the graph without it is the one to capture
    estimator = student(s, s.device)
    pipeline = StereoPipeline(estimator, input_width=work_w, input_height=work_h)
    began = time.perf_counter()
    pipeline.warmup(cam_w, cam_h, request)
    warmup_s = time.perf_counter() - began
    captures, allocations = estimator.captures.captures, estimator._uploader.allocations
    first_ms, _ = time_ms(lambda: pipeline.process(left, right, request, camera=camera), s.device, 0, 1)
    times, _ = time_ms(lambda: pipeline.process(left, right, request, camera=camera), s.device, 0, s.repeats)
    new_captures = estimator.captures.captures - captures
    new_allocations = estimator._uploader.allocations - allocations
    ms = median(times)
    row.variant = VARIANT_NAMES[estimator.capture_mode]
    row.median_ms, row.rate, row.rate_unit = ms, 1e3 / ms, "fps"
    row.extra = {"warmup_s": warmup_s, "first_frame_ms": first_ms[0], "captures_in_frames": new_captures,
                 "upload_allocations_in_frames": new_allocations,
                 "keys": [list(key) for key in estimator.captures.entries]}
    done = "no capture, no allocation" if not (new_captures or new_allocations) else \
        f"{new_captures} captures, {new_allocations} allocations"
    row.note = f"frame 1 {first_ms[0]:.1f} ms: {done}"
    emit(row)


# ---- memory pool --------------------------------------------------------------------------------------------------
class PrivatePools(CaptureContext):
    """One memory pool per graph: how every capture was made before the pool was shared."""

    @property
    def pool(self) -> Any:
        return None


def pool_section(s: Settings, deadline: Deadline, emit: Emit) -> None:
    size = s.student_sizes[0]
    height, width = size
    for variant in ("1 capture", "budget counts, pool per graph", "budget counts, shared pool"):
        row = Row("pool", size_text(size), "fp32", variant, s.student_iters)
        if s.device.type != "cuda":
            row.note = "CUDA graphs run on CUDA only"
        elif not deadline.allows(s.costs_s["student"]):
            row.note = deadline.skip_note(s.costs_s["student"])
        if row.note:
            emit(row)
            continue
        with PeakMemory(s.device) as memory:
            estimator = student(s, s.device, capture="cuda_graph",
                                latency_budget_ms=0.0 if variant == "1 capture" else 1e6)
            if variant.endswith("pool per graph"):
                estimator._capture_context = PrivatePools(estimator.device)
            began = time.perf_counter()
            estimator.warmup(height, width)
            warmup_s = time.perf_counter() - began
        row.peak_mib = memory.mib
        row.extra = {"captures": estimator.captures.captures, "counts": estimator.budget_counts,
                     "warmup_s": warmup_s, "fallback": estimator.captures.fallback_reason}
        row.note = f"{estimator.captures.captures} graphs captured in {warmup_s:.1f} s (weights included in peak)"
        emit(row)
        del estimator

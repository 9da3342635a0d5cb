"""The comparison sections of bench/gpu.py: upstream's RT-IGEV side by side, and torch.compile instead of CUDA
graphs (each compile row in a child process). Both compare with the student section's fp32 eager reference."""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from gpu_measure import Deadline, PeakMemory, Row, as_tensor, median, motorcycle_pair, time_ms, to_numpy
from gpu_sections import BENCH, VARIANT_NAMES, Emit, Settings, add_difference, measure_student, size_text


# ---- upstream -----------------------------------------------------------------------------------------------------
def upstream_section(s: Settings, deadline: Deadline, emit: Emit) -> None:
    """Upstream's RT-IGEV, eager fp32 (its evaluation), on our weights and the same pair, per student size."""
    if s.upstream is None:
        return
    from upstream_rt_igev import build_upstream, file_digests

    from stereo_depth_ros.models import load_model

    ours = load_model("rt_igev", checkpoint=s.weights, device="cpu")
    predict = build_upstream(s.upstream, ours.state_dict(), s.device)
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
        with PeakMemory(s.device) as memory:  # weights (resident already) + activations + workspace
            times, output = time_ms(lambda: predict(left, right, s.student_iters), s.device, s.warmup,  # noqa: B023
                                    s.repeats)
        upstream = to_numpy(output)[0, 0]
        upstream = np.where(upstream > 0, upstream, np.nan)  # the same validity rule as ours
        ms = median(times)
        row.median_ms, row.rate, row.rate_unit, row.peak_mib = ms, 1e3 / ms, "fps", memory.mib
        ratios = {f"speed_ratio_vs_ours_{variant}": ms / ours_ms for variant in ("eager", "cuda_graph")
                  if (ours_ms := s.results.get(f"ms {size_text(size)} fp32 {variant}"))}
        row.extra = {**ratios, "upstream_sha256": digests}
        row.note = "upstream ms / ours fp32 ms: " + ", ".join(
            f"{key.removeprefix('speed_ratio_vs_ours_')} {value:.2f}x" for key, value in ratios.items())
        add_difference(row, reference, upstream)
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
        add_difference(row, np.load(reference), disparity)
    return row

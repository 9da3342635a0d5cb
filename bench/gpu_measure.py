"""What bench/gpu.py measures with: latency by CUDA events, peak memory, disparity differences, the time guard,
and the input (the one Motorcycle loader, `stereo_devkit.motorcycle`)."""
from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from stereo_devkit.motorcycle import motorcycle_pair

__all__ = ["Deadline", "PeakMemory", "Row", "as_tensor", "disparity_difference", "median", "motorcycle_pair",
           "time_ms", "to_numpy"]


@dataclass
class Row:
    """One line of the table and one object of the JSON `rows`."""

    section: str  # student | pipeline | upstream | teacher | training | compile
    size: str = ""  # HxW
    precision: str = ""
    variant: str = ""  # eager | cuda_graph | compile | ...
    iters: int | None = None
    median_ms: float | None = None
    rate: float | None = None  # per second, in rate_unit
    rate_unit: str = ""
    peak_mib: float | None = None
    max_diff_px: float | None = None
    mean_diff_px: float | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def as_tensor(image: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 [H, W, 3] -> float32 [1, 3, H, W] 0..255 on the device (the networks' `predict` input)."""
    return torch.from_numpy(image).permute(2, 0, 1)[None].float().to(device)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(call: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> tuple[list[float], Any]:
    """Milliseconds per call after `warmup` untimed calls, and the last call's result: CUDA events around each call
    on CUDA (the device's own clock, launch gaps included), the wall clock elsewhere. Calls never overlap."""
    result = None
    for _ in range(warmup):
        result = call()
    synchronize(device)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            result = call()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            began = time.perf_counter()
            result = call()
            times.append((time.perf_counter() - began) * 1e3)
    return times, result


def median(values: list[float]) -> float:
    return float(statistics.median(values))


class PeakMemory:
    """Peak device memory allocated by torch while the context is open, including what was already allocated when
    it opened (MiB); None off CUDA."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.mib: float | None = None

    def __enter__(self) -> PeakMemory:
        # an earlier row's estimator sits in a reference cycle (estimator -> capture cache -> bound method): collect
        # it first, or its weights and capture pools would count here
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            self.mib = torch.cuda.max_memory_allocated(self.device) / 2**20


def to_numpy(array: Any) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().float().cpu().numpy()
    return np.asarray(array, dtype=np.float32)


def disparity_difference(reference: Any, other: Any) -> dict[str, float | int]:
    """max and mean |other - reference| in pixels where both are finite, and how many pixels are finite in only one
    of them (NaN marks no disparity)."""
    ref, out = to_numpy(reference).squeeze(), to_numpy(other).squeeze()
    if ref.shape != out.shape:
        raise ValueError(f"cannot compare disparities of shapes {ref.shape} and {out.shape}")
    both = np.isfinite(ref) & np.isfinite(out)
    diff = np.abs(out[both] - ref[both]) if both.any() else np.zeros(1, np.float32)
    return {"max_diff_px": float(diff.max()), "mean_diff_px": float(diff.mean()),
            "valid_mismatch": int((np.isfinite(ref) != np.isfinite(out)).sum())}


class Deadline:
    """The time guard: a row starts only when its expected cost still fits before the limit."""

    def __init__(self, limit_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit_s = limit_s
        self.clock = clock
        self.start = clock()

    def elapsed_s(self) -> float:
        return self.clock() - self.start

    def remaining_s(self) -> float:
        return self.limit_s - self.elapsed_s()

    def allows(self, cost_s: float) -> bool:
        return self.remaining_s() >= cost_s

    def skip_note(self, cost_s: float) -> str:
        return (f"skipped by the time guard: {max(0.0, self.remaining_s()):.0f} s left of {self.limit_s:.0f} s, "
                f"row needs ~{cost_s:.0f} s")

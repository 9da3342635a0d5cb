"""Latency and peak memory of the stereo networks' `predict`, per model, input size and precision.

    .venv/bin/python bench/models.py                      # every registered model, default set for the device
    .venv/bin/python bench/models.py --models rt_igev --sizes 480x640 720x1280 --repeats 10
    .venv/bin/python bench/models.py --compile --channels-last   # extra rows with those variants

Prints a markdown table. Latency: median of --repeats timed `predict` calls after --warmup untimed ones
(CUDA synchronised); CPU ms: median process CPU time per call (all threads), a steadier figure than wall
time when other jobs share the cores. Peak memory: torch.cuda.max_memory_allocated on CUDA; on the CPU the growth of the
process's resident set over its level before the first (warm-up) call, sampled every 2 ms from /proc (an estimate:
the allocator may reuse pages already resident). Seeded random weights: speed does not depend on them.
Iterations: the model's config `valid_iters` (upstream's evaluation setting) unless --iters is given.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from stereo_depth_ros.models import available_models, load_model

# The sizes each network is deployed at (H x W): the student on camera streams, the teacher on 480x640
# and InStereo2K's 1080x860 pairs.
SIZES: dict[str, list[tuple[int, int]]] = {
    "rt_igev": [(480, 640), (720, 1280)],
    "selective_igev": [(480, 640), (860, 1080)],
}
CPU_DEFAULT_SIZES: dict[str, list[tuple[int, int]]] = {"rt_igev": [(480, 640), (720, 1280)], "selective_igev": [(480, 640)]}


@dataclass
class Row:
    model: str
    size: str
    precision: str
    variant: str
    iters: int
    median_ms: float
    min_ms: float
    cpu_ms: float
    peak_mib: float


class RssSampler:
    """Peak resident set growth of this process while the context is open (Linux /proc)."""

    def __init__(self, period_s: float = 0.002) -> None:
        self.period_s = period_s
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.peak = 0
        self._stop = threading.Event()

    def _rss(self) -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * self.page

    def __enter__(self):
        self.base = self._rss()
        self.peak = self.base
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(self.period_s)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def growth_bytes(self) -> int:
        return self.peak - self.base


def stereo_pair(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A real pair (Middlebury Motorcycle from scikit-image) resized to the size."""
    from stereo_devkit.motorcycle import motorcycle_pair

    images = motorcycle_pair(height, width)
    tensors = [torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1)[None].float() for im in images]
    return tensors[0], tensors[1]


def bench_one(name, height, width, precision, device, args, compile_, channels_last) -> Row:
    model = load_model(name, device=device, precision=precision)
    iters = args.iters or model.config.valid_iters
    if channels_last:
        # Module.to(memory_format=channels_last) rejects the 5-D weights of the 3D convolutions
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                module.to(memory_format=torch.channels_last)
            elif isinstance(module, (torch.nn.Conv3d, torch.nn.ConvTranspose3d)):
                module.to(memory_format=torch.channels_last_3d)
    if compile_:
        model.run = torch.compile(model.run)
    left, right = (t.to(device) for t in stereo_pair(height, width))
    if channels_last:
        left, right = (t.contiguous(memory_format=torch.channels_last) for t in (left, right))

    cuda = device.type == "cuda"

    def call():
        model.predict(left, right, iters=iters)
        if cuda:
            torch.cuda.synchronize(device)

    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        meter = contextlib.nullcontext()
    else:
        # started before the warm-up: the first call grows the heap, later calls reuse it
        meter = RssSampler()
    times, cpu_times = [], []
    with meter:
        for _ in range(args.warmup):
            call()
        for _ in range(args.repeats):
            start, cpu_start = time.perf_counter(), time.process_time()
            call()
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    peak = torch.cuda.max_memory_allocated(device) if cuda else meter.growth_bytes
    variant = "+".join(v for v, on in (("compile", compile_), ("channels_last", channels_last)) if on) or "eager"
    return Row(name, f"{height}x{width}", precision, variant, iters,
               1e3 * statistics.median(times), 1e3 * min(times), 1e3 * statistics.median(cpu_times), peak / 2**20)


def parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be HxW (e.g. 480x640), got {text!r}") from None
    return h, w


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=None, help=f"default: every registered ({available_models()})")
    parser.add_argument("--sizes", nargs="+", type=parse_size, default=None, help="HxW; default: per model")
    parser.add_argument("--all-sizes", action="store_true", help="on the CPU, also the large default sizes")
    parser.add_argument("--precisions", nargs="+", default=None, choices=["fp32", "fp16", "bf16"],
                        help="default: fp32 on the CPU, all three on CUDA")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--iters", type=int, default=None, help="GRU iterations (default: the model's valid_iters)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls (default 3 on CPU, 20 on CUDA)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 1 on CPU, 3 on CUDA)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch (default 2)")
    parser.add_argument("--compile", action="store_true", help="add rows with torch.compile")
    parser.add_argument("--channels-last", action="store_true", help="add rows with channels_last memory format")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    torch.set_num_threads(args.threads)
    args.repeats = args.repeats or (20 if cuda else 3)
    args.warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    models = args.models or available_models()
    unknown = sorted(set(models) - set(available_models()))
    if unknown:
        parser.error(f"unknown model(s) {unknown}; available: {available_models()}")
    precisions = args.precisions or (["fp32", "fp16", "bf16"] if cuda else ["fp32"])
    if not cuda and precisions != ["fp32"]:
        parser.error("fp16/bf16 run on CUDA only (the models use fp32 on the CPU)")
    variants = [(False, False)]
    if args.compile:
        variants.append((True, False))
    if args.channels_last:
        variants.append((False, True))
    if args.compile and args.channels_last:
        variants.append((True, True))

    if cuda:
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = f"CPU, {args.threads} threads (torch {torch.__version__})"
    print(f"device: {device_name}\n")
    print("| model | size (HxW) | precision | variant | iters | median ms | min ms | CPU ms | peak MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in models:
        sizes = args.sizes or (SIZES if (cuda or args.all_sizes) else CPU_DEFAULT_SIZES).get(name, [(480, 640)])
        for height, width in sizes:
            for precision in precisions:
                for compile_, channels_last in variants:
                    try:
                        row = bench_one(name, height, width, precision, device, args, compile_, channels_last)
                    except Exception as exc:  # one failing variant (e.g. compile) must not hide the other rows
                        print(f"| {name} | {height}x{width} | {precision} | "
                              f"{'compile' if compile_ else ''}{'channels_last' if channels_last else ''} | "
                              f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:80]} ||||||")
                        continue
                    print(f"| {row.model} | {row.size} | {row.precision} | {row.variant} | {row.iters} | "
                          f"{row.median_ms:.1f} | {row.min_ms:.1f} | {row.cpu_ms:.0f} | {row.peak_mib:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""torch: the learned networks (RT-IGEV student, Selective-IGEV teacher) through `load_model`.

`TorchEstimator(model="rt_igev", model_path=..., device="auto", precision="fp32", iters=None, ...)` loads the
checkpoint once, keeps the network on its device, and returns the disparity and the network's own confidence.

Per frame (`estimate_at`): the uint8 pair goes to the device through reused (pinned) buffers, is resized to the
working size there (`device_input`), and the network runs as a captured CUDA graph per (height, width,
iterations, confidence) (`capture`; eager on the CPU). Everything runs with the estimator's device made current
(`cuda:1` as well as `cuda:0`). With `latency_budget_ms` the iteration count is chosen per frame to fit
(`latency_budget`). With `device_outputs` the disparity and confidence stay on the device as torch tensors, so the
caller's post-processing can run there too; otherwise each crosses to the host once as a numpy array.
`warmup` captures (and, with a budget, times) exactly what the next frames run, so that no live frame captures.
Precision is the model's own (`precision`, one autocast place in `models/base.py`); the CPU runs fp32.
"""
from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path

import numpy as np
import torch

from stereo_depth_ros.inference.base import StereoEstimate, StereoEstimator, resize_pair
from stereo_depth_ros.inference.capture import (
    CaptureCache,
    CaptureContext,
    CompiledForward,
    CudaGraphForward,
    Forward,
    Outputs,
    compile_forward,
    device_context,
    resolve_capture_mode,
)
from stereo_depth_ros.inference.device_input import PairUploader, resize_pair_on_device
from stereo_depth_ros.inference.latency_budget import (
    IterationChoice,
    IterationCostModel,
    budget_counts,
    choose_iterations,
)
from stereo_depth_ros.models import load_model

# Networks that "auto" captures on CUDA. The student is small and launch-bound at camera sizes; the teacher runs
# 80 iterations over large images, where launch overhead is a small share, while each capture would keep the
# teacher's whole working memory (gigabytes at labelling sizes, README "Teacher memory") per image size.
CAPTURED_BY_DEFAULT = ("rt_igev",)
# Timed frames per count when warm-up starts the latency budget's cost model: their median is fitted, so one slow
# frame among them (the first after the captures, which empty the allocator's cache) does not skew the start.
WARMUP_MEASUREMENTS = 3


def resolve_device(device: str) -> torch.device:
    """"auto" -> cuda when available, else cpu; anything else as torch understands it. A CUDA device always gets
    its index ("cuda" is the current one), so that it can be made current and compared."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    resolved = torch.device(device)
    if resolved.type != "cuda":
        return resolved
    if not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available (use device auto or cpu)")
    if resolved.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    if resolved.index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r} requested but this machine has {torch.cuda.device_count()} CUDA "
                         "device(s)")
    return resolved


class TorchEstimator(StereoEstimator):
    """A network from the registry on one device.

    model: registry name; model_path: checkpoint (official state_dict or ours); None gives the seeded random init
    (tests, benchmarks); iters: refinement iterations (None = the model's valid_iters; settable, applies from the
    next frame); max_disparity: overrides the model's max_disp (a multiple of 32). with_confidence: also return
    the network's confidence.
    latency_budget_ms: 0 = off; otherwise each frame runs the largest iteration count (<= iters) whose predicted
    time fits, and a frame where not even one fits runs one and counts in `budget_misses` (settable).
    capture: "auto" (CUDA graphs for the student on CUDA, else eager), "cuda_graph", "compile" or "off" (see
    `capture`);
    max_captures: how many shapes stay captured (their graphs share one memory pool; each keeps its outputs), and
    how many iteration counts a budget chooses from (`latency_budget.budget_counts`).
    cudnn_benchmark: on CUDA, let cuDNN pick its fastest kernels per shape (process-wide, as upstream's
    evaluation does); shapes are static per capture, which is what that mode is for.
    clock: seconds, for the latency budget's measurements (a fake one in tests).
    """

    name = "torch"

    def __init__(self, model: str = "rt_igev", model_path: str | None = None, device: str = "auto",
                 precision: str = "fp32", iters: int | None = None, max_disparity: int | None = None,
                 with_confidence: bool = True, latency_budget_ms: float = 0.0, capture: str = "auto",
                 max_captures: int = 8, cudnn_benchmark: bool = True,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        if model_path and not Path(model_path).is_file():
            raise FileNotFoundError(f"model_path {model_path!r} not found")
        self.iters = iters
        self.latency_budget_ms = latency_budget_ms
        self.device = resolve_device(device)
        self.capture_mode = resolve_capture_mode(capture, self.device, model in CAPTURED_BY_DEFAULT)
        overrides: dict[str, object] = {"precision": precision}
        if max_disparity:
            overrides["max_disp"] = int(max_disparity)
        self.model = load_model(model, checkpoint=model_path or None, device=self.device, **overrides)
        self.with_confidence = with_confidence  # settable: part of the capture key
        self.device_outputs = False
        if self.device.type == "cuda" and cudnn_benchmark:
            torch.backends.cudnn.benchmark = True
        self.clock = clock
        self.cost_model = IterationCostModel()
        self.budget_misses = 0
        self._uploader = PairUploader(self.device)
        self._compiled: Forward | None = None
        self._capture_context: CaptureContext | None = None  # side stream and memory pool of the CUDA graphs
        self.captures = CaptureCache(self._build_capture, max_entries=max_captures, mode=self.capture_mode)

    @property
    def supports_device_outputs(self) -> bool:  # type: ignore[override]  # a property: it follows the device
        """Outputs can stay on the device when there is one (CUDA); on the CPU numpy is as near."""
        return self.device.type == "cuda"

    # ---- settable parameters ----------------------------------------------------------------------------------
    @property
    def latency_budget_ms(self) -> float:
        return self._latency_budget_ms

    @latency_budget_ms.setter
    def latency_budget_ms(self, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ValueError(f"latency_budget_ms must be a number >= 0 (0 = off), got {value!r}")
        self._latency_budget_ms = float(value)

    @property
    def max_iterations(self) -> int:
        """The count a frame runs without a budget: `iters`, or the model's default."""
        return self.iters if self.iters is not None else self.model.config.valid_iters

    @property
    def budget_counts(self) -> list[int]:
        """The iteration counts a latency budget chooses from; `warmup` captures all of them."""
        return budget_counts(self.max_iterations, self.captures.max_entries)

    # ---- frames -------------------------------------------------------------------------------------------------
    def estimate(self, left: np.ndarray, right: np.ndarray) -> StereoEstimate:
        return self.estimate_at(left, right, left.shape[1], left.shape[0])

    def estimate_at(self, left: np.ndarray, right: np.ndarray, width: int, height: int) -> StereoEstimate:
        budget = self._latency_budget_ms
        choice = choose_iterations(self.cost_model, budget, self.max_iterations,
                                   self.budget_counts if budget > 0 else None)
        if choice.budget_missed:
            self.budget_misses += 1
        estimate, elapsed_ms = self._run(left, right, int(width), int(height), choice)
        if elapsed_ms is not None:
            self.cost_model.observe(choice.iterations, elapsed_ms)
        return estimate

    def warmup(self, height: int, width: int, source_size: tuple[int, int] | None = None) -> None:
        """Capture (and, with a budget, time) exactly what the next frames run: the working size height x width,
        from images of `source_size` ((height, width), the camera's; default the working size: the upload
        buffers are sized for them), with the current `with_confidence`.

        Without a budget that is one capture. With one, every count the budget may choose (`budget_counts`) is
        captured, the largest first (the smaller ones then fit in the memory it leaves in the shared pool); then
        the full count and a single iteration are timed WARMUP_MEASUREMENTS times each and their medians start a
        fresh cost model, so that it knows its fixed and per-iteration parts before the first real frame.
        """
        src_h, src_w = source_size or (height, width)
        blank = np.zeros((src_h, src_w, 3), np.uint8)
        budget = self._latency_budget_ms > 0
        counts = sorted(self.budget_counts, reverse=True) if budget else [self.max_iterations]
        for count in counts if self.captures.active else counts[:1]:  # eager: one run pays the lazy set-up
            self._run(blank, blank, width, height, IterationChoice(count, False))
        if not budget:
            return
        measured: dict[int, list[float]] = {count: [] for count in dict.fromkeys((self.max_iterations, 1))}
        for _ in range(WARMUP_MEASUREMENTS):
            for count, times in measured.items():
                _, elapsed_ms = self._run(blank, blank, width, height, IterationChoice(count, False))
                if elapsed_ms is not None:
                    times.append(elapsed_ms)
        self.cost_model = IterationCostModel()
        for count, times in measured.items():
            if times:
                self.cost_model.observe(count, statistics.median(times))

    def synchronize(self) -> None:
        """Wait for the device's queued work (the last frame's outputs when they stay on the device)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _run(self, left: np.ndarray, right: np.ndarray, width: int, height: int,
             choice: IterationChoice) -> tuple[StereoEstimate, float | None]:
        """One frame at `choice.iterations`, with the device current; and its time in ms (upload to result,
        device synchronised) when a budget is set and the frame did not capture, else None."""
        if left.shape != right.shape:
            raise ValueError(f"left {left.shape} and right {right.shape} differ in shape")
        if width < 1 or height < 1:
            raise ValueError(f"working size must be positive, got {width}x{height}")
        with device_context(self.device):
            start = self.clock()
            if self.device.type != "cuda":
                # the host is the device: OpenCV resizes there at a fraction of the matrix products' cost
                left, right = resize_pair(left, right, width, height)
            pair = self._uploader.upload(left, right)
            work_left, work_right = resize_pair_on_device(pair, width, height)
            with_confidence = bool(self.with_confidence)
            forward = functools.partial(self._forward, iters=choice.iterations, with_confidence=with_confidence)
            with torch.no_grad():
                (disparity, confidence), captured_now = self.captures.run(
                    (height, width, choice.iterations, with_confidence), forward, (work_left, work_right))
            elapsed_ms = None
            if self._latency_budget_ms > 0 and not captured_now:  # a capture's one-off cost says nothing
                self.synchronize()
                elapsed_ms = (self.clock() - start) * 1e3
            assert disparity is not None
            if self.device_outputs:
                estimate = StereoEstimate(disparity, confidence, choice.iterations, choice.budget_missed)
            else:
                estimate = StereoEstimate(disparity.cpu().numpy(),
                                          None if confidence is None else confidence.cpu().numpy(),
                                          choice.iterations, choice.budget_missed)
        return estimate, elapsed_ms

    def _network(self, left: torch.Tensor, right: torch.Tensor, iters: int, with_confidence: bool) -> Outputs:
        """The network on float images [B, 3, h, w] -> disparity [B, h, w] (NaN where <= 0) and confidence
        [B, h, w] in 0..1 (or None)."""
        result = self.model.predict(left, right, iters=iters, return_confidence=with_confidence)
        disp, conf = result if with_confidence else (result, None)
        disparity = disp[:, 0].float()
        # The network regresses a value everywhere; zero or negative disparity has no depth.
        disparity = disparity.masked_fill(~(disparity > 0), float("nan"))
        return disparity, None if conf is None else conf[:, 0].float().clamp(0.0, 1.0)

    def _forward(self, left: torch.Tensor, right: torch.Tensor, iters: int, with_confidence: bool) -> Outputs:
        """One working-size pair [1, 3, h, w] -> disparity [h, w] and confidence [h, w] (or None). This is what
        gets captured."""
        disparity, confidence = self._network(left, right, iters, with_confidence)
        assert disparity is not None
        return disparity[0], None if confidence is None else confidence[0]

    def _build_capture(self, key: Hashable, forward: Forward, inputs: Sequence[torch.Tensor]) -> Forward:
        if self.capture_mode == "cuda_graph":
            if self._capture_context is None:
                self._capture_context = CaptureContext(self.device)
            return CudaGraphForward(forward, inputs, self._capture_context)
        if self._compiled is None:
            self._compiled = compile_forward(self._forward, self.device)
        assert isinstance(forward, functools.partial)
        return CompiledForward(functools.partial(self._compiled, **forward.keywords), inputs)

    def estimate_batch(self, lefts: Sequence[np.ndarray], rights: Sequence[np.ndarray]) -> list[StereoEstimate]:
        """One eager forward pass for same-size pairs (`stereo-distill label --batch-size`); per pair as `estimate`
        at the images' own size. Not captured: labelling batches are few and large, frames are many and small."""
        if len(lefts) != len(rights) or any(image.shape != lefts[0].shape for image in (*lefts, *rights)):
            raise ValueError("a batch needs as many left as right images, all of one shape")

        def batch_tensor(images: Sequence[np.ndarray]) -> torch.Tensor:
            stacked = torch.from_numpy(np.stack([np.asarray(image) for image in images]))
            return stacked.permute(0, 3, 1, 2).to(self.device, torch.float32)

        with device_context(self.device), torch.no_grad():
            disp, conf = self._network(batch_tensor(lefts), batch_tensor(rights), self.max_iterations,
                                       bool(self.with_confidence))
        assert disp is not None
        return [StereoEstimate(disp[k].cpu().numpy(), None if conf is None else conf[k].cpu().numpy(),
                               self.max_iterations, False) for k in range(disp.shape[0])]

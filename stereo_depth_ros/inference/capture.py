"""Captured forwards: record a network's kernels once per static shape and replay them per frame.

A small network at camera resolution is launch-bound on a GPU: the student's forward is hundreds of small kernels
(the cost volume alone is filled plane by plane), each paying Python and driver overhead on the host. A CUDA graph
records them once and replays them with one launch.

Modes (`CAPTURE_MODES`):
- "cuda_graph" (the default on CUDA for the real-time network): `torch.cuda.graph` around the eager forward. It
  runs exactly the eager kernels, so its results equal eager's and every precision/parity measurement carries
  over; a capture costs two eager passes and one recorded pass, once per shape; it needs no compiler; evicting a
  capture frees its memory pool.
- "compile": `torch.compile(mode="reduce-overhead")`: Inductor fuses kernels and replays them through its own CUDA
  graphs. It may be faster, but each new shape is compiled on its first frame, it needs a working Triton/C++
  toolchain on the robot, and its fused kernels round differently from eager. Compiled code lives in torch's own
  cache (bounded by `torch._dynamo.config` limits); evicting an entry here only drops our reference.
- "off": eager.
`bench/gpu.py` measures "cuda_graph" against "compile" (latency, and the first call, which includes the capture
or the compilation); the default stays "cuda_graph" for the reasons above until a measurement says otherwise.

`CaptureCache` keeps at most `max_entries` captures keyed by shape (the least recently used one is evicted) and
falls back to eager, with exactly one `CaptureFallbackWarning` naming the reason, the first time a capture fails.
"""
from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence

import torch

CAPTURE_MODES = ("cuda_graph", "compile", "off")

Outputs = tuple[torch.Tensor | None, ...]
Forward = Callable[..., Outputs]


class CaptureFallbackWarning(RuntimeWarning):
    """A capture or compilation failed; the estimator runs eager from then on."""


def resolve_capture_mode(mode: str, device: torch.device, capture_by_default: bool = True) -> str:
    """"auto" -> "cuda_graph" on CUDA when capture_by_default, else "off"; otherwise the mode itself (ValueError
    if unknown)."""
    if mode == "auto":
        return "cuda_graph" if device.type == "cuda" and capture_by_default else "off"
    if mode not in CAPTURE_MODES:
        raise ValueError(f"capture must be 'auto' or one of {list(CAPTURE_MODES)}, got {mode!r}")
    return mode


class CudaGraphForward:
    """`forward(*inputs)` recorded as one CUDA graph for inputs shaped like `example_inputs`.

    Calling copies the inputs into the graph's static input tensors, replays, and returns clones of the static
    outputs: the clones stay valid after the next replay (which overwrites the static outputs in place).
    warmup_runs eager passes on a side stream come first, as torch's CUDA-graph notes require (lazy
    initialisation and cuDNN autotuning must not happen inside the capture).
    """

    def __init__(self, forward: Forward, example_inputs: Sequence[torch.Tensor], warmup_runs: int = 2) -> None:
        if not example_inputs or any(t.device.type != "cuda" for t in example_inputs):
            raise RuntimeError("CUDA graphs need inputs on a CUDA device")
        self.static_inputs = [t.detach().clone() for t in example_inputs]
        side = torch.cuda.Stream(device=self.static_inputs[0].device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup_runs):
                forward(*self.static_inputs)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.static_outputs = forward(*self.static_inputs)

    def __call__(self, *inputs: torch.Tensor) -> Outputs:
        for static, value in zip(self.static_inputs, inputs, strict=True):
            static.copy_(value)
        self.graph.replay()
        return tuple(None if out is None else out.clone() for out in self.static_outputs)


class CompiledForward:
    """`forward` through `torch.compile(mode="reduce-overhead")`, compiled (and graph-recorded) on construction.

    Outputs are cloned because the compiled graph reuses its output memory on the next call. `compiled` is shared
    between the shapes of one estimator: torch keeps one compiled variant per shape under its guards.
    """

    def __init__(self, compiled: Forward, example_inputs: Sequence[torch.Tensor], warmup_runs: int = 3) -> None:
        self.compiled = compiled
        # reduce-overhead records its CUDA graph after a warm-up call; errors surface here, not on a live frame
        for _ in range(warmup_runs):
            self(*example_inputs)

    def __call__(self, *inputs: torch.Tensor) -> Outputs:
        torch.compiler.cudagraph_mark_step_begin()
        outputs = self.compiled(*inputs)
        return tuple(None if out is None else out.clone() for out in outputs)


class CaptureCache:
    """At most `max_entries` captured forwards by key (a shape); eager for good once a capture has failed.

    build(key, forward, example_inputs) returns the captured version of `forward` (the eager callable of that key).
    """

    def __init__(self, build: Callable[[Hashable, Forward, Sequence[torch.Tensor]], Forward],
                 max_entries: int = 8, mode: str = "cuda_graph") -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.build = build
        self.max_entries = max_entries
        self.mode = mode
        self.entries: OrderedDict[Hashable, Forward] = OrderedDict()
        self.captures = 0  # how many captures were made (re-captures after eviction included)
        self.fallback_reason: str | None = None

    @property
    def active(self) -> bool:
        """True while captures are made and replayed (not "off" and no capture has failed)."""
        return self.mode != "off" and self.fallback_reason is None

    def run(self, key: Hashable, forward: Forward, inputs: Sequence[torch.Tensor]) -> tuple[Outputs, bool]:
        """forward(*inputs), through the capture of `key`; and whether this call made a capture (its time is not
        representative). A new key is captured first, evicting the least recently used one beyond max_entries; a
        capture that raises, or whose first replay raises, switches to eager for good."""
        if not self.active:
            return forward(*inputs), False
        captured = self.entries.get(key)
        if captured is not None:
            self.entries.move_to_end(key)
            return captured(*inputs), False
        try:
            captured = self.build(key, forward, inputs)
            outputs = captured(*inputs)
        except Exception as error:  # any failure of a capture backend means: run eager, say why once
            self.fallback(f"{self.mode} capture of shape {key} failed: {type(error).__name__}: {_first_line(error)}")
            return forward(*inputs), True
        self.captures += 1
        self.entries[key] = captured
        while len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)
        return outputs, True

    def fallback(self, reason: str) -> None:
        """Switch to eager for good, warning once with the reason."""
        if self.fallback_reason is not None:
            return
        self.fallback_reason = reason
        self.entries.clear()
        warnings.warn(f"torch backend runs eager: {reason}", CaptureFallbackWarning, stacklevel=3)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else "(no message)"

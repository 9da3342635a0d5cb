"""Captured forwards: record a network's kernels once per static shape and replay them per frame.

A small network at camera resolution is launch-bound on a GPU: the student's forward is hundreds of small kernels
(the cost volume alone is filled plane by plane), each paying Python and driver overhead on the host. A CUDA graph
records them once and replays them with one launch.

Modes (`CAPTURE_MODES`):
- "cuda_graph" (the default on CUDA for the real-time network): `torch.cuda.graph` around the eager forward. It
  runs exactly the eager kernels, so its results equal eager's and every precision/parity measurement carries
  over; a capture costs two eager passes and one recorded pass, once per shape; it needs no compiler. Every
  capture is made on the estimator's device, on one side stream of that device, into one memory pool shared by
  all the estimator's graphs (`CaptureContext`): the graphs run one after the other and each output is cloned
  before the next replay, so one graph's intermediates may reuse another's memory, and a set of captures (e.g.
  the iteration counts a latency budget chooses from) costs about one working set, not one each.
- "compile": `torch.compile`: Inductor fuses kernels (on CUDA with mode "reduce-overhead", which replays them
  through its own CUDA graphs; on the CPU it generates C++). It may be faster, but each new shape is compiled
  first, it needs a working Triton/C++ toolchain on the robot, and its fused kernels round differently from eager.
  Dynamo compiles one variant per (shape, iterations, confidence) of the one forward, up to its recompile limit,
  beyond which it would silently run eager: `CompiledForward` raises that limit to `COMPILE_RECOMPILE_LIMIT` and
  makes hitting it an error, so the cache below falls back with a `CaptureFallbackWarning` that says so.
- "off": eager.
`bench/gpu.py` measures "cuda_graph" against "compile" (latency, and the first call, which includes the capture
or the compilation); the default stays "cuda_graph" for the reasons above until a measurement says otherwise.

`CaptureCache` keeps at most `max_entries` captures keyed by shape (the least recently used one is evicted) and
falls back to eager, with exactly one `CaptureFallbackWarning` naming the reason, the first time a capture or a
replay fails.
"""
from __future__ import annotations

import contextlib
import warnings
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import torch

CAPTURE_MODES = ("cuda_graph", "compile", "off")
# Variants dynamo may compile of the one forward: working sizes x iteration counts x confidence on/off. A stream
# has one working size; a budget chooses among at most `max_captures` counts (latency_budget.budget_counts); with
# both confidence settings and a few size changes that stays well below this.
COMPILE_RECOMPILE_LIMIT = 64

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


def device_context(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """`device` made current (CUDA); nothing to do elsewhere. Kernels, streams, events and graph captures use the
    current device unless told otherwise, and that is device 0 unless set."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


class CaptureContext:
    """What every CUDA-graph capture of one estimator shares: its device, one side stream on that device (captures
    and their warm-up passes run there; `torch.cuda.graph` without `stream=` would use a stream of whichever device
    was current when it first ran) and one memory pool. Created lazily, on the first capture."""

    def __init__(self, device: torch.device) -> None:
        if device.type != "cuda":
            raise RuntimeError(f"CUDA graphs need inputs on a CUDA device (the estimator runs on {device})")
        self.device = device
        self._stream: Any = None
        self._pool: Any = None

    @property
    def stream(self) -> Any:
        if self._stream is None:
            self._stream = torch.cuda.Stream(device=self.device)
        return self._stream

    @property
    def pool(self) -> Any:
        if self._pool is None:
            with device_context(self.device):
                self._pool = torch.cuda.graph_pool_handle()
        return self._pool


class CudaGraphForward:
    """`forward(*inputs)` recorded as one CUDA graph for inputs shaped like `example_inputs`.

    Calling copies the inputs into the graph's static input tensors, replays, and returns clones of the static
    outputs: the clones stay valid after the next replay (which overwrites the static outputs in place, and, with a
    shared pool, may overwrite another graph's). warmup_runs eager passes on the side stream come first, as
    torch's CUDA-graph notes require (lazy initialisation and cuDNN autotuning must not happen inside the capture).
    The caller makes the device current for replays (`device_context`), as the capture does here.
    """

    def __init__(self, forward: Forward, example_inputs: Sequence[torch.Tensor], context: CaptureContext,
                 warmup_runs: int = 2) -> None:
        if not example_inputs:
            raise RuntimeError("a CUDA graph needs at least one input")
        with device_context(context.device):
            self.static_inputs = [t.detach().clone() for t in example_inputs]
            side, main = context.stream, torch.cuda.current_stream(context.device)
            side.wait_stream(main)
            with torch.cuda.stream(side):
                for _ in range(warmup_runs):
                    forward(*self.static_inputs)
            main.wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, pool=context.pool, stream=side):
                self.static_outputs = forward(*self.static_inputs)

    def __call__(self, *inputs: torch.Tensor) -> Outputs:
        for static, value in zip(self.static_inputs, inputs, strict=True):
            static.copy_(value)
        self.graph.replay()
        return tuple(None if out is None else out.clone() for out in self.static_outputs)


def compile_forward(forward: Forward, device: torch.device) -> Forward:
    """`torch.compile` of an estimator's forward, one per estimator (dynamo keeps a variant per shape under its
    guards): "reduce-overhead" (Inductor's kernels replayed through CUDA graphs) on CUDA, Inductor's C++ kernels
    on the CPU. Static shapes: a stream keeps one size, and CUDA graphs need them anyway."""
    return torch.compile(forward, mode="reduce-overhead" if device.type == "cuda" else None, dynamic=False)


def _recompile_limit(limit: int) -> contextlib.AbstractContextManager[Any]:
    """Dynamo's recompile limit raised to `limit` and made an error when hit (it otherwise runs eager silently).
    The options were renamed (cache_size_limit -> recompile_limit) in torch 2.6; the old names remain aliases."""
    config: Any = torch._dynamo.config
    if hasattr(config, "fail_on_recompile_limit_hit"):
        return config.patch(recompile_limit=limit, fail_on_recompile_limit_hit=True)
    return config.patch(cache_size_limit=limit, fail_on_cache_limit_hit=True)


class CompiledForward:
    """`forward` through `compile_forward`, compiled (and, on CUDA, graph-recorded) on construction.

    Outputs are cloned because the compiled graph reuses its output memory on the next call. `compiled` is shared
    between the shapes of one estimator: torch keeps one compiled variant per shape under its guards, at most
    `recompile_limit` of them; the next raises here (RuntimeError naming the limit) instead of running eager.
    """

    def __init__(self, compiled: Forward, example_inputs: Sequence[torch.Tensor], warmup_runs: int = 3,
                 recompile_limit: int | None = None) -> None:
        self.compiled = compiled
        self.recompile_limit = COMPILE_RECOMPILE_LIMIT if recompile_limit is None else recompile_limit
        # reduce-overhead records its CUDA graph after a warm-up call; errors surface here, not on a live frame
        for _ in range(warmup_runs):
            self(*example_inputs)

    def __call__(self, *inputs: torch.Tensor) -> Outputs:
        torch.compiler.cudagraph_mark_step_begin()
        try:
            with _recompile_limit(self.recompile_limit):
                outputs = self.compiled(*inputs)
        except Exception as error:
            if type(error).__name__ in ("FailOnRecompileLimitHit", "FailOnCacheLimitHit"):
                raise RuntimeError(f"torch.compile reached its recompile limit ({self.recompile_limit} compiled "
                                   "variants of the forward: sizes x iteration counts x confidence)") from None
            raise
        return tuple(None if out is None else out.clone() for out in outputs)


class CaptureCache:
    """At most `max_entries` captured forwards by key (a shape); eager for good once a capture or replay failed.

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
        capture or a replay that raises switches to eager for good."""
        if not self.active:
            return forward(*inputs), False
        captured = self.entries.get(key)
        if captured is not None:
            self.entries.move_to_end(key)
            try:
                return captured(*inputs), False
            except Exception as error:  # e.g. a guard failed and the recompilation hit the limit
                self.fallback(f"{self.mode} replay of shape {key} failed: {type(error).__name__}: "
                              f"{_first_line(error)}")
                return forward(*inputs), False
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

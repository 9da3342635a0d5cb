"""Frame statistics behind the node's /diagnostics status and its throttled log line (ROS-free).

Rates are counted over a sliding window of event times; latencies are summarised by the median and the
maximum of the window, which is what one needs to see both the typical delay and the hiccups.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

import numpy as np


class EventWindow:
    """Times (and optional values) of recent events: those of the last `window` seconds, and at least the last
    `keep` events younger than `max_age`, so that a slow stream (one inference every few seconds on a CPU) still
    has figures instead of an empty window."""

    def __init__(self, window: float = 5.0, keep: int = 3, max_age: float = 60.0) -> None:
        self.window, self.keep, self.max_age = window, keep, max_age
        self._events: deque[tuple[float, float]] = deque()

    def add(self, value: float = 0.0, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._events.append((now, value))
        self._trim(now)

    def _trim(self, now: float) -> None:
        events = self._events
        while events and (now - events[0][0] > self.max_age
                          or (now - events[0][0] > self.window and len(events) > self.keep)):
            events.popleft()

    def rate(self, now: float | None = None) -> float:
        """Events per second over the kept events; decays once the next event is overdue (0 with fewer than two)."""
        now = time.monotonic() if now is None else now
        self._trim(now)
        if len(self._events) < 2:
            return 0.0
        first, last = self._events[0][0], self._events[-1][0]
        intervals = len(self._events) - 1
        span = last - first
        if span <= 0:
            return 0.0
        # Overdue by more than two typical intervals: count the silence too, so a stopped stream tends to 0.
        if now - last > 2 * span / intervals:
            span = now - first
        return intervals / span

    def values(self, now: float | None = None) -> np.ndarray:
        now = time.monotonic() if now is None else now
        self._trim(now)
        return np.fromiter((v for _, v in self._events), np.float64, len(self._events))


@dataclass
class FrameStats:
    """Counters and windows the node updates from its callbacks and its worker (all methods are thread-safe)."""

    window: float = 5.0
    received_pairs: int = 0
    processed_pairs: int = 0
    dropped_pairs: int = 0
    rejected_pairs: int = 0
    idle_pairs: int = 0  # pairs nobody wanted an output of (no subscriber): no inference ran
    budget_misses: int = 0  # frames whose latency budget did not fit even one iteration
    last_iterations: int | None = None  # refinement iterations of the last frame (None: the backend has none)
    last_valid_share: float = float("nan")
    last_problem: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self._inputs = EventWindow(self.window)
        self._outputs = EventWindow(self.window)
        self._latency = EventWindow(self.window)
        self._inference = EventWindow(self.window)

    def pair_received(self, dropped_older: bool) -> None:
        with self._lock:
            self.received_pairs += 1
            self.dropped_pairs += int(dropped_older)
            self._inputs.add()

    def pair_rejected(self, problem: str) -> None:
        with self._lock:
            self.rejected_pairs += 1
            self.last_problem = problem

    def pair_idle(self) -> None:
        with self._lock:
            self.idle_pairs += 1

    def pair_published(self, latency_s: float, inference_s: float, valid_share: float,
                       iterations: int | None = None, budget_missed: bool = False) -> None:
        with self._lock:
            self.processed_pairs += 1
            self.last_valid_share = valid_share
            self.last_iterations = iterations
            self.budget_misses += int(budget_missed)
            now = time.monotonic()
            self._outputs.add(now=now)
            self._latency.add(latency_s, now)
            self._inference.add(inference_s, now)

    def snapshot(self) -> dict[str, float | int | str]:
        """Current figures (latencies in milliseconds, rates in Hz)."""
        with self._lock:
            now = time.monotonic()
            latency = self._latency.values(now) * 1e3
            inference = self._inference.values(now) * 1e3
            return {
                "input_rate_hz": self._inputs.rate(now),
                "output_rate_hz": self._outputs.rate(now),
                "latency_ms_median": float(np.median(latency)) if latency.size else float("nan"),
                "latency_ms_max": float(latency.max()) if latency.size else float("nan"),
                "inference_ms_median": float(np.median(inference)) if inference.size else float("nan"),
                "received_pairs": self.received_pairs,
                "processed_pairs": self.processed_pairs,
                "dropped_pairs": self.dropped_pairs,
                "rejected_pairs": self.rejected_pairs,
                "idle_pairs": self.idle_pairs,
                "iterations": "none" if self.last_iterations is None else self.last_iterations,
                "budget_misses": self.budget_misses,
                "valid_depth_share": self.last_valid_share,
                "last_problem": self.last_problem,
            }


def format_value(value: float | int | str) -> str:
    if isinstance(value, float):
        return "nan" if value != value else f"{value:.3f}"
    return str(value)


def summary_line(snap: dict[str, float | int | str]) -> str:
    """One human-readable line for the throttled log."""
    return (
        f"in {snap['input_rate_hz']:.1f} Hz, out {snap['output_rate_hz']:.1f} Hz, "
        f"latency {format_value(snap['latency_ms_median'])} ms (max {format_value(snap['latency_ms_max'])}), "
        f"inference {format_value(snap['inference_ms_median'])} ms, dropped {snap['dropped_pairs']}, "
        f"rejected {snap['rejected_pairs']}, valid depth {format_value(snap['valid_depth_share'])}"
    )


def status_message(snap: dict[str, float | int | str], problems: list[str] | None = None) -> tuple[bool, str]:
    """(is a warning, message) of the /diagnostics status for a snapshot; input problems (inputs.health) come
    first and make it a warning."""
    if problems:
        return True, " | ".join(problems)
    if snap["received_pairs"] == 0:
        return False, "waiting for stereo pairs"
    if snap["processed_pairs"] == 0 and snap["idle_pairs"]:
        return False, "pairs arrive, no subscriber: no inference (lazy)"
    if float(snap["input_rate_hz"]) > 0 and float(snap["output_rate_hz"]) == 0:
        return True, "pairs arrive but none is published"
    return False, summary_line(snap)


class Throttle:
    """Per-key rate limit for warnings, so that one recurring problem cannot hide a different one.

    Bounded: at most `max_keys` keys are remembered (the least recently warned go first, and keys whose period
    is over are forgotten anyway), so that hostile input with ever-new message texts cannot grow the node.
    """

    def __init__(self, period: float = 5.0, max_keys: int = 256) -> None:
        self.period = period
        self.max_keys = max_keys
        self._last: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def ready(self, key: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.period:
                return False
            self._last[key] = now
            self._last.move_to_end(key)
            # Oldest first: drop what no longer throttles anything, then whatever exceeds the bound.
            while self._last:
                oldest_key, oldest = next(iter(self._last.items()))
                if now - oldest >= self.period or len(self._last) > self.max_keys:
                    del self._last[oldest_key]
                else:
                    break
            self._last[key] = now  # the key just warned stays, even with max_keys 0
            return True

    def __len__(self) -> int:
        return len(self._last)

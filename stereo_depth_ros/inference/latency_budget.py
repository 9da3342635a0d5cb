"""Per-frame choice of the refinement iteration count under a latency budget.

A frame of an iterative network costs about `fixed + per_iteration * k` for k GRU iterations: the encoder, cost
volume and upload are paid once, each iteration adds the same work. `IterationCostModel` fits those two numbers
to measured frames and `choose_iterations` picks the largest count whose predicted time fits the budget.

The fit has to survive what a robot's GPU does to frame times (README "Latency budget"):
- One-off spikes (a GC pause, the first frame on a new thread, another process's kernel) must not lower the count:
  a frame further from the prediction than the tolerance (`outlier_share` of the prediction, or `outlier_spreads`
  times the recent spread of the residuals, whichever is larger) is set aside, not fitted.
- A lasting change (thermal throttling, a busier GPU) must be followed: `confirm_frames` outliers in a row on the
  same side are a new level, not spikes, and restart the fit's level from them; a slow drift stays inside the
  tolerance and moves the level frame by frame (`smoothing`, an exponentially weighted mean).
- The count must climb back when there is slack. The level is measured at the count that runs, so slack shows up
  at once; but the per-iteration cost (the slope) can only be measured across different counts. It is the median
  of the last `slope_pairs` slopes between neighbouring fitted frames at different counts (neighbours: a drifting
  level cancels out; the median: one bad pair does not count, and an old slope is forgotten completely), and when
  one count has run for `probe_every` frames in a row `choose_iterations` runs the next larger count once (a
  probe, at most one iteration over the predicted time), so a slope that went wrong is corrected instead of
  holding the count down for good.

Until two different counts have been measured the split between the fixed and the per-iteration part is unknown;
the model then assumes no fixed cost (time proportional to k), and sets nothing aside. `TorchEstimator.warmup`
measures the full count and a single iteration up front when a budget is set.
"""
from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class IterationChoice:
    """What `choose_iterations` decided: the count to run, whether not even one iteration fitted, and whether this
    frame is a probe (one count above what the fit allows, to measure the per-iteration cost)."""

    iterations: int
    budget_missed: bool
    probe: bool = False


class IterationCostModel:
    """time_ms(k) ~= fixed_ms + per_iteration_ms * k, fitted robustly to (k, measured ms) pairs.

    smoothing: weight of the newest frame in the level (follows drifts within a few frames);
    slope_pairs: how many neighbouring pairs at different counts the per-iteration cost is the median of;
    outlier_share, outlier_spreads: the tolerance, see the module docstring; confirm_frames: outliers in a row on
    one side that make a new level; probe_every: frames at one count before a probe of the next larger one.
    """

    def __init__(self, smoothing: float = 0.2, slope_pairs: int = 5, outlier_share: float = 0.1,
                 outlier_spreads: float = 4.0, confirm_frames: int = 3, probe_every: int = 30) -> None:
        if not 0.0 < smoothing <= 1.0:
            raise ValueError(f"smoothing must be in (0, 1], got {smoothing}")
        if min(slope_pairs, confirm_frames, probe_every) < 1:
            raise ValueError(f"slope_pairs, confirm_frames and probe_every must be >= 1, got {slope_pairs}, "
                             f"{confirm_frames}, {probe_every}")
        self.smoothing = smoothing
        self.outlier_share, self.outlier_spreads = outlier_share, outlier_spreads
        self.confirm_frames, self.probe_every = confirm_frames, probe_every
        # level: exponentially weighted sums of 1, k, t over the fitted frames
        self._level = [0.0, 0.0, 0.0]
        self._slopes: deque[float] = deque(maxlen=slope_pairs)  # ms per iteration of the last neighbouring pairs
        self._previous: tuple[float, float] | None = None  # the last fitted frame (k, ms)
        self._per_iteration: float | None = None
        self._slope_fitted = False  # measured across counts, not assumed
        self._fixed = 0.0
        self._spread = 0.0  # exponentially weighted mean |residual| of the fitted frames, in ms
        self._held: list[tuple[int, float]] = []  # consecutive outliers on one side, not fitted (yet)
        self._held_above = False  # the side they are on: slower than predicted
        self._last_count = 0
        self.steady_frames = 0  # frames in a row measured at the same count (a probe ends the run)
        self.frames = 0
        self.outliers = 0  # frames set aside as spikes

    @property
    def fixed_ms(self) -> float | None:
        return None if self._per_iteration is None else self._fixed

    @property
    def per_iteration_ms(self) -> float | None:
        return self._per_iteration

    def predict_ms(self, iterations: int) -> float | None:
        """Predicted time of a frame with `iterations` iterations; None before any measurement."""
        return None if self._per_iteration is None else self._predict(iterations)

    def observe(self, iterations: int, elapsed_ms: float) -> None:
        """Add one measured frame that ran `iterations` iterations in `elapsed_ms`."""
        if iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {iterations}")
        if not elapsed_ms >= 0.0:  # also rejects NaN
            raise ValueError(f"elapsed_ms must be a non-negative number, got {elapsed_ms}")
        self.frames += 1
        self.steady_frames = self.steady_frames + 1 if iterations == self._last_count else 1
        self._last_count = iterations
        k, t = float(iterations), float(elapsed_ms)
        if not self._slope_fitted:
            self._fit(k, t)
            return
        residual, tolerance = self._residual(k, t)
        if abs(residual) <= tolerance:
            # The spread of the fitted frames only: a spike must not widen the tolerance for the next ones. Frames
            # that jitter more than the tolerance still widen it, as those within it then spread over most of it.
            self._spread += self.smoothing * (abs(residual) - self._spread)
            self._held.clear()
            self._fit(k, t)
            return
        if self._held and self._held_above != (residual > 0):
            self._held.clear()  # the other side: not the same change
        self._held_above = residual > 0
        self._held.append((iterations, t))
        if len(self._held) < self.confirm_frames:
            self.outliers += 1
            return
        # A lasting change, not a spike: the level restarts at the median shift of these frames (a spike among
        # them does not count), and the slope keeps its memory.
        held, self._held = self._held, []
        self.outliers -= len(held) - 1
        shift = statistics.median(elapsed - self._predict(count) for count, elapsed in held)
        restart = [(float(count), self._predict(count) + shift) for count, _ in held]
        self._level, self._previous = [0.0, 0.0, 0.0], None
        for count_, elapsed_ in restart:
            self._fit(count_, elapsed_)

    def _predict(self, k: float) -> float:
        return self._fixed + (self._per_iteration or 0.0) * k

    def _residual(self, k: float, t: float) -> tuple[float, float]:
        """(measured - predicted, tolerance) of one frame. A count away from those the level was measured at is
        predicted through the slope, so its tolerance also allows one slope's error per count of distance."""
        predicted = self._predict(k)
        weight, sum_k, _ = self._level
        distance = abs(k - sum_k / weight) if weight else 0.0
        tolerance = max(self.outlier_share * predicted, self.outlier_spreads * self._spread)
        return t - predicted, tolerance + distance * (self._per_iteration or 0.0)

    def _fit(self, k: float, t: float) -> None:
        keep = 1.0 - self.smoothing
        level = self._level
        self._level = [keep * level[0] + 1.0, keep * level[1] + k, keep * level[2] + t]
        previous, self._previous = self._previous, (k, t)
        if previous is not None and previous[0] != k:
            # The slope from two neighbouring frames at different counts: the level (which drifts) cancels out.
            # The median of the last `slope_pairs` such pairs: robust, and it forgets an old slope completely.
            self._slopes.append((t - previous[1]) / (k - previous[0]))
            slope = statistics.median(self._slopes)
            if slope > 0.0:
                self._per_iteration = slope
                self._slope_fitted = True
        weight, sum_k, sum_t = self._level
        if not self._slope_fitted:  # no split known yet: time taken as proportional to k
            self._per_iteration = sum_t / sum_k
        assert self._per_iteration is not None
        # A negative intercept is fitting noise (nothing is cheaper than free): clamp it.
        self._fixed = max(0.0, (sum_t - self._per_iteration * sum_k) / weight)


def budget_counts(max_iterations: int, limit: int) -> list[int]:
    """The iteration counts a budget may choose: every count up to max_iterations when there are at most `limit`,
    else `limit` counts spread evenly from 1 to max_iterations. Each is captured (its own CUDA graph), so the set
    stays as small as the capture cache (`TorchEstimator.max_captures`)."""
    if max_iterations < 1 or limit < 1:
        raise ValueError(f"max_iterations and limit must be >= 1, got {max_iterations}, {limit}")
    if max_iterations <= limit:
        return list(range(1, max_iterations + 1))
    if limit == 1:
        return [max_iterations]
    step = (max_iterations - 1) / (limit - 1)
    return sorted({1 + round(i * step) for i in range(limit)})


def choose_iterations(model: IterationCostModel, budget_ms: float, max_iterations: int,
                      counts: Sequence[int] | None = None) -> IterationChoice:
    """The largest k in `counts` (default 1..max_iterations; none above max_iterations) whose predicted time is
    <= budget_ms; after `model.probe_every` frames at one count, the next larger one once (a probe).

    No measurement yet: max_iterations (the first frame is the measurement). Not even the smallest count fits: that
    one, missed (no probe: the budget is already exceeded). budget_ms <= 0 means no budget: max_iterations.
    """
    if max_iterations < 1:
        raise ValueError(f"max_iterations must be >= 1, got {max_iterations}")
    allowed = sorted(k for k in (counts or range(1, max_iterations + 1)) if 1 <= k <= max_iterations)
    if not allowed:
        raise ValueError(f"no iteration count in {list(counts or [])} is within 1..{max_iterations}")
    if budget_ms <= 0.0 or model.per_iteration_ms is None:
        return IterationChoice(max_iterations, False)
    fixed, per_iteration = model.fixed_ms or 0.0, model.per_iteration_ms
    # A prediction within 0.1 % of the budget fits: far below frame-time jitter, and it keeps a level that is still
    # converging (an exponentially weighted mean never arrives) from holding an exact fit one count down.
    fitting = [k for k in allowed if fixed + per_iteration * k <= budget_ms * (1.0 + 1e-3)]
    if not fitting:
        return IterationChoice(allowed[0], True)
    chosen = fitting[-1]
    if chosen < allowed[-1] and model.steady_frames >= model.probe_every:
        return IterationChoice(allowed[allowed.index(chosen) + 1], False, probe=True)
    return IterationChoice(chosen, False)

"""Per-frame choice of the refinement iteration count under a latency budget.

A frame of an iterative network costs about `fixed + per_iteration * k` for k GRU iterations: the encoder, cost
volume and upload are paid once, each iteration adds the same work. `IterationCostModel` fits those two numbers
to measured frames by exponentially weighted least squares, so it follows slow drifts (thermal throttling, a
busier GPU) while one outlier moves it only a little. `choose_iterations` then picks the largest count whose
predicted time fits the budget.

Until two different counts have been measured the split between the fixed and the per-iteration part is unknown;
the model then assumes no fixed cost (time proportional to k). That under-estimates smaller counts, so the first
reduced frame may overrun; its measurement gives the model its second count and the fit becomes exact for a
cost that is linear in k. `TorchEstimator.warmup` measures two counts up front when a budget is set.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class IterationChoice:
    """What `choose_iterations` decided: the count to run, and whether not even one iteration fitted."""

    iterations: int
    budget_missed: bool


class IterationCostModel:
    """time_ms(k) ~= fixed_ms + per_iteration_ms * k, fitted to (k, measured ms) pairs.

    smoothing: weight of the newest frame (0 < smoothing <= 1); older frames fade by (1 - smoothing) per frame.
    """

    def __init__(self, smoothing: float = 0.2) -> None:
        if not 0.0 < smoothing <= 1.0:
            raise ValueError(f"smoothing must be in (0, 1], got {smoothing}")
        self.smoothing = smoothing
        # exponentially weighted sums of 1, k, k^2, t, k*t over the measured frames
        self._w = self._k = self._kk = self._t = self._kt = 0.0
        self._per_iteration: float | None = None
        self._fixed = 0.0
        self.frames = 0

    @property
    def fixed_ms(self) -> float | None:
        return None if self._per_iteration is None else self._fixed

    @property
    def per_iteration_ms(self) -> float | None:
        return self._per_iteration

    def observe(self, iterations: int, elapsed_ms: float) -> None:
        """Add one measured frame that ran `iterations` iterations in `elapsed_ms`."""
        if iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {iterations}")
        if not elapsed_ms >= 0.0:  # also rejects NaN
            raise ValueError(f"elapsed_ms must be a non-negative number, got {elapsed_ms}")
        keep = 1.0 - self.smoothing
        k, t = float(iterations), float(elapsed_ms)
        self._w = keep * self._w + 1.0
        self._k = keep * self._k + k
        self._kk = keep * self._kk + k * k
        self._t = keep * self._t + t
        self._kt = keep * self._kt + k * t
        self.frames += 1
        mean_k, mean_t = self._k / self._w, self._t / self._w
        variance_k = self._kk / self._w - mean_k * mean_k
        # Counts that (nearly) all agree cannot separate the two parts: keep the known per-iteration cost and let
        # the fixed part absorb the change; with no known split yet, assume time proportional to k.
        if variance_k > 1e-6 * max(1.0, mean_k * mean_k):
            slope = (self._kt / self._w - mean_k * mean_t) / variance_k
            if slope > 0.0:
                self._per_iteration = slope
        if self._per_iteration is None:
            self._per_iteration = mean_t / mean_k
        # A negative intercept is fitting noise (nothing is cheaper than free): clamp it.
        self._fixed = max(0.0, mean_t - self._per_iteration * mean_k)

    def predict_ms(self, iterations: int) -> float | None:
        """Predicted time of a frame with `iterations` iterations; None before any measurement."""
        if self._per_iteration is None:
            return None
        return self._fixed + self._per_iteration * iterations


def choose_iterations(model: IterationCostModel, budget_ms: float, max_iterations: int) -> IterationChoice:
    """The largest k in 1..max_iterations with predicted time <= budget_ms.

    No measurement yet: max_iterations (the first frame is the measurement). Not even k = 1 fits: 1, missed.
    budget_ms <= 0 means no budget: max_iterations.
    """
    if max_iterations < 1:
        raise ValueError(f"max_iterations must be >= 1, got {max_iterations}")
    if budget_ms <= 0.0 or model.per_iteration_ms is None:
        return IterationChoice(max_iterations, False)
    fixed, per_iteration = model.fixed_ms or 0.0, model.per_iteration_ms
    if fixed + per_iteration > budget_ms:
        return IterationChoice(1, True)
    if per_iteration <= 0.0:
        return IterationChoice(max_iterations, False)
    # Largest k with fixed + per_iteration * k <= budget; the small epsilon keeps an exact fit from rounding down.
    fits = int((budget_ms - fixed) / per_iteration + 1e-9)
    return IterationChoice(max(1, min(max_iterations, fits)), False)

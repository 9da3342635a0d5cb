"""Disparity error metrics: EPE, D1 and bad-N over valid pixels, pooled over a whole evaluation set.

The one definition, used by `stereo-distill eval`, training's validation and the demo alike:
- a pixel counts when the reference is finite there (and the optional `valid` mask allows it);
- a prediction that is NaN at a counted pixel (no answer: SGBM's holes, a non-positive disparity that the
  estimator turned into NaN) is an error for D1 and every bad-N: an estimator cannot improve them by not
  answering;
- EPE is the mean absolute error over the counted pixels the prediction answered (a missing answer has no
  size, and averaging +inf would make EPE meaningless), so read it with `coverage`, the share of counted pixels
  that were answered.

Pooling: every metric is a ratio of sums over all valid pixels of all pairs (each pixel counts once), so a large
image weighs more than a small one. This is the KITTI convention for D1 and keeps the numbers independent of how
the set is split into pairs; `pairs` and `valid_fraction` say how much data they rest on.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

BAD_THRESHOLDS_PX = (1.0, 2.0, 3.0)
D1_ABS_PX = 3.0
D1_REL = 0.05


def pixel_errors(pred: np.ndarray, ref: np.ndarray, valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Absolute errors at the pixels that count.

    pred, ref: float [H, W] disparities (pred may carry NaN where the estimator had no value);
    valid: bool [H, W] or None. A pixel counts when `valid` allows it and the reference is finite; a NaN in
    `pred` at such a pixel counts as an error of +inf (a missing answer is wrong, not excluded).
    Returns (abs_error [N], |ref| [N]) at the counted pixels.
    """
    pred = np.asarray(pred, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction {pred.shape} and reference {ref.shape} differ in shape")
    mask = np.isfinite(ref)
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        if valid.shape != ref.shape:
            raise ValueError(f"valid mask {valid.shape} and reference {ref.shape} differ in shape")
        mask &= valid
    err = np.abs(pred[mask] - ref[mask])
    err[~np.isfinite(err)] = np.inf
    return err, np.abs(ref[mask])


@dataclass
class DisparityMetrics:
    """Accumulates pooled sums pair by pair; `result()` gives the contract's metrics dictionary."""

    reference: str = "labels"
    pairs: int = 0
    valid_pixels: int = 0
    total_pixels: int = 0
    answered_pixels: int = 0
    abs_error_sum: float = 0.0
    d1_count: int = 0
    bad_counts: dict[float, int] = field(default_factory=lambda: {t: 0 for t in BAD_THRESHOLDS_PX})

    def update(self, pred: np.ndarray, ref: np.ndarray, valid: np.ndarray | None = None) -> dict[str, float]:
        """Add one pair; returns that pair's own metrics (for per-pair reports)."""
        err, ref_abs = pixel_errors(pred, ref, valid)
        self.pairs += 1
        self.valid_pixels += err.size
        self.total_pixels += int(np.asarray(ref).size)
        finite = np.isfinite(err)
        # A missing prediction is a bad pixel for every threshold and adds nothing finite to the EPE sum;
        # counting it as +inf would make the whole EPE inf, so EPE averages the answered pixels only.
        self.abs_error_sum += float(err[finite].sum())
        self.answered_pixels += int(finite.sum())
        d1 = int(np.count_nonzero((err > D1_ABS_PX) & (err > D1_REL * ref_abs)))
        self.d1_count += d1
        for t in BAD_THRESHOLDS_PX:
            self.bad_counts[t] += int(np.count_nonzero(err > t))
        n = max(err.size, 1)
        return {
            "epe": float(err[finite].mean()) if finite.any() else float("nan"),
            "d1": d1 / n,
            **{f"bad{int(t)}": int(np.count_nonzero(err > t)) / n for t in BAD_THRESHOLDS_PX},
            "valid_fraction": err.size / max(int(np.asarray(ref).size), 1),
            "coverage": int(finite.sum()) / n,
        }

    def result(self) -> dict[str, float | int | str]:
        n = self.valid_pixels
        answered = self.answered_pixels
        return {
            "epe": self.abs_error_sum / answered if answered else float("nan"),
            "d1": self.d1_count / n if n else float("nan"),
            **{f"bad{int(t)}": (self.bad_counts[t] / n if n else float("nan")) for t in BAD_THRESHOLDS_PX},
            "pairs": self.pairs,
            "valid_fraction": n / self.total_pixels if self.total_pixels else 0.0,
            "coverage": answered / n if n else 0.0,
            "reference": self.reference,
        }


def compute_metrics(pred: np.ndarray, ref: np.ndarray, valid: np.ndarray | None = None,
                    reference: str = "labels") -> dict[str, float | int | str]:
    """Metrics of a single pair (convenience over `DisparityMetrics`)."""
    acc = DisparityMetrics(reference=reference)
    acc.update(pred, ref, valid)
    return acc.result()


def describe_metrics(metrics: dict) -> str:
    """One line for people: EPE, bad-2, bad-3, D1 (percent) and coverage."""
    return (f"EPE {metrics['epe']:.2f} px, bad-2 {metrics['bad2'] * 100:.1f} %, bad-3 {metrics['bad3'] * 100:.1f} %, "
            f"D1 {metrics['d1'] * 100:.1f} % (no answer counts as bad), answered {metrics['coverage'] * 100:.0f} % "
            "of the reference pixels")

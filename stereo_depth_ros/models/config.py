"""Typed configuration shared by the IGEV-family networks."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, TypeVar

import torch

PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

C = TypeVar("C", bound="IGEVConfig")


@dataclass
class IGEVConfig:
    """Fields every IGEV-family network reads.

    max_disp: disparity range in full-res pixels, a multiple of 32; the cost volume has max_disp // 4 planes
        (no weight depends on it).
    valid_iters: GRU iterations when `predict`/`forward` get iters=None.
    corr_levels, corr_radius: geometry lookup pyramid depth and half-width (in 1/4-res pixels).
    precision: autocast dtype on CUDA ("fp32" | "fp16" | "bf16"); other devices always run in the weights' dtype.
    """

    max_disp: int = 192
    valid_iters: int = 8
    corr_levels: int = 2
    corr_radius: int = 4
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {self.precision!r}")
        for name in ("max_disp", "valid_iters", "corr_levels", "corr_radius"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.max_disp % 32:
            # the hourglass halves the max_disp/4 planes three times and concatenates on the way back up
            raise ValueError(f"max_disp must be a multiple of 32, got {self.max_disp}")

    @classmethod
    def from_dict(cls: type[C], values: Mapping[str, Any]) -> C:
        """Build from a plain mapping (a saved checkpoint's config, keyword overrides); unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; known: {sorted(known)}")
        return cls(**dict(values))

    def replace(self: C, **overrides: Any) -> C:
        return type(self).from_dict({**dataclasses.asdict(self), **overrides})

"""Padding of an image pair to the network's stride, and cropping of the result back."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from stereo_depth_ros.pad_split import PAD_DIVISOR, pad_lrtb

__all__ = ["InputPadder", "pad_lrtb"]


class InputPadder:
    """Edge-replicating pad to a multiple of `divisor`, split over both sides (the odd pixel right/bottom).

    This is upstream's evaluation padding (InputPadder, mode 'sintel', divis_by=32): the network never sees
    a zero border, and `unpad` crops exactly the padded rows/columns off a full-resolution output.
    """

    def __init__(self, shape: torch.Size | tuple[int, ...], divisor: int = PAD_DIVISOR) -> None:
        self.height, self.width = int(shape[-2]), int(shape[-1])
        self.pad_lrtb = pad_lrtb(self.height, self.width, divisor)  # F.pad order

    @property
    def padded_shape(self) -> tuple[int, int]:
        left, right, top, bottom = self.pad_lrtb
        return self.height + top + bottom, self.width + left + right

    def pad(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        """Each [B, C, H, W] -> [B, C, H', W']."""
        for t in tensors:
            if t.ndim != 4 or tuple(t.shape[-2:]) != (self.height, self.width):
                raise ValueError(f"expected [B, C, {self.height}, {self.width}], got {list(t.shape)}")
        if not any(self.pad_lrtb):
            return list(tensors)
        return [F.pad(t, self.pad_lrtb, mode="replicate") for t in tensors]

    def unpad(self, x: torch.Tensor) -> torch.Tensor:
        """[..., H', W'] -> [..., H, W]."""
        left, _, top, _ = self.pad_lrtb
        return x[..., top : top + self.height, left : left + self.width]

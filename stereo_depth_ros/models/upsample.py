"""Convex upsampling of a 1/4-resolution map with predicted 3x3 neighbourhood weights."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def context_upsample(low: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Each full-res pixel is a weighted sum of the 3x3 neighbourhood of its 1/4-res parent.

    low: [B, 1, h, w]; weights: [B, 9, 4h, 4w], non-negative and summing to 1 over the 9 channels (a softmax)
    -> [B, 1, 4h, 4w]. Neighbours outside the map count as 0 (zero padding), as upstream does: border pixels
    are pulled towards 0. Disparities must be scaled to full-res pixels (x4) by the caller.
    """
    b, c, h, w = low.shape
    neighbours = F.unfold(low, kernel_size=3, dilation=1, padding=1).reshape(b, c * 9, h, w)
    neighbours = F.interpolate(neighbours, size=(4 * h, 4 * w), mode="nearest")
    return (neighbours * weights).sum(dim=1, keepdim=True)

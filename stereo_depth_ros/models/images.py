"""numpy images -> the tensors `predict` and the training forward take: one conversion for the offline tools.

(The torch estimator has its own upload path, pinned and reused buffers with normalisation on the device.)
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def rgb_batch(images: Sequence[np.ndarray], device: str | torch.device = "cpu") -> torch.Tensor:
    """uint8 or float [H, W, 3] RGB arrays of one size, 0..255 -> float32 [N, 3, H, W] on `device`."""
    stacked = np.stack([np.asarray(image) for image in images])
    if stacked.ndim != 4 or stacked.shape[-1] != 3:
        raise ValueError(f"expected RGB images [H, W, 3] of one size, got {stacked.shape[1:]}")
    return torch.from_numpy(stacked).to(device=device, dtype=torch.float32).permute(0, 3, 1, 2).contiguous()

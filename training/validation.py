"""`train`'s periodic check: the eval-mode student against the labels of the held-out pairs, on full images."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from stereo_depth_ros.models.images import rgb_batch
from stereo_devkit.metrics import DisparityMetrics
from stereo_devkit.outputs import colourise

from .cli import CliError, WorkError
from .train_data import TrainItem, load_item

VISUAL_PAIRS = 2  # left | label | prediction rows in TensorBoard


@torch.no_grad()
def validate(model: Any, items: list[TrainItem], iters: int | None, device: torch.device, max_pairs: int
             ) -> tuple[dict[str, Any], list[np.ndarray]]:
    """EPE/D1/bad-N of the eval-mode student against the labels on held-out pairs (full images).

    Returns (metrics, a few uint8 RGB pictures: left | label | prediction on one colour scale). Puts the model
    back into training mode (freeze_bn) afterwards.
    """
    model.eval()
    metrics = DisparityMetrics(reference="labels")
    visuals: list[np.ndarray] = []
    try:
        for item in items[:max_pairs]:
            try:
                pair = load_item(item)
            except CliError as error:  # found part-way through training: exit status 1, checkpoints kept
                raise WorkError(str(error)) from None
            disp, valid = pair["disp"], pair["valid"]
            pred = model.predict(rgb_batch([pair["left"]], device), rgb_batch([pair["right"]], device), iters=iters)
            pred = pred.float()[0, 0].cpu().numpy()
            metrics.update(pred, disp, valid)
            if len(visuals) < VISUAL_PAIRS:
                label = np.where(valid, disp, np.nan)
                hi = float(np.nanpercentile(label, 99)) if np.isfinite(label).any() else None
                visuals.append(np.concatenate([pair["left"], colourise(label, 0.0, hi), colourise(pred, 0.0, hi)], 1))
    finally:
        model.train()
    return metrics.result(), visuals

"""Distillation loss: upstream RT-IGEV's sequence loss with the teacher's labels as the target.

Upstream (train_stereo_rt.py, sequence_loss) supervises the full-resolution initial disparity with a smooth-L1
term and each of the n GRU predictions with an L1 term weighted gamma_adj ** (n - i - 1), where
gamma_adj = gamma ** (15 / (n - 1)) keeps the weight of the first prediction the same whatever n is. Pixels
count when the target is valid and |target| < max_range (upstream hard-codes 192 px). Here the target is the
teacher's pseudo-label with its validity mask; where a sample also has ground truth, a second sequence loss
against it can be mixed in with `gt_weight`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LossConfig:
    gamma: float = 0.9          # upstream's loss_gamma
    init_weight: float = 1.0    # weight of the smooth-L1 term on the initial disparity
    max_range: float = 192.0    # upstream's |d| < 192 rule; larger for wide-baseline data
    gt_weight: float = 0.0      # extra sequence loss against ground truth where a sample has it (0 = labels only)


def sequence_weights(n: int, gamma: float = 0.9) -> list[float]:
    """Weights of the n iteration terms, oldest first; the last prediction has weight 1."""
    if n < 1:
        raise ValueError("need at least one iteration prediction")
    if n == 1:
        return [1.0]
    adjusted = gamma ** (15.0 / (n - 1))
    return [adjusted ** (n - i - 1) for i in range(n)]


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # Sum / count rather than values[mask].mean(): an empty mask gives 0 (with a graph) instead of NaN.
    count = mask.sum()
    return (values * mask).sum() / count.clamp(min=1)


def sequence_loss(
    init_disp: torch.Tensor,
    preds: list[torch.Tensor] | tuple[torch.Tensor, ...],
    target: torch.Tensor,
    valid: torch.Tensor,
    config: LossConfig = LossConfig(),
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Upstream's sequence loss against one target.

    init_disp: [B,1,H,W]; preds: n tensors [B,1,H,W]; target: [B,1,H,W] (or [B,H,W]); valid: same shape as
    target, bool or 0..1 (>= 0.5 counts). Losses are computed in float32 whatever the autocast dtype.
    Returns (scalar loss, detached metrics of the last prediction: epe, bad1, bad3, valid_fraction).
    """
    if target.dim() == 3:
        target = target.unsqueeze(1)
    if valid.dim() == 3:
        valid = valid.unsqueeze(1)
    target = target.float()
    mask = ((valid.float() >= 0.5) & torch.isfinite(target) & (target.abs() < config.max_range)).float()
    # Non-finite targets are masked out; zero them so that 0 * inf does not poison the sums.
    target = torch.where(mask > 0, target, torch.zeros_like(target))

    init_term = F.smooth_l1_loss(init_disp.float(), target, reduction="none")
    loss = config.init_weight * _masked_mean(init_term, mask)
    for weight, pred in zip(sequence_weights(len(preds), config.gamma), preds, strict=True):
        loss = loss + weight * _masked_mean((pred.float() - target).abs(), mask)

    with torch.no_grad():
        err = (preds[-1].float() - target).abs()
        metrics = {
            "epe": _masked_mean(err, mask),
            "bad1": _masked_mean((err > 1).float(), mask),
            "bad3": _masked_mean((err > 3).float(), mask),
            "valid_fraction": mask.mean(),
        }
    return loss, metrics


def distillation_loss(
    init_disp: torch.Tensor,
    preds: list[torch.Tensor] | tuple[torch.Tensor, ...],
    label: torch.Tensor,
    label_valid: torch.Tensor,
    gt: torch.Tensor | None = None,
    gt_valid: torch.Tensor | None = None,
    config: LossConfig = LossConfig(),
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Sequence loss against the teacher's labels, plus `gt_weight` x the same loss against ground truth.

    gt / gt_valid: [B,1,H,W] or None; samples without ground truth have gt_valid all zero, so they add nothing
    to the ground-truth term (its masked mean runs over the pixels that have ground truth only).
    """
    loss, metrics = sequence_loss(init_disp, preds, label, label_valid, config)
    metrics = {"label_" + k if k != "valid_fraction" else "label_valid_fraction": v for k, v in metrics.items()}
    metrics["label_loss"] = loss.detach()
    if config.gt_weight > 0 and gt is not None and gt_valid is not None and bool((gt_valid >= 0.5).any()):
        gt_loss, gt_metrics = sequence_loss(init_disp, preds, gt, gt_valid, config)
        loss = loss + config.gt_weight * gt_loss
        metrics["gt_loss"] = gt_loss.detach()
        metrics["gt_epe"] = gt_metrics["epe"]
    metrics["loss"] = loss.detach()
    return loss, metrics

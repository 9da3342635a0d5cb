"""The teacher's Selective Recurrent Unit (Selective-Stereo, Wang et al. 2024).

Every level of the multi-level GRU runs two GRUs on the same input, one with
1x1 and one with 3x3 kernels, and mixes their new hidden states per pixel with
an attention map computed once from the context features. Small kernels keep
fine detail, large kernels propagate over texture-less areas: the attention
picks which per pixel.

Parameter names follow the upstream checkpoint (``update_block.gru04.small_gru.convz``,
``sam.samconv``, ``cam.fc.0`` ...) so official weights load unchanged.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .update import ConvGRU, DispHead, MotionEncoder, mask_feature_head


def pool2x(x: torch.Tensor) -> torch.Tensor:
    """Halve the resolution the way the upstream GRU hierarchy does (3x3 mean, zero-padded)."""
    return F.avg_pool2d(x, 3, stride=2, padding=1)


def interp(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Bilinear resize of ``x`` to the spatial size of ``like`` (align_corners=True).

    Runs in at least float32: the half-precision kernel drifts, which upstream's
    later networks fixed the same way.
    """
    work = torch.promote_types(x.dtype, torch.float32)
    out = F.interpolate(x.to(work), like.shape[-2:], mode="bilinear", align_corners=True)
    return out.to(x.dtype)


class ChannelAttentionEnhancement(nn.Module):
    """Channel gate from average- and max-pooled statistics (CBAM style).

    ``[B, C, H, W] -> [B, C, 1, 1]`` in 0..1; the caller multiplies.
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.fc = nn.Sequential(
            nn.Conv2d(channels, channels // reduction, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(channels // reduction, channels, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.fc(F.adaptive_avg_pool2d(x, 1))
        peak = self.fc(F.adaptive_max_pool2d(x, 1))
        return torch.sigmoid(avg + peak)


class SpatialAttentionExtractor(nn.Module):
    """Per-pixel weight from the channel mean and max of the context features.

    ``[B, C, H, W] -> [B, 1, H, W]`` in 0..1: the share of the small-kernel GRU.
    """

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.samconv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stats = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.samconv(stats))


class SelectiveConvGRU(nn.Module):
    """Two GRU cells (small and large kernel) blended per pixel: ``att*small + (1-att)*large``.

    ``forward(att [B,1,H,W], h [B,hidden,H,W], *inputs)``; the inputs are
    concatenated on channels (their sum must be ``input_dim``).
    """

    def __init__(self, hidden_dim: int, input_dim: int, small_kernel_size: int = 1,
                 large_kernel_size: int = 3) -> None:
        super().__init__()
        self.small_gru = ConvGRU(hidden_dim, input_dim, small_kernel_size)
        self.large_gru = ConvGRU(hidden_dim, input_dim, large_kernel_size)

    def forward(self, att: torch.Tensor, h: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        x = torch.cat(inputs, dim=1)
        return self.small_gru(h, x) * att + self.large_gru(h, x) * (1 - att)


class SelectiveMultiUpdateBlock(nn.Module):
    """One refinement step of the 1/4-1/8-1/16 selective GRU hierarchy.

    Args:
        hidden_dims: hidden channels at ``[1/16, 1/8, 1/4]`` (upstream order).
        corr_channels: channels of the geometry features (``levels*(2r+1)*(groups+1)``).
        n_gru_layers: 2 (1/4, 1/8) or 3 (1/4, 1/8, 1/16).

    Coarse to fine each step: 1/16 from its context and the pooled 1/8 state,
    1/8 from its context, the pooled 1/4 state and the upsampled 1/16 state,
    then 1/4 from its context, the motion features and the upsampled 1/8 state.
    """

    motion_dim = 128

    def __init__(self, hidden_dims: Sequence[int], corr_channels: int, n_gru_layers: int = 3) -> None:
        super().__init__()
        if n_gru_layers not in (2, 3):
            raise ValueError(f"n_gru_layers must be 2 or 3 for the selective update, got {n_gru_layers}")
        self.n_gru_layers = n_gru_layers
        h16, h08, h04 = hidden_dims
        self.encoder = MotionEncoder(corr_channels, self.motion_dim)
        if n_gru_layers == 3:
            self.gru16 = SelectiveConvGRU(h16, h16 + h08)
        self.gru08 = SelectiveConvGRU(h08, h16 * (n_gru_layers == 3) + h08 + h04)
        self.gru04 = SelectiveConvGRU(h04, self.motion_dim + h08 + h04)
        self.disp_head = DispHead(h04, 256)
        self.mask_feat_4 = mask_feature_head(h04)

    def forward(self, net: list[torch.Tensor], inp: Sequence[torch.Tensor], corr: torch.Tensor,
                disp: torch.Tensor, att: Sequence[torch.Tensor]
                ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """``net``/``inp``/``att``: per level, finest first. Returns the new
        states, the upsampling features ``[B,32,H,W]`` and the update ``[B,1,H,W]``."""
        net = list(net)
        if self.n_gru_layers == 3:
            net[2] = self.gru16(att[2], net[2], inp[2], pool2x(net[1]))
            net[1] = self.gru08(att[1], net[1], inp[1], pool2x(net[0]), interp(net[2], net[1]))
        else:
            net[1] = self.gru08(att[1], net[1], inp[1], pool2x(net[0]))
        motion = self.encoder(disp, corr)
        net[0] = self.gru04(att[0], net[0], inp[0], motion, interp(net[1], net[0]))
        delta_disp = self.disp_head(net[0])
        # Scaled down as upstream does, to balance the gradients into the upsampler.
        mask_feat_4 = 0.25 * self.mask_feat_4(net[0])
        return net, mask_feat_4, delta_disp

"""Recurrent update pieces shared by the student's and the teacher's update blocks."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class ConvGRU(nn.Module):
    """Convolutional GRU cell; optional per-pixel context biases are added inside the gates.

    h: [B, hidden, H, W], x: [B, input, H, W], context: None or (cz, cr, cq) each [B, hidden, H, W]
    -> new h [B, hidden, H, W]. RT-IGEV passes its context (upstream ConvGRU), Selective-IGEV does not
    (upstream RaftConvGRU, with kernel size 1 or 3).
    """

    def __init__(self, hidden_dim: int, input_dim: int, kernel_size: int = 3) -> None:
        super().__init__()
        channels = hidden_dim + input_dim
        self.convz = nn.Conv2d(channels, hidden_dim, kernel_size, padding=kernel_size // 2)
        self.convr = nn.Conv2d(channels, hidden_dim, kernel_size, padding=kernel_size // 2)
        self.convq = nn.Conv2d(channels, hidden_dim, kernel_size, padding=kernel_size // 2)

    def forward(
        self, h: torch.Tensor, x: torch.Tensor, context: Sequence[torch.Tensor] | None = None
    ) -> torch.Tensor:
        hx = torch.cat([h, x], dim=1)
        z = self.convz(hx)
        r = self.convr(hx)
        if context is not None:
            z = z + context[0]
            r = r + context[1]
        del hx  # at the teacher's 1/4 resolution on large images this 512-channel tensor is ~0.7 GiB
        z = torch.sigmoid(z)
        r = torch.sigmoid(r)
        q = self.convq(torch.cat([r * h, x], dim=1))
        if context is not None:
            q = q + context[2]
        q = torch.tanh(q)
        return (1 - z) * h + z * q


class MotionEncoder(nn.Module):
    """Encodes the looked-up geometry features and the current disparity for the GRU.

    geo: [B, geo_channels, H, W], disp: [B, 1, H, W] -> [B, out_channels, H, W] (the last channel is disp itself).
    """

    def __init__(self, geo_channels: int, out_channels: int) -> None:
        super().__init__()
        self.convc1 = nn.Conv2d(geo_channels, 64, 1, padding=0)
        self.convc2 = nn.Conv2d(64, 64, 3, padding=1)
        self.convd1 = nn.Conv2d(1, 64, 7, padding=3)
        self.convd2 = nn.Conv2d(64, 64, 3, padding=1)
        self.conv = nn.Conv2d(64 + 64, out_channels - 1, 3, padding=1)

    def forward(self, disp: torch.Tensor, geo: torch.Tensor) -> torch.Tensor:
        geo_feat = F.relu(self.convc2(F.relu(self.convc1(geo))))
        disp_feat = F.relu(self.convd2(F.relu(self.convd1(disp))))
        out = F.relu(self.conv(torch.cat([geo_feat, disp_feat], dim=1)))
        return torch.cat([out, disp], dim=1)


class DispHead(nn.Module):
    """Two 3x3 convolutions: hidden state [B, in, H, W] -> disparity update [B, 1, H, W]."""

    def __init__(self, input_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(input_dim, hidden_dim, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden_dim, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.conv1(x)))


def mask_feature_head(hidden_dim: int) -> nn.Sequential:
    """3x3 conv + ReLU: hidden state -> the 32-channel feature that drives the convex upsampling weights."""
    return nn.Sequential(nn.Conv2d(hidden_dim, 32, 3, padding=1), nn.ReLU())

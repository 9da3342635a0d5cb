"""Multi-scale context encoder of the teacher (Selective-IGEV's ``cnet``).

A RAFT-style residual CNN on the left image that gives, at 1/4, 1/8 and 1/16 of
the input resolution, one tensor per requested head. The teacher asks for two
heads per level: the initial hidden state of the recurrent unit and its
context input. The student has no such network: its hidden state and context
come from the shared feature extractor, so this module is teacher-only.

Parameter names follow the upstream checkpoint (``conv1``, ``norm1``,
``layer1..5``, ``outputs04/08/16``) so official weights load unchanged.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

NormLayer = Callable[[int], nn.Module]


class ResidualBlock(nn.Module):
    """Two 3x3 conv + norm + ReLU with an identity or 1x1-projection shortcut.

    ``[B, in_planes, H, W] -> [B, planes, H/stride, W/stride]``.
    """

    def __init__(self, in_planes: int, planes: int, norm_layer: NormLayer = nn.BatchNorm2d,
                 stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, padding=1, stride=stride)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, padding=1)
        self.norm1 = norm_layer(planes)
        self.norm2 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        if stride == 1 and in_planes == planes:
            self.downsample: nn.Module | None = None
        else:
            # The checkpoint stores the shortcut norm twice, as ``norm3`` and as
            # ``downsample.1`` (one module registered under both names); keeping
            # both names is what lets official state_dicts load strictly.
            self.norm3 = norm_layer(planes)
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride), self.norm3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # One layer per statement: each intermediate is released as soon as the next exists. The first
        # stages run at full resolution with 64 channels (1.5 GiB a tensor at Middlebury's full size).
        y = self.conv1(x)
        y = self.relu(self.norm1(y))
        y = self.conv2(y)
        y = self.relu(self.norm2(y))
        if self.downsample is not None:
            x = self.downsample(x)
        if torch.is_grad_enabled():
            return self.relu(x + y)
        return self.relu(y.add_(x))  # without autograd the sum reuses y's memory (same result bit for bit)


class MultiScaleContextEncoder(nn.Module):
    """Residual encoder with per-level output heads at 1/4, 1/8 and 1/16.

    Args:
        head_dims: one entry per head (the teacher: ``[hidden_dims, context_dims]``);
            each entry lists the channels at ``[1/16, 1/8, 1/4]``, upstream's order.
        norm_layer: normalisation constructor (the teacher uses BatchNorm2d).
        downsample: log2 of the finest output stride (2 -> 1/4, upstream's
            ``n_downsample``); 1/8 and 1/16 follow with two more stride-2 stages.

    ``forward(image [B,3,H,W], num_levels)`` returns ``num_levels`` lists (finest
    first), each holding one tensor per head: ``[B, head_dims[k][2-l], H/4/2^l, W/4/2^l]``.
    """

    def __init__(self, head_dims: Sequence[Sequence[int]], norm_layer: NormLayer = nn.BatchNorm2d,
                 downsample: int = 2) -> None:
        super().__init__()
        if not 0 <= downsample <= 3:
            raise ValueError(f"downsample must be 0..3, got {downsample}")
        self._norm_layer = norm_layer
        self.norm1 = norm_layer(64)
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=1 + (downsample > 2), padding=3)
        self.relu1 = nn.ReLU(inplace=True)

        self._in_planes = 64
        self.layer1 = self._stage(64, stride=1)
        self.layer2 = self._stage(96, stride=1 + (downsample > 1))
        self.layer3 = self._stage(128, stride=1 + (downsample > 0))
        self.layer4 = self._stage(128, stride=2)
        self.layer5 = self._stage(128, stride=2)

        self.outputs04 = nn.ModuleList(
            nn.Sequential(ResidualBlock(128, 128, norm_layer), nn.Conv2d(128, dims[2], 3, padding=1))
            for dims in head_dims)
        self.outputs08 = nn.ModuleList(
            nn.Sequential(ResidualBlock(128, 128, norm_layer), nn.Conv2d(128, dims[1], 3, padding=1))
            for dims in head_dims)
        self.outputs16 = nn.ModuleList(nn.Conv2d(128, dims[0], 3, padding=1) for dims in head_dims)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm)):
                if m.weight is not None:
                    nn.init.ones_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def _stage(self, planes: int, stride: int) -> nn.Sequential:
        blocks = nn.Sequential(ResidualBlock(self._in_planes, planes, self._norm_layer, stride),
                               ResidualBlock(planes, planes, self._norm_layer, 1))
        self._in_planes = planes
        return blocks

    def forward(self, image: torch.Tensor, num_levels: int = 3) -> list[list[torch.Tensor]]:
        if not 1 <= num_levels <= 3:
            raise ValueError(f"num_levels must be 1..3, got {num_levels}")
        x = self.relu1(self.norm1(self.conv1(image)))
        # Block by block rather than stage by stage, so that no caller frame keeps a finished
        # full-resolution tensor alive while the next block runs.
        for block in (*self.layer1, *self.layer2, *self.layer3):
            x = block(x)
        levels = [[head(x) for head in self.outputs04]]
        if num_levels > 1:
            x = self.layer4(x)
            levels.append([head(x) for head in self.outputs08])
        if num_levels > 2:
            x = self.layer5(x)
            levels.append([head(x) for head in self.outputs16])
        return levels

"""The MobileNetV2 feature pyramid shared by RT-IGEV and Selective-IGEV."""
from __future__ import annotations

from typing import Any

import timm
import torch
from torch import nn

from .blocks import Conv2x, ConvNormAct


class Feature(nn.Module):
    """timm `mobilenetv2_100` trunk (stride 2..32) and an instance-norm decoder back to 1/4 resolution.

    The backbone is created with `pretrained=False`: every weight comes from the stereo checkpoint.
    timm's stages are regrouped into block0 (1/2), block1 (1/4), block2 (1/8), block3 (1/16, two stages),
    block4 (1/32); the last stage (320 channels) is not used and not in the checkpoints.
    timm >= 0.6 fuses the stem's ReLU6 into `bn1` (BatchNormAct2d); older timm has a separate `act1`.
    Either way the state_dict keys are the same.

    x: [B, 3, H, W] (H, W multiples of 32) -> [x4 [B,48,H/4,W/4], x8 [B,64,H/8,W/8],
    x16 [B,192,H/16,W/16], x32 [B,160,H/32,W/32]].
    """

    def __init__(self) -> None:
        super().__init__()
        # Any: timm's feature wrapper exposes the network's stages as attributes the type checker cannot see.
        backbone: Any = timm.create_model("mobilenetv2_100", pretrained=False, features_only=True)
        self.conv_stem = backbone.conv_stem
        self.bn1 = backbone.bn1
        self.act1 = getattr(backbone, "act1", nn.Identity())
        stages = backbone.blocks
        self.block0 = nn.Sequential(*stages[0:1])
        self.block1 = nn.Sequential(*stages[1:2])
        self.block2 = nn.Sequential(*stages[2:3])
        self.block3 = nn.Sequential(*stages[3:5])
        self.block4 = nn.Sequential(*stages[5:6])

        self.deconv32_16 = Conv2x(160, 96, norm="instance")
        self.deconv16_8 = Conv2x(192, 32, norm="instance")
        self.deconv8_4 = Conv2x(64, 24, norm="instance")
        self.conv4 = ConvNormAct(48, 48, norm="instance", kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.act1(self.bn1(self.conv_stem(x)))
        x2 = self.block0(x)
        x4 = self.block1(x2)
        x8 = self.block2(x4)
        x16 = self.block3(x8)
        x32 = self.block4(x16)

        x16 = self.deconv32_16(x32, x16)
        x8 = self.deconv16_8(x16, x8)
        x4 = self.conv4(self.deconv8_4(x8, x4))
        return [x4, x8, x16, x32]

"""RT-IGEV, the real-time student (upstream: gangweix/IGEV-plusplus, core_rt/).

One GRU level at 1/4 resolution. Its hidden state and context come from the 96-channel 1/4-res features
(`hnet`, `cnet`); the geometry lookup samples only the aggregated cost volume.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .base import COST_VOLUME_GROUPS, IGEVBase
from .blocks import ConvNormAct
from .config import IGEVConfig
from .registry import register_model
from .update import ConvGRU, DispHead, MotionEncoder, mask_feature_head

MOTION_CHANNELS = 96


@dataclass
class RTIGEVConfig(IGEVConfig):
    """Upstream's evaluation defaults (evaluate_stereo_rt.py): 8 iterations, max_disp 192.

    hidden_dim: width of the GRU hidden state and of each of its three context maps.
    """

    hidden_dim: int = 96

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.hidden_dim, bool) or not isinstance(self.hidden_dim, int) or self.hidden_dim < 1:
            raise ValueError(f"hidden_dim must be a positive integer, got {self.hidden_dim!r}")


class RTUpdateBlock(nn.Module):
    """Motion encoder -> ConvGRU (context in the gates) -> disparity update and upsampling feature.

    net: [B, hidden, h, w], context: 3 x [B, hidden, h, w], geo: [B, levels*(2r+1)*8, h, w], disp: [B, 1, h, w]
    -> (net, mask_feat [B, 32, h, w], delta_disp [B, 1, h, w]).
    """

    def __init__(self, hidden_dim: int, geo_channels: int) -> None:
        super().__init__()
        self.encoder = MotionEncoder(geo_channels, MOTION_CHANNELS)
        self.gru = ConvGRU(hidden_dim, MOTION_CHANNELS)
        self.disp_head = DispHead(hidden_dim, 128)
        self.mask_feat_4 = mask_feature_head(hidden_dim)

    def forward(self, net, context, geo, disp):
        net = self.gru(net, self.encoder(disp, geo), context)
        return net, self.mask_feat_4(net), self.disp_head(net)


@register_model("rt_igev")
class RTIGEVStereo(IGEVBase):
    config_class = RTIGEVConfig
    config: RTIGEVConfig

    def __init__(self, config: RTIGEVConfig | None = None) -> None:
        super().__init__(config)
        hidden = self.config.hidden_dim
        geo_channels = self.config.corr_levels * (2 * self.config.corr_radius + 1) * COST_VOLUME_GROUPS
        self.update_block = RTUpdateBlock(hidden, geo_channels)
        self.hnet = nn.Sequential(
            ConvNormAct(96, hidden, kernel_size=3, stride=1, padding=1),
            nn.Conv2d(hidden, hidden, 3, 1, 1, bias=False),
        )
        self.cnet = ConvNormAct(96, hidden, kernel_size=3, stride=1, padding=1)
        self.context_zqr_conv = nn.Conv2d(hidden, 3 * hidden, 3, padding=1)

    def init_state(self, image_left, features_left):
        net = torch.tanh(self.hnet(features_left[0]))
        context = self.context_zqr_conv(self.cnet(features_left[0])).split(self.config.hidden_dim, dim=1)
        return net, context

    def update_step(self, state, geo_feat, disp):
        net, context = state
        net, mask_feat, delta_disp = self.update_block(net, context, geo_feat, disp)
        return (net, context), mask_feat, delta_disp
